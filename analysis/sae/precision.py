"""The study's per-head precision of predicted SAE features, and its shuffled-label null.

Definition read off the study's code (Mamiglia/deep-dive-L1H5: scratch.py `pred_accuracy`,
src/utils.py `precision` and `random_toks_with_keywords`, src/maps.py `token2feat_attn`); ours is
written from that description. For every head of the SAE's layer, on keyword samples (BOS and
random tokens holding one category's words, `keyword_prompts`): the k features the head's QK
circuit predicts for each query, decoder directions as keys (`predicted_features`), against the k
features active at its most-attended key (`active_at_attended_key`), counted as TP / (TP + FP)
with the keyword positions but the first as positives (`overlap_precision`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from analysis.errors import UsageError
from analysis.prompts import STUDY_CATEGORIES, bos_token_id, single_token_ids
from analysis.sae.sources import hook_for_layer

PRECISION_K = 32  # features predicted and features taken as active, per position
PRECISION_LENGTH = 20  # BOS + 19 tokens per sample
PRECISION_CATEGORIES = ("colours", "animals", "fruits", "emotions", "weather")  # the study's five for this metric
PRECISION_SHUFFLES = 20  # label permutations of the shuffled-feature null, per sample


class KeywordSamples(NamedTuple):
    """Keyword samples and the positions they score, which travel together: `tokens: [n, length]`, `scored: [n,
    length]` (`keyword_prompts`)."""

    tokens: Tensor
    scored: Tensor


@dataclass(frozen=True)
class PrecisionSettings:
    """How the study's precision is counted (`precision_with_null`): the `k` features predicted and taken as active
    per position, `n_shuffles` label permutations per sample for the null (0: none) drawn with `seed`, `batch_size`
    samples per forward pass."""

    k: int = PRECISION_K
    n_shuffles: int = PRECISION_SHUFFLES
    seed: int = 0
    batch_size: int = 64


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

    `predicted`, `active: [batch, pos, k]` feature indices (distinct within a position); `scored:
    [batch, pos]`. ov_i = |predicted_i ∩ active_i|; TP = sum of ov_i over scored positions, FP over
    every other position. Not |predicted ∩ active| / k.
    """
    overlap = (predicted[..., :, None] == active[..., None, :]).any(-1).sum(-1)  # (B, T)
    tp = (overlap * scored).sum(-1).double()
    fp = (overlap * ~scored).sum(-1).double()
    return torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), torch.zeros_like(tp))


def predicted_features(x: Tensor, decoder_keys: Tensor, W_Q: Tensor, k: int = PRECISION_K) -> Tensor:
    """`[batch, head, pos, k]`: the k features whose decoder direction, as a key, the head's query favours.

    `x: [batch, pos, d_model]` the normalised residual at each query; `decoder_keys: [head, d_sae,
    d_head]` = LN(W_dec) W_K; `W_Q: [head, d_model, d_head]`. score_i[f] = LN(d_f) W_K W_Q^T x_i
    (unscaled, no biases, as the study). Factored: the largest tensor is [batch, pos, d_sae] per head.
    """
    out = []
    for h in range(W_Q.shape[0]):
        q = x @ W_Q[h]  # (B, T, d_head)
        out.append((q @ decoder_keys[h].T).topk(k, dim=-1).indices)  # (B, T, d_sae) -> (B, T, k)
    return torch.stack(out, dim=1)


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


