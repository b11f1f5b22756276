"""The same weights in Hugging Face's transformers: a third implementation of a model's attention patterns.

`hf_gpt2_from_tl`, `hf_llama_from_tl` and `hf_neox_from_tl` are the inverses of TransformerLens's weight
conversions (`convert_gpt2_weights`, `convert_llama_weights`, `convert_neox_weights`): they write a
`HookedTransformer`'s unprocessed weights into `GPT2LMHeadModel`, `LlamaForCausalLM` or `GPTNeoXForCausalLM`
(eager attention, eval mode), so `hf_patterns` (from `output_attentions=True`) can be compared on identical
weights. `hugging_face_model` picks the one a model's config fits, or raises `HFIncompatible` saying why none
does (e.g. a gated MLP bias after the product, which LLaMA's MLP cannot hold).

Shapes: `tokens: [batch, pos]`, `pattern: [batch, layer, head, query, key]`.
"""

from __future__ import annotations

import math

import einops
import torch
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from analysis.errors import UsageError


# --- GPT-2 -------------------------------------------------------------------------------------


class HFIncompatible(UsageError):
    """The model cannot be written as the Hugging Face `family`; `reason` says why."""

    def __init__(self, reason: str, family: str = "model"):
        super().__init__(f"This model cannot be written as a Hugging Face {family}: {reason}.")
        self.reason = reason


class GPT2Incompatible(HFIncompatible):
    """The model cannot be written as a Hugging Face GPT-2; `reason` says why (`check_gpt2_compatible`)."""

    def __init__(self, reason: str):
        super().__init__(reason, "GPT-2")


def check_gpt2_compatible(model: HookedTransformer) -> None:
    """`GPT2Incompatible`, saying why, when `model` cannot be written as a Hugging Face GPT-2 (`hf_gpt2_from_tl`)."""
    cfg = model.cfg
    reasons = []
    if cfg.normalization_type != "LN":
        reasons.append(f"its LayerNorm is {cfg.normalization_type!r} (load it unprocessed, with LN weights)")
    if cfg.positional_embedding_type != "standard":
        reasons.append("its positional embeddings are not learned absolute ones")
    if cfg.attn_only or cfg.parallel_attn_mlp or cfg.gated_mlp:
        reasons.append("its blocks are not attention + MLP in sequence")
    if cfg.n_heads * cfg.d_head != cfg.d_model:
        reasons.append("n_heads * d_head != d_model")
    if cfg.n_key_value_heads not in (None, cfg.n_heads):
        reasons.append("it has grouped-query attention")
    if not math.isclose(cfg.attn_scale, math.sqrt(cfg.d_head)):
        reasons.append("its attention scale is not sqrt(d_head)")
    if reasons:
        raise GPT2Incompatible("; ".join(reasons))


