"""Attention patterns computed by hand from a model's raw weight tensors: an independent check of TransformerLens.

`manual_patterns` re-implements the forward pass up to each layer's pattern from the weight tensors and the
config alone (no TransformerLens module is called):

* embeddings: W_E[token], plus W_pos[position] where positions are learned absolute ones;
* normalisation: LayerNorm (w, b) or, folded, LNPre (centre and scale); RMSNorm x / sqrt(mean(x²) + eps) * w
  or, folded, RMSPre;
* queries and keys: q = x W_Q + b_Q, k = x W_K + b_K, with grouped-query attention's key/value heads
  (`attn._W_K: [n_kv, d_model, d_head]`) shared by n_heads / n_kv consecutive query heads;
* rotary positions (`rotary.apply_rotary`: the first rotary_dim dimensions of q and k turned by p ω, the rest
  passed; full and partial rotary), then scores q k^T / scale, the causal mask and softmax;
* the block's output: z = pattern v, Σ_h z_h W_O + b_O; the MLP act(x W_in + b_in) W_out + b_out, or gated,
  (act(x W_gate) * (x W_in) + b_in) W_out + b_out; in sequence (the MLP reads ln2(resid_mid)) or parallel
  (attention and MLP both read resid_pre, the MLP through ln2: resid_post = resid_pre + attn + mlp).

`check_manual_support` refuses, naming them, the configurations it does not implement.
Shapes: `tokens: [batch, pos]`, `pattern: [batch, layer, head, query, key]`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from analysis.attention import QKHead, head_scale, positional_scores
from analysis.errors import UsageError
from analysis.rotary import Rotary, model_rotary


def layer_norm(x: Tensor, w: Tensor | None, b: Tensor | None, eps: float) -> Tensor:
    """LN(x) = (x - mean(x)) / sqrt(var(x) + eps) * w + b over the last axis (no w: centre and scale only; no b:
    b = 0)."""
    x = x - x.mean(-1, keepdim=True)
    x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    x = x if w is None else x * w
    return x if b is None else x + b


def rms_norm(x: Tensor, w: Tensor | None, eps: float) -> Tensor:
    """RMS(x) = x / sqrt(mean(x²) + eps) * w over the last axis (no w: scale only, RMSPre)."""
    x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return x if w is None else x * w


def gelu_new(x: Tensor) -> Tensor:
    """GPT-2's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


ACTIVATIONS = {"gelu_new": gelu_new, "gelu": torch.nn.functional.gelu, "relu": torch.relu,
               "silu": torch.nn.functional.silu}
NORMS = ("LN", "LNPre", "RMS", "RMSPre")


