"""Head scores computed from attention patterns.

Conventions: `pattern: [batch, head, query, key]` holds softmax probabilities (rows sum to 1),
`mask: [batch, query, key]` marks the keys a head of some kind should attend to (see
`analysis.prompts`). Scores come back per prompt and head, `[batch, head]`, so callers can
average them or bootstrap over prompts; row 0 (BOS attending to itself) is never scored.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

# A floor on a row's attention mass, as an S computed from the pattern alone needs (the pattern underflows to 0):
# it caps a row's S at -ln(1e-6) = 13.8 nats. S here has no cap (`masked_log_mass`); results report this cap beside
# the worst head's S, and tests show that S goes past it.
PATTERN_MASS_FLOOR = 1e-6


def mean_over_rows(values: Tensor, rows: Tensor) -> Tensor:
    """Mean of `values: [batch, head, query]` over the rows selected by `rows: [batch, query]`.

    A prompt with no selected row gives NaN, so it cannot silently count as a perfect score.
    """
    weights = rows[:, None, :].to(values.dtype)
    return (values * weights).sum(-1) / weights.sum(-1)


def previous_token_score(pattern: Tensor, exclude_bos: bool = False) -> Tensor:
    """`[batch, head]`: mean over queries i >= 1 of A[i, i-1].

    With `exclude_bos`, query 1 (whose previous token is BOS) is left out, so a head that merely
    parks on BOS gets no credit for it.
    """
    diagonal = pattern.diagonal(offset=-1, dim1=-2, dim2=-1)  # (B, H, T-1): A[i, i-1] for i = 1..T-1
    if exclude_bos:
        diagonal = diagonal[..., 1:]
    return diagonal.mean(-1)


def induction_score(pattern: Tensor, half_length: int) -> Tensor:
    """`[batch, head]` on [BOS] + r + r with |r| = L: mean over second-half queries q of A[q, q - L + 1].

    The key is the token after the query token's first occurrence. The ceiling is 1.0, reached
    only by a head that puts all its attention there on every second-half row.
    """
    stripe = pattern.diagonal(offset=-(half_length - 1), dim1=-2, dim2=-1)  # A[q, q-L+1], q = L-1..
    return stripe[..., -half_length:].mean(-1)  # queries 1+L .. 2L


def induction_chance(half_length: int) -> float:
    """The induction score of uniform causal attention: (1/L) sum_{q=L+1}^{2L} 1 / (q + 1).

    Query q (position q of [BOS] + r + r) spreads 1/(q + 1) over keys 0..q; a head scoring near
    this attends to the induction target no more than to any other earlier token (L = 50: 0.0136).
    """
    return sum(1.0 / (q + 1) for q in range(half_length + 1, 2 * half_length + 1)) / half_length


def duplicate_token_score(pattern: Tensor, half_length: int) -> Tensor:
    """`[batch, head]` on [BOS] + r + r: mean over second-half queries q of A[q, q - L] (the earlier copy)."""
    stripe = pattern.diagonal(offset=-half_length, dim1=-2, dim2=-1)
    return stripe[..., -half_length:].mean(-1)


def mask_mass(pattern: Tensor, mask: Tensor) -> Tensor:
    """`[batch, head, query]`: attention mass on the marked keys, sum_k A[q, k] M[q, k]."""
    return torch.einsum("bhqk,bqk->bhq", pattern, mask.to(pattern.dtype))


def same_word_mask(tokens: Tensor) -> Tensor:
    """`[batch, query, key]`: key j <= i holds the same token as query i (itself or an earlier copy)."""
    pos = tokens.shape[1]
    same = tokens[:, :, None] == tokens[:, None, :]
    causal = torch.ones(pos, pos, dtype=torch.bool).tril()
    return (same & causal).float()


def self_position_mask(tokens: Tensor) -> Tensor:
    """`[batch, query, key]`: key j == query i (the query position itself), whatever the token."""
    batch, pos = tokens.shape
    return torch.eye(pos).expand(batch, pos, pos)


def earlier_copies_mask(tokens: Tensor) -> Tensor:
    """`[batch, query, key]`: key j < i holds the same token as query i (an earlier copy, not itself).

    `same_word_mask` = `self_position_mask` + `earlier_copies_mask`, entry by entry.
    """
    return same_word_mask(tokens) - self_position_mask(tokens)


def self_copies_split(pattern: Tensor, tokens: Tensor, rows: Tensor) -> dict[str, Tensor]:
    """The self mass split as the study reports it, each `[batch, head]` over `rows`:

    - self_only_mass: mean_q A[q, q], attention on the query position itself;
    - copies_mass: mean_q sum_{j<q, t_j = t_q} A[q, j], attention on earlier copies of the query word.

    Their sum is `self_mass` of `semantic_companions` (self plus copies).
    """
    return {"self_only_mass": mean_over_rows(mask_mass(pattern, self_position_mask(tokens)), rows),
            "copies_mass": mean_over_rows(mask_mass(pattern, earlier_copies_mask(tokens)), rows)}


def has_partner(mask: Tensor) -> Tensor:
    """`[batch, query]`: the row's targets are real partners, not the BOS fallback."""
    return mask[..., 1:].sum(-1) > 0


def scored_rows(tokens: Tensor) -> Tensor:
    """`[batch, query]`: every row but the first (BOS)."""
    rows = torch.ones(tokens.shape, dtype=torch.bool)
    rows[:, 0] = False
    return rows


