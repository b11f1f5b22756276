"""A head's attention score, attention patterns computed by hand from raw weights, and Hugging Face GPT-2.

`attention_scores` is the one definition of a head's pre-softmax score,

    s(q, k) = (x_q W_Q + b_Q)(x_k W_K + b_K)^T / scale,    scale = `head_scale(model.cfg, layer)`,

for a head's query-key side as one value, `QKHead` (`qk_head` reads a model's), with any factors
`W_Q, W_K: [d_model, r]` (r = d_head for the model's own head, wider for the edited factors of
`qk_decomposition`: `QKHead.with_factors` keeps the scale, which is the model's, never read off a
factor's shape). Its variants (`attention_score_matrix`, factored; `self_attention_scores`, the
diagonal) share its query and key projections, and every QK score in the package goes through them.

`manual_patterns` re-implements a GPT-2-style forward pass (embeddings, LayerNorm, Q/K/V
projections, 1/sqrt(d_head) scaling, causal mask, softmax, output projection, MLP) from the
weight tensors alone, so its patterns are an independent check of TransformerLens's
`blocks.*.attn.hook_pattern`. `hf_gpt2_from_tl` and `tl_from_hf_gpt2` move the same weights
between TransformerLens and Hugging Face's `GPT2LMHeadModel`, so a third implementation
(`hf_patterns`, from `output_attentions=True`) can be compared on identical weights.

Shapes: `tokens: [batch, pos]`, `pattern: [batch, layer, head, query, key]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import einops
import torch
from torch import Tensor
from transformer_lens import FactoredMatrix, HookedTransformer, HookedTransformerConfig

from analysis.errors import UsageError


# --- the attention score of a head ---------------------------------------------------------------


def pad_bias(b: Tensor | None, width: int) -> Tensor | None:
    """A head's bias `[d_head]` padded with zeros to `[width]`, for the extra columns of edited factors."""
    return b if b is None or len(b) == width else torch.cat([b, b.new_zeros(width - len(b))])


@dataclass(frozen=True, eq=False)
class QKHead:
    """A head's query-key side: s(q, k) = (x_q W_Q + b_Q)(x_k W_K + b_K)^T / scale (`attention_scores`).

    `W_Q, W_K: [d_model, r]` (r = d_head for the model's own head, wider for edited factors; leading axes
    broadcast, e.g. every head of a layer as `[head, d_model, d_head]`), `b_Q, b_K: [r]` or None to leave
    the biases out, and the model's `scale` (`head_scale`), never read off a factor's shape. Compared by
    identity (its fields are tensors).
    """

    W_Q: Tensor
    W_K: Tensor
    scale: float
    b_Q: Tensor | None = None
    b_K: Tensor | None = None

    @property
    def W(self) -> FactoredMatrix:
        """W = W_Q W_K^T, `[d_model, d_model]` factored through r: the bilinear form, biases and scale aside."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    def with_factors(self, W_Q: Tensor, W_K: Tensor) -> QKHead:
        """The head with other factors `W_Q, W_K: [d_model, r']`: the same scale, and its biases padded with zeros
        to r' (`pad_bias`), so the extra columns carry no bias."""
        return QKHead(W_Q, W_K, self.scale, pad_bias(self.b_Q, W_Q.shape[-1]), pad_bias(self.b_K, W_K.shape[-1]))

    def without_bias(self) -> QKHead:
        """The head with b_Q = b_K = 0: s(q, k) = x_q W x_k^T / scale."""
        return QKHead(self.W_Q, self.W_K, self.scale)

    def to(self, like: Tensor) -> QKHead:
        """Every tensor on `like`'s device and dtype (differentiable: gradients flow back to this head's tensors)."""
        move = lambda t: None if t is None else t.to(like)  # noqa: E731
        return QKHead(move(self.W_Q), move(self.W_K), self.scale, move(self.b_Q), move(self.b_K))


def head_scale(cfg: HookedTransformerConfig, layer: int) -> float:
    """What layer `layer` divides its attention scores by: `cfg.attn_scale` (sqrt(d_head) by default; 1
    without `use_attn_scale`), times layer + 1 with `scale_attn_by_inverse_layer_idx`, as TransformerLens does."""
    scale = float(cfg.attn_scale) if cfg.use_attn_scale else 1.0
    return scale * (layer + 1) if cfg.scale_attn_by_inverse_layer_idx else scale


