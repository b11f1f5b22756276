"""Memory bounds of the vocabulary-level analyses at GPT-2 small's size (random weights, same shapes).

  head_input     layer 1's input for all 50257 tokens, in chunks of 4096 (no 50257 x 50257 matrix)
  cosine_pairs   s(q, k) - s(q, q) and cos(q, k) windows over all ordered pairs of N = 8192 tokens,
                 in query chunks of 1024; the bound to meet is 2 GB
"""

from __future__ import annotations

import torch

from analysis import prompts, similarity, vocab_input
from analysis.attention import qk_head
from analysis.models import load_model, random_gpt2
from benchlib import Settings, _rss, measure

MB = 2**20
COSINE_LIMIT_MB = 2048


def _model(settings: Settings):
    return random_gpt2(n_layers=2, device=settings.device) if settings.quick else load_model("gpt2-random", settings.device)


def bench_head_input_full_vocabulary(settings: Settings) -> dict:
    """Vocabulary-level head input of layer 1 for every GPT-2 token, chunked."""
    model = _model(settings)
    reference = prompts.reference_prompts(model, seed=settings.seed, n_prompts=8 if settings.quick else 64)
    no_cache = vocab_input.InputSettings(use_cache=False)
    inputs, stats = measure(lambda: vocab_input.head_input(model, 1, reference, settings=no_cache), settings.device)
    return {"tokens": int(inputs.shape[0]), "chunk_size": 4096, **stats,
            "summary": [f"{inputs.shape[0]} tokens in {stats['seconds']:.1f} s, peak +{stats['peak_mb']:.0f} MB"]}


def bench_cosine_pairs_8192(settings: Settings) -> dict:
    """Attention-versus-similarity windows over all pairs of the 8192 first tokens, in query chunks."""
    model = _model(settings)
    n = 1024 if settings.quick else 8192
    reference = prompts.reference_prompts(model, seed=settings.seed, n_prompts=8)
    inputs = vocab_input.head_input(model, 1, reference, token_ids=torch.arange(n),
                                    settings=vocab_input.InputSettings(use_cache=False))
    qk = qk_head(model, 1, 5, bias=True)
    edges = torch.linspace(-1, 1, 81)
    _, stats = measure(lambda: similarity.windowed_means(*similarity.binned_pairs(inputs, edges, qk, chunk_size=1024)),
                       settings.device)
    peak_total_mb = _rss() / MB + stats["peak_mb"]  # upper bound: resident now plus what the call added
    return {"tokens": n, "query_chunk": 1024, **stats, "process_peak_mb_upper_bound": peak_total_mb,
            "limit_mb": COSINE_LIMIT_MB, "within_limit": peak_total_mb <= COSINE_LIMIT_MB,
            "summary": [f"N = {n}: {stats['seconds']:.1f} s, peak +{stats['peak_mb']:.0f} MB, process at most "
                        f"{peak_total_mb:.0f} MB (limit {COSINE_LIMIT_MB} MB)"]}
