"""Held-out categories beside the supervised ones: does what the analyses find reach categories never supervised?

A model organism's language may keep some categories (its ground truth's "held_out_categories",
`prompts.HELD_OUT_CATEGORIES`) in its category text, so next-token prediction sees them, while its
attention supervision never names them. The mechanism scripts then run twice on one head: on the
supervised categories (the main run) and with --categories held_out. The head is the one the supervised
survey chose (characterize_head's target), fixed before any held-out word is read: choosing it on held-out
words would select on the test set.

Each statistic of `STATISTICS` is read from both runs as a `Reading` (value, CI where the file gives one,
verdict), and set side by side (`statistic_row`):

    shift    = held_out.value - supervised.value         (on the statistic's own scale)
    disjoint = both CIs given and they do not overlap    (held_out.high < supervised.low or the reverse)
    recovers = the held-out verdict is a success          ("separates" for a comparison with the strongest
                                                           control head, `controls.compare`; "holds" for a
                                                           property, `properties.verdicts`)

with the very rules the supervised run is judged by: nothing is re-decided for the held-out words. A
statistic whose file keeps no comparison (a pooled descriptive value) has no verdict and recovers nothing.
The head generalises (`generalises`) iff both properties hold in its behaviour on held-out prompts
(`properties.verdicts`): what calling it a self-suppressing semantic head requires on supervised ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

SUCCESS = ("separates", "holds")  # the verdicts by which a statistic finds what it looks for
GROUND_TRUTH_KEY = "held_out_categories"  # where a model's ground truth lists its held-out categories
HELD_OUT_SET = "held_out"  # the --categories set of the held-out run (`prompts.CATEGORY_SETS`)


@dataclass(frozen=True)
class Source:
    """Where one statistic lives in a run's results file: the file (`script`) and the dotted paths of its value,
    verdict (None: a descriptive value with no verdict) and CI's ends (None: the file gives no CI). "{head}" in
    a path stands for the target's key, "L<l>H<h>"."""

    script: str
    value: str
    verdict: str | None
    low: str | None = None
    high: str | None = None

    def paths(self, head: str) -> dict[str, str | None]:
        """{"value", "verdict", "low", "high"}: the dotted paths of this statistic for the target `head`."""
        return {key: None if path is None else path.format(head=head)
                for key, path in (("value", self.value), ("verdict", self.verdict), ("low", self.low),
                                  ("high", self.high))}


def _survey(metric: str) -> Source:
    value = f"results.target.{metric}"
    return Source("characterize_head", value, f"results.comparison.target.{metric}.verdict", f"{value}_low",
                  f"{value}_high")


def _compared(script: str, name: str) -> Source:
    return Source(script, f"results.target.{name}.value", f"results.target.{name}.verdict")


def _property(script: str, name: str) -> Source:
    record = f"results.properties.by_head.{{head}}.{name}"
    return Source(script, f"{record}.value", f"{record}.holds", f"{record}.low", f"{record}.high")


# The statistics, in the order the paper lists them: the survey's (behaviour on category prompts), the
# two properties in behaviour and in the weights, the partner margin's, the clustering's and the cosine contrast's.
STATISTICS: dict[str, Source] = {
    "surprisal": _survey("surprisal"),
    "partner_mass": _survey("partner_mass"),
    "self_mass": _survey("self_mass"),
    "bos_mass_no_partner": _survey("bos_mass_no_partner"),
    "self_avoidance_behaviour": _property("characterize_head", "self_avoidance"),
    "category_attraction_behaviour": _property("characterize_head", "category_attraction"),
    "margin": _compared("skew_analysis", "margin"),
    "below_partners_share": _compared("skew_analysis", "below_partners_share"),
    "self_avoidance_weights": _property("skew_analysis", "self_avoidance"),
    "category_attraction_weights": _property("skew_analysis", "category_attraction"),
    "ari": _compared("clustering", "ari"),
    "cosine_mates_minus_self": Source("cosine_attention_analysis", "results.category_contrast.mates_mean", None),
    "cosine_others_minus_self": Source("cosine_attention_analysis", "results.category_contrast.others_mean", None),
    "cosine_mates_minus_others": _compared("cosine_attention_analysis", "mates_minus_others"),
}
SCRIPTS: tuple[str, ...] = tuple(dict.fromkeys(s.script for s in STATISTICS.values()))  # the runs' files


@dataclass(frozen=True)
class Reading:
    """One statistic in one run: its value (None: undefined), its CI (None where the file gives none) and its
    verdict ("separates", "holds", ...; a property's True/False read as "holds"/"does not hold"; None: none)."""

    value: float | None
    low: float | None = None
    high: float | None = None
    verdict: str | bool | None = None

    @property
    def decided(self) -> str | None:
        if isinstance(self.verdict, bool):
            return "holds" if self.verdict else "does not hold"
        return self.verdict


def disjoint(a: Reading, b: Reading) -> bool | None:
    """Whether the CIs of `a` and `b` do not overlap (a.high < b.low or b.high < a.low); None without both CIs."""
    ends = (a.low, a.high, b.low, b.high)
    if any(end is None for end in ends):
        return None
    return a.high < b.low or b.high < a.low


def statistic_row(supervised: Reading, held_out: Reading) -> dict:
    """One statistic on both runs: each reading, shift = held_out - supervised, whether their CIs are disjoint,
    and whether each run's verdict is a success (`SUCCESS`: None where the statistic has no verdict)."""

    def side(r: Reading) -> dict:
        success = None if r.decided is None else r.decided in SUCCESS
        return {"value": r.value, "low": r.low, "high": r.high, "verdict": r.decided, "success": success}

    both = supervised.value is not None and held_out.value is not None
    return {"supervised": side(supervised), "held_out": side(held_out),
            "shift": held_out.value - supervised.value if both else None,
            "disjoint": disjoint(supervised, held_out),
            "recovers": side(held_out)["success"],
            "same_verdict": supervised.decided == held_out.decided}


BEHAVIOUR_PROPERTIES = ("self_avoidance_behaviour", "category_attraction_behaviour")


def generalises(rows: Mapping[str, Mapping]) -> bool:
    """Whether both properties hold in the head's behaviour on held-out prompts (`statistic_row`s by name)."""
    return all(rows[name]["recovers"] for name in BEHAVIOUR_PROPERTIES)


def recovered(rows: Mapping[str, Mapping]) -> dict[str, list[str]]:
    """The statistics (of `statistic_row`s) that recover the held-out categories, those that do not, and those
    with no verdict."""
    out: dict[str, list[str]] = {"recovers": [], "does not recover": [], "no verdict": []}
    for name, row in rows.items():
        out["no verdict" if row["recovers"] is None else "recovers" if row["recovers"] else "does not recover"].append(
            name)
    return out
