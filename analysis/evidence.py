"""The primary statistics of the claim, named before any result is read, and their family-wise correction.

The claim under test is that the target head is a self-suppressing semantic head. Three statistics
carry it; each is compared with the strongest control head by the rule of `analysis.controls`
(a bootstrap CI of target minus strongest control that excludes 0 on the predicted side), and
the claim also needs both properties of `analysis.properties` (self-avoidance and category
attraction) in the head's behaviour and in its weights:

    surprisal              S on held-out category prompts (characterize_head; low)
    margin                 the partner margin on the head's inputs for the category words:
                           self-score minus the mean partner score (skew_analysis; low)
    below_partners_share   the share of those words scoring themselves below every partner
                           (skew_analysis; high)

Testing three statistics gives three chances to pass by luck, so their one-sided p-values are
corrected together by Holm's step-down method (`holm`), and a primary statistic counts only when
its corrected p is below `ALPHA` (one-sided 0.025, the side a 95% two-sided CI excludes). Every
other statistic of the mechanism scripts is secondary: reported with its own CI and verdict,
labelled secondary, never counted towards the claim.
"""

from __future__ import annotations

from collections.abc import Mapping

# The family: (results file, statistic) in the order the paper lists them.
PRIMARY: tuple[tuple[str, str], ...] = (
    ("characterize_head", "surprisal"),
    ("skew_analysis", "margin"),
    ("skew_analysis", "below_partners_share"),
)
# Where each mechanism results file keeps its `controls.compare` report (a JSON path under the file's top level).
REPORTS: dict[str, str] = {
    "characterize_head": "results.comparison", "skew_analysis": "results", "sym_skew_maps": "results",
    "eigenvalue_scaling": "results", "eigenvalue_rank_ablation": "results", "gradient_steering": "results",
    "cosine_attention_analysis": "results", "clustering": "results", "sae_features": "results",
}
# Where each file keeps its `records.property_record`: behaviour (in context) and weights (category-word inputs).
PROPERTY_SOURCES: dict[str, tuple[str, str]] = {"behaviour": ("characterize_head", "results.properties"),
                                               "weights": ("skew_analysis", "results.properties")}
ALPHA = 0.025  # one-sided: the level at which a 95% two-sided CI excludes 0 on one side


def holm(p_values: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm's adjusted p-values: with the m finite p's sorted, p_(1) <= ... <= p_(m),

        adjusted_(i) = min(1, max_{j <= i} (m - j + 1) p_(j)).

    Rejecting where adjusted < alpha controls the family-wise error rate at alpha. None stays None (a
    statistic that could not be tested counts as not rejected and does not enlarge m).
    """
    finite = sorted(((p, name) for name, p in p_values.items() if p is not None), key=lambda pn: pn[0])
    m = len(finite)
    adjusted: dict[str, float | None] = {name: None for name, p in p_values.items() if p is None}
    running = 0.0
    for j, (p, name) in enumerate(finite):
        running = max(running, min(1.0, (m - j) * p))
        adjusted[name] = running
    return {name: adjusted[name] for name in p_values}


def family_verdicts(entries: Mapping[tuple[str, str], Mapping | None], alpha: float = ALPHA) -> dict[str, dict]:
    """For each primary statistic ("<file>.<statistic>"), from its `controls.compare` entry (None when its file
    or statistic is missing): its uncorrected verdict, its p, Holm's adjusted p over the family, and
    "separates_corrected" = adjusted p < alpha and the uncorrected CI also excludes 0."""
    keys = {f"{source}.{name}": entry for (source, name), entry in entries.items()}
    adjusted = holm({key: (entry or {}).get("p_value") for key, entry in keys.items()})
    out = {}
    for key, entry in keys.items():
        entry = entry or {}
        p_holm = adjusted[key]
        out[key] = {"verdict": entry.get("verdict", "missing"), "p_value": entry.get("p_value"), "p_holm": p_holm,
                    "rank_chance": entry.get("rank_chance"),
                    "separates_corrected": bool(entry.get("separates")) and p_holm is not None and p_holm < alpha}
    return out


def comparison_reports(files: Mapping[str, Mapping | None]) -> tuple[dict[str, Mapping | None], dict[str, str]]:
    """(file -> its `controls.compare` report, found at its `REPORTS` path, or None; file -> why a file that exists
    has none), for the results files given (file -> its whole JSON, None for a file not run). A file without a
    report is one whose step did not run, e.g. sae_features for a model with no SAE: it records why, never a
    comparison."""
    reports, no_report = {}, {}
    for source, path in REPORTS.items():
        report = files.get(source)
        for part in path.split(".") if report is not None else ():
            report = report.get(part) if isinstance(report, Mapping) else None
        reports[source] = report if isinstance(report, Mapping) and "directions" in report else None
        if files.get(source) is not None and reports[source] is None:
            no_report[source] = f"{source}.json has no comparison (its step did not run)"
    return reports, no_report


def statistic_rows(reports: Mapping[str, Mapping | None]) -> dict[str, dict]:
    """"<file>.<statistic>" -> its comparison (value, rank, rank_chance, strongest control, difference, verdict)
    and its role, "primary" (in `PRIMARY`) or "secondary", for every statistic of every `compare` report given
    (file -> report, None for a file not run)."""
    primary = {f"{source}.{name}" for source, name in PRIMARY}
    rows = {}
    for source, report in reports.items():
        if report is None:
            continue
        for name, direction in report["directions"].items():
            key = f"{source}.{name}"
            rows[key] = {"file": source, "statistic": name, "direction": direction,
                         "role": "primary" if key in primary else "secondary", **report["target"][name]}
    return rows


def claim_verdict(family: Mapping[str, Mapping], targets_properties: Mapping[str, Mapping | None]) -> dict:
    """The claim as decided in advance: every primary statistic separates after Holm's correction, and the target
    has both properties in every view given ("behaviour", "weights": its property verdicts, None if not run)."""
    primary = all(entry["separates_corrected"] for entry in family.values())
    properties = {view: None if v is None else bool(v.get("both_hold")) for view, v in targets_properties.items()}
    return {"primary_separate_corrected": primary, "both_properties": properties,
            "supported": primary and all(properties.values())}


VERDICTS = ("separates", "does not separate", "tie", "descriptive", "undefined", "no control")


def by_verdict(rows: Mapping[str, Mapping], role: str) -> dict[str, list[str]]:
    """verdict -> the keys of the `statistic_rows` of `role` with that verdict (every verdict of `VERDICTS` listed)."""
    return {verdict: [key for key, row in rows.items() if row["role"] == role and row["verdict"] == verdict]
            for verdict in VERDICTS}
