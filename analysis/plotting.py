"""Everything that draws: the one figure style, saving figures, and the figures several scripts share.

The package's only plotting module (with `analysis.cli`, the only one that may import matplotlib,
seaborn, plotly or circuitsvis). The libraries are imported when a figure is drawn, so that a
script that stops early on bad input never pays for them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from analysis import io

_STYLE_SET = False


def use_style() -> None:
    """One look for every figure: seaborn's paper context, white grid, colour-blind palette."""
    global _STYLE_SET
    if _STYLE_SET:
        return
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.1)
    matplotlib.rcParams.update({"figure.dpi": 120, "savefig.dpi": 200, "savefig.bbox": "tight",
                                "pdf.fonttype": 42, "axes.titleweight": "bold"})
    _STYLE_SET = True


def save_figure(fig, out: Path | str, model_name: str, name: str) -> list[Path]:
    """Save `fig` as PDF and PNG under `out/figures/<model>/`, as part of the current run (`io.output_file`)."""
    return save_figure_in(fig, io.figures_dir(out, model_name), name)


def save_figure_in(fig, directory: Path, name: str) -> list[Path]:
    """Save `fig` as `directory/<name>.pdf` and `.png`, as part of the current run (`io.output_file`)."""
    import matplotlib.pyplot as plt

    paths = []
    for ext in ("pdf", "png"):
        path = directory / f"{name}.{ext}"
        with io.output_file(path) as tmp:
            fig.savefig(tmp, format=ext)
        paths.append(path)
    plt.close(fig)
    return paths


def head_heatmaps(maps: Sequence[torch.Tensor], titles: Sequence[str], reverse: Sequence[bool] | None = None,
                  suptitle: str | None = None, fmt: str = ".2f",
                  limits: Sequence[tuple[float, float] | None] | None = None):
    """One layer x head heatmap per score, side by side, annotated with the values; `limits` fixes a panel's colour
    range, e.g. (0, 1) for masses, so that a panel of near-zero scores does not look dark from adapting to noise."""
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
        sns.heatmap(data, ax=ax, cmap="rocket" if rev else "rocket_r", annot=n_heads * n_layers <= 64, vmin=vmin,
                    vmax=vmax, fmt=fmt, cbar=True, square=False, linewidths=0.5, annot_kws={"fontsize": 7},
                    xticklabels=range(n_heads), yticklabels=range(n_layers))
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
    """A standalone HTML page with circuitsvis's `attention_heads` view of `pattern: [head, query, key]`; its local
    source inlines the JavaScript, so the page works offline (the CDN source would fetch it from the web)."""
    import html

    import circuitsvis

    view = circuitsvis.attention.attention_heads(attention=pattern, tokens=list(labels),
                                                 attention_head_names=list(names)).local_src
    return (f'<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8"><title>{html.escape(title)}</title></head>\n'
            f"<body>\n{view}\n</body>\n</html>\n")


