"""QK and OV circuits as factored matrices: copying scores, composition scores, token-space tables.

Everything that would be a `d_model x d_model` or `d_vocab x d_vocab` matrix stays a TransformerLens
`FactoredMatrix` (a product A @ B through the `d_head` bottleneck). Eigenvalues come from the
small `d_head x d_head` product BA; token-space tables are read in vocabulary chunks, so GPT-2's
50257 x 50257 matrices (10 GB each) are never resident.

Conventions (TransformerLens, row vectors): a head's OV circuit is `W_V @ W_O: [d_model, d_model]`,
its QK circuit `W_Q @ W_K^T: [d_model, d_model]` (query on the left, key on the right).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from transformer_lens import FactoredMatrix, HookedTransformer

from analysis import prompts
from analysis.attention import QKHead, attention_score_matrix, self_attention_scores
from analysis.errors import UsageError

# --- copying scores -------------------------------------------------------------------------


def copying_score(eigenvalues: Tensor) -> Tensor:
    """sum_i Re(lambda_i) / sum_i |lambda_i| over the last axis.

    +1 when every eigenvalue is positive real (the circuit copies its input), -1 when every one
    is negative real (it suppresses it), about 0 for rotations or a mix.
    """
    return eigenvalues.sum(-1).real / eigenvalues.abs().sum(-1)


def ov_circuit(model: HookedTransformer) -> FactoredMatrix:
    """`[layer, head, d_model, d_model]` = W_V W_O: what a head writes for each residual direction it reads."""
    return model.OV


def vocab_gram(model: HookedTransformer, vocab_ids: Tensor | None = None) -> Tensor:
    """`[d_model, d_model]` = W_U W_E over the vocabulary (or `vocab_ids`): no vocabulary axis is left."""
    if vocab_ids is None:
        return model.W_U @ model.W_E
    return model.W_U[:, vocab_ids] @ model.W_E[vocab_ids]


@torch.no_grad()
def full_ov_eigenvalues(model: HookedTransformer, vocab_ids: Tensor | None = None) -> Tensor:
    """`[layer, head, d_head]` complex: the non-zero eigenvalues of every head's W_E W_V W_O W_U.

    AB and BA share their non-zero eigenvalues, so those of the d_vocab x d_vocab circuit
    W_E (W_V W_O W_U) are those of (W_V W_O W_U) W_E = OV @ (W_U W_E), a d_model x d_model factored
    matrix whose eigenvalues TransformerLens takes from its d_head x d_head product. `vocab_ids`
    restricts the circuit to those tokens (rows of W_E, columns of W_U).
    """
    return (ov_circuit(model) @ vocab_gram(model, vocab_ids)).eigenvalues


@torch.no_grad()
def ov_eigenvalues(model: HookedTransformer) -> dict[str, Tensor]:
    """`[layer, head, d_head]` complex eigenvalues of every head's W_V W_O ("residual") and W_E W_V W_O W_U ("full")."""
    return {"residual": ov_circuit(model).eigenvalues, "full": full_ov_eigenvalues(model)}


def ov_copying_scores(model: HookedTransformer) -> dict[str, Tensor]:
    """`[layer, head]` copying scores of W_V W_O (residual space) and of W_E W_V W_O W_U (full circuit)."""
    return {circuit: copying_score(eigenvalues) for circuit, eigenvalues in ov_eigenvalues(model).items()}


@torch.no_grad()
def head_ov_spectra(model: HookedTransformer, heads: Sequence[tuple[int, int]]
                    ) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]], dict[str, dict[str, float]]]:
    """Every head's OV copying scores (`ov_copying_scores`), and for the chosen `heads`, keyed "L{l}H{h}" and
    then by circuit ("W_V W_O", "W_E W_V W_O W_U"): the eigenvalues (`[d_head]` complex) and copying scores."""
    eigenvalues = ov_eigenvalues(model)
    copying = {circuit: copying_score(values) for circuit, values in eigenvalues.items()}
    names = {"residual": "W_V W_O", "full": "W_E W_V W_O W_U"}
    spectra = {f"L{l}H{h}": {names[c]: v[l, h].detach().cpu() for c, v in eigenvalues.items()} for l, h in heads}
    scores = {f"L{l}H{h}": {names[c]: float(v[l, h]) for c, v in copying.items()} for l, h in heads}
    return copying, spectra, scores