def hf_gpt2_from_tl(model: HookedTransformer):
    """A Hugging Face `GPT2LMHeadModel` (eager attention, eval mode) holding `model`'s weights.

    The inverse of TransformerLens's `convert_gpt2_weights`. The unembedding is untied and has no
    bias in Hugging Face, which changes no attention pattern.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    check_gpt2_compatible(model)
    cfg = model.cfg
    config = GPT2Config(
        vocab_size=cfg.d_vocab, n_positions=cfg.n_ctx, n_embd=cfg.d_model, n_layer=cfg.n_layers,
        n_head=cfg.n_heads, n_inner=cfg.d_mlp, activation_function=cfg.act_fn, layer_norm_epsilon=cfg.eps,
        scale_attn_by_inverse_layer_idx=cfg.scale_attn_by_inverse_layer_idx, tie_word_embeddings=False,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager",
    )
    hf = GPT2LMHeadModel(config)
    s = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    heads = lambda w: einops.rearrange(w, "i m h -> m (i h)")  # noqa: E731  [head, d_model, d_head] -> Conv1D
    state = {"transformer.wte.weight": s["embed.W_E"], "transformer.wpe.weight": s["pos_embed.W_pos"],
             "transformer.ln_f.weight": s["ln_final.w"], "transformer.ln_f.bias": s["ln_final.b"],
             "lm_head.weight": s["unembed.W_U"].T}
    for l in range(cfg.n_layers):
        p, h = f"blocks.{l}", f"transformer.h.{l}"
        state.update({
            f"{h}.ln_1.weight": s[f"{p}.ln1.w"], f"{h}.ln_1.bias": s[f"{p}.ln1.b"],
            f"{h}.attn.c_attn.weight": torch.cat([heads(s[f"{p}.attn.W_{x}"]) for x in "QKV"], dim=1),
            f"{h}.attn.c_attn.bias": torch.cat([s[f"{p}.attn.b_{x}"].flatten() for x in "QKV"]),
            f"{h}.attn.c_proj.weight": einops.rearrange(s[f"{p}.attn.W_O"], "i h m -> (i h) m"),
            f"{h}.attn.c_proj.bias": s[f"{p}.attn.b_O"],
            f"{h}.ln_2.weight": s[f"{p}.ln2.w"], f"{h}.ln_2.bias": s[f"{p}.ln2.b"],
            f"{h}.mlp.c_fc.weight": s[f"{p}.mlp.W_in"], f"{h}.mlp.c_fc.bias": s[f"{p}.mlp.b_in"],
            f"{h}.mlp.c_proj.weight": s[f"{p}.mlp.W_out"], f"{h}.mlp.c_proj.bias": s[f"{p}.mlp.b_out"],
        })
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith(".attn.bias") and not k.endswith(".attn.masked_bias") for k in missing):
        raise RuntimeError(f"weight conversion mismatch: missing {missing}, unexpected {unexpected}")
    return hf.eval()


def tl_from_hf_gpt2(hf, device: str = "cpu") -> HookedTransformer:
    """A `HookedTransformer` with a Hugging Face GPT-2's weights, unprocessed (TransformerLens's conversion)."""
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_ctx=c.n_positions, d_head=c.n_embd // c.n_head,
        n_heads=c.n_head, d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size, act_fn=c.activation_function,
        eps=c.layer_norm_epsilon, normalization_type="LN", positional_embedding_type="standard",
        scale_attn_by_inverse_layer_idx=c.scale_attn_by_inverse_layer_idx,
        original_architecture="GPT2LMHeadModel", device=device,
    )
    model = HookedTransformer(cfg)
    model.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)  # b_U stays zero, as in GPT-2
    return model.eval()


@torch.no_grad()
def hf_patterns(hf, tokens: Tensor) -> Tensor:
    """`pattern: [batch, layer, head, query, key]` from Hugging Face's `output_attentions=True`."""
    out = hf.base_model(tokens.to(hf.device), output_attentions=True)
    return torch.stack(out.attentions, dim=1).float().cpu()


# --- LLaMA and GPT-NeoX ------------------------------------------------------------------------


def _state(model: HookedTransformer) -> dict[str, Tensor]:
    return {k: v.detach().float().cpu() for k, v in model.state_dict().items()}


def _rotary_reasons(cfg: HookedTransformerConfig) -> list[str]:
    """Why `cfg`'s rotary positions are not Hugging Face's default rope (rotate_half, one base), if they are not."""
    reasons = [] if cfg.positional_embedding_type == "rotary" else ["its positions are not rotary"]
    if cfg.rotary_adjacent_pairs or cfg.use_NTK_by_parts_rope or cfg.use_yarn_rope or cfg.use_dynamic_ntk_rope:
        reasons.append("its rotary variant is not the default rotate_half rope")
    if cfg.attn_types is not None or cfg.num_experts:
        reasons.append("it has local attention or experts")
    if not math.isclose(cfg.attn_scale, math.sqrt(cfg.d_head)) or cfg.scale_attn_by_inverse_layer_idx:
        reasons.append("its attention scale is not sqrt(d_head)")
    return reasons


def llama_reasons(model: HookedTransformer) -> list[str]:
    """Why `model` cannot be written as a Hugging Face `LlamaForCausalLM` exactly (empty: it can)."""
    cfg, s = model.cfg, _state(model)
    reasons = _rotary_reasons(cfg)
    if cfg.normalization_type != "RMS" or not cfg.final_rms:
        reasons.append(f"its norm is {cfg.normalization_type!r}, not RMSNorm with weights (load it unprocessed)")
    if not cfg.gated_mlp or cfg.parallel_attn_mlp or cfg.attn_only:
        reasons.append("its blocks are not attention then a gated MLP, in sequence")
    if any(s[f"blocks.{l}.mlp.b_in"].abs().max() > 0 for l in range(cfg.n_layers) if f"blocks.{l}.mlp.b_in" in s):
        reasons.append("its gated MLP adds b_in after act(x W_gate) * (x W_in), where LLaMA's up_proj bias "
                       "sits inside the product")
    return reasons


