"""Attention patterns of every head from one batched forward pass per minibatch.

A hook filter keeps only `blocks.*.attn.hook_pattern`, so the cache holds no other activation,
and every head of every layer comes out of the same pass (never one pass per head).
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from analysis.errors import UsageError


def is_pattern_hook(name: str) -> bool:
    return name.endswith("attn.hook_pattern")


def check_context(model: HookedTransformer, tokens: Tensor) -> None:
    """A clear error for prompts longer than the model's context window."""
    if tokens.shape[-1] > model.cfg.n_ctx:
        raise UsageError(
            f"Prompts are {tokens.shape[-1]} tokens long (BOS included) but the model's context holds "
            f"{model.cfg.n_ctx}. Use shorter prompts (e.g. fewer words or a shorter repeat length)."
        )


@torch.no_grad()
def all_patterns(model: HookedTransformer, tokens: Tensor, batch_size: int = 64,
                 progress: bool = False) -> Tensor:
    """`pattern: [batch, layer, head, query, key]` for `tokens: [batch, pos]` (float32, on CPU)."""
    check_context(model, tokens)
    chunks = []
    for start in tqdm(range(0, tokens.shape[0], batch_size), desc="patterns", disable=not progress, leave=False):
        batch = tokens[start:start + batch_size].to(model.cfg.device)
        _, cache = model.run_with_cache(batch, names_filter=is_pattern_hook, return_type=None)
        chunks.append(torch.stack([cache["pattern", layer] for layer in range(model.cfg.n_layers)], dim=1).float().cpu())
    return torch.cat(chunks)


def flatten_heads(pattern: Tensor) -> Tensor:
    """`[batch, layer, head, q, k]` -> `[batch, layer * head, q, k]`, head index = layer * n_heads + head."""
    b, l, h, q, k = pattern.shape
    return pattern.reshape(b, l * h, q, k)
