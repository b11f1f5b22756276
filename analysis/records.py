"""What results files keep and what scripts print: every results-record builder and printed summary.

A script computes with the science modules and hands their output here to be shaped: a results
record (a JSON-ready dict, e.g. `edits_record`, `feature_map_record`) or printable lines (e.g.
`comparison_lines` for a `controls.compare` report). Nothing here computes a statistic; the maths
stays in its module and these functions only name, select and format what it returned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from torch import Tensor

from analysis import clustering, held_out, qk_decomposition, steering
from analysis.controls import Head, Statistic, head_key
from analysis.prompts import StudyDesign
from analysis.properties import MIN_EFFECT, PROPERTIES, both_hold
from analysis.sae.features import self_avoidance, top_pairs
from analysis.sae.precision import Interval, KChoice
from analysis.sae.sources import HeadSAE
from analysis.survey import DesignSummary
from analysis.token_maps import block_means


# --- a target against its controls (`controls.compare`) ------------------------------------------


def comparison_lines(report: Mapping, prefix: str = "  ") -> list[str]:
    """One printable line per statistic of a `controls.compare` report: the target's value and rank, the strongest
    control, the difference's CI where there is one, and the verdict.

    e.g. "  margin (low): target -5.650, rank 1/8, strongest control L1H1 -0.330, difference -5.320
    [-5.9, -4.8]: separates"
    """
    lines = []
    for name, direction in report["directions"].items():
        entry = report["target"][name]
        value = "n/a" if entry["value"] is None else f"{entry['value']:+.3f}"
        rank = "-" if entry["rank"] is None else f"{entry['rank']}/{entry['n_ranked']}"
        rival = entry["strongest_control"]
        strongest = "-" if rival is None else f"{head_key(rival['layer'], rival['head'])} {rival['value']:+.3f}"
        diff = entry.get("difference")
        interval = "" if diff is None or diff["low"] is None else \
            f", difference {diff['value']:+.3f} [{diff['low']:+.3g}, {diff['high']:+.3g}]"
        lines.append(f"{prefix}{name} ({direction}): target {value}, rank {rank}, strongest control {strongest}"
                     f"{interval}: {entry['verdict']}")
    return lines


# --- the nulls of the input statistics and the two properties (`self_suppression`, `properties`) --------------


def _number(statistic: Statistic) -> float | None:
    value = getattr(statistic, "value", statistic)
    return value if isinstance(value, (int, float)) else None


def skew_nulls(target: Mapping[str, Statistic]) -> dict:
    """The target's nulls from its `self_suppression.head_statistics`, each with what it rules out."""
    share, q95 = _number(target["below_partners_share"]), target["below_partners_null_q95"]
    return {
        "self_vs_random_words": {
            "value": target["self_vs_random_words"], "margin": _number(target["margin"]),
            "says": "the partner margin with the category labels shuffled, in closed form n/(n-1) tr(W Σ)/scale; "
                    "margin = this - category_attraction word by word, so a margin below it shows category "
                    "attraction, not self-avoidance (Gaussian inputs with the words' moments have the same "
                    "expected margin: the same null, not a second one)"},
        "below_partners": {
            "value": share, "mean": target["below_partners_null_mean"], "q95": q95,
            "beats_null": share is not None and share > q95,
            "says": "the share below every partner for Gaussian inputs with the words' mean and covariance and "
                    "the real category sizes: what the inputs' first two moments give without token identity"},
        "self_score": {
            "value": _number(target["self_score"]),
            "says": "no null: E[y W y^T] = μ W μ^T + tr(W Σ) for any inputs with the words' mean and covariance, "
                    "so such a 'null' equals the mean self-score by algebra"},
    }


def null_lines(null: Mapping) -> list[str]:
    """Printable lines of `skew_nulls`."""
    margin, below = null["self_vs_random_words"], null["below_partners"]
    return [f"null: margin {margin['margin']:+.3f} against self_vs_random_words {margin['value']:+.3f} "
            f"(labels shuffled, closed form)",
            f"null: below every partner {below['value']:.2f} against Gaussian inputs {below['mean']:.2f} "
            f"(95th percentile {below['q95']:.2f}): {'beaten' if below['beats_null'] else 'not beaten'}"]


