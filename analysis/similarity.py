"""Attention versus similarity: does a head prefer a similar, different token over the token itself?

For head inputs x_t (`analysis.vocab_input.head_input`) and the head's bilinear score s(q, k)
(`vocab_input.bilinear_scores`), each ordered pair of different tokens (q, k) gives

    d(q, k) = s(q, k) - s(q, q)          > 0: key k beats the query's own token
    c(q, k) = cos(x_q, x_k)

A self-suppressing semantic head has d < 0 for dissimilar keys and d > 0 for keys that are
similar but not identical. The pairs are summarised by windowed means of d over windows of c,
with confidence intervals from a bootstrap over queries (pairs sharing a query are not
independent). Everything streams over query chunks: N x N matrices are never held, so N = 8192
GPT-2 tokens fit in a few hundred MB.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from analysis.vocab_input import bilinear_scores


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """`[n_a, n_b]`: cos(a_i, b_j) for `a: [n_a, d]`, `b: [n_b, d]`."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def score_minus_self(inputs: Tensor, query_index: Tensor, W_Q: Tensor, W_K: Tensor,
                     b_Q: Tensor | None = None, b_K: Tensor | None = None) -> Tensor:
    """`[n_q, N]`: d(q, k) = s(q, k) - s(q, q) for the queries `inputs[query_index]` and every key of `inputs: [N, d_model]`."""
    scores = bilinear_scores(inputs[query_index], inputs, W_Q, W_K, b_Q, b_K)  # (C, N)
    return scores - scores.gather(1, query_index[:, None])


def binned_pairs(inputs: Tensor, edges: Tensor, W_Q: Tensor, W_K: Tensor, b_Q: Tensor | None = None,
                 b_K: Tensor | None = None, scale: float = 1.0, chunk_size: int = 1024,
                 progress: bool = False) -> tuple[Tensor, Tensor]:
    """Per query and cosine window, the number of keys and the sum of `scale * d(q, k)`, self left out.

    `edges: [n_windows + 1]` are the window edges in cosine; window i holds edges[i] <= c < edges[i+1]
    (the outer windows also take anything beyond the outer edges). Returns
    (`counts: [N, n_windows]` int64, `sums: [N, n_windows]` float64).
    """
    n, n_windows = inputs.shape[0], len(edges) - 1
    counts = torch.zeros(n, n_windows, dtype=torch.int64)
    sums = torch.zeros(n, n_windows, dtype=torch.float64)
    inner = edges[1:-1].contiguous()
    for start in tqdm(range(0, n, chunk_size), desc="query chunks", disable=not progress, leave=False):
        index = torch.arange(start, min(start + chunk_size, n))
        diff = score_minus_self(inputs, index, W_Q, W_K, b_Q, b_K).double() * scale  # (C, N)
        window = torch.bucketize(cosine_matrix(inputs[index], inputs), inner, right=True)  # (C, N)
        not_self = torch.ones_like(diff, dtype=torch.bool)
        not_self[torch.arange(len(index)), index] = False
        counts[index] = torch.zeros(len(index), n_windows, dtype=torch.int64).scatter_add_(1, window, not_self.long())
        sums[index] = torch.zeros(len(index), n_windows, dtype=torch.float64).scatter_add_(1, window, diff * not_self)
    return counts, sums


def windowed_means(counts: Tensor, sums: Tensor, level: float = 0.99, n_resamples: int = 1000,
                   seed: int = 0, min_pairs: int = 20) -> dict[str, np.ndarray]:
    """Mean of d per window, `[n_windows]`, with a percentile CI from resampling queries.

    mean_w = sum_q sums[q, w] / sum_q counts[q, w]; a bootstrap draws queries with replacement
    (multinomial weights) and recomputes it. Windows with fewer than `min_pairs` pairs are NaN.
    """
    counts_np, sums_np = counts.double().numpy(), sums.numpy()
    n = counts_np.shape[0]
    total = counts_np.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an empty window is NaN in every resample, on purpose
        mean = sums_np.sum(0) / total
        rng = np.random.default_rng(seed)
        resampled = []
        for start in range(0, n_resamples, 100):  # (100, N) weights at a time
            weights = rng.multinomial(n, np.full(n, 1 / n), size=min(100, n_resamples - start)).astype(float)
            resampled.append((weights @ sums_np) / (weights @ counts_np))
        alpha = (1 - level) / 2
        low, high = np.nanquantile(np.concatenate(resampled), [alpha, 1 - alpha], axis=0)
    sparse = total < min_pairs
    for values in (mean, low, high):
        values[sparse] = np.nan
    return {"pairs": total.astype(np.int64), "mean": mean, "low": low, "high": high}


def beats_self_from(centres: np.ndarray, mean: np.ndarray) -> float | None:
    """Cosine from which similar-but-different keys beat self on average, up to the peak.

    Walk down from the window with the highest mean while the mean stays > 0; return the zero
    crossing below that run (linear between window centres), or the lowest window's centre if
    the run reaches it. None if no window has a positive mean. NaN windows are skipped.
    """
    keep = ~np.isnan(mean)
    c, m = centres[keep], mean[keep]
    if len(m) == 0 or m.max() <= 0:
        return None
    j = int(np.argmax(m))
    while j > 0 and m[j - 1] > 0:
        j -= 1
    if j == 0:
        return float(c[0])
    return float(c[j - 1] + (c[j] - c[j - 1]) * (0 - m[j - 1]) / (m[j] - m[j - 1]))


def peak(centres: np.ndarray, mean: np.ndarray) -> tuple[float, float]:
    """(cosine, mean) of the window with the highest mean d."""
    i = int(np.nanargmax(mean))
    return float(centres[i]), float(mean[i])


def category_contrast(diff: Tensor, cosine: Tensor, category: Tensor) -> dict[str, float]:
    """d and cosine over pairs of category words; `diff, cosine: [n, n]` (row q, column k), `category: [n]`.

    mates are different words of the same category, others words of other categories. For each
    group: mean d, the fraction of pairs with d > 0 (the key beats self) and the mean cosine.
    """
    same = category[:, None] == category[None, :]
    different = ~torch.eye(len(category), dtype=torch.bool)
    out: dict[str, float] = {}
    for group, pairs in (("mates", same & different), ("others", ~same)):
        out |= {f"{group}_mean": float(diff[pairs].mean()), f"{group}_beat_self": float((diff[pairs] > 0).float().mean()),
                f"{group}_cosine": float(cosine[pairs].mean()), f"{group}_pairs": int(pairs.sum())}
    return out


def top_keys(diff_row: Tensor, cos_row: Tensor, labels: list[str], k: int = 8) -> list[Mapping[str, float | str]]:
    """The k keys with the largest d for one query: label, d and cosine."""
    order = diff_row.argsort(descending=True)[:k]
    return [{"token": labels[i], "score_minus_self": float(diff_row[i]), "cosine": float(cos_row[i])} for i in order]
