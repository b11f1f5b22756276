"""A head's QK circuit W = W_Q W_K^T, its symmetric and skew parts, their spectrum, and edits.

W is the head's bilinear form on its (normalised) input: score(q, k) = x_q W x_k^T / attn_scale, for a
head given as an `attention.QKHead` (W_Q, W_K: [d_model, d_head], the scale, optional biases; `qk.W`).
It splits uniquely into

    W_sym  = (W + W^T) / 2    (scores that are the same both ways: x_q W_sym x_k = x_k W_sym x_q)
    W_skew = (W - W^T) / 2    (scores that flip sign: x_q W_skew x_k = -x_k W_skew x_q)

so x^T W x = x^T W_sym x for every x: the skew part cannot touch a token's score with itself.
A head that avoids itself needs x^T W_sym x < 0 for the tokens it avoids, i.e. negative
eigenvalues of W_sym. Each part is kept as a TransformerLens `FactoredMatrix` with an inner
dimension of 2 * d_head,

    W_sym  = [W_Q, W_K] @ [W_K, W_Q]^T / 2,     W_skew = [W_Q, W_K] @ [W_K, -W_Q]^T / 2,

so the spectrum of W_sym comes from a (2 d_head x 2 d_head) eigenproblem and nothing of size
d_model x d_model, let alone d_vocab x d_vocab, is ever formed. W_sym has at most 2 * d_head
non-zero eigenvalues and, by Sylvester's law of inertia, at most d_head of each sign.

Biases. By default W leaves the biases out (TransformerLens's QK-circuit convention). With
them, score(q, k) = (x_q W_Q + b_Q)(x_k W_K + b_K)^T: `with_bias` folds them in by appending a
constant 1 to the input, [x, 1] [W_Q; b_Q] [W_K; b_K]^T [x, 1]^T. Of the three extra terms only
b_Q W_K^T x_k varies with the key; x_q W_Q b_K^T and b_Q b_K^T are constant along a query's row
and cancel in the softmax.

Edits (eigenvalue steering) change W_sym's eigenvalues λ_S on a set S of eigenvectors V_S and
keep everything else: W' = W + V_S diag((f - 1) λ_S) V_S^T. W' is again a product
W_Q' W_K'^T with W_Q' = [W_Q, V_S diag((f - 1) λ_S)], W_K' = [W_K, V_S] (`edited_head`: the head with these
factors, its scale and its biases padded); `analysis.qk_edits` runs the model with a head's scores computed
from any such factorisation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import FactoredMatrix

from analysis.attention import QKHead, attention_score_matrix, attention_scores, self_attention_scores


# --- the decomposition -----------------------------------------------------------------------


def symmetric_part(qk: QKHead) -> FactoredMatrix:
    """W_sym = (W + W^T) / 2 = [W_Q, W_K] [W_K, W_Q]^T / 2 of the head's W, inner dimension 2 d_head."""
    return FactoredMatrix(torch.cat([qk.W_Q, qk.W_K], -1), torch.cat([qk.W_K, qk.W_Q], -1).T / 2)


def skew_part(qk: QKHead) -> FactoredMatrix:
    """W_skew = (W - W^T) / 2 = [W_Q, W_K] [W_K, -W_Q]^T / 2 of the head's W, inner dimension 2 d_head."""
    return FactoredMatrix(torch.cat([qk.W_Q, qk.W_K], -1), torch.cat([qk.W_K, -qk.W_Q], -1).T / 2)


def with_bias(qk: QKHead) -> QKHead:
    """The head's biases folded into its factors: `[d_model + 1, d_head]` [W_Q; b_Q], [W_K; b_K], acting on
    inputs [x, 1] (see `append_one`), with the head's scale and no biases of its own."""
    return QKHead(torch.cat([qk.W_Q, qk.b_Q[None]]), torch.cat([qk.W_K, qk.b_K[None]]), qk.scale)


def append_one(x: Tensor) -> Tensor:
    """`[n, d_model] -> [n, d_model + 1]`: the constant coordinate that carries the biases."""
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], -1)


