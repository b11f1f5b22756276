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

from analysis import clustering, steering
from analysis.controls import Head, head_key
from analysis.sae.features import self_avoidance, top_pairs
from analysis.sae.precision import Interval, KChoice
from analysis.sae.sources import HeadSAE
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


# --- clustering (`clustering`) ----------------------------------------------------------------


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
