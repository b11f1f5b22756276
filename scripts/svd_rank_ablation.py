"""Rank ablation: how far self-scores climb when the k most negative eigenvalues of W_sym are rescaled.

For every cell of a grid over k (--ks: the k most negative eigencomponents of W_sym) and a scale
s (--scales), W_{k,s} = W + V_k diag((s - 1) λ_k) V_k^T (the skew part and the other eigenvalues
kept). Per cell, over the whole vocabulary in query chunks (E: --input, default mean; biases left
out of W):

  self-rank   r_t = 1 + #{keys j : x_t W x_j^T > x_t W x_t^T} among all d_vocab keys for query t
  summaries   mean rank, mean reciprocal rank, accuracy@K = fraction of tokens with r_t <= K (--at)
  in context  the head's self mass on category prompts, the model run with W_{k,s} (biases kept)

(The original study's precision@k was computed on rank vectors and is meaningless; it is not
repeated here.) scale 1 is the unedited head.

Controls (--controls): the best cell's edit (its k and scale; k capped at each head's negative count)
applied to every control head, each head measured unedited and edited. Statistics and the direction a
self-suppressing head predicts ("directions"): mean_rank (unedited mean self-rank) high,
mean_rank_change (edited minus unedited) low, self_mass_change (in context) high. Writes results/<model>/svd_rank_ablation.json and
figures/<model>/svd_rank_ablation.{pdf,png}.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm
from transformer_lens import FactoredMatrix

from analysis import cli, controls, io, prompts
from analysis import qk_decomposition as qk
from analysis.attention import head_weights
from analysis.plotting import save_figure, use_style
from analysis.token_maps import token_inputs

NAME = "svd_rank_ablation"


def build_parser():
    p = cli.parser(__doc__, target_head=True)
    cli.add_input_argument(p)
    p.add_argument("--ks", type=cli.positive_int, nargs="+", default=[1, 4, 8, 16, 24, 32],
                   help="numbers of most-negative eigencomponents to rescale (default: 1 4 8 16 24 32)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 0.0, -1.0, -2.0],
                   help="factors for those eigenvalues; 1 = unedited (default: 1 0.5 0 -1 -2)")
    p.add_argument("--at", type=cli.positive_int, nargs="+", default=[1, 128, 1024],
                   help="K of accuracy@K (default: 1 128 1024)")
    p.add_argument("--n-prompts", type=cli.positive_int, default=16,
                   help="category prompts per cell for the self mass (default: 16)")
    p.add_argument("--n-words", type=cli.positive_int, default=64, help="words per category prompt (default: 64)")
    cli.add_controls_argument(p)
    p.add_argument("--chunk-size", type=cli.positive_int, default=128,
                   help="queries per block of scores; small blocks stay in cache (default: 128)")
    p.fits_context("--n-words", lambda n: 1 + n)
    p.memory("--n-prompts or --n-words", lambda a, s: cli.pattern_bytes(s, a.n_prompts, 1 + a.n_words, heads=1))
    p.memory("--chunk-size", lambda a, s: 3 * 4 * min(a.chunk_size, s.d_vocab) * s.d_vocab, "blocks of scores")
    return p


def main(args) -> None:
    model, layer, head = cli.load_target(args)
    W_Q, W_K, b_Q, b_K = head_weights(model, layer, head, include_bias=True)
    spectrum = qk.symmetric_spectrum(W_Q, W_K)
    n_negative = len(qk.most_negative(spectrum.values))
    ks = sorted({min(k, n_negative) for k in args.ks})  # k beyond the negative count repeats the last cell
    E = token_inputs(model, layer, args.input, seed=args.seed, progress=True)  # (d_vocab, d_model)
    tokens, mask = prompts.category_probe(model, prompts.ALL_CATEGORIES, args.n_prompts, args.n_words, args.seed + 1)

    # Every cell at once: self-ranks from shared score blocks, in-context masses from one run up to the layer.
    grid = [(k, scale) for k in ks for scale in args.scales]
    ranks = qk.self_ranks_grid(E, W_Q, W_K, spectrum, ks, args.scales, args.chunk_size, progress=True)
    factors = {(k, scale): qk.edited_factors(W_Q, W_K, spectrum, qk.most_negative(spectrum.values, k), scale)
               for k, scale in grid}
    in_context = qk.in_context_grid(model, tokens, mask, layer, head, factors, b_Q, b_K)
    cells = []
    for k, scale in grid:
        cells.append({"k": k, "scale": scale, **qk.rank_metrics(ranks[k, scale], args.at),
                      "self_mass": in_context[k, scale]["self_mass"],
                      "partner_mass": in_context[k, scale]["partner_mass"]})
    base = next((c for c in cells if c["scale"] == 1.0), None)  # scale 1 edits nothing: every k alike
    best = min(cells, key=lambda c: c["mean_rank"])  # the cell whose self-scores rank highest
    results = {"head": {"layer": layer, "head": head}, "input": args.input, "n_negative_eigenvalues": n_negative,
               "d_vocab": model.cfg.d_vocab, "ks": ks, "scales": args.scales,
               "cells": {f"k={c['k']},scale={c['scale']:g}": c for c in cells}, "best_cell": best,
               **({"unedited_cell": base} if base else {})}
    heads = [(layer, head)] + cli.control_heads(model, (layer, head), args.controls, args.seed)
    edited = best_cell_on_heads(model, heads, best, tokens, mask, args)
    results.update(controls.compare((layer, head), edited, {"mean_rank": "high", "mean_rank_change": "low",
                                                             "self_mass_change": "high"}))
    path = io.save_results(args.out, args.model, NAME, results, model_info=model.analysis_info,
                           arguments=vars(args), seed=args.seed)
    save_figure(figure(cells, ks, args, layer, head), args.out, args.model, NAME)

    if base:
        print(f"L{layer}H{head} unedited: mean self-rank {base['mean_rank']:.1f} of {model.cfg.d_vocab}, "
              f"MRR {base['mrr']:.3f}, self mass {base['self_mass']:.3f}")
    print(f"best cell k={best['k']}, scale {best['scale']:g}: mean self-rank {best['mean_rank']:.1f}, "
          f"MRR {best['mrr']:.3f}, " + ", ".join(f"acc@{K} {best[f'acc@{K}']:.2f}" for K in args.at)
          + f", self mass {best['self_mass']:.3f}")
    print("\n".join(controls.summary_lines(results, prefix="best cell on controls, ")))
    print(f"results: {path}")


def best_cell_on_heads(model, heads, best, tokens, mask, args) -> dict:
    """head -> unedited and best-cell-edited mean self-rank and self mass, and their changes."""
    rows, inputs = {}, {}
    for l, h in tqdm(heads, desc="best cell on control heads"):
        if l not in inputs:
            inputs[l] = token_inputs(model, l, args.input, seed=args.seed)
        W_Q, W_K, _, _ = head_weights(model, l, h)
        spectrum = qk.symmetric_spectrum(W_Q, W_K)
        A, B = qk.edited_factors(W_Q, W_K, spectrum, qk.most_negative(spectrum.values, best["k"]), best["scale"])
        measured = {}
        for name, (Wq, Wk) in (("unedited", (W_Q, W_K)), ("edited", (A, B))):
            ranks = qk.self_ranks(inputs[l], FactoredMatrix(Wq, Wk.T), args.chunk_size)
            self_mass = qk.edited_heads_in_context(model, tokens, mask, {(l, h): (Wq, Wk)})[(l, h)]["self_mass"]
            measured[name] = {"mean_rank": float(ranks.double().mean()), "self_mass": self_mass}
        before, after = measured["unedited"], measured["edited"]
        rows[(l, h)] = {"mean_rank": before["mean_rank"], "edited_mean_rank": after["mean_rank"],
                        "mean_rank_change": after["mean_rank"] - before["mean_rank"],
                        "self_mass": before["self_mass"], "edited_self_mass": after["self_mass"],
                        "self_mass_change": after["self_mass"] - before["self_mass"]}
    return rows


def figure(cells, ks, args, layer, head):
    use_style()
    import matplotlib.pyplot as plt
    import seaborn as sns

    panels = [("mean_rank", "mean self-rank", "rocket"), ("mrr", "mean reciprocal rank", "rocket_r"),
              *[(f"acc@{K}", f"accuracy@{K}", "rocket_r") for K in args.at],
              ("self_mass", "in-context self mass", "rocket_r")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (key, title, cmap) in zip(axes[0], panels):
        grid = np.array([[next(c[key] for c in cells if c["k"] == k and c["scale"] == s) for s in args.scales]
                         for k in ks])
        limits = {} if key == "mean_rank" else {"vmin": 0, "vmax": 1}  # fractions on one fixed scale
        sns.heatmap(grid, ax=ax, cmap=cmap, annot=True, **limits, fmt=".0f" if key == "mean_rank" else ".2f",
                    annot_kws={"fontsize": 6}, xticklabels=[f"{s:g}" for s in args.scales], yticklabels=ks, cbar=False)
        ax.set(title=title, xlabel="scale", ylabel="k most negative")
    fig.suptitle(f"L{layer}H{head}: rescaling the most negative eigenvalues of W_sym ({args.input} inputs)")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    cli.run(main, build_parser())