def masked_log_mass(attn_scores: Tensor, mask: Tensor) -> Tensor:
    """`[batch, head, query]`: the exact log of the attention mass on the marked keys, from the scores.

    log sum_k A[q,k] M[q,k] = logsumexp_{k marked} z[q,k] - logsumexp_{k <= q} z[q,k], with
    `attn_scores: [batch, head, query, key]` the pre-softmax scores z (entries above the diagonal
    are ignored, whatever they hold). Unlike log(A) this never underflows: a head that puts
    e^-100 on its targets gets -100, not -inf or a clamp. A row with no marked key gives -inf.
    """
    q, k = attn_scores.shape[-2:]
    causal = torch.ones(q, k, dtype=torch.bool, device=attn_scores.device).tril()
    z = attn_scores.double().masked_fill(~causal, float("-inf"))
    marked = z.masked_fill(~(mask[:, None].bool() & causal), float("-inf"))
    return marked.logsumexp(-1) - z.logsumexp(-1)


def semantic_surprisal(pattern: Tensor, mask: Tensor, rows: Tensor, attn_scores: Tensor | None = None) -> Tensor:
    """The study's score, `[batch, head]`: S = mean_q -log(sum_k A[q,k] M[q,k]), in nats, without a cap.

    With `attn_scores` (the head's pre-softmax scores, same shape as `pattern`) each row is the
    exact `-masked_log_mass`, so a head far from its targets scores its true surprisal. Without
    them only the pattern is known and a row whose mass underflowed to 0 in the pattern's dtype
    is floored at the dtype's smallest normal number (about 87 nats in float32): pass the scores
    wherever they can be collected. Lower is better; 0 means every row puts all its attention on
    valid targets.
    """
    if attn_scores is not None:
        return mean_over_rows(-masked_log_mass(attn_scores, mask), rows).to(pattern.dtype)
    return mean_over_rows(-mask_mass(pattern, mask).clamp_min(torch.finfo(pattern.dtype).tiny).log(), rows)


STUDY_EPS = 1e-12  # the clamp of the study's S in its ablation code (src/metrics.py): a row counts at most 27.6 nats


def study_surprisal(pattern: Tensor, mask: Tensor) -> Tensor:
    """The study's S as its ablation code computes it, `[batch, head]`: mean over **every** row q, the BOS row
    included, of -ln(max(sum_k A[q,k] M[q,k], 1e-12)) (the study's code, `Mamiglia/deep-dive-L1H5`,
    src/metrics.py). Its BOS row has M[0, 0] = A[0, 0] = 1, so it adds 0 but counts in the mean. Kept for
    like-for-like comparison with the study's reported values; `semantic_surprisal` is ours (uncapped, BOS
    row out)."""
    return -mask_mass(pattern, mask).clamp_min(STUDY_EPS).log().mean(-1)


MASSES = ("self_mass", "partner_mass", "bos_mass_no_partner")  # the three attention masses of `semantic_companions`


def semantic_companions(pattern: Tensor, tokens: Tensor, mask: Tensor, rows: Tensor) -> dict[str, Tensor]:
    """Interpretable companions of S, each `[batch, head]`:

    - partner_mass: mass on valid partners, over rows that have one;
    - self_mass: mass on the query itself plus earlier copies of the same word, over all rows
      (= self_only_mass + copies_mass, reported separately by `self_copies_split`);
    - bos_mass_no_partner: mass on BOS, over rows without a partner;
    - argmax_accuracy: fraction of rows whose most-attended key is a valid target.
    """
    partner = has_partner(mask) & rows
    lonely = ~has_partner(mask) & rows
    argmax = pattern.argmax(-1)  # (B, H, Q)
    hit = mask.gather(-1, argmax.permute(0, 2, 1)).permute(0, 2, 1)  # M[q, argmax_q]
    return {
        "partner_mass": mean_over_rows(mask_mass(pattern, mask), partner),
        "self_mass": mean_over_rows(mask_mass(pattern, same_word_mask(tokens)), rows),
        "bos_mass_no_partner": mean_over_rows(pattern[..., 0], lonely),
        "argmax_accuracy": mean_over_rows(hit, rows),
        **self_copies_split(pattern, tokens, rows),
    }


# The semantic metrics: S and its companions, the keys of `semantic_scores` (self_mass = self_only_mass + copies_mass).
SEMANTIC_METRICS = ("surprisal", "partner_mass", "self_mass", "bos_mass_no_partner", "argmax_accuracy",
                    "self_only_mass", "copies_mass")


def semantic_scores(pattern: Tensor, tokens: Tensor, mask: Tensor,
                    attn_scores: Tensor | None = None) -> dict[str, Tensor]:
    """The semantic metrics (`SEMANTIC_METRICS`: S and its companions), each `[batch, head]`, over every row but BOS
    (`scored_rows`).

    `attn_scores` (pre-softmax, like `pattern`) make S exact and uncapped (`semantic_surprisal`).
    """
    rows = scored_rows(tokens)
    return {"surprisal": semantic_surprisal(pattern, mask, rows, attn_scores),
            **semantic_companions(pattern, tokens, mask, rows)}


def bootstrap_ci(per_prompt: Tensor | np.ndarray, n_resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and percentile bootstrap CI over prompts (axis 0), ignoring NaN prompts.

    Returns (mean, low, high), each with the trailing shape of `per_prompt` (e.g. `[head]`).
    """
    values = np.asarray(per_prompt.detach().cpu() if isinstance(per_prompt, Tensor) else per_prompt, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.shape[0], size=(n_resamples, values.shape[0]))
    with warnings.catch_warnings():  # a resample of only NaN prompts is NaN, on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        resampled = np.nanmean(values[idx], axis=1)  # (R, ...)
        alpha = (1 - level) / 2
        low, high = np.nanquantile(resampled, [alpha, 1 - alpha], axis=0)
        return np.nanmean(values, axis=0), low, high
