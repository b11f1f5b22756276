"""Rank ablation: how far self-scores climb when the k most negative eigenvalues of W_sym are rescaled.

For every cell of a grid over k (--ks: the k most negative eigencomponents of W_sym) and a scale
s (--scales), W_{k,s} = W + V_k diag((s - 1) λ_k) V_k^T (the skew part and the other eigenvalues
kept). Per cell, for --rank-queries query tokens (a seeded sample shared by every head; the whole
vocabulary when it is no larger), each against every key (E: --input, default mean; biases left out of W):

  self-rank   r_t = 1 + #{keys j : x_t W x_j^T > x_t W x_t^T} among all d_vocab keys for query t
  summaries   mean rank, mean reciprocal rank, accuracy@K = fraction of tokens with r_t <= K (--at)
  in context  the head's self mass on category prompts, the model run with W_{k,s} (biases kept)

(The original study's precision@k was computed on rank vectors and is meaningless; it is not
repeated here.) scale 1 is the unedited head. Every cell also keeps the mean self-rank on the study's scale,
mean_rank_normalised = (mean rank - 1) / V in [0, 1) over the V = d_vocab keys (the study's ranks start at 0, over
50,257 tokens). accuracy@K is left out where K >= V / 2, trivial there (key "acc_dropped": which K, and why).

The study's way (key "study_edit"), at --study-cell (default k = 24, scale -2, the cell the study reported): the
study's edit, not ours: torch.linalg.eig of the dense, non-symmetric W = W_Q W_K^T, the first d_head eigenpairs
in the solver's order, unsorted, the first k eigenvalues times the scale, scores E U_Q diag(λ') U_K E^T
(`qk_decomposition.study_edit_ranks`, ranked on the real part: torch refuses to argsort a complex tensor, and the
results keep the imaginary share), for the target, unedited (scale 1 of those factors) and edited, raw and normalised,
on --input ("unedited", "edited") and on the study's own input view ("unedited_study_input", "edited_study_input").

Controls (--controls): the same statistics the claim rests on, for every control head. By default
(--control-cells grid) each control head gets the whole grid, computed the same batched way as the
target's (`control_grids`, keyed by head and cell); --control-cells best runs only the target's best cell
on them. Only the edited head's own pattern is read, so every edit's pattern comes from the layer's cached
input. Statistics and the direction a self-suppressing head predicts ("directions"; rank 1 = most extreme that way):
  mean_rank (high)              unedited mean self-rank: self-scores sit low among the keys
  mean_rank_change (low)        mean self-rank at the target's best cell minus unedited
  self_mass_change (high)       in-context self mass at the target's best cell minus unedited
  best_mean_rank_change (low)   the head's own best cell of the grid: its largest fall in mean self-rank
  best_self_mass_change (high)  the head's own best cell of the grid: its largest rise in self mass
(the last two only with the grid). Category prompts: --categories (the study's 8 by default).

Positions (key "position_treatment"): with rotary positions a query's own key is scored at Δ = 0 and every other key
at M = E_Δ[R(Δ)] over the survey prompts' query-partner distances (`positions.position_treatment`), so the edited
head scores x_q (W_Q M W_K^T + V_k diag((s - 1) λ_k) V_k^T) x_j^T: the edit is of W_sym at Δ = 0 and is added alike
at every distance; in context each query and key turns by its own position. The study's edit stays at Δ = 0.
Writes results/<model>/eigenvalue_rank_ablation.json and figures/<model>/eigenvalue_rank_ablation{,_controls}.{pdf,png}.
"""

from __future__ import annotations

import numpy as np

from analysis import cli, controls, io, positions, prompts, records
from analysis import qk_decomposition as qk
from analysis.attention import qk_head
from analysis import self_suppression as ss
from analysis.heads import control_heads, load_target
from analysis.plotting import save_figure, target_vs_controls, use_style
from analysis.qk_decomposition import RankGrid
from analysis.token_maps import InputOptions, token_inputs

NAME = "eigenvalue_rank_ablation"
RANK_GRID_POSITIONS = ("the edit V_k diag((s - 1) λ_k) V_k^T of W_sym is added alike at every Δ (its directions are "
                       "not turned); the study's edit (study_edit) reads every pair at Δ = 0, as the study's dense W")


