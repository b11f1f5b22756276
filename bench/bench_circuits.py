"""Weight-based circuits at GPT-2's vocabulary size: factored / chunked methods versus dense matrices."""

from __future__ import annotations

import torch

from analysis import circuits
from analysis.attention import QKHead, head_scale
from analysis.models import load_model
from analysis.vocab_input import InputSettings, head_input
from benchlib import MB, Settings, measure, ratio

FLOAT = 4  # bytes


@torch.no_grad()
def bench_ov_copying_factored_vs_dense(settings: Settings) -> dict:
    """OV copying scores of W_E W_V W_O W_U: factored (d_head x d_head eigenvalues) vs dense eig, small vocabulary.

    The factored method also runs on the full vocabulary for all heads; the dense one cannot (10 GB a head).
    """
    model = load_model("gpt2-random", settings.device)
    d_vocab = model.cfg.d_vocab
    n_small = 256 if settings.quick else 1024
    layer = 0
    ids = torch.randperm(d_vocab, generator=torch.Generator().manual_seed(settings.seed))[:n_small].to(model.cfg.device)

    full, t_full = measure(lambda: circuits.copying_score(circuits.full_ov_eigenvalues(model)), settings.device)
    small_factored, t_small_factored = measure(  # the same circuit as the dense one: one layer, these tokens
        lambda: circuits.copying_score((circuits.ov_circuit(model)[layer]
                                        @ circuits.vocab_gram(model, ids)).eigenvalues),
        settings.device)

    def dense():  # [head, n, n] explicitly, then the eigenvalues of each n x n matrix
        matrix = (model.W_E[ids] @ model.W_V[layer]) @ (model.W_O[layer] @ model.W_U[:, ids])
        return circuits.dense_copying_score(matrix)

    small_dense, t_small_dense = measure(dense, settings.device)
    agreement = float((small_dense.cpu() - small_factored.cpu()).abs().max())
    per_head_dense = t_small_dense["seconds"] / model.cfg.n_heads
    return {
        "full_vocabulary_factored_all_heads": {**t_full, "heads": int(full.numel()), "d_vocab": d_vocab},
        "small_vocabulary": {"n_tokens": n_small, "layer": layer, "heads": model.cfg.n_heads,
                             "factored": t_small_factored, "dense": t_small_dense,
                             "max_abs_difference_of_scores": agreement,
                             "speedup": ratio(t_small_dense["seconds"], t_small_factored["seconds"])},
        "dense_full_vocabulary_bytes_per_head": d_vocab**2 * FLOAT,
        "summary": [
            f"factored, full vocabulary ({d_vocab}), all {full.numel()} heads: {t_full['seconds']:.2f} s, "
            f"{t_full['peak_mb']:.0f} MB",
            f"vocabulary of {n_small}, {model.cfg.n_heads} heads: dense eig {t_small_dense['seconds']:.2f} s, "
            f"{t_small_dense['peak_mb']:.0f} MB ({per_head_dense:.2f} s/head); "
            f"factored {t_small_factored['seconds']:.3f} s; "
            f"scores agree to {agreement:.1e}",
            f"a dense full-vocabulary circuit would need {d_vocab**2 * FLOAT / 2**30:.1f} GiB per head",
        ],
    }


@torch.no_grad()
def bench_token_tables_chunked_vs_dense(settings: Settings) -> dict:
    """Key-pivoted QK/OV token table of one head: vocabulary chunks vs dense matrices (small vocabulary).

    The chunked method also runs on the full vocabulary; dense QK and OV there would need 19 GB.
    """
    model = load_model("gpt2-random", settings.device)
    d_vocab, layer, head = model.cfg.d_vocab, 0, 0
    n_small = 2048 if settings.quick else 8192
    chunk = 2048
    x = head_input(model, layer, variant="zero", settings=InputSettings(use_cache=False))  # (d_vocab, d_model)
    x = x.to(model.cfg.device)
    W_Q, W_K, b_Q, b_K = (t.to(model.cfg.device) for t in (model.W_Q[layer, head], model.W_K[layer, head],
                                                             model.b_Q[layer, head], model.b_K[layer, head]))
    qk_of_head = QKHead(W_Q, W_K, head_scale(model.cfg, layer), b_Q, b_K)  # on the model's device
    bos = x[-1]  # GPT-2's BOS is its last token

    def table(ids, chunk_size):
        xs = x[ids]
        qk = circuits.token_qk(xs, xs, bos, qk_of_head)
        ov = circuits.token_ov(xs, model.W_V[layer, head], model.W_O[layer, head], model.W_U[:, ids])
        p = torch.full((len(ids),), 1.0 / len(ids), device=xs.device)
        return circuits.key_pivoted_table(qk, ov, p, chunk_size=chunk_size)

    everything = torch.arange(d_vocab, device=x.device)
    small = everything[:n_small]
    _, t_full = measure(lambda: table(everything, chunk), settings.device)
    chunked, t_small_chunked = measure(lambda: table(small, chunk), settings.device)
    dense, t_small_dense = measure(lambda: table(small, None), settings.device)
    same = all(torch.equal(chunked[k], dense[k]) for k in ("key_ids", "query_ids", "output_ids"))
    return {
        "full_vocabulary_chunked": {**t_full, "d_vocab": d_vocab, "chunk_size": chunk,
                                    "largest_block_mb": d_vocab * chunk * FLOAT / MB},
        "small_vocabulary": {"n_tokens": n_small, "chunked": t_small_chunked, "dense": t_small_dense,
                             "same_table": same,
                             "memory_ratio": ratio(t_small_dense["peak_mb"], t_small_chunked["peak_mb"])},
        "dense_full_vocabulary_bytes": 2 * d_vocab**2 * FLOAT,
        "summary": [
            f"chunked, full vocabulary ({d_vocab}, chunks of {chunk}): {t_full['seconds']:.1f} s, "
            f"peak {t_full['peak_mb']:.0f} MB",
            f"vocabulary of {n_small}: dense {t_small_dense['seconds']:.2f} s, "
            f"{t_small_dense['peak_mb']:.0f} MB; chunked "
            f"{t_small_chunked['seconds']:.2f} s, {t_small_chunked['peak_mb']:.0f} MB; same table: {same}",
            f"dense QK and OV at the full vocabulary would need {2 * d_vocab**2 * FLOAT / 2**30:.1f} GiB",
        ],
    }
