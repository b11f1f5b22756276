"""The two properties of a self-suppressing semantic head, each a verdict with a confidence interval.

A self-suppressing semantic head has two properties, and each can hold without the other:

    self-avoidance        a word scores itself below its category-mates (its partners)
    category attraction   a word scores its partners above the other words

A decoy that attends to its category *including itself* has the second only; a category-blind
head that avoids itself and its copies has the first only. Both together are the claim.

On a set of n units (category words, SAE features) with a head's scores s(i, j) of query i on key
j (`scores: [n, n]`) and their categories (`category: [n]`), each unit i with partners P(i) (same
category, j != i) and others O(i) (every j != i) contributes

    self_vs_partners_i    = s(i, i) - mean_{j in P(i)} s(i, j)      (self-avoidance: < 0)
    partners_vs_others_i  = mean_{j in P(i)} s(i, j) - mean_{j in O(i)} s(i, j)   (attraction: > 0)
    self_vs_others_i      = s(i, i) - mean_{j in O(i)} s(i, j)      = the sum of the two

so the partner margin (the mean of the first) is the self-versus-random-words term minus the
category attraction. The mean of self_vs_others over units is what the margin becomes with the
category labels shuffled (a random word is a shuffled partner): the closed form of the
shuffled-label null, n/(n - 1) tr(W Σ) / scale for scores x_i W x_j^T / scale (`trace_term`).

In context, the same two properties are read from a head's pre-softmax scores z on category
prompts (`in_context_units`): per prompt, the mean over rows q with partners of
z(q, self and copies) - z(q, partners) and z(q, partners) - z(q, other earlier words), each the
log-ratio of the attention one key of one kind gets against one of the other.

Each property's statistic is the mean over units with a percentile-bootstrap CI over units
(`controls.LEVEL`). The decision rule, fixed before any head was read: a property *holds* iff
that CI lies entirely beyond `MIN_EFFECT` = log 2 on the predicted side. Scores are logits, so a
difference of log 2 means the key of one kind gets half (or twice) the attention of the other:
a CI that merely excludes 0 would call a decoy whose self gets 94% of a partner's attention
"self-avoiding", and a random head with a small but consistent tilt "category-attracted". Units
without partners are left out (NaN).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from analysis.attention import QKHead, word_score_matrix
from analysis.controls import LEVEL, N_RESAMPLES, Sample

MIN_EFFECT = math.log(2)  # a property holds when its CI lies beyond this many nats on the predicted side
PROPERTIES: dict[str, tuple[str, str]] = {  # property -> (its per-unit statistic, the direction it predicts)
    "self_avoidance": ("self_vs_partners", "low"),
    "category_attraction": ("partners_vs_others", "high"),
}


def partner_mask(category: Tensor) -> Tensor:
    """`[n, n]` bool: j is a partner of i (same category, j != i)."""
    same = category[:, None] == category[None, :]
    return same & ~torch.eye(len(category), dtype=torch.bool, device=category.device)


def row_mean(scores: Tensor, keys: Tensor) -> Tensor:
    """`[n]`: mean of scores[i, j] over the keys marked in row i of `keys: [n, n]` (NaN for an empty row)."""
    keys = keys.to(scores.dtype)
    return (scores * keys).sum(-1) / keys.sum(-1)


def unit_margins(scores: Tensor, category: Tensor) -> dict[str, Tensor]:
    """Per unit, `[n]` each: self_vs_partners, partners_vs_others and self_vs_others (module docstring; NaN for a
    unit without partners, and self_vs_others NaN where n = 1)."""
    n = len(category)
    partners = partner_mask(category)
    others = ~torch.eye(n, dtype=torch.bool, device=scores.device)
    has_partner = partners.any(-1)
    nan = torch.full((n,), float("nan"), dtype=scores.dtype)
    partner_mean = torch.where(has_partner, row_mean(scores, partners), nan)
    other_mean = row_mean(scores, others)
    self_score = scores.diagonal()
    return {"self_vs_partners": self_score - partner_mean, "partners_vs_others": partner_mean - other_mean,
            "self_vs_others": torch.where(has_partner, self_score - other_mean, nan)}


def trace_term(x: Tensor, qk: QKHead) -> float:
    """n/(n - 1) tr(W Σ) / scale for inputs `x: [n, d]`, W = W_Q W_K^T (biases left out), Σ their covariance
    with 1/n:

    the mean over i of s(i, i) - mean_{j != i} s(i, j), i.e. the partner margin's expectation over shuffled
    category labels, in closed form, through the factors (tr(W Σ) = sum((x_c W_Q) * (x_c W_K)) / n, x_c = x - mean).
    With a rotary head's `rotation` M (off the diagonal s(i, j) = q_i M k_j^T / scale, q = x W_Q, k = x W_K, the
    diagonal at Δ = 0) the same mean is, still through the factors,
    [Σ_i q_i k_i^T / n - ((Σ_i q_i) M (Σ_j k_j)^T - Σ_i q_i M k_i^T) / (n (n - 1))] / scale.
    """
    n = x.shape[0]
    if qk.rotation is not None:
        q, k = x @ qk.W_Q, x @ qk.W_K
        others = (q.sum(0) @ qk.rotation @ k.sum(0) - ((q @ qk.rotation) * k).sum()) / (n * (n - 1))
        return float(((q * k).sum() / n - others) / qk.scale)
    centred = x - x.mean(0, keepdim=True)
    return float(((centred @ qk.W_Q) * (centred @ qk.W_K)).sum() / (n - 1) / qk.scale)


def property_samples(margins: Mapping[str, Tensor], unit: str) -> dict[str, Sample]:
    """The two properties' statistics as `controls.Sample`s over the units (for comparisons between heads)."""
    return {prop: Sample(margins[statistic], unit) for prop, (statistic, _) in PROPERTIES.items()}


