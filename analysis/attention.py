"""A head's attention score: the one definition of a pre-softmax score, from weights, with its position treatment.

`attention_scores` is the one definition of a head's pre-softmax score between two different inputs,

    s(q, k) = (x_q W_Q + b_Q) M (x_k W_K + b_K)^T / scale,    scale = `head_scale(model.cfg, layer)`,

for a head's query-key side as one value, `QKHead` (`qk_head` reads a model's), with any factors
`W_Q, W_K: [d_model, r]` (r = d_head for the model's own head, wider for the edited factors of
`qk_decomposition`: `QKHead.with_factors` keeps the scale, which is the model's, never read off a
factor's shape). Its variants (`attention_score_matrix`, factored; `self_attention_scores`, the
diagonal; `word_score_matrix`, a word set's scores with each word's self-score on the diagonal) share
its query and key projections, and every weight-space QK score in the package goes through them.

Position treatment. With learned absolute positions the positional term is in the input x
(`vocab_input`) and M is absent (`QKHead.rotation` None: M = I). With rotary positions a head's score in
context is q R(Δ) k^T / scale, R(Δ) the rotation by Δ = pos_q − pos_k on the rotary dimensions and the
identity on the rest (`rotary`). A token's score on itself sits at Δ = 0, where R = I: self-scores, W_sym's
spectrum and the sym/skew split of the self-score are those of W = W_Q W_K^T (`QKHead.W`). A score between
two different inputs depends on Δ, and is read at `rotation` M = E_Δ[R(Δ)] `[d_head, d_head]`, averaged over
the distances between queries and their partners in the survey prompts (`rotary.rotary_mean_rotation`
over `rotary.partner_distances`): W_Q M W_K^T, kept factored. In context, with positions known,
`positional_scores` turns q and k by their own positions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor
from transformer_lens import FactoredMatrix, HookedTransformer, HookedTransformerConfig

from analysis.rotary import Rotary, apply_rotary, model_rotary


# --- the attention score of a head ---------------------------------------------------------------


def pad_bias(b: Tensor | None, width: int) -> Tensor | None:
    """A head's bias `[d_head]` padded with zeros to `[width]`, for the extra columns of edited factors."""
    return b if b is None or len(b) == width else torch.cat([b, b.new_zeros(width - len(b))])


def pad_rotation(M: Tensor | None, width: int) -> Tensor | None:
    """M `[..., r, r]` padded with the identity to `[..., width, width]`: the extra columns of edited factors
    (directions of d_model, not of the head's rotary dimensions) are not turned."""
    if M is None or M.shape[-1] == width:
        return M
    out = torch.eye(width, dtype=M.dtype, device=M.device).expand(*M.shape[:-2], width, width).clone()
    out[..., : M.shape[-2], : M.shape[-1]] = M
    return out


