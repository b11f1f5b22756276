"""Attention versus similarity: does a head prefer a similar, different token over the token itself?

For head inputs x_t (`analysis.vocab_input.head_input`) and the head's attention score s(q, k)
(`attention.attention_scores` of its `QKHead`, with the model's scale; with a rotary head's rotation M, a token's
score on itself at Δ = 0 and on any other token at M: `attention.word_score_rows`), each ordered pair of different
tokens (q, k) gives

    d(q, k) = s(q, k) - s(q, q)          > 0: key k beats the query's own token
    c(q, k) = cos(x_q, x_k)

A self-suppressing semantic head has d < 0 for dissimilar keys and d > 0 for keys that are
similar but not identical. The pairs are summarised by windowed means of d over windows of c,
with confidence intervals from a bootstrap over queries (pairs sharing a query are not
independent). Everything streams over query chunks: N x N matrices are never held, so N = 8192
GPT-2 tokens fit in a few hundred MB.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from analysis.attention import QKHead, qk_head, word_score_rows
from analysis.controls import Sample
from analysis.properties import partner_mask, row_mean
from analysis.prompts import CategoryWords
from analysis.vocab_input import head_input


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """`[n_a, n_b]`: cos(a_i, b_j) for `a: [n_a, d]`, `b: [n_b, d]`."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def score_minus_self(inputs: Tensor, query_index: Tensor, qk: QKHead) -> Tensor:
    """`[n_q, N]`: d(q, k) = s(q, k) - s(q, q) for the queries `inputs[query_index]` and every key of
    `inputs: [N, d_model]`, s the head's attention score (with the model's scale, and biases if `qk` has them);
    with a rotary head's rotation M, s(q, k) between different tokens at M and s(q, q) at Δ = 0
    (`attention.word_score_rows`).
    """
    scores = word_score_rows(inputs, query_index, qk)  # (C, N)
    return scores - scores.gather(1, query_index[:, None])


def binned_pairs(inputs: Tensor, edges: Tensor, qk: QKHead, unit: float = 1.0, chunk_size: int = 1024,
                 progress: bool = False) -> tuple[Tensor, Tensor]:
    """Per query and cosine window, the number of keys and the sum of `unit * d(q, k)` of the head `qk`, self left
    out.

    `unit` converts the scores (`score_unit`). `edges:
    [n_windows + 1]` are the window edges in cosine; window i holds edges[i] <= c < edges[i+1]
    (the outer windows also take anything beyond the outer edges). Returns
    (`counts: [N, n_windows]` int64, `sums: [N, n_windows]` float64).
    """
    n, n_windows = inputs.shape[0], len(edges) - 1
    counts = torch.zeros(n, n_windows, dtype=torch.int64)
    sums = torch.zeros(n, n_windows, dtype=torch.float64)
    inner = edges[1:-1].contiguous()
    for start in tqdm(range(0, n, chunk_size), desc="query chunks", disable=not progress, leave=False):
        index = torch.arange(start, min(start + chunk_size, n))
        diff = score_minus_self(inputs, index, qk).double() * unit  # (C, N)
        window = torch.bucketize(cosine_matrix(inputs[index], inputs), inner, right=True)  # (C, N)
        not_self = torch.ones_like(diff, dtype=torch.bool)
        not_self[torch.arange(len(index)), index] = False
        counts[index] = torch.zeros(len(index), n_windows, dtype=torch.int64).scatter_add_(1, window, not_self.long())
        sums[index] = torch.zeros(len(index), n_windows, dtype=torch.float64).scatter_add_(1, window, diff * not_self)
    return counts, sums


def score_unit(units: str, scale: float) -> float:
    """What d is multiplied by: 1 for "nats" (attention logits as the softmax sees them), scale / ln 2 for
    "bits-unscaled" (the original study's convention: the score without the attention scale, in bits)."""
    if units == "nats":
        return 1.0
    if units == "bits-unscaled":
        return scale / math.log(2)
    raise ValueError(f"units must be 'nats' or 'bits-unscaled', got {units!r}")


def window_edges(width: float) -> Tensor:
    """`[round(2 / width) + 1]` edges of cosine windows of (about) `width` over [-1, 1]."""
    return torch.linspace(-1, 1, round(2 / width) + 1)


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