def bootstrap_mean(values: Tensor, n_resamples: int, seed: int, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values: [n]` over its finite units and its percentile-bootstrap CI."""
    values = values[~values.isnan()].double()
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    generator = torch.Generator().manual_seed(seed)
    means = values[torch.randint(len(values), (n_resamples, len(values)), generator=generator)].mean(-1)
    alpha = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=means.dtype))
    return float(values.mean()), float(low), float(high)


def verdicts(margins: Mapping[str, Tensor], n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[str, dict]:
    """Each property: {"value", "low", "high", "direction", "holds", "n_units"}: the mean of its per-unit statistic
    over units with its bootstrap CI; it holds iff the CI lies beyond `MIN_EFFECT` on the predicted side
    (`PROPERTIES`): high < -MIN_EFFECT for "low", low > MIN_EFFECT for "high". With fewer than two finite units
    the CI is undefined and the property does not hold (`reason` says so)."""
    out = {}
    for i, (prop, (statistic, direction)) in enumerate(PROPERTIES.items()):
        values = margins[statistic]
        finite = int((~values.isnan()).sum())
        value, low, high = bootstrap_mean(values, n_resamples, seed + i)
        record = {"statistic": statistic, "value": value, "low": low, "high": high, "direction": direction,
                  "n_units": finite}
        if finite < 2:
            out[prop] = {**record, "value": None if finite == 0 else value, "low": None, "high": None,
                         "holds": False, "reason": f"{finite} unit(s) with partners: no interval"}
            continue
        out[prop] = {**record, "holds": bool(high < -MIN_EFFECT if direction == "low" else low > MIN_EFFECT)}
    return out


def both_hold(head_verdicts: Mapping[str, Mapping]) -> bool:
    """Whether a head has both properties: what calling it a self-suppressing semantic head requires."""
    return all(head_verdicts[prop]["holds"] for prop in PROPERTIES)


def in_context_units(attn_scores: Tensor, tokens: Tensor, partner: Tensor, same_word: Tensor) -> dict[str, Tensor]:
    """Per prompt, `[batch, head]` each: the two properties' statistics read from pre-softmax scores in context.

    `attn_scores: [batch, head, query, key]` the scores z (only k <= q is read), `partner: [batch, query, key]`
    the query's earlier, different words of its category (the semantic mask without its BOS fallback),
    `same_word: [batch, query, key]` the query itself and its earlier copies. Over the rows q >= 1 with a
    partner, with other(q) = every earlier key k >= 1 that is neither a partner nor the same word:

        self_vs_partners   = mean_q [mean z(q, same word) - mean z(q, partners)]
        partners_vs_others = mean_q [mean z(q, partners) - mean z(q, other)]   (rows with an other key)

    NaN for a prompt without such rows.
    """
    pos = tokens.shape[1]
    causal = torch.ones(pos, pos, dtype=torch.bool).tril()
    not_bos = torch.ones(pos, dtype=torch.bool)
    not_bos[0] = False
    partner, same_word = partner.bool() & causal, same_word.bool() & causal
    other = causal & not_bos[None, :] & ~partner & ~same_word  # (B, T, T)
    z = attn_scores.double().masked_fill(~causal, 0.0)  # entries above the diagonal may hold -inf: never read

    def key_mean(keys: Tensor) -> Tensor:  # (B, H, T): mean z over the marked keys of each row
        keys = keys[:, None].to(z.dtype)
        return (z * keys).sum(-1) / keys.sum(-1)

    rows = partner.any(-1)  # (B, T): rows with a partner
    rows[:, 0] = False
    with_other = rows & other.any(-1)

    def prompt_mean(values: Tensor, selected: Tensor) -> Tensor:  # (B, H, T) over selected rows -> (B, H)
        weights = selected[:, None].to(values.dtype)
        return (values.nan_to_num() * weights).sum(-1) / weights.sum(-1)

    self_minus_partner = key_mean(same_word) - key_mean(partner)
    partner_minus_other = key_mean(partner) - key_mean(other)
    return {"self_vs_partners": prompt_mean(self_minus_partner, rows),
            "partners_vs_others": prompt_mean(partner_minus_other, with_other)}


# The input view the weight-space verdicts read (`token_maps.INPUT_VIEWS`), fixed in advance: "context", each
# word's real input averaged over random contexts, is what the head sees on the category prompts on which its
# behaviour is measured; the "mean" and "zero" views replace the context by one constant, which shrinks the
# differences between words that the two properties compare.
WEIGHT_VIEW = "context"


def weight_verdicts(x: Tensor, category: Tensor, qk: QKHead, seed: int = 0,
                    n_resamples: int = N_RESAMPLES) -> dict[str, dict]:
    """`verdicts` of the head `qk` on inputs `x: [n, d]` of category words (`category: [n]`): the two properties
    read from its scores over the words (`attention.word_score_matrix`: s(i, j) = x_i W_Q M W_K^T x_j^T / scale
    between different words, each word's self-score at Δ = 0 on the diagonal), words the units."""
    return verdicts(unit_margins(word_score_matrix(x, qk), category), n_resamples, seed)