@dataclass(frozen=True, eq=False)
class QKHead:
    """A head's query-key side: s(q, k) = (x_q W_Q + b_Q)(x_k W_K + b_K)^T / scale (`attention_scores`).

    `W_Q, W_K: [d_model, r]` (r = d_head for the model's own head, wider for edited factors; leading axes
    broadcast, e.g. every head of a layer as `[head, d_model, d_head]`), `b_Q, b_K: [r]` or None to leave
    the biases out, and the model's `scale` (`head_scale`), never read off a factor's shape. `rotation`
    M `[r, r]` (or broadcastable) is the rotary head's E_Δ[R(Δ)] for scores between different inputs,
    q M k^T (`attention_scores`); an input's score on itself is at Δ = 0 whatever M (`self_attention_scores`,
    the diagonal of `word_score_matrix`); None: M = I (absolute positions, or rotary read at Δ = 0 only).
    `rotary` is how the model turns this head's queries and keys in context, at known positions
    (`positional_scores`; None: absolute positions): a fact of the model, which `qk_head` always sets.
    Compared by identity (its fields are tensors).
    """

    W_Q: Tensor
    W_K: Tensor
    scale: float
    b_Q: Tensor | None = None
    b_K: Tensor | None = None
    rotation: Tensor | None = None
    rotary: Rotary | None = None

    @property
    def W(self) -> FactoredMatrix:
        """W = W_Q W_K^T, `[d_model, d_model]` factored through r: the bilinear form at Δ = 0 (self-scores),
        biases, rotation and scale aside."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    def with_factors(self, W_Q: Tensor, W_K: Tensor) -> QKHead:
        """The head with other factors `W_Q, W_K: [d_model, r']`: the same scale, its biases padded with zeros
        to r' (`pad_bias`), so the extra columns carry no bias, and its rotation padded with the identity
        (`pad_rotation`), so they are not turned."""
        r = W_Q.shape[-1]
        return QKHead(W_Q, W_K, self.scale, pad_bias(self.b_Q, r), pad_bias(self.b_K, W_K.shape[-1]),
                      pad_rotation(self.rotation, r), self.rotary)

    def without_bias(self) -> QKHead:
        """The head with b_Q = b_K = 0: s(q, k) = x_q W_Q M W_K^T x_k^T / scale."""
        return QKHead(self.W_Q, self.W_K, self.scale, rotation=self.rotation, rotary=self.rotary)

    def with_rotation(self, rotation: Tensor | None) -> QKHead:
        """The head with `rotation` M `[r, r]` (None: M = I) for scores between different inputs."""
        return replace(self, rotation=rotation)

    def to(self, like: Tensor) -> QKHead:
        """Every tensor on `like`'s device and dtype (differentiable: gradients flow back to this head's tensors)."""
        move = lambda t: None if t is None else t.to(like)  # noqa: E731
        return QKHead(move(self.W_Q), move(self.W_K), self.scale, move(self.b_Q), move(self.b_K), move(self.rotation),
                      self.rotary)


def head_scale(cfg: HookedTransformerConfig, layer: int) -> float:
    """What layer `layer` divides its attention scores by: `cfg.attn_scale` (sqrt(d_head) by default; 1
    without `use_attn_scale`), times layer + 1 with `scale_attn_by_inverse_layer_idx`, as TransformerLens does."""
    scale = float(cfg.attn_scale) if cfg.use_attn_scale else 1.0
    return scale * (layer + 1) if cfg.scale_attn_by_inverse_layer_idx else scale


def qk_head(model: HookedTransformer, layer: int, head: int, bias: bool = False,
            rotation: Tensor | None = None) -> QKHead:
    """Head `head` of layer `layer` on the CPU, float32: its W_Q, W_K (with grouped-query attention, its key/value
    head's W_K, as TransformerLens repeats it), the layer's `head_scale`, its b_Q, b_K with `bias` (else none)
    and `rotation` M (`rotary.rotary_mean_rotation`; None: M = I), and the model's rotary positions
    (`rotary.model_rotary`), which `positional_scores` applies in context."""
    weights = [w[layer, head].detach().float().cpu() for w in (model.W_Q, model.W_K)]
    biases = [b[layer, head].detach().float().cpu() for b in (model.b_Q, model.b_K)] if bias else [None, None]
    return QKHead(*weights, head_scale(model.cfg, layer), *biases, rotation, model_rotary(model.cfg))


def _project(x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
    """`[..., n, r]` = x W + b for `x: [..., n, d_model]`, `W: [..., d_model, r]`, `b: [..., r]` (or None)."""
    return x @ W if b is None else x @ W + b[..., None, :]


def _query(x_q: Tensor, qk: QKHead) -> Tensor:
    """`[..., n_q, r]` = (x_q W_Q + b_Q) M: the query side of a score between different inputs (M = I if None)."""
    q = _project(x_q, qk.W_Q, qk.b_Q)
    return q if qk.rotation is None else q @ qk.rotation


def attention_scores(x_q: Tensor, x_k: Tensor, qk: QKHead) -> Tensor:
    """`[..., n_q, n_k]` = (x_q W_Q + b_Q) M (x_k W_K + b_K)^T / scale: the head's score of each query on each key,
    as between different inputs (M = `qk.rotation`, the identity if None; for an input on itself, Δ = 0, see
    `self_attention_scores` and `word_score_matrix`).

    `x_q: [..., n_q, d_model]`, `x_k: [..., n_k, d_model]` are normalised head inputs; leading axes broadcast
    against the head's (e.g. `x: [batch, 1, pos, d_model]` against every head's `W_Q: [head, d_model, d_head]`).
    """
    q, k = _query(x_q, qk), _project(x_k, qk.W_K, qk.b_K)  # (..., n_q, r), (..., n_k, r)
    return q @ k.transpose(-2, -1) / qk.scale


def attention_score_matrix(x_q: Tensor, x_k: Tensor, qk: QKHead) -> FactoredMatrix:
    """`attention_scores` as a `FactoredMatrix` [(x_q W_Q + b_Q) M / scale] [x_k W_K + b_K]^T, never formed:
    for vocabulary-sized n_q x n_k, read in blocks."""
    q, k = _query(x_q, qk), _project(x_k, qk.W_K, qk.b_K)
    return FactoredMatrix(q / qk.scale, k.transpose(-2, -1))


def self_attention_scores(x: Tensor, qk: QKHead) -> Tensor:
    """`[..., n]` = (x W_Q + b_Q) · (x W_K + b_K) / scale: each input's score on itself, at Δ = 0 (no rotation),
    without n x n; the diagonal of `attention_scores(x, x, qk)` where `qk.rotation` is None."""
    return (_project(x, qk.W_Q, qk.b_Q) * _project(x, qk.W_K, qk.b_K)).sum(-1) / qk.scale


def word_score_matrix(x: Tensor, qk: QKHead) -> Tensor:
    """`[..., n, n]`: a word set's scores, off the diagonal between different words (`attention_scores`, at M) and
    on it each word's self-score at Δ = 0 (`self_attention_scores`), for `x: [..., n, d_model]`.

    Without a rotation it is `attention_scores(x, x, qk)` itself, bit for bit."""
    scores = attention_scores(x, x, qk)
    if qk.rotation is None:
        return scores
    eye = torch.eye(scores.shape[-1], dtype=torch.bool, device=scores.device)
    return torch.where(eye, torch.diag_embed(self_attention_scores(x, qk)), scores)


def word_score_rows(x: Tensor, index: Tensor, qk: QKHead) -> Tensor:
    """`[C, n]`: rows `index: [C]` of `word_score_matrix(x, qk)`, the words `x[index]` as queries against every word
    of `x: [n, d_model]` as keys, the query's own key (column index[c] of row c) at Δ = 0 and every other at M,
    without n x n.

    Without a rotation it is `attention_scores(x[index], x, qk)` itself, bit for bit."""
    scores = attention_scores(x[index], x, qk)
    if qk.rotation is not None:
        scores[torch.arange(len(index), device=scores.device), index] = self_attention_scores(x[index], qk)
    return scores


def positional_scores(x: Tensor, qk: QKHead, rotary: Rotary | None = None) -> Tensor:
    """`[..., pos, pos]` = rot(x W_Q + b_Q, p_q) rot(x W_K + b_K, p_k)^T / scale: a head's scores in context on
    `x: [..., pos, d_model]` at positions 0..pos-1, each query and key turned by its own position (`rotary.
    apply_rotary`; the columns of edited factors past d_head are not turned), `qk.rotation` unused; without
    `rotary` (default: the head's own, `qk.rotary`; absolute positions, already in x, where neither has one)
    `attention_scores(x, x, qk)` with M = I."""
    rotary = qk.rotary if rotary is None else rotary
    if rotary is None:
        return attention_scores(x, x, qk.with_rotation(None))
    positions = torch.arange(x.shape[-2], device=x.device)
    q, k = (apply_rotary(_project(x, W, b), positions, rotary) for W, b in ((qk.W_Q, qk.b_Q), (qk.W_K, qk.b_K)))
    return q @ k.transpose(-2, -1) / qk.scale
