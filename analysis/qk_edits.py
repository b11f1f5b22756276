"""Eigenvalue edits of a head's QK circuit, run inside the model and measured with the semantic metrics.

An edit replaces a head's W_Q, W_K by factors of any width r, as an `attention.QKHead` with the head's
scale and biases (`qk_decomposition.edited_head`: W' = W + V_S diag((f - 1) λ_S) V_S^T). `qk_override_hooks`
make the model compute the head's scores from it, score(q, k) = (x_q W_Q' + b_Q)(x_k W_K' + b_K)^T /
attn_scale with x = ln1(resid_pre) of the layer. An edit of a head's QK changes nothing upstream of its
pattern, so many edits are measured from one run of the model up to the layer (`patterns.layer_input`, then
`pattern_from_input` per edit: `in_context_edit_units`, prompt by prompt; `in_context_edits`, their means), S exact
from the pre-softmax scores. The same edits on several heads (`eigenvalue_edits`, `edit_sweep`) give, per prompt, the
statistics a head is ranked on against its controls (`edit_statistics`: `controls.Sample`s of the changes, paired by
prompt), among them the targeted flip of k components as a curve over k (`CURVE_KS`, `curve_ks`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from analysis.attention import QKHead, positional_scores
from analysis.controls import LOGIT_FLOOR, Sample
from analysis.patterns import head_pattern_and_scores, layer_input
from analysis.qk_decomposition import edited_head, most_negative, self_suppressing_components, symmetric_spectrum
from analysis.prompts import Probe
from analysis.scores import MASSES, semantic_scores


def qk_override_hooks(model: HookedTransformer, layer: int, head: int, qk: QKHead) -> list[tuple[str, object]]:
    """Forward hooks that recompute head `head` of `layer`'s attention scores from a replacement `qk`.

    score(q, k) = (x_q W_Q + b_Q)(x_k W_K + b_K)^T / scale (`attention.positional_scores` of `qk`, whose scale
    is the layer's own whatever the width r of its factors `W_Q, W_K: [d_model, r]`) with x = ln1(resid_pre)
    of the layer (exactly what the head's own W_Q, W_K see); on a rotary model (`qk.rotary`, which `qk_head`
    sets) q and k are turned by their positions first, the layer's own rotary on the first d_head columns (the
    extra columns of edited factors are directions of d_model and are not turned); the causal mask is kept.
    With grouped-query attention, editing one query head's W_K gives that head its own key projection: the
    heads sharing its key/value head keep theirs. Give `qk` the model's
    biases to keep them (`attention.qk_head(..., bias=True)`, then `QKHead.with_factors` pads them). Gradients
    flow into its tensors, so the same hooks serve evaluation and gradient steering.
    """
    block = model.blocks[layer]
    stash: dict[str, Tensor] = {}

    def keep_input(resid_pre: Tensor, hook) -> None:  # (B, T, d_model)
        stash["x"] = resid_pre

    def replace_scores(scores: Tensor, hook) -> Tensor:  # (B, nh, T, T)
        x = block.ln1(stash.pop("x"))
        new = positional_scores(x, qk.to(x))  # (B, T, T)
        causal = torch.ones(new.shape[-2:], dtype=torch.bool, device=new.device).tril()
        scores = scores.clone()
        scores[:, head] = torch.where(causal, new.to(scores.dtype), scores[:, head])
        return scores

    return [(f"blocks.{layer}.hook_resid_pre", keep_input), (f"blocks.{layer}.attn.hook_attn_scores", replace_scores)]


def pattern_from_input(x: Tensor, qk: QKHead) -> tuple[Tensor, Tensor]:
    """(`pattern`, `attn_scores`), each `[batch, query, key]` (float32), of a head `qk` (factors `W_Q, W_K:
    [d_model, r]`) on its layer's input `x: [batch, pos, d_model]` at positions 0..pos-1: z =
    `positional_scores(x, qk)` (rotary heads turned by position, `qk.rotary`), -inf above
    the diagonal, pattern = softmax(z). This is what `qk_override_hooks` make the model compute; it stays
    differentiable in the head's tensors."""
    z = positional_scores(x, qk.to(x)).float()  # (B, T, T)
    causal = torch.ones(z.shape[-2:], dtype=torch.bool, device=z.device).tril()
    z = z.masked_fill(~causal, -torch.inf)
    return z.softmax(-1), z


