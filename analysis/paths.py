"""The target head's input as a sum of upstream parts, and one part edited on the query side, the key side or both.

The residual stream a head of layer L reads is a sum of what every earlier component wrote:

    resid_pre_L = embed + pos_embed + sum_{l<L} sum_h z_{l,h} W_O[l, h] + sum_{l<L} b_O[l] + sum_{l<L} mlp_out_l

(`input_parts`: `pos_embed` only where the model adds W_pos to the stream, `vocab_input.has_positional_term`;
an MLP only where the model has one). The head scores query i on key j as

    z[i, j] = (ln1(x_i) W_Q + b_Q) . (ln1(y_j) W_K + b_K) / scale

and in the model x = y = resid_pre_L. Here the query side and the key side read different copies
(`side_scores`): an edit of one part p replaces it by r (`edited_inputs`: its mean over the prompts, zero, or its
value on corrupted prompts), x' = resid_pre_L - p + r at every position after BOS (BOS keeps its own input, so the
head's fall-back key stays), and the head's queries come from x' with its keys from the unedited x ("query"), or
the reverse ("key"), or both from x' ("both", the study's design). Only the part's direct path into the target's
q or k is edited: later components that read the part (MLP0 reading the embedding, a layer-1 head reading a
layer-0 head) are not recomputed. Every part's edit is one slice of a batch `[part, batch, pos, d_model]`, from
one run of the model up to the layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from analysis.attention import QKHead, qk_head
from analysis.controls import head_key
from analysis.prompts import CategoryWords, Probe
from analysis.qk_edits import EDITED_METRICS
from analysis.scores import semantic_scores
from analysis.vocab_input import has_positional_term

SIDES = ("query", "key", "both")  # which of the head's inputs reads the edited copy
MODES = ("mean", "zero")  # what an ablated part becomes (path patching writes the corrupted value instead)
PARTS_BUDGET = 2 ** 28  # bytes of one chunk's `[part, batch, pos, d_model]` tensor: sets the prompts per chunk


def part_names(model: HookedTransformer, layer: int) -> list[str]:
    """The upstream parts of layer `layer`'s input, in `input_parts` order: "token_embedding", "positional_embedding"
    (only with a positional term in the stream), "L{l}H{h}" for every head of every earlier layer,
    "attention_biases" (every earlier b_O together; only after a layer) and "mlp_{l}" (unless attention-only)."""
    names = ["token_embedding"] + (["positional_embedding"] if has_positional_term(model) else [])
    names += [head_key(l, h) for l in range(layer) for h in range(model.cfg.n_heads)]
    names += ["attention_biases"] if layer > 0 else []
    return names + ([] if model.cfg.attn_only else [f"mlp_{l}" for l in range(layer)])


@dataclass(frozen=True)
class Parts:
    """Layer L's input and its parts: `values: [part, batch, pos, d_model]` named by `names` (`part_names`), and
    `resid_pre: [batch, pos, d_model]`, which they sum to."""

    names: tuple[str, ...]
    values: Tensor
    resid_pre: Tensor


@torch.no_grad()
def input_parts(model: HookedTransformer, tokens: Tensor, layer: int) -> Parts:
    """`Parts` of `blocks.{layer}.hook_resid_pre` on `tokens: [batch, pos]`, from one run up to the layer: hook_embed,
    hook_pos_embed, each head's result z W_O (from `attn.hook_z` and W_O, every head of a layer in one einsum), the
    layers' b_O summed, each hook_mlp_out."""
    hooks = ["hook_embed"] + (["hook_pos_embed"] if has_positional_term(model) else [])
    hooks += [f"blocks.{l}.attn.hook_z" for l in range(layer)]
    hooks += [] if model.cfg.attn_only else [f"blocks.{l}.hook_mlp_out" for l in range(layer)]
    resid, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n in hooks,
                                        stop_at_layer=layer)
    values = [cache["hook_embed"]] + ([cache["hook_pos_embed"].expand_as(resid)] if has_positional_term(model) else [])
    for l in range(layer):  # (B, T, nh, dh) x (nh, dh, d) -> (nh, B, T, d)
        values += list(torch.einsum("bthe,hed->hbtd", cache[f"blocks.{l}.attn.hook_z"], model.W_O[l]))
    if layer > 0:
        values.append(model.b_O[:layer].sum(0).expand_as(resid))
    values += [] if model.cfg.attn_only else [cache[f"blocks.{l}.hook_mlp_out"] for l in range(layer)]
    return Parts(tuple(part_names(model, layer)), torch.stack(values).float(), resid.float())


def edited_inputs(parts: Parts, replacement: Tensor) -> Tensor:
    """`[part, batch, pos, d_model]`: x' = resid_pre - p + r for every part p at once, at positions >= 1 (BOS keeps
    its own input). `replacement: [part, batch or 1, pos or 1, d_model]` is r (a mean, zero, a corrupted value)."""
    x = parts.resid_pre[None] - parts.values + replacement
    x[:, :, 0] = parts.resid_pre[:, 0]
    return x


