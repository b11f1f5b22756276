"""Evidence of self-suppression that could have failed: statistics of a head on its actual inputs.

The count of W_sym's negative eigenvalues is no evidence: W_sym = ½ [W_Q W_K] J [W_Q W_K]^T
with J = [[0, I], [I, 0]], which has d_head eigenvalues of each sign, so by Sylvester's law of
inertia every head whose [W_Q W_K] has full rank 2 d_head has exactly d_head negative and d_head
positive eigenvalues. The statistics here are measured on the head's inputs for category words
(`x: [n, d_model]`, `category: [n]` each word's category number), with scores of the head's `QKHead`

    s(i, j) = x_i W_Q W_K^T x_j^T / scale        (`attention.attention_scores`, no biases)

and each is a `controls.Sample` over the words (so a comparison between heads gets a CI) unless
it is of the weights alone:

    self_score            mean_i s(i, i), split over W_sym's eigenpairs into its positive- and
                          negative-eigenvalue parts (`qk_decomposition.self_score_parts`)
    margin                mean_i [s(i, i) - mean_{j in cat(i), j != i} s(i, j)]: self against
                          same-category partners (negative for a self-suppressing head)
    margin_normalised     margin / std of the off-diagonal scores: comparable across heads of
                          different norm (undefined for a head whose scores are constant)
    below_partners_share  share of words whose self-score is below every partner's score
    category_attraction   mean_i [mean partner score - mean score of every other word]
    top{k}_negative_share share of the (summed) negative part of the self-scores carried by the
                          k most negative eigencomponents of W_sym (a ratio of sums: descriptive)

One null per question, each named for what it rules out:

    self_vs_random_words  the margin with the category labels shuffled, in closed form: the mean of
                          s(i, i) - mean_{j != i} s(i, j) = n/(n - 1) tr(W Σ)/scale exactly
                          (`properties.trace_term`). Since margin = self_vs_random_words -
                          category_attraction (word by word), a margin below this null shows category
                          attraction and nothing else. (Gaussian inputs with the words' mean and
                          covariance have the same expected margin, so they are not a second null.)
    below_partners_null   the share below every partner for Gaussian inputs with the words' mean and
                          covariance but no token identity, with the *real* labels (the same category
                          sizes), over repeated draws (`below_partners_null`): what the first two
                          moments of the inputs give without any word being itself.

The mean self-score has no such null: E[y W y^T] = μ W μ^T + tr(W Σ) for any inputs y with mean μ
and covariance Σ, so Gaussian inputs with the words' moments reproduce it by algebra. Self-avoidance
and category attraction are decided per head by `analysis.properties`.

Only n x n scores over the n category words are formed (n is tens), never the vocabulary.

The rank-ablation grid of one head (`rank_grid`: each token's self-rank among all keys and the in-context
self mass with the k most negative eigenvalues rescaled) and the statistics the rank-ablation claim rests
on (`rank_statistics`) live here too, so the target and every control head are measured the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from analysis import qk_decomposition as qk
from analysis.attention import QKHead, qk_head, word_score_matrix
from analysis.controls import Head, Sample, Statistic, Undefined, head_key
from analysis.properties import partner_mask, row_mean, trace_term, unit_margins
from analysis.prompts import CategoryWords, Probe
from analysis.qk_decomposition import (RankGrid, Spectrum, most_negative, self_score_parts, spectrum_summary,
                                       symmetric_spectrum)
from analysis.qk_edits import in_context_edit_units
from analysis.token_maps import InputOptions, token_inputs

WORD = "category word"  # the sampling unit of every input statistic
CONSTANT_SCORES = "the head's scores are the same for every pair of words: no spread to normalise by"


def below_partners(scores: Tensor, category: Tensor) -> Tensor:
    """`[n]` bool: s(i, i) < min_{j in cat(i), j != i} s(i, j) (False for a word without partners)."""
    partners = partner_mask(category)
    lowest = scores.masked_fill(~partners, float("inf")).min(-1).values
    return partners.any(-1) & (scores.diagonal() < lowest)


def off_diagonal_std(scores: Tensor) -> float:
    """Standard deviation of s(i, j) over i != j: the scale a margin is measured against."""
    eye = torch.eye(len(scores), dtype=torch.bool, device=scores.device)
    return float(scores[~eye].std())


def negative_share_top_k(x: Tensor, spectrum: Spectrum, scale: float, k: int) -> Statistic:
    """sum_i sum_{m in K} λ_m (v_m . x_i)^2 / sum_i sum_{λ_m < 0} λ_m (v_m . x_i)^2, K the k most negative
    eigenvalues of W_sym: how much of the inputs' negative self-score part k components carry (undefined if none)."""
    terms = spectrum.values * (x @ spectrum.vectors) ** 2 / scale  # (n, 2 d_head)
    negative = terms.clamp_max(0).sum()
    if negative == 0:
        return Undefined("W_sym gives these inputs no negative self-score part")
    return float(terms[:, most_negative(spectrum.values, k)].sum() / negative)


