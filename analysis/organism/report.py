"""What the organism's planted heads must do, and how well they do it.

`THRESHOLDS` are the behaviours each planted head must show on fresh prompts; `planted_head_report`
measures them (with one `scan.scan_heads`) and `thresholds_met` says which hold.
"""

from __future__ import annotations

from collections.abc import Mapping

from analysis.organism.train import TrainConfig
from analysis.scan import ScanSettings, scan_heads

# What each planted head must do, measured on fresh prompts (see planted_head_report).
THRESHOLDS = {
    "previous_token": ("at least", 0.9),  # mean A[i, i-1] on random tokens
    "induction_50": ("at least", 0.6),  # canonical induction score, [BOS] + r + r, |r| = 50
    "induction_20": ("at least", 0.6),  # ... and at another repeat length
    "semantic_partner_mass": ("at least", 0.5),  # on earlier, different words of the same category
    "semantic_self_mass": ("at most", 0.1),  # on itself plus earlier copies of itself
    "semantic_bos_mass_no_partner": ("at least", 0.5),  # on BOS when no category-mate precedes
}


def planted_head_report(model, planted_heads: Mapping[str, tuple[int, int]] | None = None,
                        seed: int = 1234) -> dict[str, float]:
    """The `THRESHOLDS` quantities for the planted heads, on prompts drawn with `seed`."""
    if planted_heads is None:
        planted_heads = TrainConfig().planted_heads
    scan = scan_heads(model, ScanSettings(), seed=seed)
    prev, ind, sem = (tuple(planted_heads[k]) for k in ("previous_token", "induction", "semantic"))
    report = {"previous_token": float(scan.previous_token[prev])}
    for length, score in scan.induction.items():
        report[f"induction_{length}"] = float(score[ind])
    for key in ("partner_mass", "self_mass", "bos_mass_no_partner", "surprisal"):
        report[f"semantic_{key}"] = float(scan.semantic[key][:, sem[0], sem[1]].nanmean())
    return report


def thresholds_met(report: Mapping[str, float]) -> dict[str, bool]:
    """Which thresholds a report meets: {key: whether the report's value lies on the right side of its bound}."""
    return {k: (report[k] >= v if rule == "at least" else report[k] <= v) for k, (rule, v) in THRESHOLDS.items()}
