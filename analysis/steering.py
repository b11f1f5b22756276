"""Steering a head's self-attention by editing its W_Q and W_K: gradient steps on an explicit
objective over prompt batches, and the closed-form step of the original study as a baseline.

Gradient steering minimises, over batches of category prompts,

    loss = s * self_mass - λ * partner_mass - μ * bos_mass_no_partner,    s = +1 ("suppress") or -1 ("restore")

where self_mass, partner_mass and bos_mass_no_partner are semantic metrics (`scores.MASSES`) of the head's
in-context pattern (`analysis.scores.semantic_companions`). The λ term keeps the head on its
category-mates while self-attention moves; the μ term keeps its fallback to BOS on rows with no
partner (μ = 0 is the objective without it, which lets that fallback collapse). Only the head's W_Q and W_K
change (its biases, every other weight and the model itself stay as they are; a head and each of its edits is an
`attention.QKHead`, the optimiser's settings a `SteeringSettings`): the edited head's pattern is
computed from its layer's input (`qk_edits.pattern_from_input`, what `qk_override_hooks` make the
model compute), so the model runs once per layer and prompt set, not once per step.

The closed-form baseline is one gradient step on -trace(W_Q W_K^T) with respect to W_K:
d(-trace(W_Q W_K^T))/dW_K = -W_Q, so W_K <- W_K + η W_Q and W = W_Q W_K^T <- W + η W_Q W_Q^T.
W_Q W_Q^T is positive semi-definite, so every self-score x^T W x grows (by η |x W_Q|^2):
self-attention comes back, for every token alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import FactoredMatrix, HookedTransformer

from analysis import scores
from analysis.attention import QKHead, attention_scores, qk_head
from analysis.controls import Sample, Statistic
from analysis.patterns import layer_input
from analysis.prompts import Probe
from analysis.qk_edits import in_context_edit_units, pattern_from_input

Direction = Literal["suppress", "restore"]
SIGN = {"suppress": 1.0, "restore": -1.0}


def steering_loss(self_mass: Tensor, partner_mass: Tensor, direction: Direction, lam: float,
                  bos_mass_no_partner: Tensor | float = 0.0, mu: float = 0.0) -> Tensor:
    """loss = s * self_mass - λ * partner_mass - μ * bos_mass_no_partner, s = +1 to suppress self-attention,
    -1 to restore it."""
    return SIGN[direction] * self_mass - lam * partner_mass - mu * bos_mass_no_partner


def weight_change(before: QKHead, after: QKHead) -> dict[str, float]:
    """Relative Frobenius change of an edit `before` -> `after`: ||W_Q' - W_Q|| / ||W_Q||, the same for W_K and for
    W_QK = W_Q W_K^T (NaN, undefined, where the unedited matrix is zero).

    W_QK' - W_QK = [W_Q', -W_Q][W_K', W_K]^T stays factored (no d_model x d_model product is formed).
    """
    W_Q, W_K, new_W_Q, new_W_K = before.W_Q, before.W_K, after.W_Q, after.W_K
    delta_QK = FactoredMatrix(torch.cat([new_W_Q, -W_Q], -1), torch.cat([new_W_K, W_K], -1).T)

    def relative(change: Tensor, base: Tensor) -> float:
        return float(change / base) if float(base) > 0 else float("nan")
    return {"W_Q": relative((new_W_Q - W_Q).norm(), W_Q.norm()), "W_K": relative((new_W_K - W_K).norm(), W_K.norm()),
            "W_QK": relative(delta_QK.norm(), before.W.norm())}


def interpolate_at(curve: Sequence[Mapping[str, float]], key: str, value: float) -> dict | None:
    """The metrics of a one-parameter curve of edits, linearly interpolated where `curve[i][key]` equals `value`.

    `curve` holds points (e.g. the trace step at increasing sizes) each with `key` and other metrics;
    between the two neighbouring points p0, p1 with p0[key] <= value <= p1[key] (sorted by `key`),
    m(value) = m0 + (value - p0[key]) / (p1[key] - p0[key]) * (m1 - m0). None when `value` lies outside
    the curve's range (no extrapolation).
    """
    points = sorted(curve, key=lambda p: p[key])
    for p0, p1 in zip(points, points[1:]):
        if p0[key] <= value <= p1[key]:
            t = 0.0 if p1[key] == p0[key] else (value - p0[key]) / (p1[key] - p0[key])
            return {m: p0[m] + t * (p1[m] - p0[m]) for m in p0 if isinstance(p0[m], (int, float)) and m in p1}
    return None


def trace_step(qk: QKHead, eta: float) -> QKHead:
    """The closed-form baseline: W_K <- W_K + η W_Q, i.e. W_Q W_K^T <- W_Q W_K^T + η W_Q W_Q^T (scale, biases kept)."""
    return qk.with_factors(qk.W_Q, qk.W_K + eta * qk.W_Q)


def trace_eta(qk: QKHead, relative: float) -> float:
    """The η whose step η W_Q W_Q^T has Frobenius norm `relative` * ||W_Q W_K^T|| (a model-independent size); 0 for
    a head with W_Q = 0, whose step is zero whatever η."""
    step_norm = float(FactoredMatrix(qk.W_Q, qk.W_Q.T).norm())
    return relative * float(qk.W.norm()) / step_norm if step_norm > 0 else 0.0


def head_masses(x: Tensor, probe: Probe, qk: QKHead) -> dict[str, Tensor]:
    """Self, partner and BOS-when-no-partner mass (means over prompts, differentiable in the head's W_Q, W_K) of the
    head `qk` on its layer's input `x: [batch, pos, d_model]` (`patterns.layer_input` of `probe.tokens`)."""
    tokens, mask = probe
    pattern = pattern_from_input(x, qk)[0][:, None].cpu()  # (B, 1, T, T)
    companions = scores.semantic_companions(pattern, tokens, mask, scores.scored_rows(tokens))
    return {key: companions[key][:, 0].nanmean() for key in scores.MASSES}


@dataclass
class SteeringRun:
    """The steered head (`W_Q, W_K: [d_model, d_head]`, the head's scale and biases) and the per-step record (loss,
    self and partner mass)."""

    qk: QKHead
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class SteeringSettings:
    """Adam on a head's W_Q, W_K (`gradient_steer`): the weights λ (`lam`, partner mass) and μ (`mu`, BOS mass when
    no partner) of `steering_loss`, the learning rate, the number of steps, prompts per step, and the seed of the
    minibatch draws."""

    lam: float = 1.0
    mu: float = 1.0
    lr: float = 1e-2
    steps: int = 25
    batch_size: int = 16
    seed: int = 0


def gradient_steer(qk: QKHead, x: Tensor, probe: Probe, direction: Direction = "restore",
                   settings: SteeringSettings = SteeringSettings(), progress: bool = False) -> SteeringRun:
    """Adam on the head's W_Q, W_K minimising `steering_loss` over minibatches of `probe`.

    `x: [batch, pos, d_model]` is the layer's input (`patterns.layer_input` of `probe.tokens`): it does not depend
    on the head's W_Q, W_K, so the model runs once, before, and every step works from it. Minibatches of
    `settings.batch_size` prompts are drawn (seeded) from the prompts; the head's scale and biases stay fixed, and
    no model is touched.
    """
    if direction not in SIGN:
        raise ValueError(f"direction must be one of {sorted(SIGN)}, got {direction!r}")
    W_Q, W_K = qk.W_Q.clone().requires_grad_(True), qk.W_K.clone().requires_grad_(True)
    steered = qk.with_factors(W_Q, W_K)  # the head as the optimiser moves it
    optimiser = torch.optim.Adam([W_Q, W_K], lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    history = []
    for step in tqdm(range(settings.steps), desc=f"steering ({direction})", disable=not progress, leave=False):
        idx = torch.randperm(len(probe.tokens), generator=generator)[:settings.batch_size]
        masses = head_masses(x[idx.to(x.device)], Probe(probe.tokens[idx], probe.mask[idx]), steered)
        loss = steering_loss(masses["self_mass"], masses["partner_mass"], direction, settings.lam,
                             masses["bos_mass_no_partner"].nan_to_num(0.0), settings.mu)
        W_Q.grad, W_K.grad = torch.autograd.grad(loss, [W_Q, W_K])  # leaves any model's .grad untouched
        optimiser.step()
        history.append({"step": step, "loss": loss.item(), **{k: v.item() for k, v in masses.items()}})
    return SteeringRun(qk.with_factors(W_Q.detach(), W_K.detach()), history)


def largest_trace_step(runs: Mapping[str, Mapping], metrics: Mapping[str, Mapping]) -> dict:
    """Of the closed-form runs (`runs[name]["eta"]`), the one with the largest step: its name, η and metrics."""
    name = max((n for n, run in runs.items() if "eta" in run), key=lambda n: runs[n]["eta"])
    return {"name": name, "eta": runs[name]["eta"], "metrics": metrics[name]}


# --- one head's edits, measured: the bookkeeping of a steering study -------------------------

Head = tuple[int, int]
OBJECTIVE = "loss = s * self_mass - lam * partner_mass - mu * bos_mass_no_partner (s = +1 suppress, -1 restore)"
CLOSED_FORM = "W_K <- W_K + eta W_Q, i.e. W <- W + eta W_Q W_Q^T (one step on -trace(W_Q W_K^T))"
# Statistics of one head's edits and the direction a self-suppressing head predicts for each.
STATISTIC_DIRECTIONS = {"self_mass_before": "low", "bos_no_partner_before": "high", "restore_self_gain": "high",
                        "restore_partner_change": "high", "trace_self_gain": "high"}


@dataclass
class HeadEdits:
    """One head's edits and what they did: `conditions[name]` the edited head ("before", each gradient direction,
    "trace <size>"), `metrics[name]` its semantic metrics on held-out prompts (plus partner_mass_change, the
    relative change of partner mass from "before"), `runs[name]` the edit's record (gradient: history;
    trace: eta and size; both: relative_change); `units[name]` the metrics prompt by prompt (empty when not
    measured), from which the statistics against control heads get their CIs."""

    conditions: dict[str, QKHead]
    metrics: dict[str, dict[str, float]]
    runs: dict[str, dict]
    units: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # name -> metric -> [n_prompts], as measured


def trace_name(relative: float) -> str:
    """"trace 0.3": the name of the closed-form step of size `relative`."""
    return f"trace {relative:g}"


@dataclass(frozen=True)
class SteeringPlan:
    """What `steer_heads` does to each head: a gradient run (`gradient_steer` with `gradient`'s settings) in each
    of `directions`, and the closed-form trace step (`trace_step`) at each relative size of `trace_sizes`."""

    directions: Sequence[Direction]
    trace_sizes: Sequence[float]
    gradient: SteeringSettings = SteeringSettings()


def steer_heads(model: HookedTransformer, heads: Sequence[Head], train: Probe, test: Probe, plan: SteeringPlan,
                progress: bool = False) -> dict[Head, HeadEdits]:
    """Each head's edits of `plan`: gradient edits (`gradient_steer` on `train`, one per direction) and trace steps
    (`trace_step` at each relative size, `trace_eta`), every one measured on `test`.

    The model runs once per layer on each prompt set: the training prompts' layer input serves every
    gradient step of the layer's heads, and every edit of the layer's heads is measured from one run
    (`qk_edits.in_context_edit_units`, S exact, prompt by prompt; `metrics` holds their means).
    """
    inputs: dict[int, Tensor] = {}  # layer -> the training prompts' layer input, (B, T, d_model)
    edits = {}
    for layer, head in tqdm(heads, desc="heads (gradient and trace edits)", disable=not progress):
        if layer not in inputs:
            inputs[layer] = layer_input(model, train.tokens, layer)
        own = qk_head(model, layer, head, bias=True)
        conditions, runs = {"before": own}, {}
        for direction in plan.directions:
            run = gradient_steer(own, inputs[layer], train, direction, plan.gradient)
            conditions[direction] = run.qk
            runs[direction] = {"history": run.history, "relative_change": weight_change(own, run.qk)}
        for relative in plan.trace_sizes:
            eta = trace_eta(own, relative)
            conditions[trace_name(relative)] = trace_step(own, eta)
            runs[trace_name(relative)] = {"eta": eta, "relative": relative,
                                          "relative_change": weight_change(own, conditions[trace_name(relative)])}
        edits[(layer, head)] = HeadEdits(conditions, {}, runs)
    for layer in dict.fromkeys(l for l, _ in heads):
        of_layer = {(hd, name): qk for hd, e in edits.items() if hd[0] == layer for name, qk in e.conditions.items()}
        for (hd, name), units in in_context_edit_units(model, test, layer, of_layer).items():
            edits[hd].units[name] = units
            edits[hd].metrics[name] = {metric: float(values.nanmean()) for metric, values in units.items()}
    for e in edits.values():
        for m in e.metrics.values():
            m["partner_mass_change"] = m["partner_mass"] / e.metrics["before"]["partner_mass"] - 1
    return edits


def trace_curve(edits: HeadEdits) -> dict[str, dict]:
    """The closed-form steps as a curve keyed by size ("0.3"): {"eta", **metrics} of each."""
    return {f"{r['relative']:g}": {"eta": r["eta"], **edits.metrics[n]} for n, r in edits.runs.items() if "eta" in r}


def matched_comparison(edits: HeadEdits, directions: Sequence[str]) -> dict[str, dict]:
    """Each gradient run against the trace curve ("before" + every size) interpolated at the run's final self mass
    (`interpolate_at`): {direction: {"self_mass", "gradient": metrics, "trace": metrics or None}}."""
    metrics = edits.metrics
    curve = [metrics["before"]] + [metrics[n] for n, r in edits.runs.items() if "eta" in r]
    return {d: {"self_mass": metrics[d]["self_mass"], "gradient": metrics[d],
                "trace": interpolate_at(curve, "self_mass", metrics[d]["self_mass"])} for d in directions}


def head_statistics(edits: HeadEdits) -> dict[str, Statistic]:
    """The statistics of `STATISTIC_DIRECTIONS` for one head: self mass and BOS-when-no-partner mass before any
    edit, the self-mass gain of the largest trace step, and (with a "restore" run) restore's self-mass gain and
    partner-mass change (after minus before on the same prompt).

    With the edits measured prompt by prompt (`edits.units`), each is a `controls.Sample` over the prompts (the
    masses before any edit on the logit scale); otherwise a plain number from the means."""
    largest = largest_trace_step(edits.runs, edits.metrics)["name"]
    pairs = {"self_mass_before": ("before", None, "self_mass"), "bos_no_partner_before": ("before", None,
                                                                                         "bos_mass_no_partner"),
             "trace_self_gain": (largest, "before", "self_mass")}
    if "restore" in edits.metrics:
        pairs |= {"restore_self_gain": ("restore", "before", "self_mass"),
                  "restore_partner_change": ("restore", "before", "partner_mass")}
    stats: dict[str, Statistic] = {}
    for name, (after, before, metric) in pairs.items():
        if edits.units:
            values = edits.units[after][metric] - (edits.units[before][metric] if before else 0.0)
            stats[name] = Sample(values.double(), "prompt", scale="identity" if before else "logit")
        else:
            stats[name] = edits.metrics[after][metric] - (edits.metrics[before][metric] if before else 0.0)
    return stats


def statistic_directions(directions: Sequence[str]) -> dict[str, str]:
    """`STATISTIC_DIRECTIONS` without the restore statistics when no "restore" run is made."""
    return {k: v for k, v in STATISTIC_DIRECTIONS.items() if not k.startswith("restore") or "restore" in directions}


def query_top_keys(E: Tensor, query_id: int, conditions: Mapping[str, QKHead], labels: Sequence[str], k: int = 10
                   ) -> dict[str, dict]:
    """For each condition (a head, e.g. `HeadEdits.conditions`), the k best keys of one query over every token input
    `E: [d_vocab, d_model]`: {"keys": labels, "scores": [k], "query_self_rank": 1 + number of keys scoring above the
    query itself}."""
    table = {}
    for name, qk in conditions.items():
        row = attention_scores(E[[query_id]], E, qk)[0]  # (d_vocab,)
        values, keys = row.topk(k)
        table[name] = {"keys": [labels[i] for i in keys], "scores": values,
                       "query_self_rank": int((row > row[query_id]).sum()) + 1}
    return table
