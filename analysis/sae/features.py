"""SAE features through a head's QK circuit: which features, what they are, and the feature x feature map.

Each feature's decoder direction d_f goes through the head's LayerNorm as if it were the residual
stream, x_f = LN1(d_f) (`feature_inputs`), and then through the head's bilinear form:
s(f, g) = x_f W x_g^T / sqrt(d_head), W = W_Q W_K^T (no biases) (`feature_map`; with rotary positions s(f, f) at
Δ = 0 and s(f, g), g != f, at M = E_Δ[R(Δ)], `positions.position_treatment`). Features get the
category of the tokens they fire on, from their mean activation on each category's words in category
prompts (`category_activations`, `select_features`), and a name from the tokens they fire on most
(`feature_label`). At GPT-2's size (32768 features, 50257 tokens) nothing of size d_sae x d_vocab is
formed: mean activations are kept only for the tokens that occur in the prompts. The feature map is
ours; the study's metric is `sae.precision`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from analysis.attention import qk_head, word_score_matrix
from analysis.controls import Statistic
from analysis.prompts import category_index
from analysis.sae.sources import variance_explained
from analysis.self_suppression import group_map_statistics


@torch.no_grad()
def category_activations(model: HookedTransformer, sae, tokens: Tensor, categories: Mapping[str, Sequence[str]],
                         hook_name: str, batch_size: int = 16) -> tuple[Tensor, Tensor, Tensor]:
    """(`mean_by_category: [d_sae, n_categories]`, `mean_by_token: [d_sae, n_seen]`, `seen: [n_seen]`).

    Mean feature activations over the positions (BOS left out) whose current token is in each
    category of `categories` (in their order; `prompts.category_index`) / is each token `seen[j]` of the n_seen
    distinct tokens of `tokens: [batch, pos]`.
    Tokens that never occur have no mean, so they get no column: GPT-2's 32768 features x 50257
    tokens would be 6.6 GB in float32. Accumulated per batch in float32 (means of at most a few
    thousand non-negative activations each).
    """
    layer = int(hook_name.split(".")[1])
    d_sae, n_categories = sae.cfg.d_sae, len(categories)
    category_of = category_index(model.tokenizer, categories, model.cfg.d_vocab)  # (d_vocab,) -1 = none
    seen, column = torch.unique(tokens[:, 1:], return_inverse=True)  # column: (batch, pos - 1) into seen
    by_token = torch.zeros(d_sae, len(seen))
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start:start + batch_size]
        _, cache = model.run_with_cache(batch.to(model.cfg.device), names_filter=hook_name, stop_at_layer=layer + 1)
        acts = sae.encode(cache[hook_name][:, 1:].to(sae.W_dec)).reshape(-1, d_sae).float().cpu()  # (B T, d_sae)
        by_token.index_add_(1, column[start:start + batch_size].reshape(-1), acts.T)
    counts = torch.bincount(column.reshape(-1), minlength=len(seen)).float()  # (n_seen,) all >= 1
    category = category_of[seen]
    in_category = category >= 0
    by_category = torch.zeros(d_sae, n_categories).index_add_(1, category[in_category], by_token[:, in_category])
    category_counts = torch.zeros(n_categories).index_add_(0, category[in_category], counts[in_category])
    return by_category / category_counts.clamp_min(1), by_token / counts, seen


def select_features(by_category: Tensor, per_category: int = 3, min_share: float = 0.5) -> tuple[Tensor, Tensor]:
    """(`features: [n]`, `category: [n]`): each category's `per_category` most active features among those
    that give it at least `min_share` of their summed per-category mean activation, grouped by category."""
    share = by_category / by_category.sum(-1, keepdim=True).clamp_min(1e-12)  # (d_sae, n_categories)
    features, category = [], []
    for c in range(by_category.shape[1]):
        strength = torch.where(share[:, c] >= min_share, by_category[:, c], torch.zeros_like(by_category[:, c]))
        top = strength.topk(per_category)
        chosen = top.indices[top.values > 0]
        features.append(chosen)
        category.append(torch.full((len(chosen),), c))
    return torch.cat(features), torch.cat(category)


def feature_inputs(model: HookedTransformer, sae, layer: int, features: Tensor) -> Tensor:
    """`[n, d_model]`: x_f = LN1(d_f), each decoder direction normalised as the head normalises its input."""
    with torch.no_grad():
        directions = sae.W_dec[features].to(model.cfg.device, torch.float32)  # (n, d_model)
        return model.blocks[layer].ln1(directions[:, None])[:, 0].float().cpu()


def self_avoidance(scores: Tensor, group: Tensor) -> dict[str, float]:
    """On a feature x feature map `scores: [n, n]` with feature categories `group: [n]`:

    self_below_mates = fraction of features (with a same-category mate) whose self-score is below
    their mean score on same-category mates; best_key_is_mate = fraction whose highest-scoring
    key is another feature of their category; best_key_is_self = fraction whose best key is itself.
    """
    same = group[:, None] == group[None, :]
    eye = torch.eye(len(group), dtype=torch.bool)
    mates = same & ~eye
    has_mate = mates.any(-1)
    mate_mean = (scores * mates).sum(-1) / mates.sum(-1).clamp_min(1)
    best = scores.argmax(-1)
    return {"self_below_mates": float((scores.diagonal() < mate_mean)[has_mate].float().mean()),
            "best_key_is_mate": float(mates[torch.arange(len(group)), best].float().mean()),
            "best_key_is_self": float((best == torch.arange(len(group))).float().mean())}


def top_pairs(scores: Tensor, k: int = 20, include_self: bool = False) -> list[tuple[int, int, float]]:
    """The k highest entries of `scores: [n, n]` as (query index, key index, score), best first."""
    masked = scores.clone()
    if not include_self:
        masked.fill_diagonal_(-torch.inf)
    values, flat = masked.flatten().topk(min(k, masked.numel()))
    n = scores.shape[1]
    return [(int(i) // n, int(i) % n, float(v)) for i, v in zip(flat, values)]


def feature_label(by_token: Tensor, feature: int, token_labels: Sequence[str], n: int = 3) -> str:
    """A feature's name from the (at most n) tokens it fires on most: "f123 ' red'/' blue'/' green'";
    tokens it never fires on are not named. `by_token: [d_sae, n_tokens]` and `token_labels` (one per
    column) cover the same tokens."""
    top = by_token[feature].topk(min(n, by_token.shape[1]))
    names = [repr(token_labels[t]) for t, value in zip(top.indices, top.values) if value > 0]
    return f"f{feature} " + ("/".join(names) or "(never active)")


def name_features(model: HookedTransformer, sae, hook: str, tokens: Tensor, categories: dict[str, list[str]],
                  per_category: int = 3) -> tuple[Tensor, Tensor, list[str], float]:
    """(`features: [n]`, `group: [n]`, labels, variance explained): each category's most active features on
    category prompts `tokens: [batch, pos]` (`category_activations`, `select_features`), named by the tokens
    they fire on most (`feature_label`), and the SAE's `variance_explained` on 16 of those prompts (BOS left out)."""
    by_category, by_token, seen = category_activations(model, sae, tokens, categories, hook)
    layer = int(hook.split(".")[1]) + 1  # the hook is the residual stream this layer reads
    _, cache = model.run_with_cache(tokens[:16].to(model.cfg.device), names_filter=hook, stop_at_layer=layer)
    explained = variance_explained(sae, cache[hook][:, 1:].reshape(-1, model.cfg.d_model))
    features, group = select_features(by_category, per_category)
    token_labels = model.tokenizer.batch_decode([[int(i)] for i in seen])  # one per column of by_token
    return features, group, [feature_label(by_token, int(f), token_labels) for f in features], explained