def dense_copying_score(matrix: Tensor) -> Tensor:
    """Copying score from the eigenvalues of an explicit square matrix (the dense method, small only)."""
    return copying_score(torch.linalg.eigvals(matrix))


# --- composition ----------------------------------------------------------------------------

COMPOSITION_MODES = ("Q", "K", "V")


def _reader(model: HookedTransformer, layer: int, mode: str) -> FactoredMatrix:
    """The later head's matrix that the earlier head's OV output feeds, `[head, d_model, d_model]`."""
    if mode == "Q":
        return model.QK[layer]  # OV output enters the query side: W_OV W_QK
    if mode == "K":
        return model.QK[layer].T  # ... the key side: W_OV W_QK^T
    if mode == "V":
        return model.OV[layer]  # ... the value side: W_OV W_OV'
    raise ValueError(f"mode must be one of {COMPOSITION_MODES}, got {mode!r}")


def composition_ratio(left: Tensor, right: Tensor) -> Tensor:
    """||L R||_F / (||L||_F ||R||_F) over the last two axes (broadcast over the leading ones)."""
    return (left @ right).norm(dim=(-2, -1)) / (left.norm(dim=(-2, -1)) * right.norm(dim=(-2, -1)))


@torch.no_grad()
def composition_scores(model: HookedTransformer, mode: str) -> Tensor:
    """`[layer1, head1, layer2, head2]`: ||W_OV^1 M^2||_F / (||W_OV^1||_F ||M^2||_F), NaN unless layer1 < layer2.

    M^2 is the later head's W_QK (Q-composition), W_QK^T (K-) or W_OV (V-composition), as in "A
    Mathematical Framework for Transformer Circuits". As in TransformerLens's `composition_scores`,
    each factored matrix is first collapsed to its d_head-sized SVD factor (S V^T on the left,
    U S on the right), which keeps every Frobenius norm; here each head's factor is computed once,
    not once per pair, and one pair of layers is done at a time, so GPT-2's 144 x 144 head pairs
    never broadcast into one multi-GB product.
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    writers = [ov_circuit(model)[layer].collapse_l() for layer in range(n_layers)]  # (nh, d_head, d_model) each
    scores = torch.full((n_layers, n_heads, n_layers, n_heads), float("nan"))
    for later in range(1, n_layers):
        reader = _reader(model, later, mode).collapse_r()  # (nh, d_model, d_head)
        for earlier in range(later):
            scores[earlier, :, later, :] = composition_ratio(writers[earlier][:, None], reader[None]).float().cpu()
    return scores


def random_composition_baseline(d_model: int, d_head: int, n_samples: int = 256, seed: int = 0) -> float:
    """Mean composition score of random Gaussian rank-d_head matrices; about 1/sqrt(d_model)."""
    g = torch.Generator().manual_seed(seed)
    left = FactoredMatrix(torch.randn(n_samples, d_model, d_head, generator=g),
                          torch.randn(n_samples, d_head, d_model, generator=g))
    right = FactoredMatrix(torch.randn(n_samples, d_model, d_head, generator=g),
                           torch.randn(n_samples, d_head, d_model, generator=g))
    return float(composition_ratio(left.collapse_l(), right.collapse_r()).mean())


def composition_partners(scores: Tensor, layer: int, head: int) -> list[tuple[int, int, float]]:
    """Every earlier head's composition score with head (layer, head), strongest first, as (layer, head, score)."""
    column = scores[:layer, :, layer, head]  # (earlier layers, heads)
    pairs = [(l, h, float(column[l, h])) for l in range(layer) for h in range(column.shape[1])]
    return sorted(pairs, key=lambda t: -t[2])


# --- token-space tables ---------------------------------------------------------------------


