"""Rotary positions written out: the sin/cos tables, the rotation of queries and keys, and R(Δ) as a matrix.

TransformerLens's convention (`rotary_adjacent_pairs` False, GPT-NeoX's "rotate_half"): on the first
`rotary_dim` dimensions of a head, dimension i < n = rotary_dim / 2 is paired with i + n, and the pair turns
by the angle p ω_i at position p, ω_i = base^(-2i / rotary_dim):

    rot(x, p) = x_rot * cos(p ω) + rotate_half(x_rot) * sin(p ω)   on x[..., :rotary_dim],
    rotate_half(x) = (-x[n:], x[:n]),                              the other dimensions pass unchanged.

For a row vector, rot(x, p) = x A(p) with A(p) a d_head × d_head rotation, A(a) A(b) = A(a + b) and
A(p)^T = A(-p), so a head's pre-softmax score depends on the positions only through Δ = p_q − p_k:

    score(q, k) = rot(q, p_q) · rot(k, p_k) / scale = q A(p_q) A(p_k)^T k^T / scale = q R(Δ) k^T / scale,
    R(Δ) = A(Δ) (`rotation_matrix`): identity at Δ = 0 and on the dimensions past rotary_dim.

A token's score on itself sits at Δ = 0 (R = I); a score between two different tokens is read at
M = E_Δ[R(Δ)] over a distribution of distances (`mean_rotation`; a model's, `rotary_mean_rotation`; the
distances of a probe's query–partner pairs, `partner_distances`). Shapes: `x: [..., pos, d_head]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Rotary:
    """A layer's rotary positions: the first `rotary_dim` of `d_head` dimensions turn, with frequencies from `base`."""

    rotary_dim: int
    d_head: int
    base: float = 10000.0


def model_rotary(cfg) -> Rotary | None:
    """The rotary positions of a TransformerLens config `cfg`, or None where its positions are not rotary."""
    if cfg.positional_embedding_type != "rotary":
        return None
    return Rotary(int(cfg.rotary_dim), int(cfg.d_head), float(cfg.rotary_base))


def rotary_tables(rotary: Rotary, positions: Tensor) -> tuple[Tensor, Tensor]:
    """(sin, cos), each `[n, rotary_dim]`: sin(p ω), cos(p ω) at `positions: [n]` (any real p), ω_i repeated
    over both halves, ω_i = base^(-i / (rotary_dim / 2)), computed in float64."""
    i = torch.arange(rotary.rotary_dim // 2, dtype=torch.float64)
    freq = rotary.base ** (i / (rotary.rotary_dim / 2))
    angles = positions.to(torch.float64)[:, None] / torch.cat([freq, freq])[None, :]
    return angles.sin(), angles.cos()


def rotate_half(x: Tensor) -> Tensor:
    """(-x[..., n:], x[..., :n]) for `x: [..., 2n]`: the quarter turn of every pair (i, i + n)."""
    n = x.shape[-1] // 2
    return torch.cat([-x[..., n:], x[..., :n]], dim=-1)


def apply_rotary(x: Tensor, positions: Tensor, rotary: Rotary) -> Tensor:
    """rot(x, p) for `x: [..., pos, d_head]` at `positions: [pos]`: the first rotary_dim dimensions turned by p ω,
    the rest unchanged (the module docstring's formula). Keeps x's dtype."""
    sin, cos = (t.to(x) for t in rotary_tables(rotary, positions))  # (pos, rotary_dim)
    x_rot, x_pass = x[..., : rotary.rotary_dim], x[..., rotary.rotary_dim:]
    return torch.cat([x_rot * cos + rotate_half(x_rot) * sin, x_pass], dim=-1)


def rotation_matrix(rotary: Rotary, delta: Tensor) -> Tensor:
    """R(Δ) `[n, d_head, d_head]` for `delta: [n]` (float64): q R(Δ) k^T = rot(q, p_q) · rot(k, p_k) whenever
    p_q − p_k = Δ; R(Δ) = A(Δ), the rotation of the identity's rows at position Δ."""
    eye = torch.eye(rotary.d_head, dtype=torch.float64)
    return torch.stack([apply_rotary(eye, d.reshape(1).expand(rotary.d_head), rotary) for d in delta.reshape(-1)])


def mean_rotation(rotary: Rotary, distances: Tensor) -> Tensor:
    """M = E_Δ[R(Δ)] `[d_head, d_head]` (float32) over `distances: [n]`, each query–partner distance Δ = p_q − p_k
    counted once: the average of `rotation_matrix` over the list. Not a rotation: its rotary block shrinks where
    the angles spread."""
    if distances.numel() == 0:
        raise ValueError("mean_rotation needs at least one distance")
    values, counts = distances.reshape(-1).to(torch.float64).unique(return_counts=True)
    weights = counts.to(torch.float64) / counts.sum()
    return torch.einsum("n,nij->ij", weights, rotation_matrix(rotary, values)).float()


def partner_distances(mask: Tensor) -> Tensor:
    """`[n]` (long): Δ = q − k of every (query q, key k) pair that `mask: [batch, query, key]` (bool) marks, e.g.
    the semantic partner mask without BOS; a pair counted once per prompt that marks it."""
    b, q, k = mask.nonzero(as_tuple=True)
    return (q - k).long()


def rotary_mean_rotation(model, distances: Tensor) -> Tensor | None:
    """A model's M = E_Δ[R(Δ)] `[d_head, d_head]` over `distances: [n]` (`partner_distances`), the same for every
    layer (TransformerLens gives all layers one rotary base); None where the model's positions are not rotary."""
    rotary = model_rotary(model.cfg)
    return None if rotary is None else mean_rotation(rotary, distances)