def relative_norms(qk: QKHead) -> dict[str, float]:
    """Frobenius norms ||W||, ||W_sym||, ||W_skew|| of the head's W and the shares ||W_part|| / ||W||.

    The parts are orthogonal under the Frobenius inner product: ||W||^2 = ||W_sym||^2 + ||W_skew||^2.
    """
    norm = float(qk.W.norm())
    sym, skew = float(symmetric_part(qk).norm()), float(skew_part(qk).norm())
    return {"W": norm, "sym": sym, "skew": skew, "sym_share": sym / norm, "skew_share": skew / norm}


@dataclass
class Spectrum:
    """All eigenpairs of W_sym: `values: [2 d_head]` ascending, `vectors: [d_model, 2 d_head]` orthonormal."""

    values: Tensor
    vectors: Tensor


def symmetric_spectrum(qk: QKHead) -> Spectrum:
    """Every eigenpair of the head's W_sym = U M U^T with U = [W_Q, W_K], M = [[0, I], [I, 0]] / 2.

    With U = Q R (thin QR), W_sym = Q (R M R^T) Q^T, so the eigenpairs are those of the small
    symmetric R M R^T = P diag(λ) P^T, with eigenvectors Q P: exact, all 2 d_head of them
    (eigenvalues that vanish because U is rank-deficient come out as ~0, not dropped).
    """
    W_Q, d_head = qk.W_Q, qk.W_Q.shape[-1]
    U = torch.cat([W_Q, qk.W_K], -1).double()  # (d_model, 2 d_head)
    Q, R = torch.linalg.qr(U)  # Q: (d_model, r), R: (r, 2 d_head)
    eye = torch.eye(d_head, dtype=U.dtype)
    zero = torch.zeros_like(eye)
    M = torch.cat([torch.cat([zero, eye], 1), torch.cat([eye, zero], 1)]) / 2
    small = R @ M @ R.T
    values, P = torch.linalg.eigh((small + small.T) / 2)
    return Spectrum(values.to(W_Q.dtype), (Q @ P).to(W_Q.dtype))


# Eigenvalues with |λ| <= ZERO_RTOL * max|λ| are numerical zeros: a rank-deficient [W_Q, W_K] gives
# eigenvalues of about 1e-16 (either sign) that are not negative directions of W_sym. Every count of
# signs goes through `eigenvalue_signs`, so all scripts agree on how many negative eigenvalues a head has.
ZERO_RTOL = 1e-6


def eigenvalue_signs(values: Tensor, rel_tol: float = ZERO_RTOL) -> Tensor:
    """`[n]` of -1, 0, +1: sign(λ_i), with 0 where |λ_i| <= rel_tol * max_j |λ_j| (a numerical zero)."""
    tol = rel_tol * values.abs().max()
    return torch.where(values > tol, 1, torch.where(values < -tol, -1, 0))


def spectrum_summary(values: Tensor, rel_tol: float = ZERO_RTOL) -> dict[str, float | int]:
    """Counts and total magnitudes of the eigenvalues of each sign (`eigenvalue_signs`: numerical zeros apart).

    `negative_share` = sum |λ_neg| / sum |λ|; the trace sum λ = trace(W) is the mean self-score of
    an isotropic input (E[x^T W x] = trace(W) for E[x x^T] = I).
    """
    signs = eigenvalue_signs(values, rel_tol)
    negative, positive = values[signs < 0], values[signs > 0]
    total = values.abs().sum()
    return {"n_negative": len(negative), "n_positive": len(positive),
            "n_zero": len(values) - len(negative) - len(positive),
            "negative_total": float(negative.abs().sum()), "positive_total": float(positive.sum()),
            "negative_share": float(negative.abs().sum() / total), "trace": float(values.sum()),
            "most_negative": float(values.min()), "most_positive": float(values.max())}


# --- token-space scores ----------------------------------------------------------------------
# Every score here is `attention.attention_scores` of a `QKHead` or one of its variants: W = W_Q W_K^T with
# the head's scale, the model's (`attention.head_scale`), never the width of the factors.


