"""SAE features through a head's QK circuit: which features attend to which, and do they avoid themselves?

The head (default: the survey's best semantic head) in layer L reads blocks.{L-1}.hook_resid_post.
SAE (SAELens): a directory saved by SAELens (--sae-path), or a release --sae-release with SAE
--sae-id (default: that hook), e.g. gpt2-small-resid-post-v5-32k for GPT-2 small; by default the
model organism's SAE when it fits the model (a small TopK SAE trained with SAELens on the organism's
own language: shipped in analysis/organism/sae/, or trained once and cached; --retrain-sae), else
the GPT-2 release. An SAE whose input width is not the model's d_model is refused.
Features are named by the tokens they fire on in category prompts (--categories: the study's 8 by
default) and get the category whose words give them their largest mean activation; the --per-category
most active features of each category are kept. Each decoder direction d_f is pushed through the head's
LayerNorm and QK circuit, s(f, g) = LN1(d_f) W LN1(d_g)^T / attn_scale (W = W_Q W_K^T, no biases).
Reported (ours): the feature x feature map, its mean self / same-category / other-category scores,
how often a feature's self-score is below its same-category mates, and the top feature pairs. The same
map for every other head (a statistic of the weights and the SAE alone, so every head is a control; a head
of another layer sees the directions through its own LayerNorm): `self_suppression.group_map_statistics`
with the direction a self-suppressing head predicts, self_minus_in_group (low: features score themselves
below same-category features), in_minus_out_group (high: same-category features attract),
margin_normalised (low) and below_partners_share (high: self below every same-category feature).
The study's metric, for every head of layer L (the other heads are the controls): per-head precision
of the top k features the head's QK circuit predicts for each query (decoder directions as keys)
against the features active at its most-attended key, TP / (TP + FP) with the keyword positions but
the first as positives, on --precision-samples keyword samples (BOS + 19 random tokens holding the
category's words) per category of the study's five; mean over samples. A feature is active only where
its code is non-zero: the active set at k is the top k codes that are > 0 (`sae.precision`). The
SAE's active count (the median number of non-zero codes per position of the keyword samples) is
measured first; the curve (`precision_curve`, keyed "k=1", "k=2", ...) runs over k = 1, 2, 4, ..., 32
as far as that count allows, each k with its null and every head of the layer, with bootstrap CIs
over keyword samples (--n-resamples); the verdict uses one k fixed by a rule before any precision is
computed (`k_verdict`): the study's 32 where the SAE has at least 32 active features at the median
position, else that active count. At that k, direction: precision "high" (a head that attends to its
category's features). Its null (`null`, and precision_shuffled per head): the same precision with
the predicted features' labels shuffled (--precision-shuffles permutations per sample), which keeps
each head's predictions but their identity; TP / (TP + FP) gives such a head about the keyword
positions' share of positions, so only a precision above this null (`null.target_minus_null`, a
paired bootstrap CI over samples) says the QK circuit predicts the active features. All statistics
go through one `controls.compare` (`directions`, `target`, `controls`); the figure
sae_features_controls shows each, sae_features_precision the curve.
Positions (key "position_treatment"): with rotary positions a feature's score on itself is read at Δ = 0 and on any
other feature at M = E_Δ[R(Δ)] over the survey prompts' query-partner distances (`positions.position_treatment`),
in the target's map and every head's statistics alike.
Writes results/<model>/sae_features.json and figures/<model>/sae_features{,_controls,_precision}.{pdf,png}.
Where no SAE can be had for the model (the default SAE is not available here, does not fit the
model, or the default head sits in layer 0, which reads no residual stream after a block), the
script says why, records `"sae": {"ran": false, "reason": ...}` with the head and exits 0 without
the SAE step; an SAE or head asked for by flag that cannot be used is still an error (status 2).
"""

from __future__ import annotations

from pathlib import Path

from analysis import cli, io, prompts, records
from analysis.controls import compare, head_key, separating
from analysis import self_suppression as ss
from analysis.heads import load_target
from analysis.positions import position_treatment
from analysis.plotting import group_heatmaps, precision_curve, save_figure, target_vs_controls
from analysis.sae import precision as sp
from analysis.sae.features import FeatureMaps, feature_map, feature_map_statistics, name_features
from analysis.sae.sources import GPT2_RELEASE, SAERequest, SAEUnavailable, sae_for_head