@torch.no_grad()
def in_context_edit_units(model: HookedTransformer, probe: Probe, layer: int, edits: Mapping[Hashable, QKHead],
                          batch_size: int = 64) -> dict[Hashable, dict[str, Tensor]]:
    """`{key: {metric: [n_prompts]}}`: the semantic metrics (`scores.SEMANTIC_METRICS`) of a head of `layer` run as
    `edits[key]` (its edited factors, scale and biases), prompt by prompt over `probe` (NaN where a prompt has no
    row the metric averages over), any number of edits (of any heads of the layer) from one run up to the layer.

    An edit of a head's QK changes nothing upstream of its pattern, so x = ln1(resid_pre) is kept (`layer_input`)
    and each edit's pattern and pre-softmax scores come from `pattern_from_input`; S is exact and uncapped
    (`scores.semantic_scores` with the scores). Every edit is measured on the same prompts in the same order, so
    the values pair across edits and heads (`controls.Sample`).
    """
    rows: dict[Hashable, list[dict[str, Tensor]]] = {key: [] for key in edits}
    for start in range(0, probe.tokens.shape[0], batch_size):
        part, part_mask = probe.tokens[start:start + batch_size], probe.mask[start:start + batch_size]
        x = layer_input(model, part, layer, batch_size)
        for key, qk in edits.items():
            pattern, z = pattern_from_input(x, qk)
            rows[key].append(semantic_scores(pattern[:, None].cpu(), part, part_mask, z[:, None].cpu()))  # (B, 1) each
    return {key: {m: torch.cat([c[m] for c in chunks])[:, 0] for m in chunks[0]} for key, chunks in rows.items()}


def mean_over_prompts(units: Mapping[str, Tensor]) -> dict[str, float]:
    """`{metric: [n_prompts]} -> {metric: mean}`, prompts where the metric is undefined (NaN) left out."""
    return {m: float(values.nanmean()) for m, values in units.items()}


def in_context_edits(model: HookedTransformer, probe: Probe, layer: int, edits: Mapping[Hashable, QKHead],
                     batch_size: int = 64) -> dict[Hashable, dict[str, float]]:
    """`{key: metrics}`: the semantic metrics of `in_context_edit_units`, each the mean over the prompts of `probe`."""
    return {key: mean_over_prompts(units)
            for key, units in in_context_edit_units(model, probe, layer, edits, batch_size).items()}


def edited_heads_in_context(model: HookedTransformer, probe: Probe, edits: Mapping[tuple[int, int], QKHead],
                            batch_size: int = 64) -> dict[tuple[int, int], dict[str, float]]:
    """(layer, head) -> the semantic metrics of that head run as `edits[(layer, head)]`, mean over prompts
    (`in_context_edits`: one run of the model per layer, S exact)."""
    results = {}
    for layer in sorted({l for l, _ in edits}):
        results |= in_context_edits(model, probe, layer, {hd: qk for hd, qk in edits.items() if hd[0] == layer},
                                    batch_size)
    return {hd: results[hd] for hd in edits}


EDITED_METRICS = (*MASSES, "surprisal")  # the semantic metrics whose change an edit reports


def log_odds(mass: Tensor) -> Tensor:
    """logit(m) = log(m / (1 - m)) of masses clamped to [`LOGIT_FLOOR`, 1 - `LOGIT_FLOOR`] (as `controls.Sample`)."""
    return mass.clamp(LOGIT_FLOOR, 1 - LOGIT_FLOOR).logit()


def log_odds_change(pairs: Tensor) -> Tensor:
    """`pairs: [..., n_prompts, 2]` (mass before, after) -> `[...]`: logit(mean after) - logit(mean before).

    The change of a mass on the logit scale, where a gain near 1 (or a fall near 0) is not squeezed: from 0.02 to
    0.98 is +7.8, from 0.10 to 0.98 is +6.1, while their gains in mass are 0.96 and 0.88. Prompts where the mass is
    undefined (NaN) are left out of the means; the `reduce` of a `controls.Sample` of such pairs."""
    mean = pairs.nanmean(-2)
    return log_odds(mean[..., 1]) - log_odds(mean[..., 0])