def self_score_parts(x: Tensor, spectrum: Spectrum, scale: float) -> tuple[Tensor, Tensor]:
    """(`positive: [n]`, `negative: [n]`): x^T W_sym x / scale = sum_i λ_i (v_i . x)^2 / scale
    split into the terms with λ_i > 0 and with λ_i < 0 (their sum is the self-score)."""
    terms = spectrum.values * (x @ spectrum.vectors) ** 2 / scale  # (n, 2 d_head)
    return terms.clamp_min(0).sum(-1), terms.clamp_max(0).sum(-1)


def score_blocks(query_input: Tensor, key_input: Tensor, qk: QKHead, chunk_size: int = 1024
                 ) -> Iterator[tuple[int, Tensor]]:
    """(start, `block: [C, n_k]`) for consecutive chunks of queries: `attention.attention_scores` of the head,
    `query_input: [n_q, d]` against `key_input: [n_k, d]`, one chunk of queries at a time (n_q x n_k never held)."""
    matrix = attention_score_matrix(query_input, key_input, qk)  # (n_q, r) @ (r, n_k), factored
    for start in range(0, len(query_input), chunk_size):
        yield start, matrix.A[start:start + chunk_size] @ matrix.B


def word_score_blocks(x: Tensor, qk: QKHead, chunk_size: int = 1024) -> Iterator[tuple[int, Tensor]]:
    """(start, `block: [C, n]`): `attention.word_score_matrix` of `x: [n, d]` in consecutive chunks of query rows,
    each word's own key (column start + c of row c) at Δ = 0 and every other key at the head's rotation M
    (`score_blocks` of x against itself, with its diagonal replaced where the head has a rotation), n x n never held."""
    own = None if qk.rotation is None else self_attention_scores(x, qk)
    for start, block in score_blocks(x, x, qk, chunk_size):
        if own is not None:  # each query's own key at Δ = 0
            block.diagonal(offset=start).copy_(own[start:start + len(block)])
        yield start, block


@torch.no_grad()
def self_ranks(x: Tensor, qk: QKHead, chunk_size: int = 1024) -> Tensor:
    """`[n]`: rank of each token's score with itself among all keys for its query (1 = top).

    rank_i = 1 + #{j : x_i W x_j^T > x_i W x_i^T} for the head's W (biases left out, as in `self_ranks_grid`),
    over every row j of `x: [n, d]` (the keys are the queries). With a rotary head's rotation M the other keys are
    scored at M and the self-score at Δ = 0 (`attention.word_score_matrix`). Read in `[chunk_size, n]` blocks of
    scores, so n x n is never resident.
    """
    ranks = []
    unscaled = replace(qk.without_bias(), scale=1.0)  # ranks do not depend on the scale
    for start, block in word_score_blocks(x, unscaled, chunk_size):
        diagonal = block.diagonal(offset=start)  # (C,): query start + c against key start + c
        ranks.append(1 + (block > diagonal[:, None]).sum(-1))
    return torch.cat(ranks)


def rank_metrics(ranks: Tensor, at: Sequence[int] = (1, 128, 1024)) -> dict[str, float]:
    """Summaries of self-ranks r_i: mean rank, MRR = mean(1 / r_i), and accuracy@k = mean(r_i <= k)."""
    ranks = ranks.double()
    return {"mean_rank": float(ranks.mean()), "mrr": float((1 / ranks).mean()),
            **{f"acc@{k}": float((ranks <= k).double().mean()) for k in at}}


def normalised_rank(mean_rank: float, n_keys: int) -> float:
    """The mean self-rank on the study's scale, (mean_i r_i - 1) / V in [0, 1): ranks from 0 (the study's argsort
    positions) over the V = `n_keys` keys, so vocabularies of any size compare (chance: about 1/2)."""
    return (mean_rank - 1) / n_keys


def trivial_accuracy_ks(at: Sequence[int], n_keys: int) -> dict[str, str]:
    """{str(K): why} for every K of accuracy@K that says nothing over `n_keys` keys: K >= V / 2, where even a random
    ranking puts self in the top K for at least half of the queries."""
    return {str(k): f"K >= V/2 = {n_keys / 2:g}: trivial over {n_keys} keys" for k in at if k >= n_keys / 2}


