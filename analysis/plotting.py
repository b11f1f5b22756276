"""Figures shared by several scripts, drawn in the one style of `analysis.io.use_style`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from analysis.io import use_style


def head_heatmaps(maps: Sequence[torch.Tensor], titles: Sequence[str], reverse: Sequence[bool] | None = None,
                  suptitle: str | None = None, fmt: str = ".2f",
                  limits: Sequence[tuple[float, float] | None] | None = None):
    """One layer x head heatmap per score, side by side, annotated with the values.

    `limits` fixes a panel's colour range, e.g. (0, 1) for attention masses, so that a panel of
    near-zero scores does not look dark just because the range adapts to noise.
    """
    use_style()
    import matplotlib.pyplot as plt
    import seaborn as sns

    reverse = reverse or [False] * len(maps)
    limits = limits or [None] * len(maps)
    n_layers, n_heads = maps[0].shape
    width = max(3.2, 0.45 * n_heads + 1.6)
    fig, axes = plt.subplots(1, len(maps), figsize=(width * len(maps), 0.45 * n_layers + 1.6), squeeze=False)
    for ax, values, title, rev, lim in zip(axes[0], maps, titles, reverse, limits):
        data = np.asarray(values, dtype=float)
        vmin, vmax = lim if lim is not None else (None, None)
        sns.heatmap(data, ax=ax, cmap="rocket" if rev else "rocket_r", annot=n_heads * n_layers <= 64,
                    vmin=vmin, vmax=vmax,
                    fmt=fmt, cbar=True, square=False, linewidths=0.5,
                    annot_kws={"fontsize": 7}, xticklabels=range(n_heads), yticklabels=range(n_layers))
        ax.set(title=title, xlabel="head", ylabel="layer")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def attention_pattern(ax, pattern: torch.Tensor, labels: Sequence[str], title: str, vmax: float | None = None):
    """One head's `pattern: [query, key]` with token labels; the upper triangle (future) stays blank."""
    use_style()
    import seaborn as sns

    data = np.asarray(pattern, dtype=float)
    future = np.triu(np.ones_like(data, dtype=bool), k=1)
    sns.heatmap(data, ax=ax, mask=future, cmap="viridis", vmin=0, vmax=vmax or 1, square=True,
                xticklabels=labels, yticklabels=labels, cbar_kws={"shrink": 0.6})
    ax.set(title=title, xlabel="key", ylabel="query")
    ax.tick_params(labelsize=6)
    return ax


def attention_heads_html(pattern: torch.Tensor, labels: Sequence[str], names: Sequence[str],
                         title: str = "attention heads") -> str:
    """A standalone HTML page with circuitsvis's `attention_heads` view of `pattern: [head, query, key]`.

    The rendered object's local source inlines the JavaScript, so the page works offline (its CDN
    source would fetch the library from the web).
    """
    import html

    import circuitsvis

    view = circuitsvis.attention.attention_heads(attention=pattern, tokens=list(labels),
                                                 attention_head_names=list(names)).local_src
    return (f'<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8"><title>{html.escape(title)}</title></head>\n'
            f"<body>\n{view}\n</body>\n</html>\n")