NAME = "sae_features"


def build_parser():
    p = cli.parser(__doc__, target_head=True)
    p.add_argument("--sae-release", "--release", dest="release", default=None,
                   help=f"SAELens release, e.g. {GPT2_RELEASE} (default: the organism's SAE where it fits the "
                        "model, else that release)")
    p.add_argument("--sae-id", default=None, help="SAE id in the release (default: the hook the head reads)")
    p.add_argument("--sae-path", type=Path, default=None, help="a directory with an SAE saved by SAELens")
    p.add_argument("--retrain-sae", action="store_true", help="organism's SAE: train it again (cached, not shipped)")
    p.add_argument("--per-category", type=cli.positive_int, default=3, help="features kept per category (default: 3)")
    p.add_argument("--n-prompts", type=cli.positive_int, default=64,
                   help="category prompts for naming features (default: 64)")
    p.add_argument("--n-words", type=cli.positive_int, default=64, help="words per category prompt (default: 64)")
    p.add_argument("--top-pairs", type=cli.positive_int, default=20, help="feature pairs listed (default: 20)")
    p.add_argument("--precision-samples", type=cli.positive_int, default=64,
                   help="keyword samples per category for the precision (default: 64)")
    p.add_argument("--precision-shuffles", type=cli.positive_int, default=sp.PRECISION_SHUFFLES,
                   help="label permutations per sample of the precision's shuffled-feature null "
                        f"(default: {sp.PRECISION_SHUFFLES})")
    p.add_argument("--n-resamples", type=cli.positive_int, default=1000,
                   help="bootstrap resamples of the precision's CIs and comparisons (default: 1000)")
    cli.add_categories_argument(p)
    p.fits_context("--n-words", lambda n: 1 + n)
    p.fits_context("--precision-samples", lambda n: sp.PRECISION_LENGTH)
    p.memory("--n-prompts or --n-words",
             lambda a, s: cli.pattern_bytes(s, a.n_prompts, 1 + a.n_words, heads=1, copies=2))
    return p