@dataclass
class SelfScores:
    """Each input's self-score x W x^T / scale, `total: [n]`, and its positive- and negative-eigenvalue parts."""

    total: Tensor
    positive: Tensor
    negative: Tensor


def self_score_report(qk: QKHead, x: Tensor) -> tuple[dict, SelfScores]:
    """The head's W = W_Q W_K^T (its biases left out) on inputs `x: [n, d]`: norms of W and its parts, the spectrum
    of W_sym, checks, self-scores x W x^T / scale.

    Returns ({"norms", "spectrum", "eigenvalues", "check", "self_score"}, the self-scores themselves).
    The checks compare x^T W x, x^T W_sym x and x^T W_skew x through the dense d x d matrices (an
    independent path to the factored numbers) and the eigenvalue parts against the self-scores.
    """
    spectrum, scale = symmetric_spectrum(qk), qk.scale
    W, sym, skew = qk.W, symmetric_part(qk), skew_part(qk)
    positive, negative = self_score_parts(x, spectrum, scale)
    total = self_attention_scores(x, qk.without_bias())

    def dense_self(part: FactoredMatrix) -> Tensor:  # x^T M x through the d x d matrix itself
        return ((x @ part.AB) * x).sum(-1) / scale

    report = {
        "norms": relative_norms(qk),
        "spectrum": spectrum_summary(spectrum.values),
        "eigenvalues": spectrum.values,
        "check": {"max_abs_self_W_minus_sym": float((dense_self(W) - dense_self(sym)).abs().max()),
                  "max_abs_self_skew": float(dense_self(skew).abs().max()),
                  "max_abs_parts_minus_self": float((positive + negative - total).abs().max()),
                  "self_score_scale": float(total.abs().max())},
        "self_score": {"mean": float(total.mean()), "fraction_negative": float((total < 0).float().mean()),
                       "mean_positive_part": float(positive.mean()), "mean_negative_part": float(negative.mean())},
    }
    return report, SelfScores(total, positive, negative)


def bias_key_term(x: Tensor, qk: QKHead) -> dict[str, float]:
    """Of the bias terms of the head's (x_q W_Q + b_Q)(x_k W_K + b_K)^T, only b_Q (x_k W_K)^T varies with the key.

    On inputs `x: [n, d]`: its spread over keys, std_k(b_Q . x_k W_K) / scale ("key_term_std"), against
    that of the bias-free scores x_q W x_k^T / scale, the mean over queries of std_k ("score_std_over_keys").
    """
    key_term = (x @ qk.W_K) @ qk.b_Q / qk.scale  # (n,)
    scores = attention_scores(x, x, qk.without_bias())  # (n, n)
    return {"key_term_std": float(key_term.std()), "score_std_over_keys": float(scores.std(-1).mean())}


@dataclass(frozen=True)
class RankGrid:
    """The grid of eigenvalue edits whose self-ranks are measured (`self_ranks_grid`, `self_suppression.rank_grid`):
    every k of `ks` most negative components of W_sym rescaled by every factor of `scales`, summarised as
    accuracy@K for each K of `at`, for the query rows `queries: [m]` (None: every row), `chunk_size` queries at
    a time; `rotation` is a rotary model's M `[d_head, d_head]` (`positions.position_treatment`; None: M = I), which
    `self_suppression.rank_grid` gives the head whose grid it measures (`self_ranks_grid` reads it off the head)."""

    ks: Sequence[int]
    scales: Sequence[float]
    at: Sequence[int] = (1, 128, 1024)
    chunk_size: int = 32
    queries: Tensor | None = None
    rotation: Tensor | None = None