def property_record(by_head: Mapping[Head, Mapping[str, Mapping]], view: str, unit: str) -> dict:
    """Every head's `properties.verdicts`, keyed "L<l>H<h>", with both_hold, and the rule that decides them."""
    return {"view": view, "unit": unit, "min_effect": MIN_EFFECT,
            "rule": f"a property holds iff the 95% bootstrap CI of its mean over {unit}s lies beyond log 2 nats on "
                    "the predicted side (self-avoidance below -log 2, category attraction above +log 2)",
            "by_head": {head_key(*h): {**v, "both_hold": both_hold(v)} for h, v in by_head.items()}}


def property_lines(record: Mapping) -> list[str]:
    """One printable line per head of a `property_record` that has at least one property."""
    lines = []
    for key, verdicts in record["by_head"].items():
        held = [p for p in PROPERTIES if verdicts[p]["holds"]]
        if held:
            shown = {p: verdicts[p] for p in PROPERTIES if verdicts[p]["value"] is not None}
            values = ", ".join(f"{p} {v['value']:+.2f} [{v['low']:+.2f}, {v['high']:+.2f}]" for p, v in shown.items())
            lines.append(f"{key}: {' and '.join(held)} (on {record['view']}: {values})")
    return lines or [f"no head has either property (on {record['view']})"]


# --- the study's prompt design (`prompts.study_design_probe`, `survey.design_summary`) ---------------


def design_departures(design: StudyDesign, requested_words: int, n_ctx: int) -> list[str]:
    """What this run of the study's design could not keep, as short phrases (empty if it kept everything): fewer
    words than the study's where the context is shorter, and the keywords the tokenizer lacks."""
    departures = []
    if design.n_words < requested_words:
        departures.append(f"{design.n_words} words, not {requested_words} (the context holds {n_ctx} tokens)")
    if design.left_out:
        departures.append("keywords this tokenizer lacks left out: " + ", ".join(w.strip() for w in design.left_out))
    return departures


def design_record(design: StudyDesign, requested_words: int, n_ctx: int) -> dict:
    """What results keep of a run of the study's design: the categories kept, the words left out, the words per
    prompt asked and used, the context, the prompts, and the departures (`design_departures`, and as one text)."""
    departures = design_departures(design, requested_words, n_ctx)
    return {"categories": design.categories, "left_out": design.left_out, "n_words": design.n_words,
            "requested_words": requested_words, "n_ctx": n_ctx, "n_prompts": int(design.probe.tokens.shape[0]),
            "departures": departures, "departures_text": "; ".join(departures) or "none"}


def study_design_record(design: StudyDesign, summary: DesignSummary, requested_words: int, n_ctx: int) -> dict:
    """What results keep of every head's S under the study's design: the design (`design_record`), each head keyed
    "L<l>H<h>" with its S on the first prompt and the 5 %, 50 % and 95 % quantiles over prompts, the target and
    the runner-up (the best other head on the first prompt) with those values and the first prompt's best head."""
    def values(layer: int, head: int) -> dict:
        return {"one_prompt": float(summary.one_prompt[layer, head]), "median": float(summary.median[layer, head]),
                "p05": float(summary.p05[layer, head]), "p95": float(summary.p95[layer, head])}
    n_layers, n_heads = summary.one_prompt.shape
    return {**design_record(design, requested_words, n_ctx),
            "heads": {head_key(l, h): values(l, h) for l in range(n_layers) for h in range(n_heads)},
            "target": {"layer": summary.target[0], "head": summary.target[1], **values(*summary.target),
                       "rank": summary.target_rank},
            "runner_up": {"layer": summary.runner_up[0], "head": summary.runner_up[1], **values(*summary.runner_up)},
            "best": {"layer": summary.best[0], "head": summary.best[1], **values(*summary.best)}}


# --- a statistic along a curve (the targeted edit over k) ----------------------------------------


