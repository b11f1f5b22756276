"""The study's per-head precision of predicted SAE features, as a curve over k, and its shuffled-label null.

Definition read off the study's code (Mamiglia/deep-dive-L1H5: scratch.py `pred_accuracy`,
src/utils.py `precision` and `random_toks_with_keywords`, src/maps.py `token2feat_attn`); ours is
written from that description. For every head of the SAE's layer, on keyword samples (BOS and
random tokens holding one category's words, `keyword_prompts`): the k features the head's QK
circuit predicts for each query, decoder directions as keys (`predicted_features`), against the
features active at its most-attended key (`active_features`, `active_at_attended_key`), counted as
TP / (TP + FP) with the keyword positions but the first as positives (`overlap_precision`).

A feature is active only where its code is non-zero: the active set at k is the top k codes
restricted to codes > 0, so it never holds more features than the SAE activates (16 at every
position for a TopK SAE with k = 16). An earlier `codes.topk(32)` here counted zero-valued
features, picked by tie-breaking, as active wherever the SAE activates fewer than 32; they overlap
predictions at scored and unscored positions alike and pull TP / (TP + FP) towards the share of
scored positions. Precision is reported as a curve over k (`PRECISION_KS`, as far as the SAE's
active count allows: `curve_ks`), each k beside its null, and judged at one k fixed before any
precision is computed (`choose_k`): the study's 32 where the median position of the keyword samples
has at least 32 active features, else that median active count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from analysis.controls import Sample, paired_difference
from analysis.errors import UsageError
from analysis.prompts import STUDY_CATEGORIES, bos_token_id, single_token_ids
from analysis.sae.sources import hook_for_layer
from analysis.scores import bootstrap_ci

STUDY_K = 32  # the study's k: features predicted and taken as active per position
PRECISION_KS = (1, 2, 4, 8, 16, 32)  # the curve's k, as far as the SAE's active count allows (`curve_ks`)
PRECISION_LENGTH = 20  # BOS + 19 tokens per sample
PRECISION_CATEGORIES = ("colours", "animals", "fruits", "emotions", "weather")  # the study's five for this metric
PRECISION_SHUFFLES = 20  # label permutations of the shuffled-feature null, per sample
INACTIVE = -1  # the id of an empty slot of an active set (a code <= 0): matches no feature


class KeywordSamples(NamedTuple):
    """Keyword samples and the positions they score, which travel together: `tokens: [n, length]`, `scored: [n,
    length]` (`keyword_prompts`)."""

    tokens: Tensor
    scored: Tensor


@dataclass(frozen=True)
class PrecisionSettings:
    """How the study's precision is counted (`precision_with_null`): each k of `ks` (features predicted, and the
    most taken as active, per position), `n_shuffles` label permutations per sample for the null (0: none) drawn
    with `seed`, `batch_size` samples per forward pass."""

    ks: tuple[int, ...] = PRECISION_KS
    n_shuffles: int = PRECISION_SHUFFLES
    seed: int = 0
    batch_size: int = 64


class KChoice(NamedTuple):
    """The k the verdict uses (`choose_k`): `k`, the SAE's `active_count` it was decided from (the median number of
    non-zero codes per position), the `study_k` it falls back from, and which branch of the rule decided it."""

    k: int
    active_count: int
    study_k: int
    reason: Literal["study_k", "active_count"]


def keyword_prompts(word_ids: Sequence[int], n_prompts: int, d_vocab: int, bos_id: int, seed: int,
                    length: int = PRECISION_LENGTH) -> KeywordSamples:
    """The study's samples for one category: (`tokens: [n, length]`, `scored: [n, length]`).

    BOS, then uniform random ids; the category's words, shuffled, overwrite sorted distinct random
    positions in 1..length-1, the last keyword forced to the last position. `scored` marks the
    keyword positions except the first keyword (the positions whose overlap counts as true positives).
    """
    n_words = len(word_ids)
    if not 0 < n_words < length:
        raise UsageError(f"A keyword sample of {length} tokens holds 1 to {length - 2} keywords; got {n_words}.")
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, d_vocab, (n_prompts, length), generator=g)
    tokens[:, 0] = bos_id
    scored = torch.zeros(n_prompts, length, dtype=torch.bool)
    words = torch.tensor(list(word_ids))
    for b in range(n_prompts):
        others = 1 + torch.randperm(length - 2, generator=g)[:n_words - 1]  # distinct positions in 1..length-2
        positions = torch.cat([others.sort().values, torch.tensor([length - 1])])
        tokens[b, positions] = words[torch.randperm(n_words, generator=g)]
        scored[b, positions[1:]] = True
    return KeywordSamples(tokens, scored)


def overlap_precision(predicted: Tensor, active: Tensor, scored: Tensor) -> Tensor:
    """`[batch]`: the study's precision of predicted features, TP / (TP + FP), 0 where both are 0.

    `predicted`, `active: [batch, pos, k]` feature indices (distinct within a position, but for the `INACTIVE`
    slots of an active set, which match nothing); `scored: [batch, pos]`. ov_i = |predicted_i ∩ active_i|;
    TP = sum of ov_i over scored positions, FP over every other position. Not |predicted ∩ active| / k.
    """
    overlap = (predicted[..., :, None] == active[..., None, :]).any(-1).sum(-1)  # (B, T)
    tp = (overlap * scored).sum(-1).double()
    fp = (overlap * ~scored).sum(-1).double()
    return torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), torch.zeros_like(tp))


def predicted_features(x: Tensor, decoder_keys: Tensor, W_Q: Tensor, k: int = STUDY_K) -> Tensor:
    """`[batch, head, pos, k]`: the k features whose decoder direction, as a key, the head's query favours (best
    first).

    `x: [batch, pos, d_model]` the normalised residual at each query; `decoder_keys: [head, d_sae,
    d_head]` = LN(W_dec) W_K; `W_Q: [head, d_model, d_head]`. score_i[f] = LN(d_f) W_K W_Q^T x_i
    (unscaled, no biases, as the study). Factored: the largest tensor is [batch, pos, d_sae] per head.
    Sorted by score, so the first k' columns are the prediction at any k' <= k.
    """
    out = []
    for h in range(W_Q.shape[0]):
        q = x @ W_Q[h]  # (B, T, d_head)
        out.append((q @ decoder_keys[h].T).topk(k, dim=-1).indices)  # (B, T, d_sae) -> (B, T, k)
    return torch.stack(out, dim=1)


def active_features(codes: Tensor, k: int) -> Tensor:
    """`[batch, pos, k]`: the features active at each position, at most k of them, largest code first.

    `codes: [batch, pos, d_sae]`. A_k(i) = top_k(c_i) ∩ {f : c_i[f] > 0}, so |A_k(i)| = min(k, ||c_i||_0) when the
    codes are >= 0: a feature is active only where its code is non-zero. Slots beyond that hold `INACTIVE` (-1),
    which matches no predicted feature, so a zero-valued feature that `topk` picks by tie-breaking never counts.
    Sorted by code, so the first k' columns are the active set at any k' <= k.
    """
    values, indices = codes.topk(k, dim=-1)
    return torch.where(values > 0, indices, torch.full_like(indices, INACTIVE))


def active_count(codes: Tensor) -> Tensor:
    """`[batch, pos]`: ||c_i||_0 = #{f : c_i[f] > 0}, the number of non-zero codes at each position (`codes: [batch,
    pos, d_sae]`, >= 0 as an SAE's ReLU-family activations are)."""
    return (codes > 0).sum(-1)


def choose_k(active: Tensor, study_k: int = STUDY_K) -> KChoice:
    """The one k of the verdict, fixed from the SAE alone before any precision is computed.

    `active: [...]` active counts per position (`active_count`) on the keyword samples; m = their median (the
    lower middle value). k = `study_k` if m >= study_k (the study's k, where the SAE activates that many features
    at a position), else k = m (the SAE's own number of active features; at least 1).
    """
    m = int(active.flatten().median())
    if m >= study_k:
        return KChoice(study_k, m, study_k, "study_k")
    return KChoice(max(m, 1), m, study_k, "active_count")


def curve_ks(choice: KChoice, ks: Sequence[int] = PRECISION_KS) -> tuple[int, ...]:
    """The k of the curve: each of `ks` up to the SAE's active count (a larger k adds no active feature), and the
    verdict's k, ascending."""
    return tuple(sorted({k for k in ks if k <= max(choice.active_count, 1)} | {choice.k}))


def active_at_attended_key(active: Tensor, pattern: Tensor) -> Tensor:
    """`[batch, head, pos, k]`: the active features at each query's most-attended key.

    `active: [batch, pos, k]` feature indices per position; `pattern: [batch, head, query, key]`.
    """
    key = pattern.argmax(-1)  # (B, H, Q)
    b = torch.arange(active.shape[0])[:, None, None]
    return active[b, key]  # (B, H, Q, k)


def shuffled_labels(predicted: Tensor, d_sae: int, generator: torch.Generator) -> Tensor:
    """`predicted: [batch, pos, k]` feature indices with the feature labels permuted: one random permutation
    of the d_sae labels per sample, the same at every position of it. Each position keeps k distinct
    features, and positions that shared predictions still share them; only which feature is which is lost."""
    perm = torch.rand(predicted.shape[0], d_sae, generator=generator).argsort(-1)  # (B, d_sae)
    return perm.gather(1, predicted.reshape(predicted.shape[0], -1)).reshape(predicted.shape)


def _encoded(model: HookedTransformer, sae, layer: int, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(x: [batch, pos, d_model] the LayerNorm'd residual the SAE reads, codes: [batch, pos, d_sae], pattern:
    [batch, head, query, key] of `layer`) for `tokens: [batch, pos]`."""
    hook = hook_for_layer(layer)
    names = (hook, f"blocks.{layer}.attn.hook_pattern")
    _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n in names, return_type=None)
    x = torch.nn.functional.layer_norm(cache[hook].float().cpu(), (model.cfg.d_model,))
    codes = sae.encode(x.to(sae.W_dec.device, sae.W_dec.dtype)).float().cpu()  # of the LN'd input, as the study
    return x, codes, cache[names[1]].float().cpu()


@torch.no_grad()
def sample_active_counts(model: HookedTransformer, sae, layer: int, samples: Mapping[str, KeywordSamples],
                         batch_size: int = 64) -> Tensor:
    """`[unit, pos]`: the SAE's active count (`active_count`) at every position of every keyword sample, the
    categories' samples one after another (as `pooled`)."""
    tokens = torch.cat([own.tokens for own in samples.values()])
    return torch.cat([active_count(_encoded(model, sae, layer, tokens[i:i + batch_size])[1])
                      for i in range(0, tokens.shape[0], batch_size)])


@torch.no_grad()
def precision_with_null(model: HookedTransformer, sae, layer: int, samples: KeywordSamples,
                        settings: PrecisionSettings = PrecisionSettings()) -> dict[str, Tensor]:
    """`{"precision": [k, batch, head], "shuffled": [k, batch, head]}`: the study's precision for every head of
    `layer` on keyword `samples` at each k of `settings.ks`, and its null with the predicted features' labels
    shuffled.

    The SAE reads `hook_for_layer(layer)`; the residual and the decoder directions are normalised
    by a LayerNorm without affine, and the SAE encodes the normalised residual (as the study, which
    turns the SAE's own input normalisation off).
    At k: predicted, the top k of the QK score of each decoder direction as a key (`predicted_features`);
    active, the non-zero codes among the top k at the most-attended key (`active_features`).
    Null ("shuffled"): the mean precision over `n_shuffles` label permutations of the predicted features
    (`shuffled_labels`, one permutation per sample for every k). TP / (TP + FP) compares overlaps at keyword
    positions with overlaps elsewhere, so a head whose predictions know nothing of the active features still
    scores about the keyword positions' share of all positions; the permutation keeps everything of the head's
    predictions but their identity, so the null is that chance level for this head, these samples and this SAE
    (0 shuffles: no null, NaN).
    """
    tokens, scored = samples
    ks, n_shuffles, batch_size = tuple(settings.ks), settings.n_shuffles, settings.batch_size
    W_dec = torch.nn.functional.layer_norm(sae.W_dec.detach().float().cpu(), (model.cfg.d_model,))  # (d_sae, d)
    W_K = model.W_K[layer].detach().float().cpu()  # (H, d_model, d_head)
    W_Q = model.W_Q[layer].detach().float().cpu()
    decoder_keys = torch.einsum("fd,hde->hfe", W_dec, W_K)  # (H, d_sae, d_head)
    n_heads, top = W_Q.shape[0], max(ks)
    generator = torch.Generator().manual_seed(settings.seed)
    out: dict[str, list[Tensor]] = {"precision": [], "shuffled": []}
    for start in range(0, tokens.shape[0], batch_size):
        marks = scored[start:start + batch_size]
        x, codes, pattern = _encoded(model, sae, layer, tokens[start:start + batch_size])
        truth = active_at_attended_key(active_features(codes, top), pattern)  # (B, H, T, top)
        predicted = predicted_features(x, decoder_keys, W_Q, top)  # (B, H, T, top)
        out["precision"].append(torch.stack([torch.stack([overlap_precision(
            predicted[:, h, :, :k], truth[:, h, :, :k], marks) for h in range(n_heads)], dim=1) for k in ks]))
        null = torch.zeros(len(ks), len(marks), n_heads, dtype=torch.float64)
        for _ in range(n_shuffles):
            for h in range(n_heads):
                shuffled = shuffled_labels(predicted[:, h], codes.shape[-1], generator)
                for i, k in enumerate(ks):
                    null[i, :, h] += overlap_precision(shuffled[..., :k], truth[:, h, :, :k], marks)
        out["shuffled"].append(null / n_shuffles if n_shuffles else torch.full_like(null, float("nan")))
    return {name: torch.cat(chunks, dim=1) for name, chunks in out.items()}


def head_precision(model: HookedTransformer, sae, layer: int, samples: KeywordSamples,
                   settings: PrecisionSettings = PrecisionSettings()) -> Tensor:
    """`[k, batch, head]`: the study's precision for every head of `layer` on keyword `samples` at each k of
    `settings.ks` (`precision_with_null` without its null: `settings.n_shuffles` is not used)."""
    return precision_with_null(model, sae, layer, samples, replace(settings, n_shuffles=0))["precision"]


def category_samples(model: HookedTransformer, n_samples: int, seed: int = 0) -> dict[str, KeywordSamples]:
    """`{category: keyword_prompts(...)}` for each of `PRECISION_CATEGORIES`, `n_samples` each, category i's
    seeded seed + 10 + i."""
    bos = bos_token_id(model)
    return {name: keyword_prompts(single_token_ids(model.tokenizer, STUDY_CATEGORIES[name]), n_samples,
                                  model.cfg.d_vocab, bos, seed + 10 + i) for i, name in enumerate(PRECISION_CATEGORIES)}


def precision_by_category(model: HookedTransformer, sae, layer: int, samples: Mapping[str, KeywordSamples],
                          settings: PrecisionSettings = PrecisionSettings()) -> dict[str, dict[str, Tensor]]:
    """`{category: precision_with_null(...)}` on each category's keyword `samples` (`category_samples`), category
    i's shuffles seeded settings.seed + 20 + i."""
    return {name: precision_with_null(model, sae, layer, own, replace(settings, seed=settings.seed + 20 + i))
            for i, (name, own) in enumerate(samples.items())}


def pooled(per_category: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """`{"precision": [k, unit, head], "shuffled": [k, unit, head]}`: `precision_by_category`'s samples of every
    category as one list of units (keyword samples), category by category. With as many samples per category,
    the mean over units is the mean over categories of the per-category means."""
    return {name: torch.cat([part[name] for part in per_category.values()], dim=1)
            for name in ("precision", "shuffled")}


def precision_by_head(per_category: Mapping[str, Mapping[str, Tensor]], index: int) -> dict[int, dict[str, object]]:
    """head -> {precision: Sample, precision_shuffled, precision_<category>...} at the `index`-th k, from
    `precision_by_category`'s `{category: {"precision": [k, batch, head], "shuffled": [k, batch, head]}}`:

    precision(h) = a `controls.Sample` of P[index, u, h] over the pooled keyword samples u (`pooled`; its value the
    mean over units); precision_c(h) = mean_b P_c[index, b, h]; precision_shuffled(h) = mean_u of the null.
    """
    both = pooled(per_category)
    out = {}
    for h in range(both["precision"].shape[2]):
        out[h] = {"precision": Sample(both["precision"][index, :, h], "keyword sample"),
                  "precision_shuffled": float(both["shuffled"][index, :, h].mean()),
                  **{f"precision_{n}": float(part["precision"][index, :, h].mean())
                     for n, part in per_category.items()}}
    return out


class Interval(NamedTuple):
    """A mean over units and its percentile-bootstrap CI, each `[...]` (one value per head, per k, ...)."""

    value: Tensor
    low: Tensor
    high: Tensor


def _interval(per_unit: Tensor, n_resamples: int, seed: int) -> Interval:
    mean, low, high = bootstrap_ci(per_unit, n_resamples=n_resamples, seed=seed)
    return Interval(*(torch.as_tensor(v, dtype=torch.float64) for v in (mean, low, high)))


def precision_curve(both: Mapping[str, Tensor], n_resamples: int = 1000, seed: int = 0) -> dict[str, Interval]:
    """The curve with CIs over keyword samples, from `pooled`'s `{"precision": [k, unit, head], "shuffled": ...}`:

    "precision", "null" and "minus_null" (P - null, paired by sample), each an `Interval` of `[k, head]`: the mean
    over units and its percentile-bootstrap CI (`scores.bootstrap_ci`, 95%), units resampled with replacement.
    """
    precision, null = both["precision"].double(), both["shuffled"].double()
    per_unit = {"precision": precision, "null": null, "minus_null": precision - null}  # each (k, unit, head)
    return {name: _interval(values.transpose(0, 1), n_resamples, seed) for name, values in per_unit.items()}


def above_null(both: Mapping[str, Tensor], index: int, head: int, n_resamples: int = 1000) -> dict:
    """The target's precision against its null at the `index`-th k: {"value", "low", "high", "p_value", "above"},
    d = mean_u P[u] - mean_u null[u] with the paired bootstrap CI of `controls.paired_difference` over keyword
    samples; "above" iff the CI lies above 0."""
    diff = paired_difference(Sample(both["precision"][index, :, head], "keyword sample"),
                             Sample(both["shuffled"][index, :, head], "keyword sample"), "high", n_resamples)
    return {**diff, "above": diff["low"] is not None and diff["low"] > 0}