@torch.no_grad()
def self_ranks_grid(x: Tensor, qk: QKHead, spectrum: Spectrum, grid: RankGrid, progress: bool = False
                    ) -> dict[tuple[int, float], Tensor]:
    """`{(k, scale): ranks [m]}`: `self_ranks` of `x: [n, d]` under every edit W_{k,s} of the grid (k in
    `grid.ks`, s in `grid.scales`), for the query rows `grid.queries: [m]` (default: all n), each ranked against
    all n keys; `spectrum` is the head's (`symmetric_spectrum`).

    W_{k,s} = W + V_k diag((s - 1) λ_k) V_k^T (`edited_head` of the k most negative components)
    scores a query q and key j as x_q W x_j^T + (s - 1) D_k[q, j], D_k = (x V_k diag(λ_k))(x V_k)^T.
    Positions: with the head's rotation M (`qk.rotation`, a rotary head) a key j != q is scored x_q W_Q M W_K^T x_j^T
    + (s - 1) D_k[q, j] and the query's own key x_q W_Q W_K^T x_q^T + (s - 1) D_k[q, q] (Δ = 0): M turns the head's
    d_head query/key space only, and the edit, a change of W_sym at Δ = 0 along directions of d_model, is added the
    same at every distance (as `edited_head`'s extra columns, which `attention.pad_rotation` leaves unturned).
    Per chunk of queries the base block is computed once and D_k grows with k by the components
    between consecutive ks, so the whole grid costs one product of inner size d_head + max(ks) plus,
    per cell, one add and one compare over the block (instead of one product of inner size d_head + k
    per cell). Small chunks keep those blocks in cache. Ties are not ranks: keys strictly above self.
    """
    ks, scales, chunk_size = sorted(set(grid.ks)), grid.scales, grid.chunk_size
    order = most_negative(spectrum.values, ks[-1])  # (K,) most negative first
    if len(order) < ks[-1]:
        raise ValueError(f"k = {ks[-1]} asks for more negative eigenvalues than the {len(order)} there are")
    left, right = x @ qk.W_Q, x @ qk.W_K  # (n, d_head): the unedited head
    turned = left if qk.rotation is None else left @ qk.rotation  # (n, d_head): the query side for other keys, at M
    proj = x @ spectrum.vectors[:, order]  # (n, K): coordinates along the edited eigenvectors
    left_delta = proj * spectrum.values[order]  # (n, K)
    queries = torch.arange(len(x)) if grid.queries is None else grid.queries
    m = len(queries)
    ranks = {(k, float(s)): torch.empty(m, dtype=torch.long) for k in ks for s in scales}
    for start in tqdm(range(0, m, chunk_size), desc="self-ranks", disable=not progress, leave=False):
        q = queries[start:start + chunk_size]  # (C,) query rows; their own keys sit at the same indices
        rows = torch.arange(len(q))
        q_out = slice(start, start + len(q))
        base = turned[q] @ right.T  # (C, n)
        if qk.rotation is not None:  # each query's own key at Δ = 0
            base[rows, q] = (left[q] * right[q]).sum(-1)
        delta, done = torch.zeros_like(base), 0
        block = torch.empty_like(base)
        unedited = None  # scale 1 leaves every k's head as it is: counted once per chunk
        for k in ks:
            delta.addmm_(left_delta[q, done:k], proj[:, done:k].T)  # D_k = D_{k_prev} + the new components
            done = k
            for s in scales:
                if s == 1 and unedited is not None:
                    ranks[k, float(s)][q_out] = unedited
                    continue
                torch.add(base, delta, alpha=s - 1, out=block)  # scores of the edited head, (C, n)
                self_score = block[rows, q].clone()  # (C,): each query against itself as a key
                above = torch.gt(block, self_score[:, None], out=block).sum(-1)  # 0/1 as floats: sums fast
                ranks[k, float(s)][q_out] = 1 + above.long()
                if s == 1:
                    unedited = ranks[k, float(s)][q_out]
    return ranks


# --- eigenvalue edits ------------------------------------------------------------------------


def most_negative(values: Tensor, k: int | None = None, rel_tol: float = ZERO_RTOL) -> Tensor:
    """Indices of the k most negative eigenvalues (all negative ones when k is None), most negative first.

    Negative means `eigenvalue_signs(values) < 0`: numerical zeros below 0 are not counted.
    """
    order = values.argsort()
    negative = order[eigenvalue_signs(values, rel_tol)[order] < 0]
    return negative if k is None else negative[:k]


