"""The organism as a simulation study: one recipe retrained with other seeds, and a negative control.

A referee's two questions of a result on one trained model: is it one lucky run, and would the
pipeline report the mechanism in a model that has none? Both are answered from results files the
scripts already write (evidence.json, scan_heads.json and each mechanism file's compare report),
for organisms whose training logs say they share a recipe:

  seed rows      per organism: the primary statistics' values and corrected verdicts, the two
                 properties of the head the survey chose, whether that head is the planted one,
                 and whether the scan ranks each planted head first of its kind
  seed summary   per primary statistic: mean, standard deviation, range over the seeds, and the
                 number of seeds in which its verdict holds ("k of n")
  best heads     per statistic of a model: the head that ranks first in the direction a
                 self-suppressing semantic head predicts (None on a tie or no value)
  telling apart  on the negative control, a statistic "cannot tell them apart" when the head it
                 ranks first is a planted decoy or avoider: it would name a head without the
                 mechanism as the semantic head. Fixed before any negative-control result was read.

Pure functions of JSON-like records; no model is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from analysis.controls import head_key
from analysis.properties import PROPERTIES

# The training settings that may differ between organisms of one recipe: the seed and where the heads sit.
PER_RUN_SETTINGS = ("seed", "planted_heads")
# The planted kinds of the negative control and the one property each should have (the other must not hold).
NEGATIVE_CONTROL_KINDS: dict[str, str] = {"decoy": "category_attraction", "avoider": "self_avoidance"}


def recipe(train_config: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe of a training configuration: every setting but `PER_RUN_SETTINGS`, plus the planted kinds."""
    kept = {k: v for k, v in train_config.items() if k not in PER_RUN_SETTINGS}
    return {**kept, "planted_kinds": sorted(train_config.get("planted_heads", {}))}


def with_kinds(recipe_: Mapping[str, Any], kinds: Sequence[str]) -> dict[str, Any]:
    """`recipe_` with its planted kinds replaced: the recipe of the same training with other heads planted."""
    return {**recipe_, "planted_kinds": sorted(kinds)}


def sharing(configs: Mapping[str, Mapping[str, Any] | None], reference: Mapping[str, Any]) -> list[str]:
    """The names whose training configuration (None: not trained here) has the recipe `reference`, in order."""
    return [name for name, config in configs.items() if config is not None and recipe(config) == reference]


def seed_row(evidence: Mapping[str, Any], top_heads: Mapping[str, Sequence[Mapping]],
             planted: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """One organism's row: each primary statistic's value with its Holm-corrected verdict, the chosen head's two
    properties per view, the claim, whether the chosen head is the planted semantic head, and per planted kind
    the scan knows, whether the scan ranks the planted head first (`top_heads`: kind -> heads, best first)."""
    target = evidence["target"]
    primary = {key: {"value": evidence["statistics"][key]["value"],
                     "difference": evidence["statistics"][key]["difference"],
                     "p_holm": evidence["family"][key]["p_holm"],
                     "holds": bool(evidence["family"][key]["separates_corrected"])}
               for key in evidence["primary"]}
    properties = {view: None if v is None else {p: bool(v[p]["holds"]) for p in PROPERTIES}
                  for view, v in evidence["properties"]["target"].items()}
    found = {kind: [top_heads[kind][0]["layer"], top_heads[kind][0]["head"]] == list(head)
             for kind, head in planted.items() if kind in top_heads}
    semantic = planted.get("semantic")
    return {"target": head_key(target["layer"], target["head"]), "primary": primary, "properties": properties,
            "claim_supported": bool(evidence["claim"]["supported"]), "planted_found_first": found,
            "target_is_planted": semantic is not None and [target["layer"], target["head"]] == list(semantic)}


def spread(values: Sequence[float]) -> dict[str, float]:
    """mean, sample standard deviation (0 for one value), min and max of `values`."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "sd": sd, "min": min(values), "max": max(values)}


def seed_summary(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Over the organisms' `seed_row`s: each primary statistic's spread and the number of organisms in which its
    corrected verdict holds; the same count for the claim, the chosen head being the planted one, both properties
    in each view, and each planted kind ranked first by the scan. Every count is out of `n`."""
    n = len(rows)
    first = next(iter(rows.values()))
    primary = {key: {**spread([r["primary"][key]["value"] for r in rows.values()]),
                     "holds": sum(r["primary"][key]["holds"] for r in rows.values())} for key in first["primary"]}
    views = first["properties"]
    both = {view: sum(bool(r["properties"][view]) and all(r["properties"][view].values()) for r in rows.values())
            for view in views}
    kinds = sorted({k for r in rows.values() for k in r["planted_found_first"]})
    return {"n": n, "primary": primary, "both_properties": both,
            "claim_supported": sum(r["claim_supported"] for r in rows.values()),
            "target_is_planted": sum(r["target_is_planted"] for r in rows.values()),
            "planted_found_first": {k: sum(r["planted_found_first"].get(k, False) for r in rows.values())
                                    for k in kinds}}


def head_values(report: Mapping[str, Any], statistic: str) -> dict[str, float]:
    """Every head's value of `statistic` in a `controls.compare` report (its target and its controls), by head key;
    heads without a finite value are left out."""
    target = report["target"]
    rows = [(head_key(target["layer"], target["head"]), target[statistic]["value"])]
    rows += [(head_key(c["layer"], c["head"]), c.get(statistic)) for c in report["controls"]]
    return {k: float(v) for k, v in rows if isinstance(v, (int, float)) and math.isfinite(v)}


def best_head(values: Mapping[str, float], direction: str) -> str | None:
    """The head whose value is best in `direction` ("low" or "high"), or None when two heads tie for best or
    there is no value."""
    if not values:
        return None
    ordered = sorted(values.items(), key=lambda kv: kv[1], reverse=direction == "high")
    if len(ordered) > 1 and ordered[0][1] == ordered[1][1]:
        return None
    return ordered[0][0]


def planted_kind_of(planted: Mapping[str, Sequence[int]]) -> dict[str, str]:
    """Head key -> its planted kind."""
    return {head_key(*head): kind for kind, head in planted.items()}


def telling_apart(best: str | None, planted: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """What a statistic's best head on the negative control says: the head, its planted kind (None if not planted)
    and whether the statistic tells the mechanism apart, i.e. does not rank a decoy or avoider first."""
    kind = planted_kind_of(planted).get(best) if best is not None else None
    return {"best_head": best, "best_kind": kind, "tells_apart": kind not in NEGATIVE_CONTROL_KINDS}


def expected_properties(by_head: Mapping[str, Mapping[str, Any]], planted: Mapping[str, Sequence[int]]
                        ) -> dict[str, dict[str, Any]]:
    """Per planted decoy/avoider: its two property verdicts (`properties.verdicts` of its head) and whether they
    are exactly its own ("decoy": category attraction only; "avoider": self-avoidance only)."""
    out = {}
    for kind, own in NEGATIVE_CONTROL_KINDS.items():
        if kind not in planted:
            continue
        verdicts = by_head[head_key(*planted[kind])]
        holds = {p: bool(verdicts[p]["holds"]) for p in PROPERTIES}
        out[kind] = {"head": head_key(*planted[kind]), "holds": holds,
                     "as_expected": holds == {p: p == own for p in holds}}
    return out
