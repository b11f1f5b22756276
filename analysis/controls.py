"""A claim about one head, checked against control heads: the shared shape of every mechanism result.

A statistic offered as evidence that the target head works some way is only evidence if it
could have come out otherwise: it has to single the target out among other heads. So every
mechanism script computes its statistics for the target *and* for control heads, and writes

    "directions": {"<statistic>": "low" | "high"}     which way the claim predicts the target lies
    "target":     {"layer": l, "head": h,
                   "<statistic>": {"value": v, "rank": r, "n_ranked": n, "separates": bool,
                                   "strongest_control": {"layer": .., "head": .., "value": ..}}}
    "controls":   [{"layer": l, "head": h, "<statistic>": value, ...}, ...]

rank 1 is the most extreme value, among the target and its controls, in the predicted direction
(`rank_in_direction`); `separates` says the target is strictly more extreme than every control;
`strongest_control` is the control nearest to beating it. Heads are keyed "L<layer>H<head>".

Which heads are controls: for a statistic of the weights alone, every other head (they are
cheap); for a statistic that needs runs of the model, every head of the target's layer plus the
scan's top heads of each kind (`default_controls`), or every head (`all_heads`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

Direction = Literal["low", "high"]
Head = tuple[int, int]


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


def compare(target: Head, stats: Mapping[Head, Mapping[str, float | None]],
            directions: Mapping[str, Direction]) -> dict:
    """The `target` / `controls` / `directions` entries for statistics of several heads.

    `stats[(layer, head)][name]` holds each statistic of each head, the target's included;
    every other head in `stats` is a control. Non-finite values are reported as None and
    never ranked.
    """
    target = tuple(target)
    if target not in stats:
        raise ValueError(f"the target {head_key(*target)} has no statistics")
    controls = [h for h in stats if h != target]
    entry: dict = {"layer": target[0], "head": target[1]}
    for name, direction in directions.items():
        value = stats[target][name]
        others = [(h, stats[h].get(name)) for h in controls]
        finite = [(h, v) for h, v in others if _finite(v)]
        if not _finite(value):
            entry[name] = {"value": None, "rank": None, "n_ranked": len(finite) + 1, "separates": False,
                           "strongest_control": None}
            continue
        sign = 1.0 if direction == "low" else -1.0
        strongest = min(finite, key=lambda hv: sign * hv[1]) if finite else None
        entry[name] = {
            "value": float(value),
            "rank": rank_in_direction(value, [v for _, v in finite], direction),
            "n_ranked": len(finite) + 1,
            "separates": bool(finite) and all(sign * value < sign * v for _, v in finite),
            "strongest_control": None if strongest is None else
            {"layer": strongest[0][0], "head": strongest[0][1], "value": float(strongest[1])},
        }
    rows = [{"layer": h[0], "head": h[1], **{name: (float(v) if _finite(v) else None)
                                           for name, v in stats[h].items()}} for h in controls]
    return {"directions": dict(directions), "target": entry, "controls": rows}


def separating(report: Mapping) -> list[str]:
    """The statistics of a `compare` report on which the target beats every control."""
    return [name for name in report["directions"] if report["target"][name]["separates"]]
