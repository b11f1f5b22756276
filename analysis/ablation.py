"""Component ablations upstream of a head, and the head's semantic score under each.

An ablation replaces one activation of the residual stream's early components, at every
position after BOS, by a constant:

    mean: its mean over the prompt set (batch and positions >= 1)
    zero: 0

BOS keeps its own activations (`keep_bos`), so the head's fall-back target stays what it is and
the ablation only changes what the query and key words carry. That is our convention. The
study's (its code, `Mamiglia/deep-dive-L1H5`, `src/ablation.py`) takes the mean over the batch
and *all* positions, BOS included, and writes it at every position, BOS included; mean mode only
(`CONVENTIONS["study_bos_ablated"]`: `bos_in_means=True, keep_bos=False`). The score is ours by default: S
exact and uncapped from the head's pre-softmax scores, over every row but BOS (`scores.semantic_surprisal`,
as the survey computes it); `score="study"` gives the study's (`scores.study_surprisal`: clamped at 1e-12,
the BOS row in the mean), for comparison with its reported medians. The "MLP-only residual" condition
is a replacement rather than an ablation: block 0's `resid_post` becomes block 0's MLP output
alone (embeddings and attention-0 dropped from the stream, their effect through MLP0 kept).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.utilities import get_act_name

from analysis import scores
from analysis.patterns import head_pattern_and_scores
from analysis.prompts import Probe

# Components the study ablates, by the hook that carries each one.
COMPONENTS: dict[str, str] = {
    "token_embedding": get_act_name("embed"),
    "positional_embedding": get_act_name("pos_embed"),
    "attention_0": get_act_name("attn_out", 0),
    "mlp_0": get_act_name("mlp_out", 0),
}
MLP_ONLY_RESIDUAL = "mlp_only_residual"
Hook = tuple[str, Callable]
# How each convention ablates: ours keeps BOS out of the means and unablated; the study's ablates it too.
CONVENTIONS: dict[str, dict[str, bool]] = {
    "ours_bos_kept": {"keep_bos": True, "bos_in_means": False},
    "study_bos_ablated": {"keep_bos": False, "bos_in_means": True},
}


@torch.no_grad()
def missing_components(model: HookedTransformer) -> list[str]:
    """The components of COMPONENTS that `model` has no hook for (no positional embedding: rotary positions)."""
    return [component for component, name in COMPONENTS.items() if name not in model.hook_dict]


def component_means(model: HookedTransformer, tokens: Tensor, hook_names: list[str],
                    batch_size: int = 64, bos_in_means: bool = False) -> dict[str, Tensor]:
    """`{hook: [d_model]}`: each activation's mean over the batch and positions >= 1
    (positions >= 0, BOS included, with `bos_in_means`, as the study did)."""
    first = 0 if bos_in_means else 1
    totals = {name: 0.0 for name in hook_names}
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start:start + batch_size].to(model.cfg.device)
        _, cache = model.run_with_cache(batch, names_filter=lambda n: n in totals, return_type=None,
                                        stop_at_layer=1)  # every component lives in block 0 or before
        for name in hook_names:
            totals[name] = totals[name] + cache[name][:, first:].sum((0, 1))
    count = tokens.shape[0] * (tokens.shape[1] - first)
    return {name: total / count for name, total in totals.items()}


def replace_hook(value: Tensor, keep_bos: bool = True) -> Callable:
    """A hook setting `act: [batch, pos, d_model]` to `value: [d_model]` (positions >= 1 if keep_bos)."""
    first = 1 if keep_bos else 0

    def hook(act: Tensor, hook) -> Tensor:
        act = act.clone()
        act[:, first:] = value
        return act
    return hook


def mlp_only_residual_hooks(keep_bos: bool = True) -> list[Hook]:
    """Hooks that replace block 0's `resid_post` by block 0's MLP output (positions >= 1 if keep_bos)."""
    first = 1 if keep_bos else 0
    stored: dict[str, Tensor] = {}

    def keep(act: Tensor, hook) -> None:
        stored["mlp_out"] = act

    def replace(act: Tensor, hook) -> Tensor:
        act = act.clone()
        act[:, first:] = stored["mlp_out"][:, first:]
        return act
    return [(get_act_name("mlp_out", 0), keep), (get_act_name("resid_post", 0), replace)]


def ablation_hooks(means: Mapping[str, Tensor], mode: str, keep_bos: bool = True) -> dict[str, list[Hook]]:
    """`{condition: hooks}` for every component of COMPONENTS in one mode ("mean" or "zero")."""
    if mode not in ("mean", "zero"):
        raise ValueError(f"mode must be 'mean' or 'zero', got {mode!r}")
    return {component: [(name, replace_hook(means[name] if mode == "mean" else torch.zeros_like(means[name]),
                                            keep_bos))]
            for component, name in COMPONENTS.items()}


@dataclass(frozen=True)
class AblationSettings:
    """What `ablation_study` ablates and how: the `modes` ("mean", "zero"), the convention (`keep_bos`,
    `bos_in_means`: ours by default, the study's is `CONVENTIONS["study_bos_ablated"]`) and the definition of S,
    `score`: "ours" (exact, uncapped, BOS row out) or "study" (the study's clamp and BOS row, pattern-based)."""

    modes: tuple[str, ...] = ("mean", "zero")
    keep_bos: bool = True
    bos_in_means: bool = False
    score: str = "ours"


def ablation_study(model: HookedTransformer, probe: Probe, layer: int, head: int,
                   settings: AblationSettings = AblationSettings(), progress: bool = False
                   ) -> dict[str, dict[str, Tensor]]:
    """Per-prompt S of the head on `probe`, `[batch]`, under every condition: `{mode: {condition: S}}`.

    Each mode of `settings.modes` holds the baseline (nothing ablated), every component of COMPONENTS, and the
    MLP-only residual (the same in both modes: it ablates nothing by a constant), ablated by the convention and
    scored by the S of `settings`.
    """
    score, keep_bos = settings.score, settings.keep_bos
    if score not in ("ours", "study"):
        raise ValueError(f"score must be 'ours' or 'study', got {score!r}")
    tokens, mask = probe
    rows = scores.scored_rows(tokens)
    means = component_means(model, tokens, list(COMPONENTS.values()), bos_in_means=settings.bos_in_means)

    def surprisal(hooks: list[Hook]) -> Tensor:
        pattern, attn_scores = (t[:, None] for t in head_pattern_and_scores(model, tokens, (layer, head), hooks))
        if score == "study":  # (B, 1, q, k) each
            return scores.study_surprisal(pattern, mask)[:, 0]
        return scores.semantic_surprisal(pattern, mask, rows, attn_scores)[:, 0]

    baseline = surprisal([])
    mlp_only = surprisal(mlp_only_residual_hooks(keep_bos))
    study: dict[str, dict[str, Tensor]] = {}
    for mode in settings.modes:
        study[mode] = {"baseline": baseline}
        for condition, hooks in tqdm(ablation_hooks(means, mode, keep_bos).items(), desc=f"{mode} ablations",
                                     disable=not progress, leave=False):
            study[mode][condition] = surprisal(hooks)
        study[mode][MLP_ONLY_RESIDUAL] = mlp_only
    return study


def summary_table(study: Mapping[str, Mapping[str, Tensor]], n_resamples: int = 2000,
                  seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """`{mode: {condition: summary}}` of per-prompt S: median and quartiles, mean with 95% bootstrap CI,
    and the change of the median from the baseline (`delta_median`)."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for mode, conditions in study.items():
        baseline = conditions["baseline"].quantile(0.5).item()
        table[mode] = {}
        for condition, s in conditions.items():
            mean, low, high = scores.bootstrap_ci(s, n_resamples, seed=seed)
            q25, median, q75 = s.quantile(torch.tensor([0.25, 0.5, 0.75])).tolist()
            table[mode][condition] = {"median": median, "q25": q25, "q75": q75, "mean": float(mean),
                                      "mean_low": float(low), "mean_high": float(high),
                                      "delta_median": median - baseline}
    return table


def damage_share(baseline: float, ablated: float, reference: float) -> float:
    """(ablated - baseline) / (reference - baseline): one ablation's damage as a share of another's."""
    return (ablated - baseline) / (reference - baseline)
