"""The weight analyses of the QK circuit at GPT-2's size (random GPT-2-shaped weights): spectra, vocabulary-wide
self-ranks and the clustering graph, all through factors and query chunks, never d_vocab x d_vocab."""

from __future__ import annotations

import torch

from analysis import clustering
from analysis import qk_decomposition as qk
from analysis.models import load_model
from analysis.attention import qk_head
from analysis.vocab_input import InputSettings, head_input
from benchlib import MB, Settings, measure

FLOAT = 4  # bytes


@torch.no_grad()
def bench_qk_spectra_and_self_ranks(settings: Settings) -> dict:
    """Every head's W_sym spectrum, then L1H5-shaped self-ranks over the vocabulary for an edited W."""
    model = load_model("gpt2-random", settings.device)
    heads = [qk_head(model, l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    spectra, t_spectra = measure(lambda: [qk.symmetric_spectrum(head) for head in heads])
    n_tokens = 8192 if settings.quick else model.cfg.d_vocab
    x = head_input(model, 1, variant="zero", token_ids=torch.arange(n_tokens),
                   settings=InputSettings(use_cache=False))  # (n, d_model)
    own = qk_head(model, 1, 5)
    spectrum = qk.symmetric_spectrum(own)
    edited = qk.edited_head(own, spectrum, qk.most_negative(spectrum.values, 24), -2.0)
    ranks, t_ranks = measure(lambda: qk.self_ranks(x, edited, chunk_size=1024))
    edges, t_edges = measure(lambda: clustering.top_k_edges(x[:3000], own, k=4))
    return {
        "spectra_all_heads": {**t_spectra, "heads": len(spectra), "eigenpairs_per_head": len(spectra[0].values)},
        "self_ranks": {**t_ranks, "n_tokens": n_tokens, "rank_of_the_inner_dimension": edited.W_Q.shape[1],
                       "dense_scores_mb": n_tokens**2 * FLOAT / MB, "mean_rank": float(ranks.float().mean())},
        "top_k_graph_3000_tokens": {**t_edges, "edges": len(edges[0])},
        "summary": [
            f"W_sym spectra of all {len(spectra)} heads: {t_spectra['seconds']:.2f} s",
            f"self-ranks over {n_tokens} tokens (k = 24, scale -2): {t_ranks['seconds']:.1f} s, peak "
            f"{t_ranks['peak_mb']:.0f} MB (the dense score matrix would be {n_tokens**2 * FLOAT / MB:.0f} MB)",
            f"top-4 score graph over 3000 tokens: {t_edges['seconds']:.2f} s, peak {t_edges['peak_mb']:.0f} MB",
        ],
    }