def group_heatmaps(maps: Sequence[torch.Tensor], titles: Sequence[str], labels: Sequence[str], group: torch.Tensor,
                   suptitle: str | None = None, shared_scale: bool = False):
    """One `[n, n]` token map per panel (query rows, key columns), lines between groups, diverging colours at 0."""
    use_style()
    import matplotlib.pyplot as plt
    import seaborn as sns

    n = len(labels)
    fig, axes = plt.subplots(1, len(maps), figsize=(4.6 * len(maps), 4.4), squeeze=False)
    bound = max(float(m.abs().max()) for m in maps) if shared_scale else None
    boundaries = np.flatnonzero(np.diff(np.asarray(group))) + 1
    for ax, values, title in zip(axes[0], maps, titles):
        vmax = bound or float(values.abs().max())
        sns.heatmap(np.asarray(values, dtype=float), ax=ax, cmap="RdBu_r", center=0, vmin=-vmax, vmax=vmax,
                    square=True, xticklabels=labels, yticklabels=labels, cbar_kws={"shrink": 0.6})
        for b in boundaries:
            ax.axhline(b, color="k", lw=0.6)
            ax.axvline(b, color="k", lw=0.6)
        ax.set(title=title, xlabel="key", ylabel="query")
        ax.tick_params(labelsize=5 if n > 20 else 7)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def graph_html(coords: np.ndarray, edges: tuple[np.ndarray, np.ndarray], labels: Sequence[str],
               membership: np.ndarray, hover: Sequence[str], title: str) -> str:
    """A standalone interactive HTML view of a graph with node positions `coords: [n, 2]` and `edges` = (source,
    target), source[i] -> target[i], coloured by community (plotly; its JavaScript inlined, so it works offline)."""
    import plotly.graph_objects as go

    source, target = edges
    x, y = coords[:, 0], coords[:, 1]
    ex = np.stack([x[source], x[target], np.full(len(source), np.nan)], 1).ravel()  # NaN breaks the line
    ey = np.stack([y[source], y[target], np.full(len(source), np.nan)], 1).ravel()
    edges = go.Scatter(x=ex, y=ey, mode="lines", line={"width": 0.4, "color": "rgba(120,120,120,0.4)"},
                       hoverinfo="skip", showlegend=False)
    nodes = go.Scatter(x=x, y=y, mode="markers+text" if len(labels) <= 400 else "markers", text=list(labels),
                       textposition="top center", textfont={"size": 8}, hovertext=list(hover), hoverinfo="text",
                       marker={"size": 7, "color": membership, "colorscale": "Turbo", "line": {"width": 0.5}},
                       showlegend=False)
    fig = go.Figure([edges, nodes])
    fig.update_layout(title=title, template="plotly_white", xaxis={"visible": False}, yaxis={"visible": False},
                      width=1100, height=900, hovermode="closest")
    return fig.to_html(include_plotlyjs=True, full_html=True)


