"""Symmetric and skew parts of a head's QK circuit, and the full spectrum of the symmetric part.

W = W_Q W_K^T, the head's bilinear form on its normalised input, splits into W_sym = (W + W^T)/2
and W_skew = (W - W^T)/2. Since x^T W_skew x = 0, a token's score with itself is
x^T W_sym x = sum_i λ_i (v_i . x)^2 over the eigenpairs of W_sym: the skew part cannot change it,
and only negative eigenvalues can push it down. Reported:

  norms       ||W||, ||W_sym||, ||W_skew|| (Frobenius) and their shares of ||W||
  spectrum    every non-zero eigenvalue of W_sym (2 d_head of them, from the factors; no
              d_model x d_model or vocabulary-sized matrix), count and total of the negative ones
  check       max |x^T W x - x^T W_sym x| and max |x^T W_skew x| over every token's input
  self-score  each token's self-score split into its positive- and negative-eigenvalue parts
  biases      the same with the Q/K biases folded in (inputs [x, 1]); of the bias terms only
              b_Q W_K^T x_k changes with the key, so only it can move attention

W leaves the biases out unless stated. Token inputs: --input (default: mean).
Writes results/<model>/skew_analysis.json and figures/<model>/skew_analysis.{pdf,png}.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from analysis import cli, io  # noqa: E402
from analysis import qk_decomposition as qk  # noqa: E402
from analysis.token_maps import add_input_argument, group_tokens, load_target, token_inputs  # noqa: E402
from analysis.vocab_input import head_weights  # noqa: E402

NAME = "skew_analysis"


def build_parser():
    p = cli.parser(__doc__, target_head=True)
    add_input_argument(p)
    return p


def decomposition(W_Q, W_K, x, d_head) -> dict:
    """Norms, spectrum and self-score parts of W = W_Q W_K^T on inputs `x: [n, d]`."""
    spectrum = qk.symmetric_spectrum(W_Q, W_K)
    W, sym, skew = qk.qk_matrix(W_Q, W_K), qk.symmetric_part(W_Q, W_K), qk.skew_part(W_Q, W_K)
    positive, negative = qk.self_score_parts(x, spectrum, d_head)
    self_w = qk.self_scores(x, W, d_head)

    def dense_self(part):  # x^T M x through the d x d matrix itself, an independent path to the same numbers
        return ((x @ part.AB) * x).sum(-1) / d_head ** 0.5

    return {
        "norms": qk.relative_norms(W_Q, W_K),
        "spectrum": qk.spectrum_summary(spectrum.values),
        "eigenvalues": spectrum.values,
        "check": {"max_abs_self_W_minus_sym": float((dense_self(W) - dense_self(sym)).abs().max()),
                  "max_abs_self_skew": float(dense_self(skew).abs().max()),
                  "max_abs_parts_minus_self": float((positive + negative - self_w).abs().max()),
                  "self_score_scale": float(self_w.abs().max())},
        "self_score": {"mean": float(self_w.mean()), "fraction_negative": float((self_w < 0).float().mean()),
                       "mean_positive_part": float(positive.mean()), "mean_negative_part": float(negative.mean())},
        "_parts": (positive, negative, self_w),
    }


def main(args) -> None:
    model, layer, head = load_target(args)
    d_head = model.cfg.d_head
    W_Q, W_K, b_Q, b_K = head_weights(model, layer, head, include_bias=True)
    E = token_inputs(model, layer, args.input, seed=args.seed, progress=True)  # (d_vocab, d_model)

    plain = decomposition(W_Q, W_K, E, d_head)
    biased = decomposition(*qk.with_bias(W_Q, W_K, b_Q, b_K), qk.append_one(E), d_head)

    # Which bias term can move attention: on the group set, the per-key term b_Q . k(x_k) against
    # the spread of the bias-free scores over keys.
    ids, _, _, _ = group_tokens(model.tokenizer)
    x = E[ids]
    key_term = (x @ W_K) @ b_Q / d_head ** 0.5  # (n,)
    scores = qk.token_scores(x, qk.qk_matrix(W_Q, W_K), x, d_head)
    bias_terms = {"key_term_std": float(key_term.std()), "score_std_over_keys": float(scores.std(-1).mean()),
                  "query_term_and_constant": "constant along each query's row: no effect on attention"}

    parts = {name: result.pop("_parts") for name, result in (("plain", plain), ("with_bias", biased))}
    results = {"head": {"layer": layer, "head": head}, "input": args.input, "d_head": d_head,
               "without_bias": plain, "with_bias": biased, "bias_terms_on_group_set": bias_terms}
    path = io.save_results(args.out, args.model, NAME, results, model_info=model.analysis_info,
                           arguments=vars(args), seed=args.seed)
    io.save_figure(figure(plain["eigenvalues"], biased["eigenvalues"], *parts["plain"], layer, head, args),
                   args.out, args.model, NAME)

    n, s = plain["norms"], plain["spectrum"]
    print(f"L{layer}H{head} ({args.input} inputs): ||W_sym|| = {n['sym']:.2f}, ||W_skew|| = {n['skew']:.2f} "
          f"(shares {n['sym_share']:.2f} / {n['skew_share']:.2f} of ||W|| = {n['W']:.2f})")
    print(f"W_sym: {s['n_negative']} negative eigenvalues of {len(plain['eigenvalues'])} (total "
          f"{s['negative_total']:.2f} vs positive {s['positive_total']:.2f}); self-scores negative for "
          f"{plain['self_score']['fraction_negative']:.0%} of tokens")
    print(f"x^T W x = x^T W_sym x to {plain['check']['max_abs_self_W_minus_sym']:.1e}; with biases: "
          f"{biased['spectrum']['n_negative']} negative eigenvalues, "
          f"||W_skew|| share {biased['norms']['skew_share']:.2f}")
    print(f"results: {path}")


def figure(values, values_bias, positive, negative, total, layer, head, args):
    io.use_style()
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    order = torch.arange(len(values))
    ax1.bar(order, values, color=["C3" if v < 0 else "C0" for v in values], label="W_sym (no biases)")
    ax1.plot(torch.arange(len(values_bias)), values_bias, "k.", ms=3, label="with biases ([x, 1] inputs)")
    ax1.axhline(0, color="k", lw=0.5)
    ax1.set(title=f"Spectrum of W_sym, L{layer}H{head}", xlabel="eigenvalue index (ascending)", ylabel="λ")
    ax1.legend(fontsize=7)
    bins = np.histogram_bin_edges(torch.cat([positive, negative, total]).numpy(), bins=60)
    ax2.hist(positive, bins=bins, alpha=0.6, color="C0", label="positive-λ part")
    ax2.hist(negative, bins=bins, alpha=0.6, color="C3", label="negative-λ part")
    ax2.hist(total, bins=bins, histtype="step", color="k", label="self-score x^T W x / √d")
    ax2.set(title=f"Self-scores of every token ({args.input} inputs)", xlabel="score", ylabel="tokens")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    cli.run(main, build_parser())