def edit_effect(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Changes of an edit: Δm = after[m] - before[m] for self, partner, BOS-when-no-partner mass and S, and the self
    mass's change on the logit scale, self_mass_log_odds_change = logit(after) - logit(before) (`log_odds`).

    No ratio of changes is reported: a row's attention sums to 1, so mass a self-restoring edit takes from the
    partners can only go to self, BOS or the other keys, and self mass gained per unit of partner mass lost is
    near 1 for any head whose edit moves mass between partners and self. Conservation forces it; it says nothing
    about the head."""
    masses = torch.tensor([before["self_mass"], after["self_mass"]], dtype=torch.float64)
    return {**{f"{m}_change": after[m] - before[m] for m in EDITED_METRICS},
            "self_mass_log_odds_change": float(log_odds_change(masses[None]))}


def in_context_scores(model: HookedTransformer, probe: Probe, layer: int, head: int,
                      fwd_hooks: Sequence[tuple[str, object]] = (), batch_size: int = 64) -> dict[str, float]:
    """The semantic metrics (`scores.SEMANTIC_METRICS`: S, partner, self and BOS mass, ...) of one head, mean over
    the prompts of `probe`, with any `fwd_hooks` active; S exact, from the pre-softmax scores. For edits of the
    head's own QK only, `in_context_edits` gives the same metrics from one run per layer, for any number of edits."""
    tokens, mask = probe
    pattern, attn_scores = head_pattern_and_scores(model, tokens, (layer, head), list(fwd_hooks), batch_size)
    return {key: float(value.nanmean())
            for key, value in semantic_scores(pattern[:, None], tokens, mask, attn_scores[:, None]).items()}


# --- the same eigenvalue edits on several heads ----------------------------------------------

EDIT_CHANGES = (*(f"{m}_change" for m in EDITED_METRICS), "self_mass_log_odds_change")  # keys of `edit_effect`
CURVE_KS = (1, 2, 4, 8, 16)  # components flipped by the targeted edits of the curve (capped at the negative count)


def targeted_name(k: int) -> str:
    """The edit name of the targeted flip of k components on the curve: "targeted k=4"."""
    return f"targeted k={k}"


def curve_ks(ks: Sequence[int], n_negative: int) -> list[int]:
    """The curve's k: each of `ks` capped at `n_negative` (the target's negative eigenvalues), sorted, no repeats."""
    return sorted({min(int(k), n_negative) for k in ks})


def eigenvalue_edits(heads: Mapping[tuple[int, int], QKHead], inputs: Mapping[tuple[int, int], Tensor],
                     factors: Sequence[float], targeted_k: int, ks: Sequence[int] = ()
                     ) -> dict[str, dict[tuple[int, int], QKHead]]:
    """Edit name -> head -> the edited head, for `heads[head]` (each head's own, with the biases it runs with):
    "unedited", "factor <f>" (every negative eigenvalue of W_sym times f, `edited_head`), "targeted" (factor -1
    on the `targeted_k` components that carry most of `inputs[head]: [n, d_model]`'s negative self-score,
    `self_suppressing_components`) and the same for each k of `ks` ("targeted k=<k>", `targeted_name`; a head
    with fewer negative components has all of them flipped)."""
    spectra = {hd: symmetric_spectrum(qk) for hd, qk in heads.items()}
    edits = {"unedited": dict(heads)}
    for factor in factors:
        edits[f"factor {factor:g}"] = {hd: edited_head(qk, spectra[hd], most_negative(spectra[hd].values), factor)
                                       for hd, qk in heads.items()}
    for name, k in (("targeted", targeted_k), *((targeted_name(k), k) for k in ks)):
        edits[name] = {hd: edited_head(qk, spectra[hd], self_suppressing_components(inputs[hd], spectra[hd], k), -1.0)
                       for hd, qk in heads.items()}
    return edits


Sweep = dict[tuple[int, int], dict[str, dict[str, Tensor]]]  # head -> edit name -> metric -> [n_prompts]


def edit_sweep(model: HookedTransformer, probe: Probe, edits: Mapping[str, Mapping[tuple[int, int], QKHead]],
               batch_size: int = 64) -> Sweep:
    """Head -> edit name -> metric -> `[n_prompts]`: every edit of every head measured prompt by prompt on `probe`
    (`in_context_edit_units`: one run of the model up to each layer for all of that layer's edits), the same
    prompts for every head and edit. `edits` holds an "unedited" entry with every head."""
    measured: dict = {}
    for layer in sorted({l for l, _ in edits["unedited"]}):
        of_layer = {(name, hd): qk for name, heads in edits.items() for hd, qk in heads.items() if hd[0] == layer}
        measured |= in_context_edit_units(model, probe, layer, of_layer, batch_size)
    return {hd: {name: measured[name, hd] for name in edits} for hd in edits["unedited"]}


def edit_rows(sweep: Sweep) -> dict[tuple[int, int], dict[str, dict[str, float]]]:
    """Head -> edit name -> its semantic metrics (mean over prompts) and their change from the "unedited" entry
    (`edit_effect`): what results files keep."""
    rows = {}
    for hd, per_edit in sweep.items():
        means = {name: mean_over_prompts(units) for name, units in per_edit.items()}
        rows[hd] = {name: {**m, **edit_effect(means["unedited"], m)} for name, m in means.items()}
    return rows


def edit_statistics(sweep: Sweep) -> dict[tuple[int, int], dict[str, Sample]]:
    """Head -> "<edit>_<change>" for every edit but "unedited" and every change of `EDIT_CHANGES`, as a per-prompt
    `controls.Sample` (the statistics `controls.compare` ranks, with a paired bootstrap over prompts).

    Δm per prompt = after - before on the same prompt (its mean is the change of the means: a metric is undefined
    on a prompt before an edit exactly when it is after); self_mass_log_odds_change resamples (before, after) pairs
    and reduces them with `log_odds_change`. A difference of gains, not of edited masses, is compared: heads start
    from different self masses, and the claim is about what the edit gives back to each.
    """
    stats: dict[tuple[int, int], dict[str, Sample]] = {}
    for hd, per_edit in sweep.items():
        before = per_edit["unedited"]
        stats[hd] = {}
        for name, after in per_edit.items():
            if name == "unedited":
                continue
            stats[hd] |= {f"{name}_{m}_change": Sample(after[m] - before[m], "prompt") for m in EDITED_METRICS}
            stats[hd][f"{name}_self_mass_log_odds_change"] = Sample(
                torch.stack([before["self_mass"], after["self_mass"]], -1), "prompt", reduce=log_odds_change)
    return stats