def gaussian_like(x: Tensor, n_samples: int, seed: int) -> Tensor:
    """`[n_samples, d]` Gaussian draws with exactly the sample mean and covariance of `x: [n, d]`.

    y = μ + g (x - μ) / sqrt(n - 1), g ~ N(0, I_n): Cov(y) = (x - μ)^T (x - μ) / (n - 1), with no
    d x d factorisation and no token identity.
    """
    generator = torch.Generator().manual_seed(seed)
    mu = x.mean(0, keepdim=True)
    g = torch.randn(n_samples, len(x), generator=generator, dtype=x.dtype)
    return mu + g @ (x - mu) / (len(x) - 1) ** 0.5


def normalised_margin(margin: Tensor, scores: Tensor, unit: str) -> Statistic:
    """`margin: [n]` divided by the spread of the off-diagonal `scores: [n, n]` (`off_diagonal_std`), as a `Sample`
    over `unit`; undefined for a head whose scores are constant (no spread to normalise by)."""
    spread = off_diagonal_std(scores)
    return Sample(margin / spread, unit) if spread > 0 else Undefined(CONSTANT_SCORES)


def below_partners_null(x: Tensor, category: Tensor, qk: QKHead, n_repeats: int, seed: int) -> Tensor:
    """`[n_repeats]`: the share of words below every partner when the n words are replaced by n Gaussian draws
    with their mean and covariance (`gaussian_like`, seed + r for repeat r), keeping the real labels `category`
    (so every category keeps its size and each word its 1-5 partners, not the hundreds that tiling labels over
    many draws would give)."""
    shares = [below_partners(word_score_matrix(y, qk), category).double().mean()
              for y in (gaussian_like(x, len(x), seed + r) for r in range(n_repeats))]
    return torch.stack(shares)


TOP_KS = (1, 4, 16)  # the k of the top{k}_negative_share statistics


def input_statistics(x: Tensor, category: Tensor, qk: QKHead, spectrum: Spectrum | None = None,
                     ks: Sequence[int] = TOP_KS) -> dict[str, Statistic]:
    """Every input statistic of the module docstring for the head `qk` on inputs `x: [n, d]` with labels
    `category: [n]` (`spectrum`: the head's, `qk_decomposition.symmetric_spectrum`, computed here unless given)."""
    spectrum = symmetric_spectrum(qk) if spectrum is None else spectrum
    scores = word_score_matrix(x, qk)  # (n, n): self at Δ = 0, others at the head's rotation M
    positive, negative = self_score_parts(x, spectrum, qk.scale)
    margins = unit_margins(scores, category)
    margin = margins["self_vs_partners"]
    return {"self_score": Sample(scores.diagonal(), WORD), "self_positive_part": Sample(positive, WORD),
            "self_negative_part": Sample(negative, WORD), "margin": Sample(margin, WORD),
            "margin_normalised": normalised_margin(margin, scores, WORD),
            "below_partners_share": Sample(below_partners(scores, category).double(), WORD),
            "category_attraction": Sample(margins["partners_vs_others"], WORD),
            **{f"top{k}_negative_share": negative_share_top_k(x, spectrum, qk.scale, k) for k in ks}}


def head_statistics(x: Tensor, category: Tensor, qk: QKHead, seed: int, n_repeats: int = 200) -> dict[str, Statistic]:
    """Weight-space spectrum statistics (n_negative_eigenvalues, negative_eigenvalue_share, trace: weights alone),
    `input_statistics`, and the nulls of the module docstring for the head `qk`: self_vs_random_words (the
    closed-form shuffled-label margin) and below_partners_null_mean / _q95 over `n_repeats` Gaussian draws."""
    spectrum = symmetric_spectrum(qk)
    summary = spectrum_summary(spectrum.values)
    null = below_partners_null(x, category, qk, n_repeats, seed)
    return {"n_negative_eigenvalues": float(summary["n_negative"]),
            "negative_eigenvalue_share": summary["negative_share"], "trace": summary["trace"],
            **input_statistics(x, category, qk, spectrum), "self_vs_random_words": trace_term(x, qk),
            "below_partners_null_mean": float(null.mean()), "below_partners_null_q95": float(null.quantile(0.95))}