@dataclass(frozen=True)
class ProfileSettings:
    """How `similarity_profile` summarises the pairs: d times `unit` (`score_unit`), cosine windows of `width`,
    CIs at `level` from `n_resamples` bootstrap resamples drawn with `seed`, `chunk_size` queries at a time."""

    unit: float = 1.0
    width: float = 0.025
    level: float = 0.99
    n_resamples: int = 1000
    seed: int = 0
    chunk_size: int = 1024


def similarity_profile(inputs: Tensor, qk: QKHead, settings: ProfileSettings = ProfileSettings(),
                       progress: bool = False) -> dict:
    """Every ordered pair of different inputs, summarised for the head `qk`: windowed means of `unit * d` over
    cosine windows of `width` (`windowed_means`, CI at `level`), the cosine from which keys beat self, and the peak.

    Returns {"centres": [n_windows], "windows": `windowed_means`'s dict, "pairs": int,
    "beats_self_from": float | None, "peak": (cosine, mean)}.
    """
    edges = window_edges(settings.width)
    centres = ((edges[1:] + edges[:-1]) / 2).numpy()
    counts, sums = binned_pairs(inputs, edges, qk, settings.unit, settings.chunk_size, progress)
    windows = windowed_means(counts, sums, level=settings.level, n_resamples=settings.n_resamples, seed=settings.seed)
    return {"centres": centres, "windows": windows, "pairs": int(counts.sum()),
            "beats_self_from": beats_self_from(centres, windows["mean"]), "peak": peak(centres, windows["mean"])}