def curve_record(report: Mapping, points: Mapping[int, str], statistics: Sequence[str]) -> dict:
    """A statistic compared at each point of a curve (e.g. the targeted edit over k), from a `controls.compare`
    report whose statistic "<points[k]>_<statistic>" is the point k's (one direction per statistic along the curve).

    "points" keyed "k=<k>": each statistic's `compare` entry (value, rank, strongest control, the difference's CI,
    verdict); per statistic the k at which the target separates ("separating_ks"), the largest of them
    ("largest_separating_k", None when it separates nowhere) and the k where the target leads its strongest
    control by most ("widest_gap_k", `widest_gap`: a CI that excludes 0 says the lead is real, not that it is large).
    "ends" holds the points at the smallest and the largest k again, under names that do not depend on the k.
    """
    entries = {k: {stat: report["target"][f"{prefix}_{stat}"] for stat in statistics} for k, prefix in points.items()}
    separating = {stat: [k for k, entry in entries.items() if entry[stat]["separates"]] for stat in statistics}
    direction = {stat: next((report["directions"][f"{prefix}_{stat}"] for prefix in points.values()), "high")
                 for stat in statistics}
    keyed = {k: {"k": k, **entry} for k, entry in entries.items()}
    return {"ks": list(points), "statistics": list(statistics), "points": {f"k={k}": row for k, row in keyed.items()},
            "ends": {"smallest": keyed[min(keyed)], "largest": keyed[max(keyed)]} if keyed else {},
            "separating_ks": separating,
            "largest_separating_k": {stat: max(ks) if ks else None for stat, ks in separating.items()},
            "widest_gap_k": {stat: widest_gap({k: e[stat] for k, e in entries.items()}, direction[stat])
                             for stat in statistics}}


def widest_gap(entries: Mapping[int, Mapping], direction: str) -> int | None:
    """The k whose `compare` entry's difference from the strongest control lies furthest in `direction` (largest for
    "high", smallest for "low"); None when no k has a difference."""
    sign = 1.0 if direction == "high" else -1.0
    measured = [k for k, entry in entries.items() if entry["difference"] is not None]
    return max(measured, key=lambda k: sign * entries[k]["difference"]["value"], default=None)


def curve_lines(curve: Mapping, prefix: str = "  ") -> list[str]:
    """One printable line per point of a `curve_record`: each statistic's target and strongest control values and
    the verdict, e.g. "  k=4: self_mass_change +0.710 vs L1H2 +0.210 separates"."""
    lines = []
    for key, point in curve["points"].items():
        parts = []
        for stat in curve["statistics"]:
            entry, rival = point[stat], point[stat]["strongest_control"]
            versus = "" if rival is None else f" vs {head_key(rival['layer'], rival['head'])} {rival['value']:+.3f}"
            value = "n/a" if entry["value"] is None else f"{entry['value']:+.3f}"
            parts.append(f"{stat} {value}{versus} {entry['verdict']}")
        lines.append(f"{prefix}{key}: " + "; ".join(parts))
    return lines


# --- attention versus similarity (`similarity`) ------------------------------------------------


def profile_record(profile: dict) -> dict:
    """What results keep of a `similarity.similarity_profile`: "windows" (centres and `windowed_means`), the
    cosine from which keys beat self ("beats_self_from_cosine") and the "peak" {"cosine", "mean"}."""
    return {"windows": {"centre": profile["centres"], **profile["windows"]},
            "beats_self_from_cosine": profile["beats_self_from"],
            "peak": dict(zip(("cosine", "mean"), profile["peak"]))}


def similarity_lines(results: dict) -> list[str]:
    """Printable lines of a cosine-analysis results dict: where keys beat self and the peak, the category
    contrast, the target against its controls (`comparison_lines`), the study's peak, the example's keys."""
    start, top, contrast, study = (results[k] for k in ("beats_self_from_cosine", "peak", "category_contrast", "study"))
    return [f"similar-but-different keys beat self from cos {start if start is None else round(start, 3)}; "
            f"peak {top['mean']:+.3f} at cos {top['cosine']:.3f}",
            f"category-mates: mean d {contrast['mates_mean']:+.3f}, beat self in {contrast['mates_beat_self']:.0%}; "
            f"other categories: {contrast['others_mean']:+.3f}, {contrast['others_beat_self']:.0%}",
            *comparison_lines(results, prefix=""),
            f"study's curve (bits, column-wise): peak {study['peak']['bits']:+.2f} "
            f"at cos {study['peak']['cosine']:.3f}",
            f"{results['example']['query']!r} best keys: "
            + ", ".join(f"{k['token']!r} {k['score_minus_self']:+.2f}" for k in results["example"]["top_keys"])]