# Which way each statistic lies for a self-suppressing semantic head (rank 1 = most extreme that way).
DIRECTIONS: dict[str, str] = {
    "n_negative_eigenvalues": "high", "negative_eigenvalue_share": "high", "trace": "low",
    "self_score": "low", "self_negative_part": "low", "margin": "low", "margin_normalised": "low",
    "below_partners_share": "high", "category_attraction": "high", "self_vs_random_words": "low",
    **{f"top{k}_negative_share": "high" for k in TOP_KS},
}


def group_map_statistics(x: Tensor, group: Tensor, qk: QKHead, seed: int = 0, unit: str = "token"
                         ) -> dict[str, Statistic]:
    """On a token set with groups (e.g. the 30-token group set), per token i of the head's map
    s = x W x^T / scale, each a `controls.Sample` over the tokens (`unit`):

        self_minus_in_group_i  = s(i, i) - mean_{j in g(i), j != i} s(i, j)
        in_minus_out_group_i   = mean_{j in g(i), j != i} s(i, j) - mean_{j not in g(i)} s(i, j)

    and the normalised partner margin and below-partners share of `input_statistics`. With groups of equal
    size the means of the first two are `token_maps.block_means`' differences. `seed` is unused (the
    signature `every_head_statistics` calls)."""
    scores = word_score_matrix(x, qk)
    margins = unit_margins(scores, group)
    in_minus_out = row_mean(scores, partner_mask(group)) - row_mean(scores, group[:, None] != group[None, :])
    return {"self_minus_in_group": Sample(margins["self_vs_partners"], unit),
            "in_minus_out_group": Sample(in_minus_out, unit),
            "margin_normalised": normalised_margin(margins["self_vs_partners"], scores, unit),
            "below_partners_share": Sample(below_partners(scores, group).double(), unit)}


GROUP_MAP_DIRECTIONS: dict[str, str] = {"self_minus_in_group": "low", "in_minus_out_group": "high",
                                        "margin_normalised": "low", "below_partners_share": "high"}


@torch.no_grad()
def every_head_statistics(model: HookedTransformer, view: str, words: CategoryWords, seed: int,
                          statistics: Callable[..., dict[str, Statistic]] = head_statistics,
                          options: InputOptions = InputOptions(progress=True)) -> dict[Head, dict[str, Statistic]]:
    """`statistics(x, words.category, qk, seed)` for every head `qk` (`attention.qk_head`, no biases), x the layer's
    inputs (`token_maps.token_inputs`, view `view`, the "mean" view over `options.categories`' prompts) of the words
    `words.ids: [n]`: one input computation per layer, since a layer's heads share their inputs; every head with
    `options.rotation` (a rotary model's M, `positions.position_treatment`). Keyed (layer, head);
    `options.progress` draws a bar over the heads."""
    out = {}
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    quiet = replace(options, progress=False)
    with tqdm(total=n_layers * n_heads, desc="heads", disable=not options.progress) as bar:
        for layer in range(n_layers):
            x = token_inputs(model, layer, view, words.ids, seed, quiet).float().cpu()  # (n, d_model)
            for head in range(n_heads):
                out[(layer, head)] = statistics(x, words.category, qk_head(model, layer, head, rotation=options.rotation), seed)
                bar.update()
    return out


# --- the rank-ablation grid, the same for the target and every control head -----------------------


def cell_key(k: int, scale: float) -> str:
    """A grid cell's key in results files: "k=8,scale=-1"."""
    return f"k={k},scale={scale:g}"