def feature_map(model: HookedTransformer, sae, layer: int, head: int, features: Tensor,
                rotation: Tensor | None = None) -> Tensor:
    """`[n, n]`: s(f, g) = LN1(d_f) W_Q W_K^T LN1(d_g)^T / attn_scale for the head, query feature by key feature;
    with a rotary model's `rotation` M (`positions.position_treatment`) s(f, g) for g != f is LN1(d_f) W_Q M W_K^T
    LN1(d_g)^T / attn_scale and s(f, f) stays at Δ = 0 (`attention.word_score_matrix`)."""
    x = feature_inputs(model, sae, layer, features)  # (n, d_model)
    return word_score_matrix(x, qk_head(model, layer, head, rotation=rotation))


@dataclass(frozen=True)
class FeatureMaps:
    """What `feature_map_statistics` adds to every head's statistics: the SAE's `layer` and its `precision`
    (`precision_by_head`; None: no precision), and a rotary model's `rotation` M for scores between different
    features (None: M = I)."""

    layer: int | None = None
    precision: dict[int, dict[str, object]] | None = None
    rotation: Tensor | None = None


def feature_map_statistics(model: HookedTransformer, sae, features: Tensor, group: Tensor,
                           maps: FeatureMaps = FeatureMaps()) -> dict[tuple[int, int], dict[str, Statistic]]:
    """(layer, head) -> `self_suppression.group_map_statistics` of the features' map, for every head (each
    layer's heads see the decoder directions through that layer's LayerNorm: `feature_inputs`), each feature on
    itself at Δ = 0 and on the others at `maps.rotation` M. With `maps.precision` (`precision_by_head` of the
    SAE's `maps.layer`), each head of that layer gets its row, every other head precision and precision_shuffled
    None (the study's precision is defined for the SAE's layer only)."""
    stats, precision = {}, maps.precision
    for l in range(model.cfg.n_layers):
        x = feature_inputs(model, sae, l, features)  # (n, d_model)
        for h in range(model.cfg.n_heads):
            qk = qk_head(model, l, h, rotation=maps.rotation)
            stats[(l, h)] = group_map_statistics(x, group, qk, unit="SAE feature")
            if precision is not None:
                stats[(l, h)].update(precision.get(h) if l == maps.layer else {"precision": None,
                                                                               "precision_shuffled": None})
    return stats
