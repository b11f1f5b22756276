"""The atlas as one offline HTML page: every head of every model in a sortable table, the cross-model scatter
and, for a clicked head, its attention on its model's category prompt (circuitsvis), its values and its verdicts.

The page is self-contained: its style, its script, the data and circuitsvis's bundle (once) are inlined, and its
Content-Security-Policy refuses every request, so it opens offline and a stray request is an error in the browser's
console. Every string from the data is escaped (model names can hold anything): in the markup by `html.escape`, in
the inlined JSON by escaping `<`, `>` and `&`, and the script writes them as text, never as markup.

The data is the atlas's combined table (`heads` keyed "<model>/<head name>", `models`, `rules`, `provenance`) and,
per model, one category prompt's attention of every head (`tokens`, and per head name a lower-triangular list of
rows: row q holds q + 1 weights).
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources


# The only source a page may use is itself: inline script and style, data: URLs for images, nothing fetched.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
       "font-src 'none'; connect-src 'none'; base-uri 'none'; form-action 'none'")
MASSES = (("S", "S"), ("partner_mass", "partner mass"), ("self_mass", "self mass"),
          ("bos_mass_no_partner", "BOS mass, no partner"))
VERDICTS = (("behaviour", "self_avoidance"), ("behaviour", "category_attraction"),
            ("weights", "self_avoidance"), ("weights", "category_attraction"))
# viridis at depth 0, 0.25, 0.5, 0.75, 1: a point's colour is its head's layer, normalised over its model
VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))


@dataclass(frozen=True)
class Column:
    """One column of the table: its header, whether it sorts as numbers, and a head's (text, sort key) in it."""
    label: str
    numeric: bool
    cell: Callable[[Mapping], tuple[str, float | str | None]]
    title: str = ""


def finite(value) -> float | None:
    """`value` as a float, or None where it is missing or not finite (NaN has no place in JSON or in an order)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def number(value) -> str:
    """A value as the page prints it: three significant digits, '–' where there is none."""
    v = finite(value)
    return "–" if v is None else f"{v:.3g}"


def with_ci(entry: Mapping | None) -> str:
    """{value, low, high} as 'value [low, high]' (the interval left out where it has no ends)."""
    entry = entry or {}
    text = number(entry.get("value"))
    if finite(entry.get("low")) is not None and finite(entry.get("high")) is not None:
        text += f" [{number(entry['low'])}, {number(entry['high'])}]"
    return text


def verdict_text(verdict: Mapping | None) -> str:
    return "holds" if (verdict or {}).get("holds") is True else "no"


def lengths(heads: Mapping[str, Mapping], key: str) -> list[str]:
    """Every repeat length of `key` ('induction', 'duplicate') any head has, shortest first."""
    found = {str(n) for record in heads.values() for n in (record.get(key) or {})}

    def length(n: str) -> tuple[float, str]:
        try:
            return float(n), n
        except ValueError:
            return math.inf, n
    return sorted(found, key=length)


def columns(heads: Mapping[str, Mapping]) -> list[Column]:
    """The table's columns for these heads: the induction and duplicate columns are one per repeat length."""
    cols = [
        Column("rank", True, lambda r: (number(r.get("rank")), finite(r.get("rank"))), "1 = first across models"),
        Column("model", False, lambda r: (str(r.get("model", "")), str(r.get("model", "")))),
        Column("head", True, lambda r: (str(r.get("head_name", "")),
                                        (finite(r.get("layer")) or 0) * 1e6 + (finite(r.get("head")) or 0))),
        Column("depth", True, lambda r: (number(r.get("depth")), finite(r.get("depth"))),
               "layer normalised to [0, 1] within its model"),
        Column("kind", False, lambda r: (str(r.get("kind", "")), str(r.get("kind", "")))),
    ]
    cols += [Column(label, True, lambda r, k=key: (with_ci(r.get(k)), finite((r.get(k) or {}).get("value"))),
                    "value [bootstrap CI]") for key, label in MASSES]
    cols.append(Column("previous-token", True, lambda r: (number(r.get("previous_token")),
                                                          finite(r.get("previous_token")))))
    for key, label in (("induction", "induction"), ("duplicate", "duplicate")):
        cols += [Column(f"{label} ({n})", True, lambda r, k=key, n=n: (number((r.get(k) or {}).get(n)),
                                                                       finite((r.get(k) or {}).get(n))),
                        f"repeat length {n}") for n in lengths(heads, key)]
    for source, prop in VERDICTS:
        label = f"{source} {prop.replace('_', ' ')}"
        cols.append(Column(label, True, lambda r, s=source, p=prop: (
            verdict_text((r.get(s) or {}).get(p)), 1.0 if ((r.get(s) or {}).get(p) or {}).get("holds") is True
            else 0.0), "holds: the CI lies beyond the minimum effect"))
    cols.append(Column("S percentile in model", True, lambda r: (
        number((r.get("within_model") or {}).get("S_percentile")),
        finite((r.get("within_model") or {}).get("S_percentile")))))
    return cols