# --- steering (`steering`) --------------------------------------------------------------------


def edits_record(edits: steering.HeadEdits, directions: Sequence[str]) -> dict:
    """What results keep of one head's edits: "metrics", "runs", the "largest_trace_step", the "trace_curve"
    keyed by size and each gradient run "matched" against that curve."""
    return {"metrics": edits.metrics, "runs": edits.runs,
            "largest_trace_step": steering.largest_trace_step(edits.runs, edits.metrics),
            "trace_curve": steering.trace_curve(edits), "matched": steering.matched_comparison(edits, directions)}


def control_edits(per_head: Mapping[Head, steering.HeadEdits], target: Head, directions: Sequence[str]
                  ) -> dict[str, dict]:
    """Every head but the target, keyed "L<l>H<h>": its metrics, its `steering.matched_comparison` and each edit's
    relative weight change."""
    return {f"L{l}H{h}": {"metrics": e.metrics, "matched": steering.matched_comparison(e, directions),
                          "relative_change": {n: r["relative_change"] for n, r in e.runs.items()}}
            for (l, h), e in per_head.items() if (l, h) != tuple(target)}


def steering_lines(metrics: Mapping[str, Mapping], top_keys: Mapping[str, Mapping], matched_runs: Mapping[str, Mapping],
                   query: str) -> list[str]:
    """Printable lines: each condition's masses and the query's best keys, then each matched comparison."""
    lines = [f"{name:>12s}: self {m['self_mass']:.4f}, partner {m['partner_mass']:.3f} "
             f"({m['partner_mass_change']:+.1%}), BOS (no partner) {m['bos_mass_no_partner']:.3f}; "
             f"top keys of {query!r}: {', '.join(repr(k) for k in top_keys[name]['keys'][:4])}"
             for name, m in metrics.items()]
    for d, row in matched_runs.items():
        g, t = row["gradient"], row["trace"]
        lines.append(f"matched at self {row['self_mass']:.3f} ({d}): gradient partner {g['partner_mass']:.3f}, "
                     f"BOS {g['bos_mass_no_partner']:.3f}, S {g['surprisal']:.3f}; trace "
                     + ("outside its curve" if t is None else
                        f"partner {t['partner_mass']:.3f}, BOS {t['bos_mass_no_partner']:.3f}, S {t['surprisal']:.3f}"))
    return lines


# --- rank ablation (`self_suppression.rank_ablation`, `qk_decomposition.study_edit_ranks`) ----------


def normalised_cell(cell: Mapping, n_keys: int) -> dict:
    """A rank-ablation cell with its mean self-rank also on the study's scale, "mean_rank_normalised" =
    `qk_decomposition.normalised_rank` over `n_keys` keys."""
    return {**cell, "mean_rank_normalised": qk_decomposition.normalised_rank(cell["mean_rank"], n_keys)}


def normalised_cells(cells: Mapping[str, Mapping], n_keys: int) -> dict[str, dict]:
    """Every cell of a rank-ablation grid (keyed "k=..,scale=..") through `normalised_cell`."""
    return {key: normalised_cell(cell, n_keys) for key, cell in cells.items()}


def study_edit_record(measured: Mapping[str, tuple[Tensor, float]], cell: tuple[int, float], n_keys: int) -> dict:
    """What a results file keeps of the study's edit (`qk_decomposition.study_edit_ranks`): for each of `measured`
    ("unedited", "edited": (ranks [m], imaginary share)) the mean self-rank, raw (from 1) and normalised, and the
    imaginary share; the cell, and how the edit and its ranking were done."""
    out = {"k": cell[0], "scale": cell[1], "n_keys": n_keys,
           "order": "torch.linalg.eig of W = W_Q W_K^T, the first d_head eigenpairs in the solver's order, unsorted",
           "ranked_on": "the real part of the complex scores (torch cannot argsort a complex tensor)"}
    for name, (ranks, imaginary) in measured.items():
        mean = float(ranks.double().mean())
        out[name] = {"mean_rank": mean, "mean_rank_normalised": qk_decomposition.normalised_rank(mean, n_keys),
                     "imaginary_share": imaginary}
    return out