def self_suppressing_components(x: Tensor, spectrum: Spectrum, k: int | None = None) -> Tensor:
    """Indices of the k negative components that carry most of the inputs' negative self-score, largest first.

    Component i with λ_i < 0 contributes c_i = sum_n λ_i (v_i . x_n)^2 over `x: [n, d]` (e.g. the
    category tokens' inputs); rank by c_i, most negative first. All negative ones when k is None.
    """
    contribution = spectrum.values * ((x.to(spectrum.vectors) @ spectrum.vectors) ** 2).sum(0)  # (2 d_head,)
    order = contribution.argsort()
    negative = order[spectrum.values[order] < 0]
    return negative if k is None else negative[:k]


def edited_head(qk: QKHead, spectrum: Spectrum, index: Tensor, factor: float) -> QKHead:
    """The head with factors `[d_model, d_head + |S|]` of W' = W + V_S diag((factor - 1) λ_S) V_S^T, its scale and
    its biases padded (`QKHead.with_factors`); `spectrum` is the head's (`symmetric_spectrum`).

    The eigenvalues λ_S of W_sym on the components `index` become factor * λ_S; the rest of
    W_sym and all of W_skew are unchanged. factor = 1 gives W back exactly.
    """
    V = spectrum.vectors[:, index]  # (d_model, |S|)
    delta = (factor - 1) * spectrum.values[index]
    return qk.with_factors(torch.cat([qk.W_Q, V * delta], -1), torch.cat([qk.W_K, V], -1))


# --- the study's edit: eigenpairs of the non-symmetric W in the solver's order ----------------


@torch.no_grad()
def study_eigen_factors(qk: QKHead) -> tuple[Tensor, Tensor, Tensor]:
    """(U_Q: [d_model, d_head], λ: [d_head], U_K: [d_head, d_model]), complex: the original study's factors of W.

    W = W_Q W_K^T (dense d_model x d_model, non-symmetric) = V diag(λ_all) V^{-1} from `torch.linalg.eig`; the
    study kept the first d_head eigenpairs in the solver's order, unsorted: U_Q = V[:, :d_head], λ = λ_all[:d_head],
    U_K = V^{-1}[:d_head]. W has rank <= d_head, but the solver's first d_head pairs need not be its non-zero ones,
    so U_Q diag(λ) U_K need not equal W.
    """
    values, vectors = torch.linalg.eig(qk.W_Q @ qk.W_K.T)
    d_head = qk.W_Q.shape[1]
    return vectors[:, :d_head], values[:d_head], torch.linalg.inv(vectors)[:d_head]


@torch.no_grad()
def study_edit_ranks(x: Tensor, qk: QKHead, cell: tuple[int, float], queries: Tensor | None = None,
                     chunk_size: int = 32) -> tuple[Tensor, float]:
    """(`ranks: [m]` from 1, imaginary share): self-ranks of the study's edit at `cell` = (k, s), and
    max |Im A| / max |Re A| over the scores.

    A = x U_Q diag(λ') U_K x^T with λ' = λ, its first k entries (solver order, `study_eigen_factors`) times s;
    x: [n, d_model] real, cast to complex. The study ranked A by argsort, which torch (2.x) refuses for a complex
    tensor (and its real-by-complex product too); the ranks here are of Re A, and the imaginary share says how much
    that drops. rank_q = 1 + #{j : Re A[q, j] > Re A[q, q]} over all n keys, for the rows `queries` (default all).
    """
    k, scale = cell
    U_Q, values, U_K = study_eigen_factors(qk)
    edited = values.clone()
    edited[:k] *= scale
    xc = x.to(U_Q.dtype)
    left, right = (xc @ U_Q) * edited, U_K @ xc.T  # (n, d_head), (d_head, n)
    queries = torch.arange(len(x)) if queries is None else queries
    ranks, imag, real = [], 0.0, 0.0
    for start in range(0, len(queries), chunk_size):
        q = queries[start:start + chunk_size]
        block = left[q] @ right  # (C, n) complex
        imag, real = max(imag, float(block.imag.abs().max())), max(real, float(block.real.abs().max()))
        scores = block.real
        ranks.append(1 + (scores > scores[torch.arange(len(q)), q][:, None]).sum(-1))
    return torch.cat(ranks), imag / real if real > 0 else float("nan")
