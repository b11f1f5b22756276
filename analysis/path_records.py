"""What the query-key path and head-output results keep, keyed by name: the changes of `paths` and `output_side`.

Every change is a per-prompt (or per-word) difference summarised as its mean with a 95% bootstrap CI over the units
(`scores.bootstrap_ci`): {"value", "low", "high", "n_units"}. Sides are filed as "query_side", "key_side" and
"both_sides", parts by name (`paths.part_names`), modes by name, metrics by name. `PROPERTIES` names what each
property's metric is and which way a part that builds the property moves it when removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from analysis.controls import Sample, compare, head_key
from analysis.prompts import CategoryWords
from analysis.scores import bootstrap_ci

SIDE_KEYS = {"query": "query_side", "key": "key_side", "both": "both_sides"}
# property -> (the metric that shows it, the sign of its change when a part that builds it is removed)
PROPERTIES = {"self_avoidance": ("self_mass", 1.0), "category_attraction": ("partner_mass", -1.0),
              "bos_fallback": ("bos_mass_no_partner", -1.0)}


def part_label(name: str) -> str:
    """A part's name as prose: "token embedding", "positional embedding", "head L0H3", "attention output biases",
    "MLP 0" (`paths.part_names` spells them "token_embedding", ..., "L0H3", "attention_biases", "mlp_0")."""
    fixed = {"token_embedding": "token embedding", "positional_embedding": "positional embedding",
             "attention_biases": "attention output biases"}
    if name in fixed:
        return fixed[name]
    return f"MLP {name.split('_')[1]}" if name.startswith("mlp_") else f"head {name}"


def effect(per_unit: Tensor, seed: int = 0, n_resamples: int = 2000) -> dict:
    """`{"value", "low", "high", "n_units"}`: the mean of `per_unit: [n]` and its 95% bootstrap CI (NaN units left
    out)."""
    mean, low, high = bootstrap_ci(per_unit, n_resamples, seed=seed)
    return {"value": float(mean), "low": float(low), "high": float(high),
            "n_units": int((~per_unit.isnan()).sum())}


def change_record(changes: Mapping[str, Tensor], names: Sequence[str], seed: int) -> dict:
    """`{part: {metric: effect}}` of `changes: {metric: [part, batch]}`."""
    return {name: {m: effect(c[i], seed) for m, c in changes.items()} for i, name in enumerate(names)}


def strongest(record: Mapping[str, Mapping[str, dict]]) -> dict:
    """`{property: {"part", "label", "metric", "value", "low", "high", "excludes_zero"}}`: for each of `PROPERTIES`,
    the part whose removal moves the property's metric furthest the way that part's building it predicts, from a
    `{part: {metric: effect}}` record; "excludes_zero": its CI lies on that side of 0."""
    out = {}
    for prop, (metric, sign) in PROPERTIES.items():
        finite = {p: e[metric] for p, e in record.items() if e[metric]["value"] == e[metric]["value"]}
        part = max(finite, key=lambda p: sign * finite[p]["value"])
        e = finite[part]
        out[prop] = {"part": part, "label": part_label(part), "metric": metric, **e,
                     "excludes_zero": bool(e["low"] > 0 if sign > 0 else e["high"] < 0)}
    return out


def baseline_record(baseline: Mapping[str, Tensor], seed: int) -> dict:
    """`{metric: effect}` of the unedited head's per-prompt metrics."""
    return {m: effect(v, seed) for m, v in baseline.items()}


def ov_record(boosts: Mapping[str, Tensor], words: CategoryWords, labels: Sequence[str], seed: int) -> dict:
    """The OV circuit on category words: each summary (self, same, other and the contrasts same - other, self -
    same) as an effect over the words, and each word's own values keyed by the word (`labels`, in `words` order)."""
    per_word = {"self": boosts["self"], "same": boosts["same"], "other": boosts["other"],
                "same_minus_other": boosts["same"] - boosts["other"], "self_minus_same": boosts["self"] - boosts["same"]}
    summary = {k: effect(v, seed) for k, v in per_word.items()}
    return {"summary": summary,
            "self_above_same": summary["self_minus_same"]["low"] > 0,
            "same_above_other": summary["same_minus_other"]["low"] > 0,
            "per_word": {label: {k: float(v[i]) for k, v in per_word.items()} for i, label in enumerate(labels)},
            "n_categories": int(words.category.unique().numel())}


def loss_record(changes: Tensor, target: tuple[int, int], seed: int) -> dict:
    """The loss change of every head of the target's layer, mean-ablated: `{"by_head": {"L1H5": effect}, "comparison":
    controls.compare report (the target against its layer's other heads, higher = more loss, paired by prompt)}`
    from `changes: [n_heads, batch]`."""
    layer = target[0]
    stats = {(layer, h): {"loss_change": Sample(changes[h], "prompts")} for h in range(changes.shape[0])}
    return {"by_head": {head_key(layer, h): effect(changes[h], seed) for h in range(changes.shape[0])},
            "comparison": compare(target, stats, {"loss_change": "high"}, seed=seed)}
