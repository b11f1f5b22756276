"""The atlas: every head of a model profiled once, labelled by rules fixed in advance, ranked across models.

One model's profile (`profile_heads`) holds, per head:

    previous_token       mean A[i, i-1] on random tokens                       (scan.scan_heads)
    induction[L]         mean A[q, q-L+1] on [BOS] + r + r, |r| = L, each L     (scan.scan_heads)
    duplicate[L]         mean A[q, q-L] on the same prompts                    (scan.scan_heads)
    S, masses            S and the partner, self (+ copies) and BOS-without-partner masses, with bootstrap
                         CIs over prompts, on the *report* prompt set (scan.held_out_survey)
    behaviour verdicts   self-avoidance and category attraction from the pre-softmax scores in context
                         (properties.in_context_units, prompts the units), on the report set
    weight verdicts      the same two properties from the head's weights on the category words'
                         vocabulary-level inputs (properties.weight_verdicts, view properties.WEIGHT_VIEW);
                         positions as `positions.position_treatment` decides from the model: learned
                         absolute positions are in the input; with rotary positions a word's self-score
                         sits at Δ = 0 and its scores on other words at M = E_Δ[R(Δ)] over the survey's
                         query–partner distances

and the same S and behaviour verdicts on the *selection* set, which alone decides the ranking
(`rank_key`): a head's reported values never come from the prompts that placed it. Each probe is one
batched pass for every head; the weight statistics come from d_head-sized factors.

Every value stands beside its control distribution within its model, the model's other heads
(`within_model`: the share of the others below it and its z-score against them).

The kind label (`kind_label`) takes the first of `KIND_RULES` that a head meets; the rules and their
thresholds were fixed before any atlas was run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from analysis import prompts, properties, scan
from analysis.controls import N_RESAMPLES
from analysis.patterns import all_patterns
from analysis.positions import position_treatment
from analysis.self_suppression import every_head_statistics
from analysis.survey import behaviour_verdicts, survey_table
from analysis.token_maps import InputOptions, group_tokens

# --- the rules, fixed in advance ------------------------------------------------------------------

PREVIOUS_TOKEN_MIN = 0.5  # mean attention to the previous token: at least half of every row
INDUCTION_MIN = 0.3  # mean attention to the induction target, at every repeat length (rules out position tricks)
DUPLICATE_MIN = 0.3  # mean attention to the earlier copy, at every repeat length
READINGS = ("behaviour", "weights")  # where a property is read: in context on prompts, or from the weights

KIND_RULES: dict[str, str] = {  # kind -> its rule in words; a head takes the first kind whose rule it meets
    "semantic": "self-avoidance and category attraction both hold, in behaviour and in the weights",
    "previous-token": f"previous-token score >= {PREVIOUS_TOKEN_MIN}",
    "induction": f"induction score >= {INDUCTION_MIN} at every repeat length",
    "duplicate-token": f"duplicate-token score >= {DUPLICATE_MIN} at every repeat length",
    "self-avoider": "self-avoidance holds in behaviour and in the weights (category attraction not in both)",
    "category": "category attraction holds in behaviour and in the weights (self-avoidance not in both)",
    "other": "none of the above",
}
RANKING = ("heads with both properties in both readings on the selection prompts first, then the rest; "
           "within each, by S on the selection prompts, lowest first")

MASSES = ("partner_mass", "self_mass", "bos_mass_no_partner")
# The values given a within-model percentile and z-score: "a.b" reads head[a][b]["value"] (a verdict's statistic).
WITHIN_MODEL = ("S", *MASSES, "previous_token", *(f"{r}.{p}" for r in READINGS for p in properties.PROPERTIES))


def holds_in_both(verdicts: Mapping[str, Mapping[str, Mapping]], prop: str) -> bool:
    """Whether property `prop` holds in every reading of `verdicts` ({reading: {property: verdict}})."""
    return all(verdicts[reading][prop]["holds"] for reading in READINGS)


def kind_label(head: Mapping) -> str:
    """The first kind of `KIND_RULES` whose rule `head` meets: `head` has "previous_token", "induction" and
    "duplicate" ({repeat length: score}) and "behaviour", "weights" ({property: verdict with "holds"})."""
    avoids, attracts = (holds_in_both(head, prop) for prop in properties.PROPERTIES)
    if avoids and attracts:
        return "semantic"
    if head["previous_token"] >= PREVIOUS_TOKEN_MIN:
        return "previous-token"
    if min(head["induction"].values()) >= INDUCTION_MIN:
        return "induction"
    if min(head["duplicate"].values()) >= DUPLICATE_MIN:
        return "duplicate-token"
    if avoids:
        return "self-avoider"
    if attracts:
        return "category"
    return "other"


def within_model(values: Tensor) -> tuple[Tensor, Tensor]:
    """(percentile, z), each `[n]`, of every head's value among the model's other heads, `values: [n]`:

        percentile_i = #{j != i : v_j < v_i} / (n - 1)
        z_i = (v_i - mean_{j != i} v_j) / std_{j != i} v_j

    (NaN values are left out of the others; z is NaN where the others have no spread.)"""
    v = values.double()
    n = len(v)
    others = ~torch.eye(n, dtype=torch.bool) & ~v.isnan()[None, :]  # (n, n): j counts for i
    count = others.sum(-1).double()
    percentile = ((v[None, :] < v[:, None]) & others).sum(-1) / count
    filled = v.nan_to_num()[None, :].expand(n, n)
    mean = (filled * others).sum(-1) / count
    var = (((filled - mean[:, None]) ** 2) * others).sum(-1) / (count - 1)
    z = (v - mean) / var.sqrt()
    return percentile, torch.where(var > 0, z, torch.full_like(z, float("nan")))


def rank_key(head: Mapping) -> tuple[bool, float]:
    """Sort key of `RANKING`: both properties in both readings on the selection set first, then by its S."""
    selection = head["selection"]
    both = all(holds_in_both({"behaviour": selection["behaviour"], "weights": head["weights"]}, prop)
               for prop in properties.PROPERTIES)
    s = selection["S"]
    return (not both, float("inf") if s is None else s)


def ranked(heads: Mapping[str, Mapping]) -> dict[str, int]:
    """Every key of `heads` -> its rank (1 = first) by `rank_key`, ties kept in the order given."""
    order = sorted(heads, key=lambda key: rank_key(heads[key]))
    return {key: i + 1 for i, key in enumerate(order)}


# --- one model's profile ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AtlasSettings:
    """What `profile_heads` measures on: the scan's prompts (`scan`), `n_prompts` category prompts of
    `n_words` words per survey set, `display_words` words in the one category prompt whose patterns are kept for
    the page, and `n_resamples` bootstrap resamples for every CI."""

    scan: scan.ScanSettings = scan.ScanSettings(n_random=16, n_repeated=16)
    n_prompts: int = 64
    n_words: int = 64
    display_words: int = 24
    n_resamples: int = N_RESAMPLES


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def _interval(row, metric: str) -> dict[str, float]:
    return {"value": float(row[metric]), "low": float(row[f"{metric}_low"]), "high": float(row[f"{metric}_high"])}


def _verdict_record(verdict: Mapping) -> dict:
    keep = ("value", "low", "high", "holds", "n_units", "reason")
    return {key: verdict[key] for key in keep if key in verdict}


@torch.no_grad()
def profile_heads(model: HookedTransformer, categories: Mapping[str, Sequence[str]],
                  settings: AtlasSettings = AtlasSettings(), seed: int = 0, progress: bool = False) -> dict:
    """{"heads": {name: record}, "display": {...}}: every head of `model` profiled as the module docstring says.

    Each head's record holds layer, head, depth (layer / (n_layers - 1), 0 for one layer), previous_token,
    induction and duplicate ({repeat length: score}), S and `MASSES` ({value, low, high}: report set), its
    "behaviour" (report set) and "weights" verdicts ({property: verdict}), its "selection" ({S, behaviour}),
    "within_model" ({"<value>_percentile", "<value>_z"}) and "kind". "display" holds one category prompt's tokens
    and every head's pattern on it, rounded to 3 decimals, rows cut at the diagonal.
    """
    cfg = model.cfg
    found = scan.scan_heads(model, settings.scan, seed, categories=None, progress=progress)
    survey = scan.held_out_survey(model, settings.n_prompts, settings.n_words, seed, categories)
    tables = {name: survey_table(survey[name], n_resamples=settings.n_resamples, seed=seed).set_index(["layer", "head"])
              for name in ("selection", "report")}
    behaviour = {name: behaviour_verdicts(survey[name], settings.n_resamples, seed) for name in ("selection", "report")}
    ids, _, category, _ = group_tokens(model.tokenizer, categories)
    positions = position_treatment(model, categories, seed)  # rotary: self at Δ = 0, other words at E_Δ[R(Δ)]
    weights = every_head_statistics(model, properties.WEIGHT_VIEW, prompts.CategoryWords(ids, category), seed,
                                    lambda x, c, qk, s: properties.weight_verdicts(x, c, qk, s, settings.n_resamples),
                                    InputOptions(categories, progress=progress, rotation=positions.rotation))

    heads = {}
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            report, selection = tables["report"].loc[(layer, head)], tables["selection"].loc[(layer, head)]
            heads[head_name(layer, head)] = {
                "layer": layer, "head": head, "depth": layer / max(cfg.n_layers - 1, 1),
                "previous_token": float(found.previous_token[layer, head]),
                "induction": {str(n): float(s[layer, head]) for n, s in found.induction.items()},
                "duplicate": {str(n): float(s[layer, head]) for n, s in found.duplicate.items()},
                "S": _interval(report, "surprisal"), **{m: _interval(report, m) for m in MASSES},
                "behaviour": {p: _verdict_record(v) for p, v in behaviour["report"][layer, head].items()},
                "weights": {p: _verdict_record(v) for p, v in weights[layer, head].items()},
                "selection": {"S": float(selection["surprisal"]), "behaviour": {
                    p: _verdict_record(v) for p, v in behaviour["selection"][layer, head].items()}},
            }
    for name, record in heads.items():
        record["kind"] = kind_label(record)
    _add_within_model(heads)
    tokens, _ = prompts.category_probe(model, categories, 1, settings.display_words, seed + 2 * scan.REPORT_SEED_OFFSET)
    pattern = all_patterns(model, tokens)[0]  # (L, nh, T, T)
    display = {"prompt": f"a category prompt of {settings.display_words} words, drawn apart from both survey sets",
               "tokens": model.to_str_tokens(tokens[0]),
               "heads": {head_name(l, h): [[round(float(a), 3) for a in pattern[l, h, q, :q + 1]]
                                           for q in range(tokens.shape[1])]
                         for l in range(cfg.n_layers) for h in range(cfg.n_heads)}}
    return {"heads": heads, "display": display, "survey_seeds": survey["seeds"],
            "shared_prompts": survey["shared_prompts"], "position_treatment": positions.description}


def _add_within_model(heads: dict[str, dict]) -> None:
    """Each head's "within_model": {"<value>_percentile", "<value>_z"} for each of `WITHIN_MODEL`, among the
    model's other heads."""
    def read(head: Mapping, value: str) -> float:
        if value == "previous_token":
            return head[value]
        entry = head[value] if "." not in value else head[value.split(".")[0]][value.split(".")[1]]
        return float("nan") if entry["value"] is None else entry["value"]

    names = list(heads)
    for value in WITHIN_MODEL:
        percentile, z = within_model(torch.tensor([read(heads[n], value) for n in names], dtype=torch.float64))
        key = value.replace(".", "_")
        for i, name in enumerate(names):
            heads[name].setdefault("within_model", {}).update(
                {f"{key}_percentile": float(percentile[i]), f"{key}_z": float(z[i])})