# --- clustering (`clustering`) ----------------------------------------------------------------


def view_record(report: Mapping) -> dict:
    """What a results file keeps of one input view's clustering (a `controls.compare` report of the agreement
    statistics): {"agreement": {head key: {"ari", "nmi", "study_ari", "study_nmi"}}, "target", "controls",
    "directions"}, every head's agreement under its `controls.head_key`."""
    target = report["target"]
    rows = [{"layer": target["layer"], "head": target["head"],
             **{name: target[name]["value"] for name in report["directions"]}}, *report["controls"]]
    agreement = {head_key(row["layer"], row["head"]): {name: row[name] for name in report["directions"]}
                 for row in rows}
    return {"agreement": agreement, **report}


def partition_record(part: Mapping, labels: Sequence[str], category_of: np.ndarray,
                     category_names: Sequence[str]) -> dict:
    """What a results file keeps of one graph and its partition: sizes, self-loops, modularity, agreement with
    the categories and the communities (`clustering.communities`)."""
    found = clustering.communities(part["membership"], labels, category_of, category_names)
    return {"n_nodes": len(labels), "n_edges": len(part["source"]),
            "n_self_loops": int((part["source"] == part["target"]).sum()), "n_communities": len(found),
            "modularity": clustering.modularity(part["graph"], part["membership"]),
            "agreement": clustering.agreement(category_of, part["membership"]), "communities": found}


# --- SAE features (`sae`) ---------------------------------------------------------------------


def source_record(found: HeadSAE) -> dict:
    """What a results file records of the SAE: how it was had, the hook it is read at, the source's fields,
    the hook it was trained on, d_in, d_sae and its architecture."""
    source, sae = found.source, found.sae
    kind = {"organism": "trained on the organism with SAELens", "pretrained": "SAELens pretrained",
            "path": "SAELens directory"}[source.kind]
    return {"ran": True, "kind": kind, "hook": found.hook,
            **{key: value for key, value in vars(source).items() if key != "kind" and value is not None},
            "trained_on_hook": sae.cfg.metadata.hook_name, "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae,
            "architecture": sae.cfg.architecture()}


def feature_map_record(scores: Tensor, features: Tensor, labels: Sequence[str], group: Tensor,
                       names: Sequence[str], n_pairs: int = 20) -> dict:
    """The feature x feature map `scores: [n, n]` as results: each feature (id, label, category name), the map,
    `token_maps.block_means`, `self_avoidance`, the `n_pairs` top off-diagonal pairs with their categories and
    top_pairs_same_category = the share of those pairs whose query and key share a category (0 without pairs)."""
    pairs = [{"query": labels[q], "key": labels[k], "query_category": names[int(group[q])],
              "key_category": names[int(group[k])], "score": s} for q, k, s in top_pairs(scores, n_pairs)]
    same = sum(p["query_category"] == p["key_category"] for p in pairs)
    return {"features": [{"id": int(f), "label": label, "category": names[int(g)]}
                         for f, label, g in zip(features, labels, group)],
            "map": scores, "block_means": block_means(scores, group), "self_avoidance": self_avoidance(scores, group),
            "top_pairs": pairs, "top_pairs_same_category": same / max(len(pairs), 1)}


def k_verdict_record(choice: KChoice) -> dict:
    """The k the precision's verdict uses (`sae.precision.choose_k`), the SAE's active count it was decided from, and
    the rule, in words."""
    why = (f"the study's k = {choice.study_k}: the SAE has at least {choice.study_k} non-zero codes at the median "
           "position of the keyword samples" if choice.reason == "study_k" else
           f"the SAE's own active count: it has {choice.active_count} non-zero codes at the median position of the "
           f"keyword samples, fewer than the study's k = {choice.study_k}, so a larger k would count features "
           "that are not active")
    return {"k": choice.k, "active_count": choice.active_count, "study_k": choice.study_k,
            "rule": f"k = {choice.study_k} if the median active count >= {choice.study_k}, else the median active "
                    f"count; here {why}"}


