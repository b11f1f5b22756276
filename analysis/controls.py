"""A claim about one head, checked against control heads: the shared shape of every mechanism result.

A statistic offered as evidence that the target head works some way is only evidence if it
could have come out otherwise: it has to single the target out among other heads, by more than
the noise of the sample it was measured on. So every mechanism script computes its statistics
for the target *and* for control heads, and writes

    "directions": {"<statistic>": "low" | "high"}     which way the claim predicts the target lies
    "target":     {"layer": l, "head": h,
                   "<statistic>": {"value": v, "rank": r, "n_ranked": n, "rank_chance": 1/n, "ties": t,
                                   "strongest_control": {"layer": .., "head": .., "value": ..},
                                   "difference": {"value", "low", "high", "unit", "n_units", "scale", ...},
                                   "p_value": p, "verdict": "...", "separates": bool}}
    "controls":   [{"layer": l, "head": h, "<statistic>": value, ...,
                    "undefined": {"<statistic>": reason}  (only where a statistic is undefined)}, ...]

rank 1 is the most extreme value, among the target and its controls, in the predicted direction
(`rank_in_direction`); with n heads ranked, rank 1 happens by chance with probability 1/n
(`rank_chance`), so a rank alone is weak evidence. `strongest_control` is the control nearest to
beating the target (by point value). The decision rule, fixed before any result is read:

    difference = statistic(target) - statistic(strongest control), with a paired percentile
    bootstrap CI (`level`, default 95%) that resamples the statistic's sampling units (words,
    prompts, features, tokens: the same resampled units for both heads);
    the target *separates* iff that CI excludes 0 in the predicted direction.

A statistic given as a plain number (of the weights alone, with no sampling unit) gets no CI and
the verdict "descriptive": it can describe a head, never separate it. A value tied with the
strongest control is a "tie"; an undefined value (None, NaN or an `Undefined` carrying its
reason, e.g. a ratio over a zero spread) is "undefined", never ranked and never a control's
rival. Masses near 0 or 1 saturate (a gain is capped at 1 minus the baseline), so a `Sample`
may ask for the difference on the logit scale. `p_value` is the one-sided bootstrap p of the
difference (the share of resamples on the wrong side of 0, counted with the observed one): what a
family-wise correction over several primary statistics uses (`analysis.evidence`). Heads are keyed
"L<layer>H<head>".

Which heads are controls: for a statistic of the weights alone, every other head (they are
cheap); for a statistic that needs runs of the model, every head of the target's layer plus the
scan's top heads of each kind (`default_controls`), or every head (`all_heads`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

Direction = Literal["low", "high"]
Head = tuple[int, int]
LEVEL = 0.95  # two-sided level of every CI of a difference; separates iff it excludes 0 on the predicted side
N_RESAMPLES = 1000  # bootstrap resamples of a comparison (the scripts' --n-resamples)
LOGIT_FLOOR = 1e-4  # a mass is clamped to [floor, 1 - floor] before its logit (a mass of exactly 0 or 1)


def nanmean_units(values: Tensor) -> Tensor:
    """`[resamples, n_units] -> [resamples]`: the mean over units, NaN units left out (the default reduction)."""
    return values.nanmean(-1)


@dataclass(frozen=True)
class Sample:
    """A statistic of one head as measured on sampling units, so that its noise can be resampled.

    `per_unit: [n_units, ...]` holds what each unit contributes (a word's margin, a prompt's mass, a
    token's (label, community) pair); `reduce` maps resampled units `[resamples, n_units, ...]` to the
    statistic `[resamples]` (default: the mean over units, NaN units left out). Every head compared on
    one statistic must be measured on the same units in the same order (a paired comparison).
    `scale` "logit" compares logit(statistic) instead of the statistic (masses in [0, 1]).
    """

    per_unit: Tensor
    unit: str
    reduce: Callable[[Tensor], Tensor] = field(default=nanmean_units, compare=False)
    scale: Literal["identity", "logit"] = "identity"

    @property
    def value(self) -> float:
        return float(self.reduce(self.per_unit[None])[0])

    def on_scale(self, statistic: Tensor) -> Tensor:
        if self.scale == "identity":
            return statistic
        return statistic.clamp(LOGIT_FLOOR, 1 - LOGIT_FLOOR).logit()


@dataclass(frozen=True)
class Undefined:
    """A statistic that has no value for a head, and why (a ratio over a zero spread, a share of nothing)."""

    reason: str


Statistic = float | Sample | Undefined | None  # a plain number (no sampling unit), a Sample, or undefined


def head_key(layer: int, head: int) -> str:
    """"L1H5" for (1, 5): the key of a head in results files."""
    return f"L{int(layer)}H{int(head)}"


def all_heads(n_layers: int, n_heads: int, exclude: Iterable[Head] = ()) -> list[Head]:
    """Every (layer, head) of a model in order, minus `exclude`."""
    skip = {tuple(h) for h in exclude}
    return [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in skip]


def default_controls(target: Head, n_heads: int, top_heads: Iterable[Head] = ()) -> list[Head]:
    """The default control heads of a run-based statistic, in order and without repeats:
    every other head of the target's layer, then the given top heads (e.g. the scan's best head
    of each kind), never the target itself."""
    layer = target[0]
    candidates = [(layer, h) for h in range(n_heads)] + [tuple(h) for h in top_heads]
    seen: set[Head] = {tuple(target)}
    controls = []
    for head in candidates:
        if head not in seen:
            seen.add(head)
            controls.append(head)
    return controls


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def rank_in_direction(value: float, others: Sequence[float | None], direction: Direction) -> int:
    """1 + the number of finite `others` strictly more extreme than `value` in `direction`.

    direction "low": more extreme = smaller; "high": larger. Ties share the better rank, so a
    statistic that is the same for every head ranks every head 1 (and `separates` is False).
    """
    if direction not in ("low", "high"):
        raise ValueError(f"direction must be 'low' or 'high', got {direction!r}")
    sign = 1.0 if direction == "low" else -1.0
    return 1 + sum(1 for o in others if _finite(o) and sign * o < sign * value)


def _value(statistic: Statistic) -> float | None:
    if isinstance(statistic, Undefined):
        return None
    value = statistic.value if isinstance(statistic, Sample) else statistic
    return float(value) if _finite(value) else None


def paired_difference(target: Sample, control: Sample, direction: Direction, n_resamples: int = N_RESAMPLES,
                      level: float = LEVEL, seed: int = 0) -> dict:
    """The difference d = f(target) - f(control) on the target's scale, f the statistic, with a paired percentile
    bootstrap CI and a one-sided p.

    Units are drawn with replacement, the same draws for both heads (`seed`): d_b = f(target[idx_b]) -
    f(control[idx_b]). CI = the (1 - level)/2 and (1 + level)/2 quantiles of d_b (NaN draws left out).
    p = (1 + #{b : d_b on the wrong side of 0 or at 0}) / (1 + n_resamples), the wrong side being >= 0 for
    direction "low" and <= 0 for "high".
    """
    if target.per_unit.shape[0] != control.per_unit.shape[0]:
        raise ValueError(f"paired units differ: {target.per_unit.shape[0]} against {control.per_unit.shape[0]}")
    n = target.per_unit.shape[0]
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randint(n, (n_resamples, n), generator=generator)  # (B, n)
    observed = target.on_scale(target.reduce(target.per_unit[None])) - target.on_scale(
        control.reduce(control.per_unit[None]))
    draws = (target.on_scale(target.reduce(target.per_unit[idx]))
             - target.on_scale(control.reduce(control.per_unit[idx]))).double()  # (B,)
    draws = draws[~draws.isnan()]
    if len(draws) == 0:
        return {"value": float(observed[0]), "low": None, "high": None, "p_value": None}
    alpha = (1 - level) / 2
    low, high = torch.quantile(draws, torch.tensor([alpha, 1 - alpha], dtype=draws.dtype))
    wrong = (draws >= 0) if direction == "low" else (draws <= 0)
    return {"value": float(observed[0]), "low": float(low), "high": float(high),
            "p_value": float((1 + wrong.sum()) / (1 + n_resamples))}


def verdict(difference: Mapping | None, direction: Direction) -> str:
    """"separates" when the difference's CI excludes 0 on the predicted side, else "does not separate"."""
    if difference is None or difference.get("low") is None:
        return "does not separate"
    excludes = difference["high"] < 0 if direction == "low" else difference["low"] > 0
    return "separates" if excludes else "does not separate"


def compare(target: Head, stats: Mapping[Head, Mapping[str, Statistic]], directions: Mapping[str, Direction],
            n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
    """The `target` / `controls` / `directions` entries for statistics of several heads (see the module docstring).

    `stats[(layer, head)][name]` holds each statistic of each head, the target's included: a `Sample` (a
    CI is possible), a plain number (weights alone: "descriptive") or None/NaN ("undefined"). Every other
    head in `stats` is a control. Each statistic's bootstrap is seeded with `seed` plus its position.
    """
    target = tuple(target)
    if target not in stats:
        raise ValueError(f"the target {head_key(*target)} has no statistics")
    controls = [h for h in stats if h != target]
    entry: dict = {"layer": target[0], "head": target[1]}
    for i, (name, direction) in enumerate(directions.items()):
        if direction not in ("low", "high"):
            raise ValueError(f"direction must be 'low' or 'high', got {direction!r}")
        own = stats[target].get(name)
        value = _value(own)
        finite = [(h, v) for h in controls if (v := _value(stats[h].get(name))) is not None]
        row = {"value": value, "rank": None, "n_ranked": len(finite) + 1, "rank_chance": 1 / (len(finite) + 1),
               "ties": 0, "strongest_control": None, "difference": None, "p_value": None}
        if value is None:
            reason = own.reason if isinstance(own, Undefined) else "no finite value"
            entry[name] = {**row, "verdict": "undefined", "separates": False, "reason": reason}
            continue
        sign = 1.0 if direction == "low" else -1.0
        row["rank"] = rank_in_direction(value, [v for _, v in finite], direction)
        row["ties"] = sum(1 for _, v in finite if v == value)
        if not finite:
            entry[name] = {**row, "verdict": "no control", "separates": False}
            continue
        strongest, strongest_value = min(finite, key=lambda hv: sign * hv[1])
        row["strongest_control"] = {"layer": strongest[0], "head": strongest[1], "value": strongest_value}
        rival = stats[strongest][name]
        if strongest_value == value:
            outcome = "tie"
        elif isinstance(own, Sample) and isinstance(rival, Sample):
            diff = paired_difference(own, rival, direction, n_resamples, seed=seed + i)
            row["p_value"] = diff.pop("p_value")
            row["difference"] = {**diff, "unit": own.unit, "n_units": int(own.per_unit.shape[0]), "scale": own.scale,
                                 "level": LEVEL, "n_resamples": n_resamples}
            outcome = verdict(row["difference"], direction)
        else:
            outcome = "descriptive"
        entry[name] = {**row, "verdict": outcome, "separates": outcome == "separates"}
    rows = [{"layer": h[0], "head": h[1], **{name: _value(v) for name, v in stats[h].items()},
             **_reasons(stats[h])} for h in controls]
    return {"directions": dict(directions), "target": entry, "controls": rows}


def _reasons(stats: Mapping[str, Statistic]) -> dict:
    """{"undefined": {statistic: reason}} for a control's `Undefined` statistics, or {} when it has none."""
    reasons = {name: v.reason for name, v in stats.items() if isinstance(v, Undefined)}
    return {"undefined": reasons} if reasons else {}


def separating(report: Mapping) -> list[str]:
    """The statistics of a `compare` report on which the target separates from its strongest control."""
    return [name for name in report["directions"] if report["target"][name]["separates"]]