def main(args) -> None:
    model, layer, head = load_target(args)
    request = SAERequest(args.release, args.sae_id, args.sae_path, args.retrain_sae)
    asked = args.layer is not None or args.retrain_sae or any(  # an SAE or head asked for must load
        value is not None for value in (args.release, args.sae_id, args.sae_path))
    try:
        chosen = sae_for_head(model, layer, request, args.device, required=asked)
    except SAEUnavailable as err:  # the SAE step is impossible for this model: say so, and write what there is
        results = {"head": {"layer": layer, "head": head}, "sae": {"ran": False, "reason": err.reason},
                   "not_run": ["feature map", "precision"]}
        path = io.save_results(args.out, args.model, NAME, results,
                               io.Provenance(model.analysis_info, vars(args), args.seed))
        print(f"L{layer}H{head}: SAE step not run (feature map and precision), since no SAE can be had for this "
              f"model here: {err.reason}\nresults: {path}")
        return
    hook, sae = chosen.hook, chosen.sae
    source = records.source_record(chosen)

    categories, category_record = cli.chosen_categories(args)
    tokens, _ = prompts.category_probe(model, categories, args.n_prompts, args.n_words, args.seed + 1)
    features, group, labels, source["variance_explained_on_category_prompts"] = name_features(
        model, sae, hook, tokens, categories, args.per_category)
    treatment = position_treatment(model, categories, args.seed)  # rotary: self at Δ = 0, other features at M
    scores = feature_map(model, sae, layer, head, features, treatment.rotation)  # (n, n): query feature, key feature
    results = {"head": {"layer": layer, "head": head}, "sae": source, "position_treatment": treatment.description,
               **records.feature_map_record(scores, features, labels, group, list(categories), args.top_pairs),
               "categories": category_record}
    samples = sp.category_samples(model, args.precision_samples, args.seed)  # the k is fixed before any precision
    choice = sp.choose_k(sp.sample_active_counts(model, sae, layer, samples))
    ks = sp.curve_ks(choice)
    per_category = sp.precision_by_category(model, sae, layer, samples,
                                            sp.PrecisionSettings(ks, args.precision_shuffles, args.seed))
    both, at = sp.pooled(per_category), ks.index(choice.k)
    curve = sp.precision_curve(both, args.n_resamples, args.seed)
    stats = feature_map_statistics(model, sae, features, group,
                                   FeatureMaps(layer, sp.precision_by_head(per_category, at), treatment.rotation))
    report = compare((layer, head), stats, {**ss.GROUP_MAP_DIRECTIONS, "precision": "high"}, args.n_resamples,
                     args.seed)
    null = records.precision_null(stats[(layer, head)]["precision_shuffled"], choice.k,
                                  sp.above_null(both, at, head, args.n_resamples), args.precision_shuffles)
    results.update(k_verdict=records.k_verdict_record(choice),
                   precision_curve=records.precision_curve_record(curve, ks, layer, head))
    results.update(report, separating=separating(report), null=null)
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(model.analysis_info, vars(args), args.seed))
    short = [label.split("/")[0] for label in labels]  # "f9 ' Monday'": the feature and its top token
    fig = group_heatmaps([scores], ["LN1(d_f) W LN1(d_g)ᵀ / √d"], short, group,
                         suptitle=f"L{layer}H{head}: SAE features ({hook}) through the QK circuit")
    save_figure(fig, args.out, args.model, NAME)
    save_figure(target_vs_controls(report, null={"precision": null["precision_shuffled"]},
                                   title=f"{head_key(layer, head)}'s SAE-feature statistics against every other head"),
                args.out, args.model, f"{NAME}_controls")
    save_figure(precision_curve(results["precision_curve"], head_key(layer, head), choice.k,
                                title=f"the study's SAE precision against k (verdict at k = {choice.k})"),
                args.out, args.model, f"{NAME}_precision")

    b, a = results["block_means"], results["self_avoidance"]
    print(f"SAE {hook}: {source['d_sae']} features, variance explained "
          f"{source['variance_explained_on_category_prompts']:.3f} on category prompts ({source['kind']})")
    print(f"L{layer}H{head}, {len(features)} features: mean score self "
          f"{b['self']:+.2f}, same category {b['in_group']:+.2f}, other categories {b['out_group']:+.2f}")
    print(f"self below same-category mates for {a['self_below_mates']:.0%} of features; best key is a mate for "
          f"{a['best_key_is_mate']:.0%}, itself for {a['best_key_is_self']:.0%}; "
          f"top pairs same category: {results['top_pairs_same_category']:.0%}")
    for p in results["top_pairs"][:5]:
        print(f"  {p['query']} -> {p['key']}: {p['score']:+.2f}")
    t, c = results["target"]["precision"], results["target"]["precision"]["strongest_control"]
    print(f"SAE active count {choice.active_count} (median non-zero codes per position); verdict at k = {choice.k}")
    for key, entry in results["precision_curve"].items():
        rival = entry["strongest_control"]
        print(f"  precision@{key}: L{layer}H{head} {entry['target']['value']:.3f} "
              f"[{entry['target']['low']:.3f}, {entry['target']['high']:.3f}], null {entry['null']['value']:.3f}"
              + (f", strongest control L{rival['layer']}H{rival['head']} {rival['value']:.3f}" if rival else ""))
    d = null["target_minus_null"]
    print(f"study's precision@{choice.k}: L{layer}H{head} {t['value']:.3f}, rank {t['rank']} of {t['n_ranked']} heads "
          f"of layer {layer}" + (f"; strongest control L{c['layer']}H{c['head']} {c['value']:.3f}" if c else "")
          + f"; shuffled-label null {null['precision_shuffled']:.3f} (target minus null {d['value']:+.3f}, "
          f"CI [{d['low']:.3f}, {d['high']:.3f}])")
    print("\n".join(records.comparison_lines(report)))
    print(f"separates from every other head: {', '.join(results['separating']) or 'none'}")
    print(f"results: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
