"""What the organism's planted heads must do, and how well they do it.

`THRESHOLDS` are the behaviours each planted head must show on fresh prompts; `planted_head_report`
measures them (with one `scan.scan_heads`) and `thresholds_met` says which hold.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from analysis import prompts, scores
from analysis.organism.train import TrainConfig
from analysis.patterns import head_pattern
from analysis.scan import ScanSettings, scan_heads

# What each planted kind must do, measured on fresh prompts (see planted_head_report): name -> (rule, bound).
THRESHOLDS = {
    "previous_token": ("at least", 0.9),  # mean A[i, i-1] on random tokens
    "induction_50": ("at least", 0.6),  # canonical induction score, [BOS] + r + r, |r| = 50
    "induction_20": ("at least", 0.6),  # ... and at another repeat length
    "semantic_partner_mass": ("at least", 0.5),  # on earlier, different words of the same category
    "semantic_self_mass": ("at most", 0.1),  # on itself plus earlier copies of itself
    "semantic_bos_mass_no_partner": ("at least", 0.5),  # on BOS when no category-mate precedes
    "decoy_category_mass": ("at least", 0.5),  # on earlier words of its category, itself and its copies included
    "decoy_self_mass": ("at least", 0.2),  # on itself plus earlier copies: it does not avoid itself (ideal 0.47)
    "avoider_other_mass": ("at least", 0.95),  # on anything but itself and its copies (uniform attention: 0.93)
    "avoider_self_mass": ("at most", 0.02),  # on itself plus earlier copies (uniform attention: 0.07)
}


def _category_masses(model, layer: int, head: int, seed: int) -> dict[str, float]:
    """Mass of one head on its category-kind masks over the study's category prompts, mean over rows >= 1:
    the decoy's (its category, itself included), the avoider's (anything but itself) and self plus copies."""
    tokens, _ = prompts.category_probe(model, prompts.STUDY_CATEGORIES, 64, 64, seed)
    category_of = prompts.category_index(model.tokenizer, prompts.STUDY_CATEGORIES, model.cfg.d_vocab)
    pattern = head_pattern(model, tokens, (layer, head))[:, None]  # (B, 1, T, T)
    rows = scores.scored_rows(tokens)
    masks = {"category_mass": prompts.same_category_mask(tokens, category_of),
             "other_mass": prompts.other_token_mask(tokens), "self_mass": scores.same_word_mask(tokens)}
    return {name: float(scores.mean_over_rows(scores.mask_mass(pattern, mask), rows).mean())
            for name, mask in masks.items()}


@torch.no_grad()
def planted_head_report(model, planted_heads: Mapping[str, tuple[int, int]] | None = None,
                        seed: int = 1234) -> dict[str, float]:
    """The `THRESHOLDS` quantities of the planted heads' kinds, on prompts drawn with `seed`."""
    if planted_heads is None:
        planted_heads = TrainConfig().planted_heads
    planted = {kind: tuple(head) for kind, head in planted_heads.items()}
    scan = scan_heads(model, ScanSettings(), seed=seed)
    report = {}
    if "previous_token" in planted:
        report["previous_token"] = float(scan.previous_token[planted["previous_token"]])
    if "induction" in planted:
        for length, score in scan.induction.items():
            report[f"induction_{length}"] = float(score[planted["induction"]])
    if "semantic" in planted:
        layer, head = planted["semantic"]
        for key in ("partner_mass", "self_mass", "bos_mass_no_partner", "surprisal"):
            report[f"semantic_{key}"] = float(scan.semantic[key][:, layer, head].nanmean())
    for kind, wanted in (("decoy", ("category_mass", "self_mass")), ("avoider", ("other_mass", "self_mass"))):
        if kind in planted:
            masses = _category_masses(model, *planted[kind], seed + 100)
            report |= {f"{kind}_{name}": masses[name] for name in wanted}
    return report


def thresholds_met(report: Mapping[str, float]) -> dict[str, bool]:
    """Which thresholds of the report's kinds a report meets: {key: whether the value lies on the right side}."""
    return {k: (report[k] >= v if rule == "at least" else report[k] <= v)
            for k, (rule, v) in THRESHOLDS.items() if k in report}