@dataclass(frozen=True)
class HeadReader:
    """How one head reads the stream: `norm` (its layer's ln1, on `[..., pos, d_model]`), `qk` (its W_Q, W_K, biases
    and scale) and `rotate` (the layer's rotary embedding of `[batch, pos, 1, d_head]`, or None without one)."""

    norm: Callable[[Tensor], Tensor]
    qk: QKHead
    rotate: Callable[[Tensor], Tensor] | None = None


def head_reader(model: HookedTransformer, layer: int, head: int) -> HeadReader:
    """The `HeadReader` of head `head` of `layer`, on the model's device and dtype."""
    attn = model.blocks[layer].attn
    rotary = model.cfg.positional_embedding_type == "rotary"
    return HeadReader(model.blocks[layer].ln1, qk_head(model, layer, head, bias=True).to(model.W_Q),
                      attn.apply_rotary if rotary else None)


def _side_vectors(x: Tensor, reader: HeadReader, W: Tensor, b: Tensor | None) -> Tensor:
    """`[..., pos, r]` = ln1(x) W + b, rotated by position where the layer is rotary."""
    v = reader.norm(x.to(W)) @ W + (0 if b is None else b)
    if reader.rotate is None:
        return v
    shape = v.shape
    return reader.rotate(v.reshape(-1, *shape[-2:])[:, :, None])[:, :, 0].reshape(shape)


def side_scores(x_query: Tensor, x_key: Tensor, reader: HeadReader) -> Tensor:
    """`[..., query, key]` pre-softmax scores z = q k^T / scale with q from `x_query`, k from `x_key` (each `[...,
    pos, d_model]`, leading axes broadcast), -inf above the diagonal."""
    qk = reader.qk
    q, k = _side_vectors(x_query, reader, qk.W_Q, qk.b_Q), _side_vectors(x_key, reader, qk.W_K, qk.b_K)
    z = (q @ k.transpose(-2, -1) / qk.scale).float()
    causal = torch.ones(z.shape[-2:], dtype=torch.bool, device=z.device).tril()
    return z.masked_fill(~causal, -torch.inf)


def sided_scores(edited: Tensor, clean: Tensor, reader: HeadReader, side: str) -> Tensor:
    """`[part, batch, query, key]`: the head's scores with the edited copy `edited: [part, batch, pos, d_model]` read
    on `side` ("query", "key" or "both") and the clean input `clean: [batch, pos, d_model]` on the other."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    x_query = edited if side in ("query", "both") else clean[None]
    x_key = edited if side in ("key", "both") else clean[None]
    return side_scores(x_query, x_key, reader)


def metrics_of_scores(z: Tensor, probe: Probe) -> dict[str, Tensor]:
    """`{metric: [part, batch]}` of `EDITED_METRICS` (S exact from the scores, partner, self and BOS-when-no-partner
    mass) for scores `z: [part, batch, query, key]` on the prompts of `probe` (the same prompts for every part)."""
    n_parts, batch = z.shape[:2]
    flat = z.reshape(n_parts * batch, 1, *z.shape[-2:]).cpu()
    tokens, mask = probe.tokens.repeat(n_parts, 1), probe.mask.repeat(n_parts, 1, 1)
    metrics = semantic_scores(flat.softmax(-1), tokens, mask, flat)
    return {m: metrics[m][:, 0].reshape(n_parts, batch) for m in EDITED_METRICS}


def part_means(model: HookedTransformer, tokens: Tensor, layer: int, batch_size: int = 16) -> Tensor:
    """`[part, d_model]`: each part's mean over the prompts and positions >= 1."""
    total = None
    for start in range(0, tokens.shape[0], batch_size):
        values = input_parts(model, tokens[start:start + batch_size], layer).values[:, :, 1:]
        total = values.sum((1, 2)) if total is None else total + values.sum((1, 2))
    return total / (tokens.shape[0] * (tokens.shape[1] - 1))


