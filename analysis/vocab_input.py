"""What a head in layer L "sees" of each vocabulary token: its input for every token, in chunks.

The head's input for token t is the residual stream a token would have at layer L if the only
thing that varied were its identity:

    x = W_E[t] + c_pos                                    (c_pos: mean positional embedding)
    for each layer l < L:  x = x + c_attn_l               (c_attn_l: mean attention output of layer l)
                           x = x + MLP_l(LN2_l(x))
    input(t) = LN1_L(x)

`variant="mean"` uses means over a reference prompt set (positions after BOS; the default set
is `prompts.reference_prompts(model, seed, categories=...)`, category prompts of the script's
--categories); `variant="zero"` sets c_pos and c_attn to zero (the zero-ablation view);
`variant="study"` is the original study's construction (`study_means`, its
`get_vocab_attn1_input` generalised to layer L): the token-id sequence 0, 1, ..., n - 1
(n = min(d_vocab, n_ctx), no BOS), c_pos the mean of W_pos over all n_ctx positions, and c_attn_l
the mean over that sequence's positions of layer l's attention output, each earlier layer's
output already replaced by its mean (the study's hooks, run on a layer-L head). A model without a
positional embedding in its residual stream (rotary, alibi, shortformer: only
`positional_embedding_type == "standard"` adds one) has no positional term: c_pos = 0 in every
variant. Results record which variant they used. With TransformerLens's default
processing the LayerNorm weights are folded into W_Q/W_K, so LN1 here only centres and scales.
Everything is computed in chunks of the vocabulary (GPT-2's 50257 tokens fit in bounded
memory) and cached on disk (`CACHE_DIR`), keyed by a hash of everything the result depends on:
the state-dict entries it reads (embeddings, every earlier block, the layer's LN1), the config, the
weight processing, the variant, the reference tokens and token ids, and the code that computes it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from analysis import prompts
from analysis.ids import model_id
from analysis.infra.atomic import atomic_file

Variant = Literal["mean", "zero", "study"]
PROJECT = "semantic-head-replication"


def default_cache_dir() -> Path:
    """$ANALYSIS_CACHE_DIR, else the user's cache directory: $XDG_CACHE_HOME (or ~/.cache) / PROJECT."""
    if os.environ.get("ANALYSIS_CACHE_DIR"):
        return Path(os.environ["ANALYSIS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / PROJECT


CACHE_DIR = default_cache_dir()


def has_positional_term(model: HookedTransformer) -> bool:
    """Whether W_pos is added to the residual stream (TransformerLens's "standard" positional embedding); rotary,
    alibi and shortformer models have no positional term in the residual."""
    return model.cfg.positional_embedding_type == "standard"


@torch.no_grad()
def reference_means(model: HookedTransformer, layer: int, reference_tokens: Tensor) -> tuple[Tensor, list[Tensor]]:
    """(c_pos: [d_model], [c_attn_l: [d_model] for l < layer]) averaged over batch and positions >= 1
    (c_pos = 0 without a positional term)."""
    positional = has_positional_term(model)
    names = {f"blocks.{l}.hook_attn_out" for l in range(layer)} | ({"hook_pos_embed"} if positional else set())
    _, cache = model.run_with_cache(reference_tokens.to(model.cfg.device), names_filter=lambda n: n in names,
                                    stop_at_layer=max(layer, 1))
    d_model = model.cfg.d_model
    c_pos = (cache["hook_pos_embed"][:, 1:].reshape(-1, d_model).mean(0) if positional
             else torch.zeros(d_model, device=model.cfg.device))
    c_attn = [cache[f"blocks.{l}.hook_attn_out"][:, 1:].reshape(-1, d_model).mean(0) for l in range(layer)]
    return c_pos, c_attn


def study_sequence(model: HookedTransformer) -> Tensor:
    """`tokens: [1, n]`, the study's vocabulary prompt as layer 0's attention saw it: token ids 0, 1, ..., n - 1 with
    n = min(d_vocab, n_ctx), no BOS (the study ran all 50,257 ids and cut attention 0's input to n_ctx = 1024)."""
    return torch.arange(min(model.cfg.d_vocab, model.cfg.n_ctx))[None]


@torch.no_grad()
def study_means(model: HookedTransformer, layer: int) -> tuple[Tensor, list[Tensor]]:
    """(c_pos: [d_model], [c_attn_l: [d_model] for l < layer]) as the study built them.

    c_pos = mean_{p < n_ctx} W_pos[p] (0 without a positional term); on `study_sequence`, run with the positional
    embedding replaced by c_pos, c_attn_l = mean over positions of layer l's attention output, which replaces that
    output before layer l + 1 runs (so every later mean sees the earlier ones, as the study's hooks would).
    """
    device, d_model = model.cfg.device, model.cfg.d_model
    c_pos = model.W_pos[:model.cfg.n_ctx].mean(0) if has_positional_term(model) else torch.zeros(d_model, device=device)
    c_attn: list[Tensor] = []

    def replace_by_mean(act: Tensor, hook) -> Tensor:
        c_attn.append(act.mean((0, 1)))
        return c_attn[-1].expand_as(act).clone()

    hooks = [(f"blocks.{l}.hook_attn_out", replace_by_mean) for l in range(layer)]
    if has_positional_term(model):
        hooks.append(("hook_pos_embed", lambda act, hook: c_pos.expand_as(act).clone()))
    if layer > 0:
        model.run_with_hooks(study_sequence(model).to(device), fwd_hooks=hooks, stop_at_layer=layer)
    return c_pos, c_attn


@dataclass(frozen=True)
class InputSettings:
    """How `head_input` computes: `chunk_size` vocabulary tokens at a time, through the disk cache (`use_cache`:
    read and write `CACHE_DIR`), with a progress bar (`progress`)."""

    chunk_size: int = 4096
    use_cache: bool = True
    progress: bool = False


@torch.no_grad()
def head_input(model: HookedTransformer, layer: int, reference_tokens: Tensor | None = None,
               variant: Variant = "mean", token_ids: Tensor | None = None, settings: InputSettings = InputSettings()
               ) -> Tensor:
    """`[n_tokens, d_model]`: the normalised input of layer `layer`'s attention for each token.

    `token_ids` defaults to the whole vocabulary. `reference_tokens: [batch, pos]` supplies the
    means for `variant="mean"` (required then); `variant="study"` takes its means from `study_means`.
    """
    chunk_size, progress = settings.chunk_size, settings.progress
    if variant not in ("mean", "zero", "study"):
        raise ValueError(f"variant must be 'mean', 'zero' or 'study', got {variant!r}")
    if variant == "mean" and reference_tokens is None:
        raise ValueError("variant='mean' needs reference_tokens to average over")
    ids = torch.arange(model.cfg.d_vocab) if token_ids is None else token_ids.cpu()
    path = _cache_path(model, layer, variant, reference_tokens, ids) if settings.use_cache else None
    if path is not None and path.exists():
        return torch.load(path)

    d_model = model.cfg.d_model
    device = model.cfg.device
    if variant == "mean":
        c_pos, c_attn = reference_means(model, layer, reference_tokens)
    elif variant == "study":
        c_pos, c_attn = study_means(model, layer)
    else:
        c_pos, c_attn = torch.zeros(d_model, device=device), [torch.zeros(d_model, device=device)] * layer
    out = torch.empty(len(ids), d_model)
    for start in tqdm(range(0, len(ids), chunk_size), desc=f"head input L{layer}", disable=not progress, leave=False):
        chunk = ids[start:start + chunk_size].to(device)
        x = model.W_E[chunk] + c_pos  # (C, d_model)
        for l in range(layer):
            block = model.blocks[l]
            x = x + c_attn[l]
            if not model.cfg.attn_only:
                x = x + block.mlp(block.ln2(x[:, None]))[:, 0]  # LN and MLP expect a position axis
        out[start:start + len(chunk)] = model.blocks[layer].ln1(x[:, None])[:, 0].float().cpu()
    if path is not None:
        with atomic_file(path) as tmp:
            torch.save(out, tmp)
    return out


@dataclass(frozen=True)
class ContextSettings:
    """The random contexts of `context_head_input`: `n_contexts` occurrences of each token in prompts of BOS +
    `length` random tokens drawn with `seed`, run `batch_size` prompts at a time, with a progress bar (`progress`)."""

    n_contexts: int = 8
    length: int = 64
    seed: int = 0
    batch_size: int = 64
    progress: bool = False


@torch.no_grad()
def context_head_input(model: HookedTransformer, layer: int, token_ids: Tensor | None = None,
                       settings: ContextSettings = ContextSettings()) -> Tensor:
    """`[n_tokens, d_model]`: each token's real input to layer `layer`'s attention, averaged over contexts.

    input(t) = mean over n_contexts occurrences of t of LN1_L(resid_pre_L), from ordinary forward
    passes on prompts of BOS + `length` uniformly random (non-special) vocabulary tokens, in which
    a quarter of the positions, chosen at random, hold the tokens of `token_ids` (default: the
    vocabulary). `head_input` evaluates the MLPs once at the mean context; this averages the whole
    computation over contexts, which differs wherever an MLP reacts non-linearly to what earlier
    attention layers write.
    """
    ids = torch.arange(model.cfg.d_vocab) if token_ids is None else token_ids.cpu()
    n_contexts, batch_size = settings.n_contexts, settings.batch_size
    length = min(settings.length, model.cfg.n_ctx - 1)
    per_prompt = max(1, length // 4)
    generator = torch.Generator().manual_seed(settings.seed)
    targets = torch.cat([torch.randperm(len(ids), generator=generator) for _ in range(n_contexts)])  # indices into ids
    n_prompts = -(-len(targets) // per_prompt)
    targets = torch.cat([targets, targets.new_full((n_prompts * per_prompt - len(targets),), -1)])  # -1: no target
    targets = targets.reshape(n_prompts, per_prompt)
    neighbours = torch.tensor(sorted(set(range(model.cfg.d_vocab)) - set(prompts.special_token_ids(model))))
    body = neighbours[torch.randint(len(neighbours), (n_prompts, length), generator=generator)]
    slots = torch.rand(n_prompts, length, generator=generator).argsort(-1)[:, :per_prompt]  # distinct positions
    body.scatter_(1, slots, torch.where(targets >= 0, ids[targets.clamp_min(0)], body.gather(1, slots)))
    tokens = torch.cat([torch.full((n_prompts, 1), prompts.bos_token_id(model)), body], 1)  # (n_prompts, 1 + length)

    total = torch.zeros(len(ids), model.cfg.d_model)
    name = f"blocks.{layer}.hook_resid_pre"
    for start in tqdm(range(0, n_prompts, batch_size), desc=f"context input L{layer}", disable=not settings.progress,
                      leave=False):
        batch = slice(start, start + batch_size)
        _, cache = model.run_with_cache(tokens[batch].to(model.cfg.device), names_filter=name, stop_at_layer=layer + 1)
        x = model.blocks[layer].ln1(cache[name][:, 1:]).float().cpu()  # (B, length, d_model)
        placed = x.gather(1, slots[batch, :, None].expand(-1, -1, x.shape[-1]))  # (B, per_prompt, d_model)
        kept = targets[batch] >= 0
        total.index_add_(0, targets[batch][kept], placed[kept])
    return total / n_contexts


# The code that computes a cached input is part of its key: the cache outlives checkouts and commits.
_CODE = hashlib.sha256("".join(inspect.getsource(f) for f in (reference_means, study_means, study_sequence,
                                                                       head_input)).encode()).hexdigest()


def input_state_names(model: HookedTransformer, layer: int) -> list[str]:
    """The state-dict entries `head_input` of `layer` reads: embeddings, every block before `layer`
    (attention, MLP, LayerNorms, weights and biases), and block `layer`'s LN1."""
    prefixes = ("embed.", "pos_embed.", *(f"blocks.{l}." for l in range(layer)), f"blocks.{layer}.ln1.")
    return [name for name in model.state_dict() if name.startswith(prefixes)]


def _cache_path(model: HookedTransformer, layer: int, variant: str, reference_tokens: Tensor | None,
                ids: Tensor) -> Path:
    """A file name that changes whenever anything the result depends on changes (see the module docstring)."""
    digest = hashlib.sha256()
    info = getattr(model, "analysis_info", {})
    config = {k: v for k, v in model.cfg.to_dict().items() if k not in ("device", "n_devices")}
    versions = [metadata.version(p) for p in ("torch", "transformer-lens")]
    digest.update(json.dumps([info.get("weight_processing"), layer, variant, config, _CODE, versions],
                             default=str).encode())
    state = model.state_dict()
    for name in input_state_names(model, layer):
        tensor = state[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name} {tensor.dtype} {tuple(state[name].shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())  # the raw bytes, whatever the dtype
    if reference_tokens is not None:
        digest.update(reference_tokens.cpu().numpy().tobytes())
    digest.update(ids.numpy().tobytes())
    name = model_id(info.get("name", "model"))
    return CACHE_DIR / "vocab_input" / name / f"L{layer}-{variant}-{digest.hexdigest()[:16]}.pt"