@torch.no_grad()
def precision_with_null(model: HookedTransformer, sae, layer: int, samples: KeywordSamples,
                        settings: PrecisionSettings = PrecisionSettings()) -> dict[str, Tensor]:
    """`{"precision": [batch, head], "shuffled": [batch, head]}`: the study's precision for every head of
    `layer` on keyword `samples`, and its null with the predicted features' labels shuffled.

    The SAE reads `hook_for_layer(layer)`; the residual and the decoder directions are normalised
    by a LayerNorm without affine, and the SAE encodes the normalised residual (as the study, which
    turns the SAE's own input normalisation off).
    Active features: top k of the SAE's encoding at the most-attended key. Predicted: top k of the
    QK score of each decoder direction as a key (`predicted_features`).
    Null ("shuffled"): the mean precision over `n_shuffles` label permutations of the predicted features
    (`shuffled_labels`). TP / (TP + FP) compares overlaps at keyword positions with overlaps elsewhere, so
    a head whose predictions know nothing of the active features still scores about the keyword positions'
    share of all positions; the permutation keeps everything of the head's predictions but their identity,
    so the null is that chance level for this head, these samples and this SAE (0 shuffles: no null, NaN).
    """
    hook = hook_for_layer(layer)
    tokens, scored = samples
    k, n_shuffles, batch_size = settings.k, settings.n_shuffles, settings.batch_size
    W_dec = torch.nn.functional.layer_norm(sae.W_dec.detach().float().cpu(), (model.cfg.d_model,))  # (d_sae, d)
    W_K = model.W_K[layer].detach().float().cpu()  # (H, d_model, d_head)
    W_Q = model.W_Q[layer].detach().float().cpu()
    decoder_keys = torch.einsum("fd,hde->hfe", W_dec, W_K)  # (H, d_sae, d_head)
    generator = torch.Generator().manual_seed(settings.seed)
    out: dict[str, list[Tensor]] = {"precision": [], "shuffled": []}
    for start in range(0, tokens.shape[0], batch_size):
        batch, marks = tokens[start:start + batch_size], scored[start:start + batch_size]
        names = (hook, f"blocks.{layer}.attn.hook_pattern")
        _, cache = model.run_with_cache(batch.to(model.cfg.device), names_filter=lambda n: n in names,
                                        return_type=None)
        resid = cache[hook].float().cpu()  # (B, T, d_model)
        x = torch.nn.functional.layer_norm(resid, (model.cfg.d_model,))
        codes = sae.encode(x.to(sae.W_dec.device, sae.W_dec.dtype)).float().cpu()  # (B, T, d_sae), of the LN'd input
        active = codes.topk(k, dim=-1).indices  # (B, T, k)
        pattern = cache[names[1]].float().cpu()  # (B, H, T, T)
        truth = active_at_attended_key(active, pattern)  # (B, H, T, k)
        predicted = predicted_features(x, decoder_keys, W_Q, k)  # (B, H, T, k)
        n_heads = W_Q.shape[0]
        out["precision"].append(torch.stack([overlap_precision(predicted[:, h], truth[:, h], marks)
                                             for h in range(n_heads)], dim=1))
        null = torch.zeros(len(batch), n_heads, dtype=torch.float64)
        for _ in range(n_shuffles):
            for h in range(n_heads):
                null[:, h] += overlap_precision(shuffled_labels(predicted[:, h], codes.shape[-1], generator),
                                                truth[:, h], marks)
        out["shuffled"].append(null / n_shuffles if n_shuffles else torch.full_like(null, float("nan")))
    return {name: torch.cat(chunks) for name, chunks in out.items()}


def head_precision(model: HookedTransformer, sae, layer: int, samples: KeywordSamples,
                   settings: PrecisionSettings = PrecisionSettings()) -> Tensor:
    """`[batch, head]`: the study's precision for every head of `layer` on keyword `samples` (`precision_with_null`
    without its null: `settings.n_shuffles` is not used)."""
    return precision_with_null(model, sae, layer, samples, replace(settings, n_shuffles=0))["precision"]


def precision_by_category(model: HookedTransformer, sae, layer: int, n_samples: int,
                          settings: PrecisionSettings = PrecisionSettings()) -> dict[str, dict[str, Tensor]]:
    """`{category: precision_with_null(...)}` on `keyword_prompts` of each of `PRECISION_CATEGORIES`
    (`n_samples` each; with seed = `settings.seed`, category i's samples seeded seed + 10 + i, its shuffles
    seed + 20 + i)."""
    bos, seed = bos_token_id(model), settings.seed
    return {name: precision_with_null(model, sae, layer, keyword_prompts(
        single_token_ids(model.tokenizer, STUDY_CATEGORIES[name]), n_samples, model.cfg.d_vocab, bos, seed + 10 + i),
        replace(settings, seed=seed + 20 + i)) for i, name in enumerate(PRECISION_CATEGORIES)}


def precision_by_head(per_category: dict[str, dict[str, Tensor]]) -> dict[int, dict[str, float]]:
    """head -> {precision, precision_shuffled, precision_<category>...} from `precision_by_category`'s
    `{category: {"precision": [batch, head], "shuffled": [batch, head]}}`:

    precision_c(h) = mean_b P_c[b, h];  precision(h) = mean_c precision_c(h);  precision_shuffled(h) the same
    mean over categories of the shuffled null's sample means.
    """
    names = list(per_category)
    n_heads = per_category[names[0]]["precision"].shape[1]
    out = {}
    for h in range(n_heads):
        own = {n: float(per_category[n]["precision"].mean(0)[h]) for n in names}
        null = [float(per_category[n]["shuffled"].mean(0)[h]) for n in names]
        out[h] = {"precision": sum(own.values()) / len(own), "precision_shuffled": sum(null) / len(null),
                  **{f"precision_{n}": value for n, value in own.items()}}
    return out