def token_qk(query_input: Tensor, key_input: Tensor, bos_key_input: Tensor, qk: QKHead) -> FactoredMatrix:
    """`[n_queries, n_keys]` QK scores of the head `qk` in token space, minus each query's score on BOS:

        QK[a, b] = (x_a W_Q + b_Q) . ((x_b W_K + b_K) - (x_BOS W_K + b_K)) / scale

    so QK[a, b] > 0 means token a would rather attend to token b than to BOS. (b_K cancels.)
    Inputs `[n, d_model]` are a head's normalised inputs; `qk`'s W_Q, W_K: `[d_model, d_head]`, its scale the
    model's (`attention.head_scale`). The scores are `attention.attention_score_matrix`'s: with a rotary head's
    rotation M every pair, BOS included, at M, (x_a W_Q + b_Q) M (x_b W_K - x_BOS W_K)^T / scale; a token's entry on
    itself belongs at Δ = 0, which a factored matrix cannot hold: `token_self_shift` gives what to add there.
    """
    scores = attention_score_matrix(query_input, key_input, replace(qk, b_K=None))  # b_K cancels below
    bos_key = bos_key_input @ qk.W_K  # (hs,)
    return FactoredMatrix(scores.A, scores.B - bos_key[:, None])  # key side: x_b W_K - x_BOS W_K


def token_self_shift(x: Tensor, qk: QKHead) -> Tensor | None:
    """`[n]`: what each token's own entry QK[a, a] of `token_qk(x, x, bos, qk)` moves by from M to Δ = 0 (None without
    a rotation: nothing moves),

        shift[a] = (x_a W_Q + b_Q) (I - M) (x_a W_K + b_K)^T / scale,

    so QK[a, a] + shift[a] = (x_a W_Q + b_Q)(x_a W_K + b_K)^T / scale - (x_a W_Q + b_Q) M (x_BOS W_K + b_K)^T / scale:
    the token's score on itself at Δ = 0 minus its score on BOS at M (b_K no longer cancels there)."""
    if qk.rotation is None:
        return None
    M = qk.rotation
    turned = QKHead(qk.W_Q @ M, qk.W_K, qk.scale, None if qk.b_Q is None else qk.b_Q @ M, qk.b_K)  # q M as the query
    return self_attention_scores(x, qk) - self_attention_scores(x, turned)


def token_ov(source_input: Tensor, W_V: Tensor, W_O: Tensor, W_U: Tensor) -> FactoredMatrix:
    """`[n_sources, d_vocab]` = x W_V W_O W_U: the logits a head adds when it attends to each source token."""
    return FactoredMatrix(source_input @ W_V, W_O @ W_U)


def column_max(matrix: FactoredMatrix, chunk_size: int | None = 4096, self_shift: Tensor | None = None) -> Tensor:
    """`[n_cols]`: max over rows of each column, reading `[n_rows, chunk_size]` blocks (None: all at once), with
    `self_shift: [n]` (`token_self_shift`; rows and columns the same tokens) added to each entry [j, j] first."""
    n = matrix.rdim
    step = chunk_size or n
    return torch.cat([_shifted(matrix[:, s:s + step].AB, s, self_shift).amax(0) for s in range(0, n, step)])


def _shifted(block: Tensor, start: int, self_shift: Tensor | None) -> Tensor:
    """`block: [n_rows, C]`, columns start.. of a token-space matrix, with `self_shift[j]` added at each [j, j]."""
    if self_shift is not None:
        diagonal = block.diagonal(offset=-start)  # (start + i, i)
        diagonal += self_shift[start:start + len(diagonal)]
    return block


def centred_row_max(matrix: FactoredMatrix, chunk_size: int | None = 4096) -> Tensor:
    """`[n_rows]`: max_j (M[i, j] - mean_j M[i, j]), reading `[chunk_size, n_cols]` blocks (None: all at once)."""
    n = matrix.ldim
    step = chunk_size or n
    row_mean = matrix.A @ matrix.B.mean(-1)  # (n_rows,), exact without forming M
    return torch.cat([matrix[s:s + step, :].AB.amax(-1) for s in range(0, n, step)]) - row_mean


def frequency_weight(p: Tensor, exponent: float = 0.1) -> Tensor:
    """p ** exponent: a mild preference for frequent tokens (p = 0 gets weight 0)."""
    return p.clamp_min(0) ** exponent


def with_self_shift(block: Tensor, rows: Tensor, cols: Tensor, self_shift: Tensor | None) -> Tensor:
    """`block: [len(rows), len(cols)]` of a token-space QK (`token_qk`) with `self_shift` (`token_self_shift`; None:
    the block as it is) added where a row's token is the column's: each token's own entry at Δ = 0."""
    if self_shift is None:
        return block
    return block + (rows[:, None] == cols[None, :]) * self_shift[rows][:, None]


