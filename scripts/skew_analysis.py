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

W leaves the biases out unless stated. Token inputs: --input (default: mean). Category words: --categories
(the study's 8 by default, 41 words; 'all' for the 10-category union).

The count of negative eigenvalues is a fact, not evidence: W_sym = ½ [W_Q W_K] J [W_Q W_K]^T with
J = [[0, I], [I, 0]] (d_head eigenvalues of each sign), so by Sylvester's law of inertia every head
whose [W_Q W_K] has full rank has exactly d_head negative eigenvalues. Folding the biases in does not
change that ([W_Q; b_Q] still has d_head columns), so the count with biases is labelled "forced" in the
results. Evidence that could fail is measured on the head's inputs for the category words
(`analysis.self_suppression`), for the target and, as controls, for every other head (weights and
shared layer inputs make this cheap), each with the direction a self-suppressing head predicts and,
for statistics over the words, a bootstrap CI of target minus strongest control
(`analysis.controls.compare`):

  n_negative_eigenvalues (high), negative_eigenvalue_share (high), trace (low)   weights alone
  self_score, self_negative_part (low)       mean x^T W x / scale and its negative-eigenvalue part
  margin, margin_normalised (low)            self-score minus the mean score of same-category partners
  below_partners_share (high)                words scoring themselves below every partner
  category_attraction (high)                 partners' mean score minus every other word's
  self_vs_random_words (low)                 the margin's shuffled-label null, n/(n-1) tr(W Σ)/scale
  top{1,4,16}_negative_share (high)          negative self-score part carried by the k most negative components

Nulls (`null`): self_vs_random_words, and below_partners_share for Gaussian inputs with the words' mean
and covariance and the real category sizes (--n-null-draws draws); the mean self-score's "null" is an
identity, recorded as such. The two properties (`properties`): self-avoidance and category attraction
of every head, each with its CI and verdict, on the "context" view of the words (`properties.WEIGHT_VIEW`).
A head whose statistic is undefined (constant scores, no negative part) gets it recorded as undefined.
Writes results/<model>/skew_analysis.json and figures/<model>/skew_analysis{,_controls}.{pdf,png}.
"""

from __future__ import annotations

import numpy as np
import torch

from analysis import cli, io, properties, prompts, records
from analysis import qk_decomposition as qk
from analysis import self_suppression as ss
from analysis.attention import qk_head
from analysis.controls import compare, head_key, separating
from analysis.heads import load_target
from analysis.positions import position_treatment
from analysis.plotting import save_figure, target_vs_controls, use_style
from analysis.token_maps import InputOptions, group_tokens, token_inputs

NAME = "skew_analysis"
BIASED_COUNT_FORCED = "Sylvester: [W_Q; b_Q] has d_head columns"  # so [x, 1] inputs give d_head negative eigenvalues


def build_parser():
    p = cli.parser(__doc__, target_head=True)
    cli.add_input_argument(p)
    cli.add_categories_argument(p)
    p.add_argument("--n-null-draws", type=cli.positive_int, default=200,
                   help="Gaussian draws of the below-every-partner null (default: 200)")
    return p


def main(args) -> None:
    model, layer, head = load_target(args)
    # the mean view averages over prompts of the chosen categories, for the target and every head alike
    categories, category_record = cli.chosen_categories(args)
    treatment = position_treatment(model, categories, args.seed)  # rotary: others at M, self at Δ = 0
    own = qk_head(model, layer, head, bias=True, rotation=treatment.rotation)
    E = token_inputs(model, layer, args.input, seed=args.seed, options=InputOptions(categories, progress=True))

    plain, self_scores = qk.self_score_report(own, E)
    biased, _ = qk.self_score_report(qk.with_bias(own), qk.append_one(E))
    biased["spectrum"]["forced"] = BIASED_COUNT_FORCED  # the count with biases is no more evidence than without
    # Which bias term can move attention: on the group set, the per-key term against the bias-free scores.
    ids, _, _, _ = group_tokens(model.tokenizer)
    bias_terms = {**qk.bias_key_term(E[ids], own),
                  "query_term_and_constant": "constant along each query's row: no effect on attention"}

    # Every head on the category words: the target's statistics against all others'.
    word_ids, words, category, names = group_tokens(model.tokenizer, categories)
    words_of = prompts.CategoryWords(word_ids, category)
    options = InputOptions(categories, progress=True, rotation=treatment.rotation)  # mean view: --categories
    stats = ss.every_head_statistics(model, args.input, words_of, args.seed,
                                     lambda *a: ss.head_statistics(*a, n_repeats=args.n_null_draws), options)
    report = compare((layer, head), stats, ss.DIRECTIONS)
    verdicts = ss.every_head_statistics(model, properties.WEIGHT_VIEW, words_of, args.seed, properties.weight_verdicts,
                                        options)
    null = records.skew_nulls(stats[(layer, head)])
    sylvester = {"d_head": model.cfg.d_head, "heads_with_d_head_negative": sum(
        s["n_negative_eigenvalues"] == model.cfg.d_head for s in stats.values()), "n_heads": len(stats),
        "says": "W_sym = ½[W_Q W_K] J [W_Q W_K]^T: a full-rank [W_Q W_K] gives exactly d_head negative eigenvalues"}
    view = f"{properties.WEIGHT_VIEW} inputs of the category words"
    results = {**report, "separating": separating(report), "null": null, "sylvester": sylvester,
               "position_treatment": treatment.description,
               "properties": records.property_record(verdicts, view, "category word"),
               "category_words": {"n_words": len(words), "categories": names}, "categories": category_record,
               "head": {"layer": layer, "head": head}, "input": args.input, "d_head": model.cfg.d_head,
               "without_bias": plain, "with_bias": biased, "bias_terms_on_group_set": bias_terms}
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(model.analysis_info, vars(args), args.seed))
    save_figure(figure(plain["eigenvalues"], biased["eigenvalues"], self_scores, layer, head, args),
                args.out, args.model, NAME)
    title = f"{head_key(layer, head)} against every other head ({args.input} inputs, {len(words)} category words)"
    figure_null = {"margin": null["self_vs_random_words"]["value"],
                   "below_partners_share": null["below_partners"]["mean"]}
    save_figure(target_vs_controls(report, null=figure_null, title=title), args.out, args.model, f"{NAME}_controls")

    n, s = plain["norms"], plain["spectrum"]
    print(f"L{layer}H{head} ({args.input} inputs): ||W_sym|| = {n['sym']:.2f}, ||W_skew|| = {n['skew']:.2f} "
          f"(shares {n['sym_share']:.2f} / {n['skew_share']:.2f} of ||W|| = {n['W']:.2f})")
    print(f"W_sym: {s['n_negative']} negative eigenvalues of {len(plain['eigenvalues'])} (total "
          f"{s['negative_total']:.2f} vs positive {s['positive_total']:.2f}); self-scores negative for "
          f"{plain['self_score']['fraction_negative']:.0%} of tokens")
    print(f"x^T W x = x^T W_sym x to {plain['check']['max_abs_self_W_minus_sym']:.1e}; with biases: "
          f"{biased['spectrum']['n_negative']} negative eigenvalues, "
          f"||W_skew|| share {biased['norms']['skew_share']:.2f}")
    print(f"{sylvester['heads_with_d_head_negative']} of {sylvester['n_heads']} heads have exactly d_head = "
          f"{model.cfg.d_head} negative eigenvalues (Sylvester): the count is no evidence")
    print("\n".join(records.comparison_lines(report)))
    print(f"separates from its strongest control: {', '.join(results['separating']) or 'none'}")
    print("\n".join(records.null_lines(null)))
    print("\n".join(records.property_lines(results["properties"])))
    print(f"results: {path}")


def figure(values, values_bias, self_scores, layer, head, args):
    use_style()
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    order = torch.arange(len(values))
    ax1.bar(order, values, color=["C3" if v < 0 else "C0" for v in values], label="W_sym (no biases)")
    ax1.plot(torch.arange(len(values_bias)), values_bias, "k.", ms=3, label="with biases ([x, 1] inputs)")
    ax1.axhline(0, color="k", lw=0.5)
    ax1.set(title=f"Spectrum of W_sym, L{layer}H{head}", xlabel="eigenvalue index (ascending)", ylabel="λ")
    ax1.legend(fontsize=7)
    positive, negative, total = self_scores.positive, self_scores.negative, self_scores.total
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
