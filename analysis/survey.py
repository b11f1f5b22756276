"""The semantic-head survey as a ranked table with bootstrap confidence intervals.

`analysis.scan.semantic_survey` gives, for every head, per-prompt values of the study's score S
and its companions, `[batch, layer, head]`. Here they become one row per head: the mean over
prompts with a percentile-bootstrap CI over prompts (`scores.bootstrap_ci`), ranked by S (lower
is better); `controls.Sample`s over prompts for comparing the target with every other head
(`survey_samples`, masses on the logit scale, since they saturate near 0 and 1); and each head's
two properties read in context (`behaviour_verdicts`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from analysis.controls import N_RESAMPLES, Head, Sample
from analysis.properties import PROPERTIES, verdicts
from analysis.scores import SEMANTIC_METRICS, bootstrap_ci

# Which way each survey metric lies for a self-suppressing semantic head; the masses are compared as logits.
SURVEY_DIRECTIONS = {"surprisal": "low", "partner_mass": "high", "self_mass": "low", "bos_mass_no_partner": "high",
                     "argmax_accuracy": "high"}
LOGIT_METRICS = ("partner_mass", "self_mass", "bos_mass_no_partner", "argmax_accuracy")


def survey_table(survey: Mapping[str, Tensor], level: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> pd.DataFrame:
    """One row per head, best S first: layer, head, and for each metric its mean, `_low`, `_high`.

    `survey[metric]: [batch, layer, head]`. Every metric is resampled with the same prompt
    indices (same seed and batch), so the CIs of one row come from one set of resamples.
    """
    n_batch, n_layers, n_heads = survey["surprisal"].shape
    columns = {"layer": [l for l in range(n_layers) for _ in range(n_heads)],
               "head": [h for _ in range(n_layers) for h in range(n_heads)]}
    for metric in SEMANTIC_METRICS:
        mean, low, high = bootstrap_ci(survey[metric].reshape(n_batch, -1), n_resamples, level, seed)
        columns[metric], columns[f"{metric}_low"], columns[f"{metric}_high"] = mean, low, high
    table = pd.DataFrame(columns).sort_values("surprisal", kind="stable").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    return table


def separation(table: pd.DataFrame, layer: int | None = None, head: int | None = None) -> dict:
    """How far a head is ahead of the best other head in S, and whether their CIs are disjoint.

    The head is (`layer`, `head`), by default the table's best. When it was selected on another
    prompt set (`scan.held_out_survey`) and `table` is the held-out report set's, the margin can be
    negative. margin = S(runner-up) - S(head); `separated` iff the head's upper CI bound lies
    below the runner-up's lower bound; `runner_up` is [layer, head] of the best other head.
    """
    chosen = table.iloc[0] if layer is None else table[(table["layer"] == layer) & (table["head"] == head)].iloc[0]
    others = table[(table["layer"] != chosen.layer) | (table["head"] != chosen["head"])]
    runner_up = others.iloc[0]
    return {"margin": float(runner_up.surprisal - chosen.surprisal),
            "best_high": float(chosen.surprisal_high), "runner_up_low": float(runner_up.surprisal_low),
            "runner_up": [int(runner_up.layer), int(runner_up["head"])],
            "runner_up_surprisal": float(runner_up.surprisal),
            "separated": bool(chosen.surprisal_high < runner_up.surprisal_low)}


def survey_samples(survey: Mapping[str, Tensor]) -> dict[Head, dict[str, Sample]]:
    """(layer, head) -> each metric of `SURVEY_DIRECTIONS` as a `controls.Sample` over the prompts
    (`survey[metric]: [batch, layer, head]`), the masses on the logit scale."""
    _, n_layers, n_heads = survey["surprisal"].shape
    return {(l, h): {m: Sample(survey[m][:, l, h].double(), "prompt", scale="logit" if m in LOGIT_METRICS else
                               "identity") for m in SURVEY_DIRECTIONS}
            for l in range(n_layers) for h in range(n_heads)}


def behaviour_verdicts(survey: Mapping[str, Tensor], n_resamples: int = N_RESAMPLES, seed: int = 0
                       ) -> dict[Head, dict[str, dict]]:
    """(layer, head) -> `properties.verdicts` of the in-context statistics (`survey[statistic]: [batch, layer, head]`,
    from `scan.semantic_survey`), prompts the units."""
    _, n_layers, n_heads = survey["surprisal"].shape
    return {(l, h): verdicts({stat: survey[stat][:, l, h] for stat, _ in PROPERTIES.values()}, n_resamples, seed)
            for l in range(n_layers) for h in range(n_heads)}
SPREAD = (0.05, 0.5, 0.95)  # the quantiles over prompts a design's spread reports: 5 %, median, 95 %


@dataclass(frozen=True)
class DesignSummary:
    """Every head's S under one prompt design, each `[layer, head]`: on its first prompt (`one_prompt`, what a
    single-prompt study reads) and the 5 %, 50 % and 95 % quantiles over all its prompts (`p05`, `median`, `p95`);
    the first prompt's best head (`best`), the target (`target`), its rank there (1 = lowest S) and the best head
    other than the target (`runner_up`), each as (layer, head)."""

    one_prompt: Tensor
    p05: Tensor
    median: Tensor
    p95: Tensor
    best: tuple[int, int]
    target: tuple[int, int]
    target_rank: int
    runner_up: tuple[int, int]


def _head(flat_index: int, n_heads: int) -> tuple[int, int]:
    return flat_index // n_heads, flat_index % n_heads


def design_summary(per_prompt: Tensor, target: tuple[int, int]) -> DesignSummary:
    """`per_prompt: [batch, layer, head]` S (lower is better) -> its `DesignSummary` for `target` = (layer, head).

    Ranks are those of the first prompt: rank(target) = 1 + #{heads with S < S(target)}; the runner-up is
    argmin S over every head but the target (ties: the lower layer, then head).
    """
    first = per_prompt[0]
    n_heads = first.shape[1]
    p05, median, p95 = per_prompt.double().quantile(torch.tensor(SPREAD, dtype=torch.double), dim=0).float()
    flat = first.flatten()
    index = target[0] * n_heads + target[1]
    others = flat.clone()
    others[index] = float("inf")
    return DesignSummary(first, p05, median, p95, _head(int(flat.argmin()), n_heads), (int(target[0]), int(target[1])),
                         1 + int((flat < flat[index]).sum()), _head(int(others.argmin()), n_heads))