def build_parser():
    p = cli.parser(__doc__, target_head=True)
    cli.add_input_argument(p)
    p.add_argument("--ks", type=cli.positive_int, nargs="+", default=[1, 4, 8, 16, 24, 32],
                   help="numbers of most-negative eigencomponents to rescale (default: 1 4 8 16 24 32)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 0.0, -1.0, -2.0],
                   help="factors for those eigenvalues; 1 = unedited (default: 1 0.5 0 -1 -2)")
    p.add_argument("--at", type=cli.positive_int, nargs="+", default=[1, 128, 1024],
                   help="K of accuracy@K (default: 1 128 1024)")
    p.add_argument("--study-cell", type=float, nargs=2, default=[24, -2.0], metavar=("K", "SCALE"),
                   help="the study's edit, done its way, at this k (capped at d_head) and scale (default: 24 -2, the "
                        "cell the study reported)")
    p.add_argument("--n-prompts", type=cli.positive_int, default=16,
                   help="category prompts per cell for the self mass (default: 16)")
    p.add_argument("--n-words", type=cli.positive_int, default=64, help="words per category prompt (default: 64)")
    cli.add_controls_argument(p)
    p.add_argument("--control-cells", choices=("grid", "best"), default="grid",
                   help="what the control heads get: 'grid' (every cell, as the target) or 'best' (the target's "
                        "best cell only) (default: grid)")
    cli.add_categories_argument(p)
    p.add_argument("--rank-queries", type=cli.positive_int, default=2048,
                   help="query tokens whose self-rank is measured, a seeded sample shared by every head, each ranked "
                        "against every key (default: 2048; every token when the vocabulary is no larger)")
    p.add_argument("--chunk-size", type=cli.positive_int, default=32,
                   help="queries per block of scores; small blocks stay in cache (default: 32)")
    p.fits_context("--n-words", lambda n: 1 + n)
    p.memory("--n-prompts or --n-words", lambda a, s: cli.pattern_bytes(s, a.n_prompts, 1 + a.n_words, heads=1))
    p.memory("--chunk-size", lambda a, s: 3 * 4 * min(a.chunk_size, s.d_vocab) * s.d_vocab, "blocks of scores")
    return p