def ordered(heads: Mapping[str, Mapping]) -> list[str]:
    """Head keys by rank (unranked last), then model and layer and head: the table's first order."""
    def key(name: str):
        r = heads[name]
        rank = finite(r.get("rank"))
        return (rank is None, rank or 0.0, str(r.get("model", "")), finite(r.get("layer")) or 0.0,
                finite(r.get("head")) or 0.0, name)
    return sorted(heads, key=key)


def attr(value) -> str:
    return html.escape(str(value), quote=True)


def table(heads: Mapping[str, Mapping]) -> str:
    """The `atlas-table`: one header per column (a button that sorts), one <tr> per head in <tbody>."""
    cols = columns(heads)
    head_cells = "".join(
        f'<th scope="col" data-column="{i}" data-numeric="{int(c.numeric)}" aria-sort="none" title="{attr(c.title)}">'
        f'<button type="button">{html.escape(c.label)}</button></th>' for i, c in enumerate(cols))
    rows = []
    for name in ordered(heads):
        cells = []
        for c in cols:
            text, key = c.cell(heads[name])
            sort = "" if key is None else (repr(key) if c.numeric else key)
            cells.append(f'<td data-sort="{attr(sort)}">{html.escape(text)}</td>')
        rows.append(f'<tr data-head="{attr(name)}" tabindex="0">{"".join(cells)}</tr>')
    return (f'<table id="atlas-table"><thead><tr>{head_cells}</tr></thead>\n'
            f'<tbody>\n' + "\n".join(rows) + "\n</tbody></table>")


def depth_colour(depth: float | None) -> str:
    """viridis at `depth` in [0, 1], linearly between its five anchors; grey where there is no depth."""
    if depth is None:
        return "#999999"
    t = min(max(depth, 0.0), 1.0) * (len(VIRIDIS) - 1)
    i = min(int(t), len(VIRIDIS) - 2)
    f = t - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(VIRIDIS[i], VIRIDIS[i + 1]))
    return f"#{r:02x}{g:02x}{b:02x}"


def ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values covering [low, high] (steps of 1, 2 or 5 times a power of ten)."""
    span = high - low
    raw = span / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9)
    return [round(k * step, 12) for k in range(first, math.floor(high / step + 1e-9) + 1)]


def extent(values: Sequence[float]) -> tuple[float, float]:
    """[low, high] around `values` with 5 % padding (a unit around a single value)."""
    low, high = min(values), max(values)
    pad = (high - low) * 0.05 if high > low else 0.5
    return low - pad, high + pad


def scatter(heads: Mapping[str, Mapping]) -> str:
    """The cross-model scatter as inline SVG: S (y) against the weight-space category attraction (x), colour = depth,
    each point with its two CIs as whiskers; one <circle data-head=...> per head that has both values."""
    width, height, left, right, top, bottom = 560, 380, 64, 110, 16, 48
    drawn = {}
    for name, r in heads.items():
        x = ((r.get("weights") or {}).get("category_attraction") or {})
        y = r.get("S") or {}
        if finite(x.get("value")) is not None and finite(y.get("value")) is not None:
            drawn[name] = (x, y)
    missing = len(heads) - len(drawn)
    ends = lambda axis: [v for x_y in drawn.values() for k in ("value", "low", "high")
                         if (v := finite(x_y[axis].get(k))) is not None] or [0.0]
    (x0, x1), (y0, y1) = extent(ends(0)), extent(ends(1))
    px = lambda v: left + (v - x0) / (x1 - x0) * (width - left - right)
    py = lambda v: height - bottom - (v - y0) / (y1 - y0) * (height - top - bottom)
    parts = [f'<svg id="atlas-scatter" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="S against weight-space category attraction">',
             '<defs><linearGradient id="atlas-depth" x1="0" y1="1" x2="0" y2="0">' + "".join(
                 f'<stop offset="{k / 4:g}" stop-color="{depth_colour(k / 4)}"/>' for k in range(5))
             + "</linearGradient></defs>",
             f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
             'class="plot-area"/>']
    for t in ticks(x0, x1):
        parts.append(f'<line class="grid" x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top}" y2="{height - bottom}"/>'
                     f'<text class="tick" x="{px(t):.1f}" y="{height - bottom + 16}" text-anchor="middle">{t:g}</text>')
    for t in ticks(y0, y1):
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{py(t):.1f}" y2="{py(t):.1f}"/>'
                     f'<text class="tick" x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    if x0 < 0 < x1:
        parts.append(f'<line class="zero" x1="{px(0):.1f}" x2="{px(0):.1f}" y1="{top}" y2="{height - bottom}"/>')
    parts.append(f'<text class="label" x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle">'
                 "category attraction, from the weights</text>"
                 f'<text class="label" transform="translate(16 {(top + height - bottom) / 2}) rotate(-90)" '
                 'text-anchor="middle">S (nats; lower: more on partners)</text>')
    for name in sorted(drawn, key=lambda n: finite(heads[n].get("depth")) or 0.0):
        (x, y), r = drawn[name], heads[name]
        cx, cy = px(finite(x["value"])), py(finite(y["value"]))
        whiskers = []
        if finite(y.get("low")) is not None and finite(y.get("high")) is not None:
            whiskers.append(f'<line class="ci" x1="{cx:.1f}" x2="{cx:.1f}" y1="{py(y["low"]):.1f}" '
                            f'y2="{py(y["high"]):.1f}"/>')
        if finite(x.get("low")) is not None and finite(x.get("high")) is not None:
            whiskers.append(f'<line class="ci" x1="{px(x["low"]):.1f}" x2="{px(x["high"]):.1f}" y1="{cy:.1f}" '
                            f'y2="{cy:.1f}"/>')
        label = (f"{r.get('model', '')} {r.get('head_name', '')} ({r.get('kind', '')}): S {with_ci(y)}, "
                 f"category attraction {with_ci(x)}, depth {number(r.get('depth'))}")
        parts.append(f'<g class="atlas-point" data-head="{attr(name)}" tabindex="0">{"".join(whiskers)}'
                     f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5.5" fill="{depth_colour(finite(r.get("depth")))}"/>'
                     f"<title>{html.escape(label)}</title></g>")
    bar_x = width - right + 30
    parts.append(f'<rect x="{bar_x}" y="{top + 20}" width="12" height="{height - top - bottom - 40}" '
                 'fill="url(#atlas-depth)"/>'
                 f'<text class="tick" x="{bar_x + 16}" y="{top + 24}">1 (last)</text>'
                 f'<text class="tick" x="{bar_x + 16}" y="{height - bottom - 16}">0 (first)</text>'
                 f'<text class="label" x="{bar_x - 4}" y="{top + 10}">depth</text></svg>')
    note = f" {missing} head(s) without both values are not drawn." if missing else ""
    return (f'<figure id="atlas-scatter-figure">{"".join(parts)}<figcaption>Every head of every model: S against '
            f"the weight-space category attraction (whiskers: bootstrap CIs), colour = layer depth within its "
            f"model. Click a point for its head.{html.escape(note)}</figcaption></figure>")


def patterns_data(patterns: Mapping[str, Mapping]) -> dict:
    """Per model its prompt, tokens and every head's rows, rounded to 3 decimals; a row of the wrong length is a
    ValueError (row q of a causal pattern holds q + 1 weights)."""
    out = {}
    for model, p in patterns.items():
        tokens = [str(t) for t in p["tokens"]]
        heads = {}
        for name, rows in p["heads"].items():
            if len(rows) != len(tokens) or any(len(row) != q + 1 for q, row in enumerate(rows)):
                raise ValueError(f"model {model!r}, head {name!r}: the pattern must hold {len(tokens)} rows, "
                                 "row q with q + 1 weights")
            heads[str(name)] = [[round(float(v), 3) for v in row] for row in rows]
        out[str(model)] = {"prompt": str(p.get("prompt", "")), "tokens": tokens, "heads": heads}
    return out


def clean(value):
    """The data with every non-finite float as null, so that it is valid JSON."""
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def script_json(value) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' (written as \\u escapes, the same string)."""
    text = json.dumps(clean(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def rules_list(rules: Mapping) -> str:
    items = "".join(f'<dt data-kind="{attr(k)}">{html.escape(str(k).replace("_", "-"))}</dt>'
                    f"<dd>{html.escape(str(v))}</dd>" for k, v in rules.items())
    return f"<dl>{items}</dl>"


def models_list(models: Mapping) -> str:
    items = "".join(
        f"<li><strong>{html.escape(str(m.get('name', key)))}</strong>: {html.escape(str(m.get('architecture', '')))}"
        f", {number(m.get('n_layers'))} layers × {number(m.get('n_heads'))} heads</li>"
        for key, m in models.items())
    return f'<ul id="atlas-models">{items}</ul>'


def circuitsvis_bundle() -> str:
    """circuitsvis's browser bundle (the file its `RenderedHTML.local_src` inlines in every view), read as a file of
    the installed package, to inline once: it defines `CircuitsVis` (`CircuitsVis.render(id,
    CircuitsVis.AttentionPattern, props)`); its source-map comment dropped, closing script tags escaped."""
    source = (resources.files("circuitsvis") / "dist" / "cdn" / "iife.js").read_text(encoding="utf-8")
    lines = [line for line in source.splitlines() if not line.startswith("//# sourceMappingURL=")]  # fetched by no one
    return re.sub(r"</(script)", r"<\\/\1", "\n".join(lines), flags=re.IGNORECASE)


def atlas_page(combined: Mapping, patterns: Mapping[str, Mapping]) -> str:
    """The atlas as one self-contained HTML page (elements `atlas-table`, `atlas-scatter`, `head-detail`).

    `combined`: the atlas's combined table; `patterns`: per model, its category prompt's `tokens` and per head name
    the lower-triangular attention rows. The caller writes the page (atomically).
    """
    heads = combined.get("heads") or {}
    provenance = combined.get("provenance") or {}
    data = {"heads": heads, "patterns": patterns_data(patterns), "rules": combined.get("rules") or {}}
    files = resources.files("analysis.infra")
    style = files.joinpath("atlas_page.css").read_text(encoding="utf-8")
    script = files.joinpath("atlas_page.js").read_text(encoding="utf-8")
    made = ", ".join(f"{k}: {v}" for k, v in provenance.items())
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{attr(CSP)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Atlas of self-suppressing semantic heads</title>
<style>
{style}
</style>
</head>
<body>
<header>
<h1>Atlas of self-suppressing semantic heads</h1>
<p id="atlas-provenance">{len(heads)} heads of {len(combined.get("models") or {})} models. {html.escape(made)}</p>
{models_list(combined.get("models") or {})}
</header>
<main>
<div id="atlas-overview">
{scatter(heads)}
<section id="atlas-table-section">
<h2>Every head</h2>
<p>Click a column's header to sort by it, again to reverse; click a row for its head.</p>
{table(heads)}
</section>
<section id="atlas-rules"><h2>Kind rules</h2>{rules_list(combined.get("rules") or {})}</section>
</div>
<aside id="head-detail" aria-live="polite">
<h2 id="head-detail-title">No head chosen</h2>
<p id="head-detail-hint">Click a row of the table or a point of the scatter.</p>
<div id="head-detail-values"></div>
<div id="head-detail-verdicts"></div>
<h3>Attention on the model's category prompt</h3>
<p id="head-detail-prompt"></p>
<div id="head-detail-pattern"></div>
<details id="head-detail-rules" open><summary>Kind rules</summary>{rules_list(combined.get("rules") or {})}</details>
</aside>
</main>
<script type="application/json" id="atlas-data">{script_json(data)}</script>
<script>
{circuitsvis_bundle()}
</script>
<script>
{script}
</script>
</body>
</html>
"""