def hf_llama_from_tl(model: HookedTransformer):
    """A Hugging Face `LlamaForCausalLM` (eager attention, eval mode) holding `model`'s weights: the inverse of
    TransformerLens's `convert_llama_weights`, with grouped-query attention's key/value heads (`attn._W_K:
    [n_kv, d_model, d_head]`) as k_proj, v_proj, and the attention biases (b_Q, b_K, b_V, b_O) kept
    (`attention_bias`); b_out, where non-zero, as down_proj's bias. `HFIncompatible` where `llama_reasons`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    reasons = llama_reasons(model)
    if reasons:
        raise HFIncompatible("; ".join(reasons), "LLaMA")
    cfg, s = model.cfg, _state(model)
    attn = lambda l, w: s.get(f"blocks.{l}.attn.{w}", s.get(f"blocks.{l}.attn._{w}"))  # noqa: E731
    n_kv = attn(0, "W_K").shape[0]
    mlp_bias = any(s[f"blocks.{l}.mlp.b_out"].abs().max() > 0 for l in range(cfg.n_layers))
    config = LlamaConfig(
        vocab_size=cfg.d_vocab, hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=n_kv, head_dim=cfg.d_head, hidden_act=cfg.act_fn,
        max_position_embeddings=cfg.n_ctx, rms_norm_eps=cfg.eps, tie_word_embeddings=False, attention_bias=True,
        mlp_bias=mlp_bias, rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rotary_base)},
        attn_implementation="eager",
    )
    hf = LlamaForCausalLM(config)
    heads = lambda w: einops.rearrange(w, "n m h -> (n h) m")  # noqa: E731  [head, d_model, d_head] -> Linear
    state = {"model.embed_tokens.weight": s["embed.W_E"], "model.norm.weight": s["ln_final.w"],
             "lm_head.weight": s["unembed.W_U"].T}
    for l in range(cfg.n_layers):
        p, h = f"blocks.{l}", f"model.layers.{l}"
        state.update({
            f"{h}.input_layernorm.weight": s[f"{p}.ln1.w"], f"{h}.post_attention_layernorm.weight": s[f"{p}.ln2.w"],
            **{f"{h}.self_attn.{x.lower()}_proj.weight": heads(attn(l, f"W_{x}")) for x in "QKV"},
            **{f"{h}.self_attn.{x.lower()}_proj.bias": attn(l, f"b_{x}").flatten() for x in "QKV"},
            f"{h}.self_attn.o_proj.weight": einops.rearrange(s[f"{p}.attn.W_O"], "n h m -> m (n h)"),
            f"{h}.self_attn.o_proj.bias": s[f"{p}.attn.b_O"],
            f"{h}.mlp.gate_proj.weight": s[f"{p}.mlp.W_gate"].T, f"{h}.mlp.up_proj.weight": s[f"{p}.mlp.W_in"].T,
            f"{h}.mlp.down_proj.weight": s[f"{p}.mlp.W_out"].T,
        })
        if mlp_bias:
            state.update({f"{h}.mlp.gate_proj.bias": torch.zeros(cfg.d_mlp), f"{h}.mlp.up_proj.bias": torch.zeros(cfg.d_mlp),
                          f"{h}.mlp.down_proj.bias": s[f"{p}.mlp.b_out"]})
    return _loaded(hf, state)


def neox_reasons(model: HookedTransformer) -> list[str]:
    """Why `model` cannot be written as a Hugging Face `GPTNeoXForCausalLM` exactly (empty: it can)."""
    cfg = model.cfg
    reasons = _rotary_reasons(cfg)
    if cfg.normalization_type != "LN":
        reasons.append(f"its LayerNorm is {cfg.normalization_type!r} (load it unprocessed, with LN weights)")
    if cfg.gated_mlp or cfg.attn_only:
        reasons.append("its MLP is gated or absent")
    if cfg.n_key_value_heads not in (None, cfg.n_heads):
        reasons.append("it has grouped-query attention, which GPT-NeoX has not")
    if cfg.n_heads * cfg.d_head != cfg.d_model:
        reasons.append("n_heads * d_head != d_model")
    if cfg.act_fn not in ("gelu", "gelu_new", "relu", "silu"):
        reasons.append(f"activation {cfg.act_fn!r}")
    return reasons


def hf_neox_from_tl(model: HookedTransformer):
    """A Hugging Face `GPTNeoXForCausalLM` (eager attention, eval mode) holding `model`'s weights: the inverse of
    TransformerLens's `convert_neox_weights` (query_key_value's rows in NeoX's (head, qkv, d_head) order), partial
    rotary as `partial_rotary_factor` = rotary_dim / d_head, parallel or sequential blocks as
    `use_parallel_residual`. `HFIncompatible` where `neox_reasons`."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    reasons = neox_reasons(model)
    if reasons:
        raise HFIncompatible("; ".join(reasons), "GPT-NeoX")
    cfg, s = model.cfg, _state(model)
    config = GPTNeoXConfig(
        vocab_size=cfg.d_vocab, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_mlp, hidden_act=cfg.act_fn, max_position_embeddings=cfg.n_ctx, layer_norm_eps=cfg.eps,
        tie_word_embeddings=False, use_parallel_residual=cfg.parallel_attn_mlp, attention_bias=True,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rotary_base),
                         "partial_rotary_factor": cfg.rotary_dim / cfg.d_head},
        attention_dropout=0.0, hidden_dropout=0.0, attn_implementation="eager",
    )
    hf = GPTNeoXForCausalLM(config)
    state = {"gpt_neox.embed_in.weight": s["embed.W_E"], "gpt_neox.final_layer_norm.weight": s["ln_final.w"],
             "gpt_neox.final_layer_norm.bias": s["ln_final.b"], "lm_head.weight": s["unembed.W_U"].T}
    for l in range(cfg.n_layers):
        p, h = f"blocks.{l}", f"gpt_neox.layers.{l}"
        W = torch.stack([s[f"{p}.attn.W_{x}"] for x in "QKV"])  # (qkv, head, d_model, d_head)
        b = torch.stack([s[f"{p}.attn.b_{x}"] for x in "QKV"])  # (qkv, head, d_head)
        state.update({
            f"{h}.input_layernorm.weight": s[f"{p}.ln1.w"], f"{h}.input_layernorm.bias": s[f"{p}.ln1.b"],
            f"{h}.post_attention_layernorm.weight": s[f"{p}.ln2.w"], f"{h}.post_attention_layernorm.bias": s[f"{p}.ln2.b"],
            f"{h}.attention.query_key_value.weight": einops.rearrange(W, "qkv i m h -> (i qkv h) m"),
            f"{h}.attention.query_key_value.bias": einops.rearrange(b, "qkv i h -> (i qkv h)"),
            f"{h}.attention.dense.weight": einops.rearrange(s[f"{p}.attn.W_O"], "i h m -> m (i h)"),
            f"{h}.attention.dense.bias": s[f"{p}.attn.b_O"],
            f"{h}.mlp.dense_h_to_4h.weight": s[f"{p}.mlp.W_in"].T, f"{h}.mlp.dense_h_to_4h.bias": s[f"{p}.mlp.b_in"],
            f"{h}.mlp.dense_4h_to_h.weight": s[f"{p}.mlp.W_out"].T, f"{h}.mlp.dense_4h_to_h.bias": s[f"{p}.mlp.b_out"],
        })
    return _loaded(hf, state)


def _loaded(hf, state: dict[str, Tensor]):
    """`hf` with every parameter from `state` (strict: a missing or unexpected name is an error), in eval mode."""
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or unexpected:
        raise RuntimeError(f"weight conversion mismatch: missing {missing}, unexpected {unexpected}")
    return hf.eval()


HF_FAMILIES = {"GPT-2": (check_gpt2_compatible, hf_gpt2_from_tl), "LLaMA": (llama_reasons, hf_llama_from_tl),
               "GPT-NeoX": (neox_reasons, hf_neox_from_tl)}


def hugging_face_model(model: HookedTransformer):
    """(family, Hugging Face model) for the first of GPT-2, LLaMA and GPT-NeoX that holds `model`'s weights exactly,
    decided from its config and weights; `HFIncompatible` with each family's reasons where none does."""
    why = {}
    for family, (check, convert) in HF_FAMILIES.items():
        try:
            reasons = check(model) or []
        except HFIncompatible as err:
            reasons = [err.reason]
        if not reasons:
            return family, convert(model)
        why[family] = "; ".join(reasons)
    raise HFIncompatible(" / ".join(f"as {f}: {r}" for f, r in why.items()), "GPT-2, LLaMA or GPT-NeoX")