def chunk_size(n_parts: int, pos: int, d_model: int, budget: int = PARTS_BUDGET) -> int:
    """Prompts per chunk so that `[part, batch, pos, d_model]` float32 stays within `budget` bytes (at least 1)."""
    return max(1, budget // (4 * n_parts * pos * d_model))


def _chunks(n: int, size: int, progress: bool, desc: str) -> Sequence[int]:
    return tqdm(range(0, n, size), desc=desc, disable=not progress, leave=False)


@torch.no_grad()
def side_ablations(model: HookedTransformer, probe: Probe, target: tuple[int, int],
                   progress: bool = False) -> dict:
    """Every part mean- and zero-ablated on each side, prompt by prompt: `{"baseline": {metric: [batch]}, side:
    {mode: {metric: [part, batch]}}}` for `SIDES` x `MODES` (metrics of `metrics_of_scores`), and `"names"`.

    The mean is each part's mean over `probe`'s prompts (positions >= 1, `part_means`); BOS is never edited.
    `progress` shows a bar over chunks of prompts."""
    layer, head = target
    reader = head_reader(model, layer, head)
    means = part_means(model, probe.tokens, layer)
    size = chunk_size(len(means), probe.tokens.shape[1], model.cfg.d_model)
    out: dict = {"baseline": [], **{side: {mode: [] for mode in MODES} for side in SIDES}}
    for start in _chunks(probe.tokens.shape[0], size, progress, "side ablations"):
        part = Probe(probe.tokens[start:start + size], probe.mask[start:start + size])
        parts = input_parts(model, part.tokens, layer)
        clean = parts.resid_pre
        out["baseline"].append(metrics_of_scores(side_scores(clean, clean, reader)[None], part))
        for mode in MODES:
            edited = edited_inputs(parts, means[:, None, None] if mode == "mean" else torch.zeros_like(means)[:, None,
                                                                                                               None])
            for side in SIDES:
                out[side][mode].append(metrics_of_scores(sided_scores(edited, clean, reader, side), part))
    result = {"names": list(parts.names), "baseline": {m: torch.cat([c[m][0] for c in out["baseline"]])
                                                       for m in EDITED_METRICS}}
    for side in SIDES:
        result[side] = {mode: {m: torch.cat([c[m] for c in out[side][mode]], 1) for m in EDITED_METRICS}
                        for mode in MODES}
    return result


def category_words(category_of: Tensor) -> CategoryWords:
    """The category words of `category_of: [d_vocab]` (-1 outside every category, `prompts.category_index`)."""
    ids = (category_of >= 0).nonzero()[:, 0]
    return CategoryWords(ids, category_of[ids])


def swap_words(tokens: Tensor, words: CategoryWords, n_swaps: int, seed: int) -> Tensor:
    """`[batch, pos]`: `tokens` with `n_swaps` word positions of each prompt (drawn among positions >= 1 that hold a
    category word) replaced by a word of another category (uniform over `words` of the other categories), seeded.

    `words.ids: [n]`, `words.category: [n]`. Positions keep their place: only the word changes, and always to a
    word of a different category, so a swapped word's category-mates are no longer where they were."""
    rng = np.random.default_rng(seed)
    ids, category = words.ids.numpy(), words.category.numpy()
    of = dict(zip(ids.tolist(), category.tolist()))
    corrupted = tokens.clone()
    for p in range(tokens.shape[0]):
        candidates = [t for t in range(1, tokens.shape[1]) if int(tokens[p, t]) in of]
        chosen = rng.choice(candidates, size=min(n_swaps, len(candidates)), replace=False) if candidates else []
        for t in sorted(int(c) for c in chosen):
            others = ids[category != of[int(tokens[p, t])]]
            corrupted[p, t] = int(others[rng.integers(len(others))])
    return corrupted


@torch.no_grad()
def path_patching(model: HookedTransformer, probe: Probe, corrupted: Tensor, target: tuple[int, int],
                  progress: bool = False) -> dict:
    """Each part's corrupted value patched into the clean run's query side, key side or both, prompt by prompt:
    `{"baseline": {metric: [batch]}, side: {metric: [part, batch]}}` and `"names"`, metrics measured with the clean
    prompts' mask (`probe.mask`; self mass counts the clean words' own positions and copies).

    x' = x_clean - p_clean + p_corrupted (`corrupted: [batch, pos]`, the clean prompts with words swapped,
    `swap_words`), read on one side only; everything else, and every component after the part, stays clean."""
    layer, head = target
    reader = head_reader(model, layer, head)
    size = chunk_size(len(part_names(model, layer)), probe.tokens.shape[1], model.cfg.d_model) // 2 or 1
    out: dict = {"baseline": [], **{side: [] for side in SIDES}}
    for start in _chunks(probe.tokens.shape[0], size, progress, "path patching"):
        part = Probe(probe.tokens[start:start + size], probe.mask[start:start + size])
        parts = input_parts(model, part.tokens, layer)
        patched = edited_inputs(parts, input_parts(model, corrupted[start:start + size], layer).values)
        clean = parts.resid_pre
        out["baseline"].append(metrics_of_scores(side_scores(clean, clean, reader)[None], part))
        for side in SIDES:
            out[side].append(metrics_of_scores(sided_scores(patched, clean, reader, side), part))
    result = {"names": list(parts.names), "baseline": {m: torch.cat([c[m][0] for c in out["baseline"]])
                                                       for m in EDITED_METRICS}}
    for side in SIDES:
        result[side] = {m: torch.cat([c[m] for c in out[side]], 1) for m in EDITED_METRICS}
    return result


def changes(edited: Mapping[str, Tensor], baseline: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`{metric: [part, batch]}`: edited minus baseline, prompt by prompt (NaN where a prompt has no row the metric
    averages over)."""
    return {m: edited[m] - baseline[m][None] for m in edited}
