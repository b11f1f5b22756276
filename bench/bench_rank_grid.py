"""The rank-ablation grid at GPT-2's size: every (k, scale) cell's self-ranks over all 50257 tokens from
shared score blocks (`self_ranks_grid`), against one `self_ranks` pass per cell (timed on one cell)."""

from __future__ import annotations

import torch

from analysis import qk_decomposition as qk
from analysis.attention import qk_head
from analysis.models import load_model
from analysis.vocab_input import InputSettings, head_input
from benchlib import Settings, measure, ratio

KS, SCALES = (1, 4, 8, 16, 24, 32), (1.0, 0.5, 0.0, -1.0, -2.0)  # eigenvalue_rank_ablation.py's default grid


@torch.no_grad()
def bench_rank_ablation_grid(settings: Settings) -> dict:
    """The default 6 x 5 grid of eigenvalue_rank_ablation on L1H5-shaped weights over the full vocabulary."""
    model = load_model("gpt2-random", settings.device)
    n_tokens = 4096 if settings.quick else model.cfg.d_vocab
    x = head_input(model, 1, variant="zero", token_ids=torch.arange(n_tokens),
                   settings=InputSettings(use_cache=False))  # (n, d_model)
    own = qk_head(model, 1, 5)
    spectrum = qk.symmetric_spectrum(own)
    grid, t_grid = measure(lambda: qk.self_ranks_grid(x, own, spectrum, qk.RankGrid(KS, SCALES, chunk_size=128)))
    k, scale = 16, -1.0  # one cell the old way: a product of inner size d_head + k for that cell alone
    edited = qk.edited_head(own, spectrum, qk.most_negative(spectrum.values, k), scale)
    one, t_one = measure(lambda: qk.self_ranks(x, edited, chunk_size=1024))
    cells = len(KS) * len(SCALES)
    per_cell_all = t_one["seconds"] * cells
    same = int((one != grid[k, scale]).sum())
    return {"n_tokens": n_tokens, "cells": cells, "grid": t_grid, "one_cell_per_cell_method": t_one,
            "per_cell_method_all_cells_seconds_scaled": per_cell_all, "speedup": ratio(per_cell_all, t_grid["seconds"]),
            "tokens_whose_rank_differs_in_the_timed_cell": same,
            "summary": [f"{cells} cells over {n_tokens} tokens: grid {t_grid['seconds']:.0f} s "
                        f"(+{t_grid['peak_mb']:.0f} MB); one cell at a time {t_one['seconds']:.1f} s per cell, about {per_cell_all:.0f} s for "
                        f"all ({ratio(per_cell_all, t_grid['seconds']):.1f}x); ranks differing in the compared cell: "
                        f"{same} of {n_tokens}"]}
