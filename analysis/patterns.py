"""Running a model for attention patterns: every head from one batched pass, or one head under hooks.

`all_patterns` keeps only `blocks.*.attn.hook_pattern` with a hook filter (`all_patterns_and_scores`
also `hook_attn_scores`, for exact log-masses), so the cache holds no other activation, and every
head of every layer comes out of the same pass (never one pass per head). `head_pattern` reads one
head's pattern with other hooks active (ablations, edited QK circuits) and stops after the head's
layer. `layer_input` runs the model only up to a layer, for what its heads read.
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
def _collect(model: HookedTransformer, tokens: Tensor, names: Sequence[str], batch_size: int,
             progress: bool) -> list[Tensor]:
    """For each activation name (e.g. "pattern"), `[batch, layer, head, query, key]` of every head
    (float32, on CPU), all from one batched pass per chunk of prompts."""
    check_context(model, tokens)
    wanted = tuple(f"attn.hook_{n}" for n in names)  # attn.hook_pattern, attn.hook_attn_scores
    chunks: list[list[Tensor]] = [[] for _ in names]
    for start in tqdm(range(0, tokens.shape[0], batch_size), desc="patterns", disable=not progress, leave=False):
        batch = tokens[start:start + batch_size].to(model.cfg.device)
        _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith(wanted), return_type=None)
        for out, name in zip(chunks, names):
            layers = [cache[name, layer] for layer in range(model.cfg.n_layers)]  # (B, nh, T, T) each
            out.append(torch.stack(layers, dim=1).float().cpu())
    return [torch.cat(out) for out in chunks]


def all_patterns(model: HookedTransformer, tokens: Tensor, batch_size: int = 64,
                 progress: bool = False) -> Tensor:
    """`pattern: [batch, layer, head, query, key]` for `tokens: [batch, pos]` (float32, on CPU)."""
    return _collect(model, tokens, ["pattern"], batch_size, progress)[0]


def all_patterns_and_scores(model: HookedTransformer, tokens: Tensor, batch_size: int = 64,
                            progress: bool = False) -> tuple[Tensor, Tensor]:
    """(pattern, attn_scores), each `[batch, layer, head, query, key]`, from the same batched pass.

    `attn_scores` are the pre-softmax scores (`hook_attn_scores`, causal entries masked), which
    exact log-masses need (`scores.masked_log_mass`): the pattern underflows, the scores do not.
    """
    pattern, attn_scores = _collect(model, tokens, ["pattern", "attn_scores"], batch_size, progress)
    return pattern, attn_scores


# One head of a layer, (layer, head), or several heads of one layer, (layer, [head, ...]).
HeadOrHeads = tuple[int, int | Sequence[int]]


def _collect_head(model: HookedTransformer, tokens: Tensor, head: HeadOrHeads, names: Sequence[str],
                  fwd_hooks: Sequence[tuple[str, Callable]], batch_size: int) -> list[Tensor]:
    """`blocks.{layer}.attn.hook_<name>` of one head (or a list of heads) for each of `names`, after every hook
    of `fwd_hooks`, in chunks of `batch_size`; the run stops after the head's layer. Autograd as the caller set it."""
    check_context(model, tokens)
    layer, head = head
    hooks = [get_act_name(name, layer) for name in names]
    chunks: dict[str, list[Tensor]] = {hook: [] for hook in hooks}

    def store(act: Tensor, hook) -> None:  # (B, nh, T, T)
        chunks[hook.name].append(act[:, head].float().cpu())
    for start in range(0, tokens.shape[0], batch_size):
        model.run_with_hooks(tokens[start:start + batch_size].to(model.cfg.device), return_type=None,
                             fwd_hooks=[*fwd_hooks, *((hook, store) for hook in hooks)], stop_at_layer=layer + 1)
    return [torch.cat(chunks[hook]) for hook in hooks]


def head_pattern(model: HookedTransformer, tokens: Tensor, head: HeadOrHeads,
                 fwd_hooks: Sequence[tuple[str, Callable]] = (), batch_size: int = 64, grad: bool = False) -> Tensor:
    """`pattern: [batch, query, key]` of one head, `head` = (layer, head) (`[batch, head, query, key]` for
    (layer, a list of heads)), with `fwd_hooks` active; stops after its layer.

    With `grad` the pattern stays differentiable (in whatever the hooks compute from, e.g. edited
    W_Q, W_K); otherwise it runs without autograd.
    """
    with torch.set_grad_enabled(grad):
        return _collect_head(model, tokens, head, ["pattern"], fwd_hooks, batch_size)[0]


@torch.no_grad()
def head_pattern_and_scores(model: HookedTransformer, tokens: Tensor, head: HeadOrHeads,
                            fwd_hooks: Sequence[tuple[str, Callable]] = (), batch_size: int = 64
                            ) -> tuple[Tensor, Tensor]:
    """(pattern, attn_scores) of one head, `head` = (layer, head) (or (layer, a list of heads)), as `head_pattern`
    gives the pattern, with the pre-softmax scores the pattern came from (`hook_attn_scores`, after every other
    hook), for exact log-masses (`scores.masked_log_mass`). Without autograd; stops after the head's layer."""
    pattern, attn_scores = _collect_head(model, tokens, head, ["pattern", "attn_scores"], fwd_hooks, batch_size)
    return pattern, attn_scores


def flatten_heads(pattern: Tensor) -> Tensor:
    """`[batch, layer, head, q, k]` -> `[batch, layer * head, q, k]`, head index = layer * n_heads + head."""
    b, l, h, q, k = pattern.shape
    return pattern.reshape(b, l * h, q, k)


@torch.no_grad()
def layer_input(model: HookedTransformer, tokens: Tensor, layer: int, batch_size: int = 64) -> Tensor:
    """`x: [batch, pos, d_model]` = ln1(resid_pre) of `layer` on the model's device: exactly what every head of the
    layer reads (its own W_Q, W_K, or any edit of them). The model runs once, and only up to the layer."""
    name = f"blocks.{layer}.hook_resid_pre"
    chunks = []
    for start in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(tokens[start:start + batch_size].to(model.cfg.device), names_filter=name,
                                        stop_at_layer=layer + 1)  # hooks after the resid_pre are unused
        chunks.append(model.blocks[layer].ln1(cache[name]))
    return torch.cat(chunks)