def main(args) -> None:
    model, layer, head = load_target(args)
    categories, category_record = cli.chosen_categories(args)
    probe = prompts.category_probe(model, categories, args.n_prompts, args.n_words, args.seed + 1)
    inputs = {}  # layer -> E: (d_vocab, d_model), shared by the layer's heads

    def layer_inputs(l: int):
        if l not in inputs:
            inputs[l] = token_inputs(model, l, args.input, seed=args.seed, options=InputOptions(categories, True))
        return inputs[l]

    heads = control_heads(model, (layer, head), args.controls, args.seed)
    queries = ss.rank_queries(model.cfg.d_vocab, args.rank_queries, args.seed)
    n_keys = model.cfg.d_vocab
    dropped = qk.trivial_accuracy_ks(args.at, n_keys)  # accuracy@K with K >= V/2 says nothing
    at = [K for K in args.at if str(K) not in dropped]
    treatment = positions.position_treatment(model, categories, args.seed)  # rotary: other keys at M, self at Δ = 0
    settings = ss.RankAblation(RankGrid(args.ks, args.scales, at, args.chunk_size, queries, treatment.rotation),
                               args.control_cells)
    study = ss.rank_ablation(model, [(layer, head), *heads], layer_inputs, probe, settings, progress=True)
    grid, best = study["grid"], study["best"]
    cells, ks = grid["cells"], grid["ks"]
    base = cells.get(ss.cell_key(ks[0], 1.0))  # scale 1 edits nothing: every k alike (None if not in --scales)
    study_cell = (min(int(args.study_cell[0]), model.cfg.d_head), args.study_cell[1])
    own, study_input = qk_head(model, layer, head), token_inputs(model, layer, "study")
    study_edit = records.study_edit_record(
        {f"{name}{suffix}": qk.study_edit_ranks(E, own, cell, queries, args.chunk_size)
         for name, cell in (("unedited", (0, 1.0)), ("edited", study_cell))
         for suffix, E in (("", layer_inputs(layer)), ("_study_input", study_input))}, study_cell, n_keys)
    report = controls.compare((layer, head), study["statistics"], study["directions"])
    results = {"head": {"layer": layer, "head": head}, "input": args.input,
               "position_treatment": treatment.described(RANK_GRID_POSITIONS),
               "n_negative_eigenvalues": grid["n_negative"], "d_vocab": model.cfg.d_vocab, "ks": ks,
               "scales": args.scales, "at": at, "acc_dropped": dropped,
               "cells": records.normalised_cells(cells, n_keys), "best_cell": records.normalised_cell(best, n_keys),
               **({"unedited_cell": records.normalised_cell(base, n_keys)} if base else {}),
               "study_edit": study_edit, "categories": category_record,
               "control_cells": args.control_cells, **report, "separating": controls.separating(report),
               "control_grids": {key: records.normalised_cells(own, n_keys)
                                 for key, own in study["control_grids"].items()},
               "rank_queries": {"n": model.cfg.d_vocab if queries is None else len(queries), "of": model.cfg.d_vocab,
                                "sampled": queries is not None}}
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(model.analysis_info, vars(args), args.seed))
    save_figure(figure(list(cells.values()), ks, at, args, (layer, head)), args.out, args.model, NAME)
    save_figure(target_vs_controls(report, title=f"{controls.head_key(layer, head)}: rank ablation against "
                                   f"{len(heads)} control heads ({args.control_cells})"), args.out, args.model,
                f"{NAME}_controls")

    if base:
        print(f"L{layer}H{head} unedited: mean self-rank {base['mean_rank']:.1f} of {model.cfg.d_vocab}, "
              f"MRR {base['mrr']:.3f}, self mass {base['self_mass']:.3f}")
    print(f"best cell k={best['k']}, scale {best['scale']:g}: mean self-rank {best['mean_rank']:.1f}, "
          f"MRR {best['mrr']:.3f}, " + ", ".join(f"acc@{K} {best[f'acc@{K}']:.2f}" for K in at)
          + f", self mass {best['self_mass']:.3f}")
    for K, why in dropped.items():
        print(f"acc@{K} not reported: {why}")
    edited = study_edit["edited"]
    print(f"the study's edit (k={study_cell[0]}, scale {study_cell[1]:g}, solver order): mean self-rank "
          f"{study_edit['unedited']['mean_rank']:.1f} unedited, {edited['mean_rank']:.1f} edited "
          f"({edited['mean_rank_normalised']:.3f} of the vocabulary); imaginary share {edited['imaginary_share']:.2g}")
    print("\n".join(records.comparison_lines(report, prefix="against the controls, ")))
    print(f"results: {path}")


def figure(cells, ks, at, args, target):
    use_style()
    import matplotlib.pyplot as plt
    import seaborn as sns

    panels = [("mean_rank", "mean self-rank", "rocket"), ("mrr", "mean reciprocal rank", "rocket_r"),
              *[(f"acc@{K}", f"accuracy@{K}", "rocket_r") for K in at],
              ("self_mass", "in-context self mass", "rocket_r")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (key, title, cmap) in zip(axes[0], panels):
        grid = np.array([[next(c[key] for c in cells if c["k"] == k and c["scale"] == s) for s in args.scales]
                         for k in ks])
        limits = {} if key == "mean_rank" else {"vmin": 0, "vmax": 1}  # fractions on one fixed scale
        sns.heatmap(grid, ax=ax, cmap=cmap, annot=True, **limits, fmt=".0f" if key == "mean_rank" else ".2f",
                    annot_kws={"fontsize": 6}, xticklabels=[f"{s:g}" for s in args.scales], yticklabels=ks, cbar=False)
        ax.set(title=title, xlabel="scale", ylabel="k most negative")
    fig.suptitle(f"L{target[0]}H{target[1]}: rescaling the most negative eigenvalues of W_sym ({args.input} inputs)")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    cli.run(main, build_parser())