def qk_head(model: HookedTransformer, layer: int, head: int, bias: bool = False) -> QKHead:
    """Head `head` of layer `layer` on the CPU, float32: its W_Q, W_K, the layer's `head_scale`, and its b_Q, b_K
    with `bias` (else none)."""
    weights = [w[layer, head].detach().float().cpu() for w in (model.W_Q, model.W_K)]
    biases = [b[layer, head].detach().float().cpu() for b in (model.b_Q, model.b_K)] if bias else [None, None]
    return QKHead(*weights, head_scale(model.cfg, layer), *biases)


def _project(x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
    """`[..., n, r]` = x W + b for `x: [..., n, d_model]`, `W: [..., d_model, r]`, `b: [..., r]` (or None)."""
    return x @ W if b is None else x @ W + b[..., None, :]


def attention_scores(x_q: Tensor, x_k: Tensor, qk: QKHead) -> Tensor:
    """`[..., n_q, n_k]` = (x_q W_Q + b_Q)(x_k W_K + b_K)^T / scale: the head's score of each query on each key.

    `x_q: [..., n_q, d_model]`, `x_k: [..., n_k, d_model]` are normalised head inputs; leading axes broadcast
    against the head's (e.g. `x: [batch, 1, pos, d_model]` against every head's `W_Q: [head, d_model, d_head]`).
    """
    q, k = _project(x_q, qk.W_Q, qk.b_Q), _project(x_k, qk.W_K, qk.b_K)  # (..., n_q, r), (..., n_k, r)
    return q @ k.transpose(-2, -1) / qk.scale


def attention_score_matrix(x_q: Tensor, x_k: Tensor, qk: QKHead) -> FactoredMatrix:
    """`attention_scores` as a `FactoredMatrix` [(x_q W_Q + b_Q) / scale] [x_k W_K + b_K]^T, never formed:
    for vocabulary-sized n_q x n_k, read in blocks."""
    q, k = _project(x_q, qk.W_Q, qk.b_Q), _project(x_k, qk.W_K, qk.b_K)
    return FactoredMatrix(q / qk.scale, k.transpose(-2, -1))


def self_attention_scores(x: Tensor, qk: QKHead) -> Tensor:
    """`[..., n]`: the diagonal of `attention_scores(x, x, qk)`, each input's score on itself, without n x n."""
    return (_project(x, qk.W_Q, qk.b_Q) * _project(x, qk.W_K, qk.b_K)).sum(-1) / qk.scale


# --- the pieces of a GPT-2 forward pass, written out ------------------------------------------


def layer_norm(x: Tensor, w: Tensor | None, b: Tensor | None, eps: float) -> Tensor:
    """LN(x) = (x - mean(x)) / sqrt(var(x) + eps) * w + b over the last axis (no w, b: centre and scale only)."""
    x = x - x.mean(-1, keepdim=True)
    x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return x if w is None else x * w + b


def gelu_new(x: Tensor) -> Tensor:
    """GPT-2's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


ACTIVATIONS = {"gelu_new": gelu_new, "gelu": torch.nn.functional.gelu, "relu": torch.relu}


def causal_softmax(scores: Tensor) -> Tensor:
    """softmax over keys of `scores: [..., query, key]` with every key k > q set to -inf first."""
    q, k = scores.shape[-2:]
    future = torch.ones(q, k, dtype=torch.bool, device=scores.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


def attention_from_residual(x: Tensor, heads: QKHead) -> Tensor:
    """`pattern: [batch, head, query, key]` = causal softmax of every head's `attention_scores` on x.

    `x: [batch, pos, d_model]` is the normalised residual stream, `heads` a layer's every head
    (`W_Q, W_K: [head, d_model, d_head]`, `b_Q, b_K: [head, d_head]`).
    """
    return causal_softmax(attention_scores(x[:, None], x[:, None], heads))  # (B, nh, T, T)


def check_manual_support(model: HookedTransformer) -> None:
    """A clear error for architectures `manual_patterns` does not implement."""
    cfg = model.cfg
    problems = []
    if cfg.positional_embedding_type != "standard":
        problems.append(f"positional embeddings {cfg.positional_embedding_type!r} (only learned absolute ones)")
    if cfg.normalization_type not in ("LN", "LNPre"):
        problems.append(f"normalization {cfg.normalization_type!r} (only LayerNorm)")
    if not cfg.attn_only and cfg.act_fn not in ACTIVATIONS:
        problems.append(f"activation {cfg.act_fn!r}")
    if cfg.parallel_attn_mlp or cfg.gated_mlp or (cfg.n_key_value_heads not in (None, cfg.n_heads)):
        problems.append("parallel, gated or grouped-query blocks")
    if problems:
        raise UsageError("The manual forward pass implements GPT-2-style models only; this model has "
                         + "; ".join(problems) + ". Use a GPT-2-style model such as the organism or gpt2-small.")


@torch.no_grad()
def manual_patterns(model: HookedTransformer, tokens: Tensor, n_layers: int | None = None) -> Tensor:
    """`pattern: [batch, layer, head, query, key]` of the first `n_layers` layers, from raw weights only.

    Reads the weight tensors of `model` and nothing else: no TransformerLens module is called.
    Works on unprocessed weights (LayerNorm with w, b) and on folded ones (LNPre: centre and scale).
    """
    check_manual_support(model)
    cfg = model.cfg
    n_layers = cfg.n_layers if n_layers is None else n_layers
    state = {name: p.detach().float() for name, p in model.state_dict().items()}
    ln_w = lambda name: state.get(f"{name}.w")  # noqa: E731  (absent once LayerNorm is folded)
    ln_b = lambda name: state.get(f"{name}.b")  # noqa: E731
    tokens = tokens.to(state["embed.W_E"].device)

    x = state["embed.W_E"][tokens] + state["pos_embed.W_pos"][: tokens.shape[1]]  # (B, T, C)
    patterns = []
    for layer in range(n_layers):
        p = f"blocks.{layer}"
        h = layer_norm(x, ln_w(f"{p}.ln1"), ln_b(f"{p}.ln1"), cfg.eps)
        heads = QKHead(*(state[f"{p}.attn.{w}"] for w in ("W_Q", "W_K")), head_scale(cfg, layer),
                       *(state[f"{p}.attn.{b}"] for b in ("b_Q", "b_K")))
        pattern = attention_from_residual(h, heads)
        patterns.append(pattern)
        if layer == n_layers - 1:
            break  # later activations are not needed
        v = torch.einsum("bpm,hmd->bhpd", h, state[f"{p}.attn.W_V"]) + state[f"{p}.attn.b_V"][None, :, None, :]
        z = pattern @ v  # (B, nh, T, hs)
        x = x + torch.einsum("bhpd,hdm->bpm", z, state[f"{p}.attn.W_O"]) + state[f"{p}.attn.b_O"]
        if not cfg.attn_only:
            h = layer_norm(x, ln_w(f"{p}.ln2"), ln_b(f"{p}.ln2"), cfg.eps)
            hidden = ACTIVATIONS[cfg.act_fn](h @ state[f"{p}.mlp.W_in"] + state[f"{p}.mlp.b_in"])  # (B, T, 4C)
            x = x + hidden @ state[f"{p}.mlp.W_out"] + state[f"{p}.mlp.b_out"]
    return torch.stack(patterns, dim=1).cpu()


def max_abs_difference(a: Tensor, b: Tensor) -> Tensor:
    """`[layer, head]`: max over batch, query and key of |a - b| for `a, b: [batch, layer, head, q, k]`."""
    return (a.float() - b.float()).abs().amax(dim=(0, 3, 4))


# --- the same weights in Hugging Face's GPT-2 --------------------------------------------------


class GPT2Incompatible(UsageError):
    """The model cannot be written as a Hugging Face GPT-2; `reason` says why (`check_gpt2_compatible`)."""

    def __init__(self, reason: str):
        super().__init__(f"This model cannot be written as a Hugging Face GPT-2: {reason}.")
        self.reason = reason


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
    out = hf.transformer(tokens.to(hf.device), output_attentions=True)
    return torch.stack(out.attentions, dim=1).float().cpu()