def eigenvalue_planes(spectra: Mapping[str, Mapping[str, torch.Tensor]], scores: Mapping[str, Mapping[str, float]]):
    """One complex plane per head (`spectra[head][circuit]`: complex eigenvalues), each circuit's eigenvalues
    divided by its largest |lambda| and labelled with its copying score `scores[head][circuit]`."""
    use_style()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(spectra), figsize=(4.6 * len(spectra), 4.6), squeeze=False)
    for ax, (label, circuits_of_head) in zip(axes[0], spectra.items()):
        ax.add_patch(plt.Circle((0, 0), 1, fill=False, ls=":", color="grey"))
        for (circuit, eig), marker in zip(circuits_of_head.items(), "ox"):
            eig = eig / eig.abs().max()
            ax.scatter(eig.real, eig.imag, marker=marker, s=22, alpha=0.8,
                       label=f"{circuit} (copying {scores[label][circuit]:+.2f})")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set(xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), aspect="equal", title=label,
               xlabel="Re λ / max|λ|", ylabel="Im λ / max|λ|")
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def composition_figure(cfg, comp: Mapping[str, torch.Tensor], baseline: float, induction: tuple[int, int],
                       partners: Sequence[tuple[int, int, float]]):
    """Q/K/V composition `comp[mode]: [layer, head, layer, head]` of earlier (rows) with later (columns) heads,
    colours centred on the random `baseline`; and the K-composition `partners` of the `induction` head as bars."""
    use_style()
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.colors import TwoSlopeNorm

    n = cfg.n_layers * cfg.n_heads
    labels = [f"L{l}H{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    fig, axes = plt.subplots(1, 4, figsize=(5.2 * 4, 5.2))
    vmax = max(float(np.nanmax(c.numpy())) for c in comp.values())
    norm = TwoSlopeNorm(vmin=0, vcenter=baseline, vmax=max(vmax, 2 * baseline))
    for ax, (mode, scores) in zip(axes, comp.items()):
        sns.heatmap(scores.reshape(n, n).numpy(), ax=ax, cmap="RdBu_r", norm=norm, square=True,
                    xticklabels=labels, yticklabels=labels, cbar_kws={"shrink": 0.6})
        ax.set(title=f"{mode}-composition", xlabel="later head", ylabel="earlier head")
        ax.tick_params(labelsize=6 if n <= 16 else 3)
    ax = axes[3]
    names = [f"L{l}H{h}" for l, h, _ in partners]
    ax.bar(range(len(partners)), [s for _, _, s in partners], color="C0")
    ax.axhline(baseline, color="C3", ls="--", label=f"random baseline {baseline:.3f}")
    ax.axhline(1 / math.sqrt(cfg.d_model), color="grey", ls=":", label="1/sqrt(d_model)")
    ax.set_xticks(range(len(partners)), names, rotation=90, fontsize=6 if len(partners) <= 16 else 3)
    ax.set(title=f"K-composition into L{induction[0]}H{induction[1]} (top induction head)",
           ylabel="K-composition score")
    ax.legend(fontsize=7)
    fig.suptitle(f"Composition scores (colour centred on the random baseline {baseline:.3f})")
    fig.tight_layout()
    return fig


def similarity_figure(profile: Mapping, example: Mapping, query: str, unit: str, title: str,
                      study: Mapping | None = None):
    """Left: d = s(q, k) - s(q, q) against cosine over all pairs (`similarity.similarity_profile`: windowed
    means, CI, where keys beat self, the peak); middle: one query's keys (`similarity.example_query`);
    right, if given, the study's curve in its units (`similarity.study_curve`: bits, overlapping windows)."""
    use_style()
    import matplotlib.pyplot as plt

    centres, windows, start, top = (profile[k] for k in ("centres", "windows", "beats_self_from", "peak"))
    fig, axes = plt.subplots(1, 3 if study else 2, figsize=(18 if study else 12, 4.5))
    ax, bx = axes[0], axes[1]
    if study:
        cx = axes[2]
        ok = study["count"] > 0
        cx.bar(study["x"][ok], study["mean_bits"][ok], width=study["width"] / 2, alpha=0.7, label="mean")
        cx.errorbar(study["x"][ok], study["mean_bits"][ok], yerr=[study["mean_bits"][ok] - study["low_bits"][ok],
                    study["high_bits"][ok] - study["mean_bits"][ok]], fmt="none", color="black", linewidth=0.8,
                    label="mean ± 2.576 sd/√n")
        cx.axhline(0, color="black", linewidth=0.8)
        cx.set(xlabel="cos(x_q, x_k)", ylabel="log p(k|q) − log p(k|k) (bits, unscaled, no biases)",
               title=f"the study's definition ({study['subtract']}-wise, windows of {study['width']:g})")
        cx.legend(fontsize=8)
    ok = ~np.isnan(windows["mean"])
    ax.fill_between(centres[ok], windows["low"][ok], windows["high"][ok], alpha=0.3, label="99% CI")
    ax.plot(centres[ok], windows["mean"][ok], marker=".", label="windowed mean")
    ax.axhline(0, color="black", linewidth=0.8)
    if start is not None:
        ax.axvline(start, color="tab:red", linestyle="--", label=f"beats self from cos {start:.2f}")
    ax.plot(*top, marker="*", markersize=12, linestyle="none", color="tab:red", label=f"peak at cos {top[0]:.2f}")
    ax.set(xlabel="cos(x_q, x_k)", ylabel=f"s(q,k) - s(q,q) ({unit})", title="all pairs of different tokens")
    ax.legend(fontsize=8)

    cosine, diff, mates = (example[k].numpy() for k in ("cosine", "diff", "mates"))
    bx.scatter(cosine, diff, s=6, alpha=0.4, label="other keys")
    bx.scatter(cosine[mates], diff[mates], s=18, color="tab:orange", label="category-mates")
    bx.axhline(0, color="black", linewidth=0.8)
    for key in example["top_keys"]:
        bx.annotate(repr(key["token"]), (key["cosine"], key["score_minus_self"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    bx.set(xlabel="cos(x_q, x_k)", ylabel=f"s(q,k) - s(q,q) ({unit})", title=f"query q = {query!r}")
    bx.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def best_head_patterns(drawn: Mapping[str, Mapping], labels: Sequence[Sequence[str]]):
    """One row per kind (`drawn[kind]`: its best head's "layer", "head" and "patterns", one `[query, key]`
    pattern per prompt), one column per prompt (token labels `labels[i]`)."""
    use_style()
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, axes = plt.subplots(len(drawn), n, figsize=(4.6 * n, 4.2 * len(drawn)), squeeze=False)
    for row, (kind, best) in enumerate(drawn.items()):
        title = f"{kind.replace('_', ' ')}: L{best['layer']}H{best['head']}"
        for col, (pattern, tokens) in enumerate(zip(best["patterns"], labels)):
            attention_pattern(axes[row, col], pattern, tokens, title)
    fig.tight_layout()
    return fig


def target_vs_controls(report: Mapping, title: str | None = None, names: Sequence[str] | None = None,
                       null: Mapping[str, float] | None = None, columns: int = 4):
    """One strip per statistic of a `controls.compare` report (`names`, default every one in its "directions"): every
    control head's value (grey dots), the target's (red diamond, with its rank), a null's value where given (dashed
    line, `null[name]`); each panel says which way the claim points."""
    use_style()
    import matplotlib.pyplot as plt

    names = list(report["directions"]) if names is None else list(names)
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, min(columns, len(names)), figsize=(3.2 * min(columns, len(names)), 2.3 * rows),
                             squeeze=False)
    rng = np.random.default_rng(0)  # jitter only: the values themselves are exact
    target = report["target"]
    for ax, name in zip(axes.flat, names):
        values = [row[name] for row in report["controls"] if row.get(name) is not None]
        ax.scatter(values, rng.uniform(-0.25, 0.25, len(values)), s=12, color="0.55", alpha=0.8, label="controls")
        entry = target[name]
        if entry["value"] is not None:
            ax.scatter([entry["value"]], [0], marker="D", s=50, color="C3", zorder=3,
                       label=f"L{target['layer']}H{target['head']} (rank {entry['rank']}/{entry['n_ranked']})")
        if null is not None and null.get(name) is not None:
            ax.axvline(null[name], color="k", ls="--", lw=0.8, label="null")
        ax.set(ylim=(-1, 1), yticks=[], title=f"{name}\n({report['directions'][name]} = self-suppressing)")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=6, loc="upper right")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def property_verdicts_figure(records: Mapping[str, Mapping], min_effect: float, target: str | None = None):
    """One panel per view (`records[view]`: a `records.property_record`): each head's two property statistics with
    their CIs, against the thresholds ±`min_effect` a property must lie beyond; the target's label in red."""
    use_style()
    import matplotlib.pyplot as plt

    views = [v for v, r in records.items() if r is not None]
    fig, axes = plt.subplots(1, max(1, len(views)), figsize=(5.2 * max(1, len(views)), 3.6), squeeze=False)
    for ax, view in zip(axes.flat, views):
        by_head = records[view]["by_head"]
        heads = list(by_head)
        for offset, (prop, colour) in zip((-0.15, 0.15), (("self_avoidance", "C0"), ("category_attraction", "C1"))):
            for i, key in enumerate(heads):
                v = by_head[key][prop]
                if v["value"] is None:
                    continue
                low, high = (v["low"], v["high"]) if v["low"] is not None else (v["value"], v["value"])
                ax.errorbar(i + offset, v["value"], yerr=[[v["value"] - low], [high - v["value"]]], fmt="o", ms=3,
                            color=colour, label=prop.replace("_", " ") if i == 0 else None)
        for y in (-min_effect, min_effect):
            ax.axhline(y, color="k", ls="--", lw=0.7)
        ax.axhline(0, color="0.6", lw=0.5)
        ax.set_xticks(range(len(heads)), heads, rotation=90, fontsize=6)
        for label in ax.get_xticklabels():
            if label.get_text() == target:
                label.set_color("C3")
        ax.set(title=f"{view}: {records[view]['view']}", ylabel="nats (logit difference)")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def panel_dots(panels: Mapping[str, Mapping[str, tuple[float, bool]]], ylabel: str):
    """One panel per entry of `panels` (title -> label -> (value, filled)): a dot per label, filled where its flag
    holds and hollow where it does not; e.g. a statistic's value in each retrained organism and its verdict."""
    use_style()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(2.6 * max(1, len(panels)), 2.8), squeeze=False)
    for ax, (title, dots) in zip(axes.flat, panels.items()):
        for i, (value, filled) in enumerate(dots.values()):
            ax.plot(i, value, "o", color="C0", mfc="C0" if filled else "white", ms=5)
        ax.set_xticks(range(len(dots)), list(dots), rotation=90, fontsize=6)
        ax.set_title(title, fontsize=7)
    axes.flat[0].set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def target_curve(curve: Mapping, target: str, title: str | None = None):
    """One panel per statistic of a `records.curve_record`: the target's value at each k (red) and the strongest
    control's (grey, labelled with its head), filled where the target separates (CI of the difference excludes 0)
    and hollow where it does not; k on a log2 axis."""
    use_style()
    import matplotlib.pyplot as plt

    stats = curve["statistics"]
    fig, axes = plt.subplots(1, len(stats), figsize=(4.2 * len(stats), 3.3), squeeze=False)
    points = list(curve["points"].values())
    ks = [p["k"] for p in points]
    for ax, stat in zip(axes.flat, stats):
        entries = [p[stat] for p in points]
        rivals = [e["strongest_control"] for e in entries]
        ax.plot(ks, [np.nan if r is None else r["value"] for r in rivals], "-", color="0.55",
                label="strongest control")
        ax.plot(ks, [np.nan if e["value"] is None else e["value"] for e in entries], "-", color="C3", label=target)
        for k, entry, rival in zip(ks, entries, rivals):
            face = "C3" if entry["separates"] else "white"
            ax.plot([k], [entry["value"]], "o", color="C3", markerfacecolor=face, zorder=3)
            if rival is not None:
                ax.plot([k], [rival["value"]], "s", color="0.55", ms=4)
                ax.annotate(f"L{rival['layer']}H{rival['head']}", (k, rival["value"]), fontsize=6,
                            textcoords="offset points", xytext=(3, -9))
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set(xlabel="components flipped (k)", ylabel=stat.replace("_", " "))
        ax.legend(fontsize=7, title="filled: target separates", title_fontsize=6)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def precision_curve(curve: Mapping[str, Mapping], target: str, k_verdict: int, title: str | None = None):
    """Precision against k (log scale) from a precision-curve record (`records.precision_curve_record`: "k=<k>" ->
    target, null, strongest_control, by_head, each {value, low, high}): the `target` head, the strongest control
    at the verdict's k (one head, its whole curve) and the target's shuffled-label null, each with its CI; a
    dotted line marks `k_verdict`."""
    use_style()
    import matplotlib.pyplot as plt

    entries = sorted(curve.values(), key=lambda e: e["k"])
    ks = [e["k"] for e in entries]
    rival = next((e["strongest_control"] for e in entries if e["k"] == k_verdict), None)
    rival_key = None if rival is None else f"L{rival['layer']}H{rival['head']}"
    lines = [(target, [e["target"] for e in entries], "C3", "o"),
             *([] if rival_key is None else [(f"{rival_key} (strongest control at k = {k_verdict})",
                                              [e["by_head"][rival_key] for e in entries], "C0", "s")]),
             (f"{target}'s null (labels shuffled)", [e["null"] for e in entries], "0.4", "^")]
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for label, points, colour, marker in lines:
        values = np.array([p["value"] for p in points])
        errors = np.array([[p["value"] - p["low"] for p in points], [p["high"] - p["value"] for p in points]])
        ax.errorbar(ks, values, yerr=errors, color=colour, marker=marker, capsize=3, label=label,
                    linestyle="--" if "null" in label else "-")
    ax.axvline(k_verdict, color="k", ls=":", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.minorticks_off()
    ax.set(xticks=ks, xticklabels=[str(k) for k in ks], xlabel="k (features predicted; at most k active)",
           ylabel="precision TP / (TP + FP)", ylim=(0, 1))
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def atlas_scatter(heads: Mapping[str, Mapping]):
    """Every head of every model (combined atlas records): S against the category attraction from the weights and
    in context, colour = layer depth in [0, 1], one marker per model, ringed where the kind is "semantic"."""
    use_style()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, reading in zip(axes, ("weights", "behaviour")):
        for model, marker in zip(sorted({h["model"] for h in heads.values()}), "osD^v<>phX*"):
            mine = [h for h in heads.values() if h["model"] == model]
            xy = np.array([(h[reading]["category_attraction"]["value"] or np.nan, h["S"]["value"]) for h in mine])
            points = ax.scatter(*xy.T, c=[h["depth"] for h in mine], cmap="viridis", vmin=0, vmax=1, marker=marker,
                                s=28, edgecolors="k", linewidths=0.3, label=model)
            ringed = xy[[h["kind"] == "semantic" for h in mine]]
            ax.scatter(*ringed.T, s=140, facecolors="none", edgecolors="C3", linewidths=1.2)
        ax.set(xlabel=f"category attraction, {reading} (nats)", yscale="log")
    axes[0].set_ylabel("S, report prompts (nats; ringed: semantic)")
    axes[1].legend(fontsize=6)
    fig.colorbar(points, ax=axes, label="layer depth", shrink=0.8)
    return fig