def rank_queries(d_vocab: int, n: int, seed: int) -> Tensor | None:
    """`[n]` sorted query tokens whose self-ranks are measured: n of the d_vocab drawn without replacement
    (torch.Generator seeded with `seed`), or None (every token) when n >= d_vocab. Each is still ranked
    against all d_vocab keys, so its rank is exact; summaries over the sample estimate the vocabulary's."""
    if n >= d_vocab:
        return None
    return torch.randperm(d_vocab, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def rank_grid(model: HookedTransformer, target: Head, E: Tensor, probe: Probe, grid: RankGrid,
              progress: bool = False) -> dict:
    """`{"cells": {cell_key: metrics}, "unedited": metrics, "n_negative": n, "ks": ks}` for the head `target`
    (layer, head) over the (k, scale) grid of `grid`, and the head unedited (scale 1, measured whether or not
    `grid.scales` holds it).

    Each cell W_{k,s} rescales the k most negative eigenvalues of W_sym by s (`qk.edited_head`); its
    metrics are the self-rank summaries (accuracy@K for K in `grid.at`) of the query tokens `grid.queries`
    (`rank_queries`; default every token) among all keys of the vocabulary `E: [d_vocab, d_model]`
    (`qk.self_ranks_grid`, one batched pass over score blocks for every cell) and the self and partner mass on
    `probe` (`qk_edits.in_context_edit_units`, one run up to the layer, every edited pattern from its cached input).
    k is capped at the head's number of negative eigenvalues. With `grid.rotation` M (a rotary model) the self-ranks
    score other keys at M and each query's own key at Δ = 0, the edit added alike at every distance
    (`qk.self_ranks_grid`); in context every query and key is turned by its own position. "units" keeps, per cell
    (scale 1 included), each query token's self-rank and each prompt's self mass, for `rank_samples`.
    """
    layer, head = target
    own = qk_head(model, layer, head, bias=True, rotation=grid.rotation)  # rotary: other keys at M, self at Δ = 0
    spectrum = symmetric_spectrum(own)
    n_negative = len(most_negative(spectrum.values))
    ks = sorted({min(k, n_negative) for k in grid.ks})  # k beyond the negative count repeats the last cell
    measured = sorted({float(s) for s in grid.scales} | {1.0})
    ranks = qk.self_ranks_grid(E, own, spectrum, replace(grid, ks=ks, scales=measured), progress)
    edited = {(k, s): qk.edited_head(own, spectrum, most_negative(spectrum.values, k), s) for k in ks for s in measured}
    in_context = in_context_edit_units(model, probe, layer, edited)  # per prompt
    metrics = {(k, s): {"k": k, "scale": s, **qk.rank_metrics(ranks[k, s], grid.at),
                        "self_mass": float(in_context[k, s]["self_mass"].nanmean()),
                        "partner_mass": float(in_context[k, s]["partner_mass"].nanmean())}
               for k, s in edited}
    units = {cell_key(k, float(s)): {"rank": ranks[k, s].double(), "self_mass": in_context[k, s]["self_mass"].double()}
             for k, s in edited}
    cells = {cell_key(k, float(s)): metrics[k, float(s)] for k in ks for s in grid.scales}
    return {"cells": cells, "unedited": metrics[ks[0], 1.0], "n_negative": n_negative, "ks": ks, "units": units}


def cell_like(cells: dict[str, dict], best: dict) -> str:
    """The key of the cell of `cells` that stands for `best` (the target's best cell): the one with its k and scale,
    or, for a head with fewer negative eigenvalues, the largest k at that scale."""
    same_scale = [key for key, c in cells.items() if c["scale"] == best["scale"]]
    return next((key for key in same_scale if cells[key]["k"] == best["k"]),
                max(same_scale, key=lambda key: cells[key]["k"]))


def rank_statistics(grid: dict, best: dict) -> dict[str, float]:
    """A head's rank-ablation statistics from its own `rank_grid`, each against the head unedited:

    mean_rank (unedited mean self-rank), mean_rank_change and self_mass_change at the cell (k, scale) of
    `best` (the target's best cell; the head's largest k at that scale if it has fewer negative
    eigenvalues), and best_mean_rank_change = min over the grid of the mean rank minus unedited,
    best_self_mass_change = max over the grid of the self mass minus unedited.
    """
    cells, unedited = grid["cells"], grid["unedited"]
    at_best = cells[cell_like(cells, best)]
    return {"mean_rank": unedited["mean_rank"], "edited_mean_rank": at_best["mean_rank"],
            "mean_rank_change": at_best["mean_rank"] - unedited["mean_rank"],
            "self_mass": unedited["self_mass"], "edited_self_mass": at_best["self_mass"],
            "self_mass_change": at_best["self_mass"] - unedited["self_mass"],
            "best_mean_rank_change": min(c["mean_rank"] for c in cells.values()) - unedited["mean_rank"],
            "best_self_mass_change": max(c["self_mass"] for c in cells.values()) - unedited["self_mass"]}


def rank_samples(grid: dict, best: dict) -> dict[str, Sample]:
    """The statistics of `RANK_DIRECTIONS` as `controls.Sample`s from a `rank_grid`'s units: mean_rank over the query
    tokens (unedited), mean_rank_change per query token and self_mass_change per prompt (the cell of `best`, as
    `rank_statistics` chooses it, minus unedited, on the same token or prompt)."""
    units = grid["units"]
    at_best = cell_like(grid["cells"], best)
    unedited = units[cell_key(grid["ks"][0], 1.0)]
    return {"mean_rank": Sample(unedited["rank"], "query token"),
            "mean_rank_change": Sample(units[at_best]["rank"] - unedited["rank"], "query token"),
            "self_mass_change": Sample(units[at_best]["self_mass"] - unedited["self_mass"], "prompt")}


def best_cell_edit(model: HookedTransformer, target: Head, best: dict, E: Tensor, probe: Probe, grid: RankGrid
                   ) -> dict[str, Statistic]:
    """One head unedited and with the edit of `best` (its k and scale): `rank_statistics` and `rank_samples` of the
    one-cell `rank_grid` (`grid`'s query tokens and chunks), without the grid's best_ statistics (a single cell has
    no best of its own)."""
    one_cell = replace(grid, ks=[best["k"]], scales=[best["scale"]], at=[1])
    own = rank_grid(model, target, E, probe, one_cell)
    stats = rank_statistics(own, best) | rank_samples(own, best)
    return {key: value for key, value in stats.items() if not key.startswith("best_")}


# Which way each rank-ablation statistic lies for a self-suppressing head; the best_ ones need the grid.
RANK_DIRECTIONS: dict[str, str] = {"mean_rank": "high", "mean_rank_change": "low", "self_mass_change": "high"}
GRID_DIRECTIONS: dict[str, str] = {"best_mean_rank_change": "low", "best_self_mass_change": "high"}


def best_cell(cells: dict[str, dict]) -> dict:
    """The cell whose self-scores rank highest: argmin over cells of the mean self-rank (first on ties)."""
    return min(cells.values(), key=lambda c: c["mean_rank"])


@dataclass(frozen=True)
class RankAblation:
    """The rank-ablation study (`rank_ablation`): the grid of edits, and what the control heads get of it,
    "grid" (the whole grid, as the target) or "best" (the target's best cell only)."""

    grid: RankGrid
    control_cells: str = "grid"


def rank_ablation(model: HookedTransformer, heads: Sequence[Head], inputs_of: Callable[[int], Tensor], probe: Probe,
                  settings: RankAblation, progress: bool = False) -> dict:
    """The target's `rank_grid` and its `best_cell`, and every head's rank-ablation statistics against it; the target
    is `heads[0]`, the rest are its controls.

    `inputs_of(layer)` gives a layer's vocabulary inputs `E: [d_vocab, d_model]`. control_cells "grid":
    each control head gets the whole grid (`rank_statistics`, keys of RANK_DIRECTIONS and GRID_DIRECTIONS);
    "best": only the target's best cell (`best_cell_edit`, RANK_DIRECTIONS). The statistics of RANK_DIRECTIONS are
    `rank_samples` (paired over query tokens or prompts); the grid's best_ ones plain numbers. Returns {"grid", "best",
    "statistics": {(layer, head): stats}, "control_grids": {head_key: cells} (grid only), "directions"}.
    """
    (layer, head), controls, control_cells = heads[0], heads[1:], settings.control_cells
    grid = rank_grid(model, (layer, head), inputs_of(layer), probe, settings.grid, progress)
    best = best_cell(grid["cells"])
    stats, control_grids = {(layer, head): rank_statistics(grid, best) | rank_samples(grid, best)}, {}
    for l, h in tqdm(controls, desc=f"control heads ({control_cells})", disable=not progress):
        if control_cells == "grid":
            own = rank_grid(model, (l, h), inputs_of(l), probe, settings.grid)
            control_grids[head_key(l, h)] = own["cells"]
            stats[(l, h)] = rank_statistics(own, best) | rank_samples(own, best)
        else:
            stats[(l, h)] = best_cell_edit(model, (l, h), best, inputs_of(l), probe, settings.grid)
    directions = {**RANK_DIRECTIONS, **(GRID_DIRECTIONS if control_cells == "grid" else {})}
    return {"grid": grid, "best": best, "statistics": stats, "control_grids": control_grids,
            "directions": directions}