@dataclass(frozen=True)
class TableSize:
    """How much a key-pivoted table (`key_pivoted_table`) lists: `n_keys` keys, and per key its top `n_queries`
    queries and `n_outputs` output tokens."""

    n_keys: int = 10
    n_queries: int = 8
    n_outputs: int = 8


@torch.no_grad()
def key_pivoted_table(qk: FactoredMatrix, ov: FactoredMatrix, p: Tensor, size: TableSize = TableSize(),
                      chunk_size: int | None = 4096, self_shift: Tensor | None = None) -> dict[str, Tensor]:
    """The key-pivoted token table of one head, as large as `size` says.

    `qk: [d_vocab (query), d_vocab (key)]` (BOS-normalised, `token_qk`), `ov: [d_vocab (source),
    d_vocab (output)]` (`token_ov`), `p: [d_vocab]` token probabilities.

        key score(k)      = max_q QK[q, k] * max_o OVc[k, o] * p_k^0.1
        query score(q | k) = QK[q, k] * p_q^0.1
        output score(o | k) = OVc[k, o]

    where OVc is OV mean-normalised per source token (each row minus its mean), and QK[k, k] moved to Δ = 0 by
    `self_shift: [d_vocab]` (`token_self_shift`; None: QK as it is). Returns the
    top keys `key_ids: [n_keys]` with `key_scores`, and per key the top `query_ids` /
    `query_scores: [n_keys, n_queries]` and `output_ids` / `output_scores: [n_keys, n_outputs]`.
    """
    weight = frequency_weight(p.to(qk.A))
    qk_max, ov_max = column_max(qk, chunk_size, self_shift), centred_row_max(ov, chunk_size)
    key_score = qk_max * ov_max * weight
    key_scores, key_ids = key_score.topk(size.n_keys)
    columns = with_self_shift(qk[:, key_ids].AB, torch.arange(qk.ldim), key_ids, self_shift).T  # (n_keys, d_vocab)
    columns = columns * weight  # QK[:, k] * p_q^0.1
    rows = ov[key_ids, :].AB  # (n_keys, d_vocab)
    rows = rows - rows.mean(-1, keepdim=True)
    query_scores, query_ids = columns.topk(size.n_queries, dim=-1)
    output_scores, output_ids = rows.topk(size.n_outputs, dim=-1)
    return {"key_ids": key_ids, "key_scores": key_scores, "qk_max": qk_max[key_ids], "ov_max": ov_max[key_ids],
            "query_ids": query_ids, "query_scores": query_scores,
            "output_ids": output_ids, "output_scores": output_scores}


@torch.no_grad()
def bos_key_input(model: HookedTransformer, layer: int) -> Tensor:
    """`[d_model]`: layer `layer`'s normalised attention input at position 0 of a prompt that is only BOS.

    This is the BOS key every query actually sees (position 0 attends only to itself, so any
    prompt gives the same), unlike a vocabulary row of `vocab_input.head_input`, which uses the
    mean position.
    """
    name = f"blocks.{layer}.hook_resid_pre"
    bos = torch.tensor([[prompts.bos_token_id(model)]], device=model.cfg.device)
    _, cache = model.run_with_cache(bos, names_filter=name, stop_at_layer=layer + 1)
    return model.blocks[layer].ln1(cache[name])[0, 0].float().cpu()


def token_probabilities(table, d_vocab: int) -> Tensor:
    """`p: [d_vocab]` from a token-frequency table (columns id, probability); absent ids get 0."""
    ids = torch.as_tensor(table["id"].to_numpy(), dtype=torch.long)
    if len(ids) and (ids.min() < 0 or ids.max() >= d_vocab):
        raise UsageError(f"The frequency table holds token ids up to {int(ids.max())}, but this model's vocabulary "
                         f"has {d_vocab} tokens: it was counted for another tokenizer. Count it for this model "
                         "with `python scripts/token_freq.py --model <model>`.")
    p = torch.zeros(d_vocab)
    p[ids] = torch.as_tensor(table["probability"].to_numpy(), dtype=torch.float32)
    return p
