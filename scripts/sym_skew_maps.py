"""Token-space maps of a head's QK circuit and of its symmetric and skew parts, on the 30-token group set.

For the group set (days, colours, years, pronouns, countries; six tokens each) with head inputs
E (--input, default mean), the maps

    base   E W E^T / attn_scale         W = W_Q W_K^T (no biases); attn_scale = sqrt(d_head)
    sym    E W_sym E^T / attn_scale     W_sym  = (W + W^T) / 2
    skew   E W_skew E^T / attn_scale    W_skew = (W - W^T) / 2
    bias   (E W_Q + b_Q)(E W_K + b_K)^T / attn_scale

with, for each, the mean score on the diagonal (self), within a group and across groups, and
the relative Frobenius norms of the sym and skew maps. The diagonal of base equals that of
sym, and skew's diagonal is zero: the skew part never changes a token's score with itself.

Controls: the same group-set statistics of the base map for every other head (each layer's inputs
are shared by its heads, so this is cheap), with the direction a self-suppressing head predicts
(rank 1 = most extreme that way; `analysis.self_suppression.group_map_statistics`):

  self_minus_in_group (low)     mean self-score minus the mean in-group score
  in_minus_out_group (high)     in-group minus out-of-group mean: attraction to the category
  margin_normalised (low)       per-token self minus partner mean, over the std of the off-diagonal scores
  below_partners_share (high)   tokens scoring themselves below every group-mate
Writes results/<model>/sym_skew_maps.json and figures/<model>/sym_skew_maps{,_controls}.{pdf,png}.
"""

from __future__ import annotations

from analysis import cli, io, prompts, records
from analysis import qk_decomposition as qk
from analysis import self_suppression as ss
from analysis.attention import attention_scores, qk_head, word_score_matrix
from analysis.controls import compare, head_key, separating
from analysis.heads import load_target
from analysis.positions import position_treatment
from analysis.plotting import group_heatmaps, save_figure, target_vs_controls
from analysis.token_maps import InputOptions, block_means, group_tokens, token_inputs

NAME = "sym_skew_maps"


def build_parser():
    p = cli.parser(__doc__, target_head=True)
    cli.add_input_argument(p)
    return p


def main(args) -> None:
    model, layer, head = load_target(args)
    treatment = position_treatment(model, prompts.STUDY_CATEGORIES, args.seed)  # rotary: others at M, self at Δ = 0
    own = qk_head(model, layer, head, bias=True, rotation=treatment.rotation)
    plain = own.without_bias()
    ids, labels, group, group_names = group_tokens(model.tokenizer)
    E = token_inputs(model, layer, args.input, token_ids=ids, seed=args.seed)  # (30, d_model)

    sym, skew = qk.symmetric_part(plain), qk.skew_part(plain)  # W = A B: scored as the factors W_Q = A, W_K = B^T
    at_zero = plain.with_rotation(None)  # the sym/skew split is of W_Q W_K^T, at Δ = 0
    maps = {"base": word_score_matrix(E, plain),
            "sym": attention_scores(E, E, at_zero.with_factors(sym.A, sym.B.T)),
            "skew": attention_scores(E, E, at_zero.with_factors(skew.A, skew.B.T)),
            "bias": word_score_matrix(E, own)}
    base_norm = float(maps["base"].norm())
    check = {"max_abs_diag_base_minus_sym": float((maps["base"].diagonal() - maps["sym"].diagonal()).abs().max()),
             "max_abs_diag_skew": float(maps["skew"].diagonal().abs().max())}
    stats = ss.every_head_statistics(model, args.input, prompts.CategoryWords(ids, group), args.seed,
                                     ss.group_map_statistics, InputOptions(progress=True, rotation=treatment.rotation))
    report = compare((layer, head), stats, ss.GROUP_MAP_DIRECTIONS)
    results = {
        **report, "separating": separating(report), "position_treatment": treatment.description,
        "head": {"layer": layer, "head": head}, "input": args.input, "tokens": labels, "groups": group_names,
        "maps": maps,
        "block_means": {name: block_means(m, group) for name, m in maps.items()},
        "relative_norms": {name: float(maps[name].norm()) / base_norm for name in ("sym", "skew")},
        "check": {**check, "max_abs_diag_deviation": max(check.values())},  # the larger of the two
        "bias_effect": {"max_abs_change": float((maps["bias"] - maps["base"]).abs().max()),
                        "max_abs_change_row_centred": float(centred(maps["bias"] - maps["base"]).abs().max())},
    }
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(model.analysis_info, vars(args), args.seed))
    fig = group_heatmaps(list(maps.values()),
                         ["base  E W Eᵀ/√d", "symmetric part", "skew part", "base with Q/K biases"], labels, group,
                         suptitle=f"L{layer}H{head}, group set ({args.input} inputs)")
    save_figure(fig, args.out, args.model, NAME)
    save_figure(target_vs_controls(report, title=f"{head_key(layer, head)} against every other head, group set "
                                   f"({args.input} inputs)"), args.out, args.model, f"{NAME}_controls")

    for name, stats in results["block_means"].items():
        print(f"{name:>5s}: self {stats['self']:+.2f}, in-group {stats['in_group']:+.2f}, "
              f"out-of-group {stats['out_group']:+.2f}")
    print(f"relative norms: sym {results['relative_norms']['sym']:.2f}, skew {results['relative_norms']['skew']:.2f}; "
          f"diag(base) - diag(sym) <= {results['check']['max_abs_diag_base_minus_sym']:.1e}")
    print("\n".join(records.comparison_lines(report)))
    print(f"separates from every other head: {', '.join(results['separating']) or 'none'}")
    print(f"results: {path}")


def centred(scores):
    """Each row minus its mean: what is left after the softmax's shift invariance."""
    return scores - scores.mean(-1, keepdim=True)


if __name__ == "__main__":
    cli.run(main, build_parser())