def category_contrast(diff: Tensor, cosine: Tensor, category: Tensor) -> dict[str, float]:
    """d and cosine over pairs of category words, pooled; `diff, cosine: [n, n]` (row q, column k), `category: [n]`.

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


def contrast_samples(diff: Tensor, category: Tensor) -> dict[str, Sample]:
    """The category contrast per query word i (row i of `diff: [n, n]`), as `controls.Sample`s over the words:

        mates_minus_others_i    = mean_{k mate of i} d(i, k) - mean_{k other} d(i, k)   (> 0: prefers its mates)
        word_mates_beat_self_i  = share of i's mates k with d(i, k) > 0

    (NaN for a word without a mate or without another category's word)."""
    mates = partner_mask(category)
    others = category[:, None] != category[None, :]
    beat = row_mean((diff > 0).to(diff.dtype), mates)
    return {"mates_minus_others": Sample(row_mean(diff, mates) - row_mean(diff, others), "category word"),
            "word_mates_beat_self": Sample(beat, "category word")}


class CategoryContrast(NamedTuple):
    """A head's contrast over the category words: pooled over pairs (`category_contrast`) and per word as Samples
    (`contrast_samples`), for comparing heads."""

    pooled: dict[str, float]
    samples: dict[str, Sample]


def category_pairs(inputs: Tensor, category: Tensor, qk: QKHead, unit: float = 1.0) -> CategoryContrast:
    """The contrast of `unit * d` of the head `qk` over every pair of `inputs: [n, d_model]`, words of
    `category: [n]`."""
    diff = score_minus_self(inputs, torch.arange(len(inputs)), qk) * unit  # (n, n)
    return CategoryContrast(category_contrast(diff, cosine_matrix(inputs, inputs), category),
                            contrast_samples(diff, category))


@dataclass(frozen=True)
class HeadScores:
    """How `category_contrast_by_head` scores every head: biases with `include_bias`, in `unit`s (`score_unit`), and a
    rotary model's `rotation` M `[d_head, d_head]` for scores between different words (`positions.position_treatment`;
    None: M = I)."""

    include_bias: bool = True
    unit: float = 1.0
    rotation: Tensor | None = None


def category_contrast_by_head(model, reference: Tensor, variant: str, words: CategoryWords,
                              scoring: HeadScores = HeadScores()) -> dict[tuple[int, int], CategoryContrast]:
    """`category_pairs` of every head of `model` (`attention.qk_head` as `scoring` says) on the words
    `words.ids: [n]` of `words.category: [n]`: {(layer, head): contrast}. The head input (`vocab_input.head_input`,
    `variant` with the means of `reference`) is computed once per layer; cheap, since only the category words are
    paired."""
    out = {}
    for layer in range(model.cfg.n_layers):
        x = head_input(model, layer, reference, variant, token_ids=words.ids)  # (n, d_model)
        for head in range(model.cfg.n_heads):
            qk = qk_head(model, layer, head, scoring.include_bias, scoring.rotation)
            out[(layer, head)] = category_pairs(x, words.category, qk, scoring.unit)
    return out


def key_rows(diff_row: Tensor, cos_row: Tensor, labels: list[str], index: Sequence[int]
             ) -> list[dict[str, float | str]]:
    """One record per key of `index`: its label, d and cosine (for one query's `diff_row`, `cos_row: [n]`)."""
    return [{"token": labels[i], "score_minus_self": float(diff_row[i]), "cosine": float(cos_row[i])}
            for i in index]


def top_keys(diff_row: Tensor, cos_row: Tensor, labels: list[str], k: int = 8) -> list[dict[str, float | str]]:
    """The k keys with the largest d for one query: label, d and cosine."""
    return key_rows(diff_row, cos_row, labels, diff_row.argsort(descending=True)[:k].tolist())


class Keys(NamedTuple):
    """The keys of an example query, which travel together: `inputs: [n, d_model]`, a label each, and `category:
    [n]` each one's category number (-1 = none)."""

    inputs: Tensor
    labels: list[str]
    category: Tensor


def example_query(query_input: Tensor, query_category: int, keys: Keys, qk: QKHead, unit: float = 1.0,
                  n_labels: int = 8) -> dict:
    """One query (`query_input: [1, d_model]`, of category `query_category`, -1 = none) against `keys` (the query
    itself not among them), scored by the head `qk`.

    Returns `diff: [n]` (unit * d(q, k), against the query's own score), `cosine: [n]`, `mates: [n]`
    (keys of the query's category), and as records the `top_keys` and the category-mates.
    """
    both = torch.cat([query_input, keys.inputs])  # row 0 is the query, so s(q, q) is its own score
    diff = score_minus_self(both, torch.tensor([0]), qk)[0, 1:] * unit
    cosine = cosine_matrix(query_input, keys.inputs)[0]
    mates = (keys.category == query_category) & (query_category >= 0)
    return {"diff": diff, "cosine": cosine, "mates": mates, "top_keys": top_keys(diff, cosine, keys.labels, n_labels),
            "mate_keys": key_rows(diff, cosine, keys.labels, torch.nonzero(mates)[:, 0].tolist())}


@dataclass(frozen=True)
class StudyWindows:
    """The study's cosine windows (`study_curve`): `n_windows` starts, each window `width` wide."""

    n_windows: int = 50
    width: float = 0.03


def study_curve(inputs: Tensor, qk: QKHead, windows: StudyWindows = StudyWindows(), subtract: str = "column",
                chunk_size: int = 1024, progress: bool = False) -> dict:
    """The study's attention-versus-cosine curve, as its code computes it (`cosine_attention_analysis.py`).

    Scores are the head's, unscaled and without biases, s(q, k) = x_q W_Q W_K^T x_k^T (a rotary head: x_q W_Q M W_K^T
    x_k^T between different tokens, each token on itself at Δ = 0, `attention.word_score_rows`), turned into
    log-probabilities over the N keys, l(q, k) = s(q, k) - LSE_k' s(q, k'). The study subtracts the diagonal *column-wise*
    (`A - A.diagonal()` broadcasts over rows), which gives (`subtract="column"`)

        y(q, k) = l(q, k) - l(k, k) = s(q, k) - s(k, k) - LSE_q + LSE_k,

    not the row-wise l(q, k) - l(q, q) = s(q, k) - s(q, q) the prose describes (`subtract="row"`).
    Since cosine is symmetric, a window holding (q, k) also holds (k, q), and over such a set the two
    readings have the same mean (the LSE terms cancel pair by pair); only std and the CI differ.
    Windows (`windows`): `n_windows` starts c = linspace(min cos, 1), each [c, c + width] closed and overlapping,
    x = c + width / 2; self pairs (cos 1, y = 0) included. Per window: pair count, mean and std of y
    (unbiased), and the study's "99% CI" mean +- 2.576 std / sqrt(count). Everything in nats; the study
    plots bits (÷ ln 2), returned as `mean_bits`, `low_bits`, `high_bits`. Streams over query chunks.
    """
    if subtract not in ("column", "row"):
        raise ValueError(f"subtract must be 'column' or 'row', got {subtract!r}")
    n, n_windows, width = inputs.shape[0], windows.n_windows, windows.width
    unscaled = QKHead(qk.W_Q, qk.W_K, 1.0, rotation=qk.rotation)  # the study's scores: no scale, no biases
    chunks = [torch.arange(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    lse, own = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    cos_min = 1.0
    for index in chunks:  # pass 1: LSE_q, s(q, q), the smallest cosine
        s = word_score_rows(inputs, index, unscaled).double()  # (C, N)
        lse[index], own[index] = s.logsumexp(-1), s[torch.arange(len(index)), index]
        cos_min = min(cos_min, float(cosine_matrix(inputs[index], inputs).min()))
    starts = torch.linspace(cos_min, 1.0, n_windows, dtype=torch.float64)
    count = torch.zeros(n_windows, dtype=torch.float64)
    total, square = torch.zeros_like(count), torch.zeros_like(count)
    for index in tqdm(chunks, desc="study windows", disable=not progress, leave=False):  # pass 2: windows
        s = word_score_rows(inputs, index, unscaled).double()  # (C, N)
        if subtract == "column":
            y = s - own[None, :] - lse[index, None] + lse[None, :]
        else:
            y = s - own[index, None]
        rows = torch.arange(len(index))
        y[rows, index] = 0.0  # exactly 0 in exact arithmetic
        cos = cosine_matrix(inputs[index], inputs).double()
        cos[rows, index] = 1.0  # the study sets the diagonal to 1
        for w, c in enumerate(starts.tolist()):
            inside = (cos >= c) & (cos <= c + width)
            values = y[inside]
            count[w] += values.numel()
            total[w] += values.sum()
            square[w] += (values ** 2).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        c, t, q = count.numpy(), total.numpy(), square.numpy()
        mean = t / c
        std = np.sqrt(np.maximum(q - c * mean ** 2, 0.0) / (c - 1))
        half = 2.576 * std / np.sqrt(c)
    bits = 1 / math.log(2)
    return {"x": (starts + width / 2).numpy(), "count": c.astype(np.int64), "mean": mean, "std": std,
            "mean_bits": mean * bits, "low_bits": (mean - half) * bits, "high_bits": (mean + half) * bits,
            "cos_min": cos_min, "subtract": subtract, "width": width}


STUDY_DEFINITIONS = {
    "column": "log p(k|q) - log p(k|k) (column-wise, as the study's code), unscaled, no biases, BOS included, "
              "windows [c, c+0.03], self pairs in, bits",
    "row": "log p(k|q) - log p(q|q) = s(q,k) - s(q,q), unscaled, no biases"}


def study_curves(inputs: Tensor, qk: QKHead, chunk_size: int = 1024, progress: bool = False) -> dict[str, dict]:
    """The study's curve of the head `qk` both ways (`study_curve` over `inputs: [1 + n, d_model]`, BOS first), as
    results keep them: "study" (column-wise, the study's code) with its peak in bits and the cosine from which keys
    beat self, and "study_row" (row-wise), each with its definition."""
    column, row = (study_curve(inputs, qk, subtract=way, chunk_size=chunk_size, progress=progress)
                   for way in ("column", "row"))
    return {"study": {**column, "peak": dict(zip(("cosine", "bits"), peak(column["x"], column["mean_bits"]))),
                      "beats_self_from_cosine": beats_self_from(column["x"], column["mean_bits"]),
                      "definition": STUDY_DEFINITIONS["column"]},
            "study_row": {**row, "definition": STUDY_DEFINITIONS["row"]}}


def category_words(category_of: Tensor) -> CategoryWords:
    """(`ids: [n]`, `category: [n]`): the tokens with a category in `category_of: [d_vocab]` (-1 = none)."""
    ids = torch.nonzero(category_of >= 0)[:, 0]
    return CategoryWords(ids, category_of[ids])