def _interval(curve: Mapping[str, Interval], name: str, k: int, head: int) -> dict:
    part = curve[name]
    return {"value": float(part.value[k, head]), "low": float(part.low[k, head]), "high": float(part.high[k, head])}


def precision_curve_record(curve: Mapping[str, Interval], ks: Sequence[int], layer: int, target: int) -> dict:
    """`sae.precision.precision_curve` as results, keyed "k=<k>": the target's precision, its null and their
    difference, each {value, low, high}; the strongest control at that k (the other head of the layer with the
    highest precision, ties to the lower head); every head of the layer by key ({value, low, high, null})."""
    out = {}
    for i, k in enumerate(ks):
        heads = range(curve["precision"].value.shape[1])
        by_head = {head_key(layer, h): {**_interval(curve, "precision", i, h), "null": _interval(curve, "null", i, h)}
                   for h in heads}
        others = [h for h in heads if h != target]
        rival = max(others, key=lambda h: (float(curve["precision"].value[i, h]), -h)) if others else None
        out[f"k={k}"] = {"k": k, "target": _interval(curve, "precision", i, target),
                         "null": _interval(curve, "null", i, target),
                         "target_minus_null": _interval(curve, "minus_null", i, target),
                         "strongest_control": None if rival is None else {
                             "layer": layer, "head": rival, **_interval(curve, "precision", i, rival)},
                         "by_head": by_head}
    return out


def precision_null(value: float, k: int, difference: Mapping, n_shuffles: int) -> dict:
    """The results record of the precision's shuffled-label null for the target at the verdict's k: its value, the
    target minus it with its CI over keyword samples (`sae.precision.above_null`), and what it says."""
    return {"precision_shuffled": value, "k": k, "target_minus_null": dict(difference),
            "says": "the study's precision with the predicted features' labels permuted (a random permutation of "
                    f"the SAE's feature ids per sample, {n_shuffles} draws, mean): the chance level of "
                    "TP / (TP + FP) for this head, these samples and this SAE"}


# --- held-out categories beside the supervised ones (`held_out`) --------------------------------------------


def held_out_record(rows: Mapping[str, Mapping], target: Head, categories: Mapping[str, Mapping]) -> dict:
    """The summary of both runs: each statistic's `held_out.statistic_row` keyed by name with its file, which
    statistics recover the held-out categories, whether the head generalises, the head and both category sets."""
    return {"ran": True, "target": {"layer": target[0], "head": target[1], "chosen_by": "the supervised survey"},
            "categories": dict(categories),
            "rule": "each statistic is judged on the held-out run by the supervised run's own rule: a comparison "
                    "recovers the held-out categories iff it separates the head from its strongest control, a "
                    "property iff it holds; the head generalises iff both properties hold in its behaviour",
            "statistics": {name: {"file": held_out.STATISTICS[name].script, **row} for name, row in rows.items()},
            "by_verdict": held_out.recovered(rows), "generalises": held_out.generalises(rows)}


def held_out_lines(record: Mapping) -> list[str]:
    """One printable line per statistic of a `held_out_record` (supervised against held-out), then the verdict."""
    def shown(side: Mapping) -> str:
        value = "n/a" if side["value"] is None else f"{side['value']:+.3f}"
        interval = "" if side["low"] is None else f" [{side['low']:+.3f}, {side['high']:+.3f}]"
        return f"{value}{interval} ({side['verdict'] or 'no verdict'})"

    lines = [f"{name}: supervised {shown(row['supervised'])}, held-out {shown(row['held_out'])}"
             for name, row in record["statistics"].items()]
    head = head_key(record["target"]["layer"], record["target"]["head"])
    verdict = "generalises" if record["generalises"] else "does not generalise"
    return lines + [f"{head} {verdict} to the held-out categories; recovered by: "
                    f"{', '.join(record['by_verdict']['recovers']) or 'none'}"]