def causal_softmax(scores: Tensor) -> Tensor:
    """softmax over keys of `scores: [..., query, key]` with every key k > q set to -inf first."""
    q, k = scores.shape[-2:]
    future = torch.ones(q, k, dtype=torch.bool, device=scores.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


def attention_from_residual(x: Tensor, heads: QKHead, rotary: Rotary | None = None) -> Tensor:
    """`pattern: [batch, head, query, key]` = causal softmax of every head's scores on x at positions 0..pos-1.

    `x: [batch, pos, d_model]` is the normalised residual stream, `heads` a layer's every head
    (`W_Q, W_K: [head, d_model, d_head]`, `b_Q, b_K: [head, d_head]`); with `rotary`, queries and keys are turned
    by their positions before the product (`attention.positional_scores`), else `attention.attention_scores`.
    """
    return causal_softmax(positional_scores(x[:, None], heads, rotary))  # (B, nh, T, T)


def unsupported(cfg) -> list[str]:
    """What `manual_patterns` does not implement in config `cfg`, each in words (empty: all of it is)."""
    problems = []
    if cfg.positional_embedding_type not in ("standard", "rotary"):
        problems.append(f"positional embeddings {cfg.positional_embedding_type!r} (only learned absolute or rotary)")
    if cfg.positional_embedding_type == "rotary":
        variants = {"rotary_adjacent_pairs": "GPT-J's adjacent rotary pairs", "use_NTK_by_parts_rope": "NTK-by-parts",
                    "use_yarn_rope": "YaRN", "use_dynamic_ntk_rope": "dynamic NTK",
                    "rotary_base_local": "a local rotary base"}
        problems += [f"rotary with {words}" for flag, words in variants.items() if getattr(cfg, flag, None)]
        if getattr(cfg, "rotary_scaling_factor", 1.0) != 1.0:
            problems.append("rotary with a scaling factor")
    if cfg.normalization_type not in NORMS:
        problems.append(f"normalization {cfg.normalization_type!r} (only LN, LNPre, RMS, RMSPre)")
    if not cfg.attn_only and cfg.act_fn not in ACTIVATIONS:
        problems.append(f"activation {cfg.act_fn!r} (only {', '.join(ACTIVATIONS)})")
    if cfg.num_experts or cfg.attn_types is not None or cfg.original_architecture in (
            "OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM"):
        problems.append("mixture-of-experts, local attention or QK-norm blocks")
    if cfg.use_qk_norm or cfg.clip_qkv is not None or cfg.use_logn_attn or cfg.use_attention_sinks:
        problems.append("QK-norm, clipped QKV, log-n scaling or attention sinks")
    if cfg.attn_scores_soft_cap > 0 or cfg.output_logits_soft_cap > 0 or cfg.post_embedding_ln:
        problems.append("soft-capped scores or a post-embedding norm")
    return problems


def check_manual_support(model: HookedTransformer) -> None:
    """A clear error, naming each feature, for configurations `manual_patterns` does not implement (`unsupported`)."""
    problems = unsupported(model.cfg)
    if problems:
        raise UsageError("The manual forward pass does not implement this model's " + "; ".join(problems)
                         + ". It implements LayerNorm/RMSNorm, learned absolute or rotary positions (full or "
                         "partial, rotate_half), grouped-query attention, plain or gated MLPs, sequential or "
                         "parallel blocks.")


def normalise(x: Tensor, state: dict[str, Tensor], name: str, cfg) -> Tensor:
    """The norm `name` (e.g. "blocks.0.ln1") of `cfg.normalization_type` on `x: [..., d_model]`, its weights read from
    `state` where they are (absent once folded: LNPre, RMSPre); identity without normalisation."""
    if cfg.normalization_type is None:
        return x
    if cfg.normalization_type.startswith("RMS"):
        return rms_norm(x, state.get(f"{name}.w"), cfg.eps)
    return layer_norm(x, state.get(f"{name}.w"), state.get(f"{name}.b"), cfg.eps)


def kv_weight(state: dict[str, Tensor], prefix: str, name: str, n_heads: int) -> Tensor:
    """A layer's `W_K`/`W_V` `[head, d_model, d_head]` (or `b_K`/`b_V` `[head, d_head]`), grouped-query attention's
    key/value heads (`attn._W_K: [n_kv, ...]`) each repeated for its n_heads / n_kv consecutive query heads."""
    if f"{prefix}.{name}" in state:
        return state[f"{prefix}.{name}"]
    shared = state[f"{prefix}._{name}"]
    return shared.repeat_interleave(n_heads // shared.shape[0], dim=0)


def mlp_out(h: Tensor, state: dict[str, Tensor], prefix: str, cfg) -> Tensor:
    """The MLP of `prefix` ("blocks.0.mlp") on its normalised input `h: [batch, pos, d_model]`: act(h W_in + b_in)
    W_out + b_out, or gated, (act(h W_gate) * (h W_in) + b_in) W_out + b_out."""
    act = ACTIVATIONS[cfg.act_fn]
    if cfg.gated_mlp:
        hidden = act(h @ state[f"{prefix}.W_gate"]) * (h @ state[f"{prefix}.W_in"]) + state[f"{prefix}.b_in"]
    else:
        hidden = act(h @ state[f"{prefix}.W_in"] + state[f"{prefix}.b_in"])
    return hidden @ state[f"{prefix}.W_out"] + state[f"{prefix}.b_out"]


@torch.no_grad()
def manual_patterns(model: HookedTransformer, tokens: Tensor, n_layers: int | None = None) -> Tensor:
    """`pattern: [batch, layer, head, query, key]` of the first `n_layers` layers, from raw weights only.

    Reads the weight tensors of `model` and its config and nothing else (the rotary tables are computed here,
    not read from TransformerLens's buffers). Works on unprocessed weights (norms with their w, b) and on
    folded ones (LNPre, RMSPre).
    """
    check_manual_support(model)
    cfg = model.cfg
    n_layers = cfg.n_layers if n_layers is None else n_layers
    state = {name: p.detach().float() for name, p in model.state_dict().items()}
    rotary = model_rotary(cfg)
    tokens = tokens.to(state["embed.W_E"].device)

    x = state["embed.W_E"][tokens]  # (B, T, C)
    if cfg.positional_embedding_type == "standard":
        x = x + state["pos_embed.W_pos"][: tokens.shape[1]]
    patterns = []
    for layer in range(n_layers):
        p = f"blocks.{layer}"
        h = normalise(x, state, f"{p}.ln1", cfg)
        heads = QKHead(state[f"{p}.attn.W_Q"], kv_weight(state, f"{p}.attn", "W_K", cfg.n_heads),
                       head_scale(cfg, layer), state[f"{p}.attn.b_Q"], kv_weight(state, f"{p}.attn", "b_K", cfg.n_heads))
        pattern = attention_from_residual(h, heads, rotary)
        patterns.append(pattern)
        if layer == n_layers - 1:
            break  # later activations are not needed
        W_V, b_V = kv_weight(state, f"{p}.attn", "W_V", cfg.n_heads), kv_weight(state, f"{p}.attn", "b_V", cfg.n_heads)
        v = torch.einsum("bpm,hmd->bhpd", h, W_V) + b_V[None, :, None, :]
        attn = torch.einsum("bhpd,hdm->bpm", pattern @ v, state[f"{p}.attn.W_O"]) + state[f"{p}.attn.b_O"]
        if cfg.attn_only:
            x = x + attn
        elif cfg.parallel_attn_mlp:  # both read resid_pre
            x = x + attn + mlp_out(normalise(x, state, f"{p}.ln2", cfg), state, f"{p}.mlp", cfg)
        else:
            x = x + attn
            x = x + mlp_out(normalise(x, state, f"{p}.ln2", cfg), state, f"{p}.mlp", cfg)
    return torch.stack(patterns, dim=1).cpu()


def max_abs_difference(a: Tensor, b: Tensor) -> Tensor:
    """`[layer, head]`: max over batch, query and key of |a - b| for `a, b: [batch, layer, head, q, k]`."""
    return (a.float() - b.float()).abs().amax(dim=(0, 3, 4))
