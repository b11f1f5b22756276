"""Shape statistics of attention patterns: how focused, how far back, how much on BOS.

`pattern: [batch, head, query, key]` holds softmax probabilities; `rows: [batch, query]` selects
the query rows to average over (by default every row but BOS, see `analysis.scores.scored_rows`).
Each statistic comes back per prompt and head, `[batch, head]`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from analysis.scores import mean_over_rows


def entropy(pattern: Tensor, rows: Tensor) -> Tensor:
    """Mean over rows of H_q = -sum_k A[q,k] ln A[q,k] (nats; 0 ln 0 = 0). Uniform over q+1 keys gives ln(q+1)."""
    return mean_over_rows(torch.special.entr(pattern).sum(-1), rows)


def max_attention(pattern: Tensor, rows: Tensor) -> Tensor:
    """Mean over rows of max_k A[q,k]: 1 for a head that puts everything on one key."""
    return mean_over_rows(pattern.amax(-1), rows)


def mean_distance(pattern: Tensor, rows: Tensor) -> Tensor:
    """Mean over rows of sum_k A[q,k] (q - k): how many tokens back the attention reaches, on average."""
    q, k = pattern.shape[-2:]
    distance = (torch.arange(q)[:, None] - torch.arange(k)[None, :]).clamp_min(0).to(pattern)  # (T, T)
    return mean_over_rows((pattern * distance).sum(-1), rows)


def bos_mass(pattern: Tensor, rows: Tensor) -> Tensor:
    """Mean over rows of A[q, 0], the attention on the first (BOS) token."""
    return mean_over_rows(pattern[..., 0], rows)


STATISTICS = {"entropy": entropy, "max_attention": max_attention, "mean_distance": mean_distance,
              "bos_mass": bos_mass}


def attention_statistics(pattern: Tensor, rows: Tensor) -> dict[str, Tensor]:
    """Every statistic of `STATISTICS`, each `[batch, head]`."""
    return {name: fn(pattern, rows) for name, fn in STATISTICS.items()}
