"""Running a model for attention patterns: every head from one batched pass, or one head under hooks.

`all_patterns` keeps only `blocks.*.attn.hook_pattern` with a hook filter, so the cache holds no
other activation, and every head of every layer comes out of the same pass (never one pass per
head). `head_pattern` reads one head's pattern with other hooks active (ablations, edited QK
circuits) and stops after the head's layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.utilities import get_act_name

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
        layers = [cache["pattern", layer] for layer in range(model.cfg.n_layers)]  # (B, nh, T, T) each
        chunks.append(torch.stack(layers, dim=1).float().cpu())
    return torch.cat(chunks)


def head_pattern(model: HookedTransformer, tokens: Tensor, layer: int, head: int | Sequence[int],
                 fwd_hooks: Sequence[tuple[str, Callable]] = (), batch_size: int = 64, grad: bool = False) -> Tensor:
    """`pattern: [batch, query, key]` of one head (`[batch, head, query, key]` for a list of heads of the
    layer), with `fwd_hooks` active; stops after its layer.

    With `grad` the pattern stays differentiable (in whatever the hooks compute from, e.g. edited
    W_Q, W_K); otherwise it runs without autograd.
    """
    check_context(model, tokens)
    name = get_act_name("pattern", layer)
    chunks = []

    def store(act: Tensor, hook) -> None:  # (B, nh, T, T)
        chunks.append(act[:, head].float().cpu())
    with torch.set_grad_enabled(grad):
        for start in range(0, tokens.shape[0], batch_size):
            model.run_with_hooks(tokens[start:start + batch_size].to(model.cfg.device), return_type=None,
                                 fwd_hooks=[*fwd_hooks, (name, store)], stop_at_layer=layer + 1)
    return torch.cat(chunks)


def flatten_heads(pattern: Tensor) -> Tensor:
    """`[batch, layer, head, q, k]` -> `[batch, layer * head, q, k]`, head index = layer * n_heads + head."""
    b, l, h, q, k = pattern.shape
    return pattern.reshape(b, l * h, q, k)
