"""Eigenvalue edits of a head's QK circuit, run inside the model and measured with the semantic metrics.

An edit replaces a head's W_Q, W_K by factors of any width r (`qk_decomposition.edited_head`:
W' = W + V_S diag((f - 1) λ_S) V_S^T). `qk_override_hooks` make the model compute the head's scores
from them, score(q, k) = (x_q W_Q' + b_Q)(x_k W_K' + b_K)^T / attn_scale with x = ln1(resid_pre) of
the layer. An edit of a head's QK changes nothing upstream of its pattern, so many edits are measured
from one run of the model up to the layer (`patterns.layer_input`, then `pattern_from_input` per
edit: `in_context_edits`), S exact from the pre-softmax scores. The same edits on several heads
(`eigenvalue_edits`, `edit_sweep`) give the statistics a head is ranked on against its controls.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from analysis.attention import QKHead, attention_scores, head_scale, pad_bias, qk_head
from analysis.patterns import head_pattern_and_scores, layer_input
from analysis.qk_decomposition import edited_head, most_negative, self_suppressing_components, symmetric_spectrum
from analysis.scores import MASSES, semantic_scores


def qk_override_hooks(model: HookedTransformer, layer: int, head: int, W_Q: Tensor, W_K: Tensor,
                      b_Q: Tensor | None = None, b_K: Tensor | None = None) -> list[tuple[str, object]]:
    """Forward hooks that recompute one head's attention scores from replacement factors.

    score(q, k) = (x_q W_Q + b_Q)(x_k W_K + b_K)^T / attn_scale (`attention.attention_scores` with the
    layer's own scale, whatever the width r of the factors) with x = ln1(resid_pre) of the
    layer (exactly what the head's own W_Q, W_K see), for any `W_Q, W_K: [d_model, r]`; the
    causal mask is kept. Pass the model's biases to keep them: with r > d_head (edited factors)
    they are padded with zeros, so the extra columns carry no bias. Gradients flow into W_Q and
    W_K, so the same hooks serve evaluation and gradient steering.
    """
    block, scale = model.blocks[layer], head_scale(model.cfg, layer)
    b_Q, b_K = pad_bias(b_Q, W_Q.shape[-1]), pad_bias(b_K, W_K.shape[-1])
    stash: dict[str, Tensor] = {}

    def keep_input(resid_pre: Tensor, hook) -> None:  # (B, T, d_model)
        stash["x"] = resid_pre

    def replace_scores(scores: Tensor, hook) -> Tensor:  # (B, nh, T, T)
        x = block.ln1(stash.pop("x"))
        biases = [None if b is None else b.to(x) for b in (b_Q, b_K)]
        new = attention_scores(x, x, QKHead(W_Q.to(x), W_K.to(x), scale, *biases))  # (B, T, T)
        causal = torch.ones(new.shape[-2:], dtype=torch.bool, device=new.device).tril()
        scores = scores.clone()
        scores[:, head] = torch.where(causal, new.to(scores.dtype), scores[:, head])
        return scores

    return [(f"blocks.{layer}.hook_resid_pre", keep_input), (f"blocks.{layer}.attn.hook_attn_scores", replace_scores)]


def pattern_from_input(x: Tensor, W_Q: Tensor, W_K: Tensor, scale: float, b_Q: Tensor | None = None,
                       b_K: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(`pattern`, `attn_scores`), each `[batch, query, key]` (float32), of a head with factors `W_Q, W_K: [d_model, r]`
    on its layer's input `x: [batch, pos, d_model]`: z = `attention_scores(x, x, W_Q, W_K, scale, b_Q, b_K)` (biases
    padded with zeros to width r), -inf above the diagonal, pattern = softmax(z). This is what `qk_override_hooks`
    make the model compute; it stays differentiable in W_Q and W_K."""
    biases = [None if b is None else pad_bias(b, W.shape[-1]).to(x) for b, W in ((b_Q, W_Q), (b_K, W_K))]
    z = attention_scores(x, x, QKHead(W_Q.to(x), W_K.to(x), scale, *biases)).float()  # (B, T, T)
    causal = torch.ones(z.shape[-2:], dtype=torch.bool, device=z.device).tril()
    z = z.masked_fill(~causal, -torch.inf)
    return z.softmax(-1), z


@torch.no_grad()
def in_context_edits(model: HookedTransformer, tokens: Tensor, mask: Tensor, layer: int,
                     edits: Mapping[Hashable, tuple[Tensor, Tensor, Tensor | None, Tensor | None]], batch_size: int = 64
                     ) -> dict[Hashable, dict[str, float]]:
    """`{key: metrics}`: the semantic metrics (`scores.SEMANTIC_METRICS`, mean over prompts) of a head of `layer` run
    with `edits[key] = (W_Q', W_K', b_Q, b_K)`, any number of edits (of any heads of the layer) from one run of the
    model up to the layer.

    An edit of a head's QK changes nothing upstream of its pattern, so x = ln1(resid_pre) is kept (`layer_input`)
    and each edit's pattern and pre-softmax scores come from `pattern_from_input`; S is exact and uncapped
    (`scores.semantic_scores` with the scores).
    """
    scale = head_scale(model.cfg, layer)
    rows: dict[Hashable, list[dict[str, Tensor]]] = {key: [] for key in edits}
    for start in range(0, tokens.shape[0], batch_size):
        part, part_mask = tokens[start:start + batch_size], mask[start:start + batch_size]
        x = layer_input(model, part, layer, batch_size)
        for key, (W_Q, W_K, b_Q, b_K) in edits.items():
            pattern, z = pattern_from_input(x, W_Q, W_K, scale, b_Q, b_K)
            rows[key].append(semantic_scores(pattern[:, None].cpu(), part, part_mask, z[:, None].cpu()))  # (B, 1) each
    return {key: {m: float(torch.cat([c[m] for c in chunks]).nanmean()) for m in chunks[0]}
            for key, chunks in rows.items()}


def edited_heads_in_context(model: HookedTransformer, tokens: Tensor, mask: Tensor,
                            edits: Mapping[tuple[int, int], tuple[Tensor, Tensor]], batch_size: int = 64
                            ) -> dict[tuple[int, int], dict[str, float]]:
    """(layer, head) -> the semantic metrics of that head run with its edited factors `edits[(layer, head)] =
    (W_Q, W_K)` and its own biases (`in_context_edits`: one run of the model per layer, S exact)."""
    results = {}
    for layer in sorted({l for l, _ in edits}):
        own = {(l, h): qk_head(model, l, h, bias=True) for l, h in edits if l == layer}
        heads = {hd: (*edits[hd], qk.b_Q, qk.b_K) for hd, qk in own.items()}
        results |= in_context_edits(model, tokens, mask, layer, heads, batch_size)
    return {hd: results[hd] for hd in edits}


EDITED_METRICS = (*MASSES, "surprisal")  # the semantic metrics whose change an edit reports


def edit_effect(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float | None]:
    """Changes of an edit: Δm = after[m] - before[m] for self, partner, BOS-when-no-partner mass and S, and
    self_per_partner_lost = Δself / (-Δpartner), the self mass restored per unit of partner mass lost
    (None when no partner mass is lost)."""
    delta = {f"{m}_change": after[m] - before[m] for m in EDITED_METRICS}
    lost = -delta["partner_mass_change"]
    return {**delta, "self_per_partner_lost": delta["self_mass_change"] / lost if lost > 0 else None}


def in_context_scores(model: HookedTransformer, tokens: Tensor, mask: Tensor, layer: int, head: int,
                      fwd_hooks: Sequence[tuple[str, object]] = (), batch_size: int = 64) -> dict[str, float]:
    """The semantic metrics (`scores.SEMANTIC_METRICS`: S, partner, self and BOS mass, ...) of one head, mean over
    prompts, with any `fwd_hooks` active; S exact, from the pre-softmax scores. For edits of the head's own QK
    only, `in_context_edits` gives the same metrics from one run per layer, for any number of edits."""
    pattern, attn_scores = head_pattern_and_scores(model, tokens, layer, head, list(fwd_hooks), batch_size)
    return {key: float(value.nanmean())
            for key, value in semantic_scores(pattern[:, None], tokens, mask, attn_scores[:, None]).items()}


def in_context_grid(model: HookedTransformer, tokens: Tensor, mask: Tensor, layer: int, head: int,
                    factors: Mapping[Hashable, tuple[Tensor, Tensor]], b_Q: Tensor | None = None,
                    b_K: Tensor | None = None, batch_size: int = 64) -> dict[Hashable, dict[str, float]]:
    """`{key: metrics}`: the semantic metrics of the head for each edit `factors[key] = (W_Q', W_K')` with the biases
    `b_Q, b_K`, from one run of the model up to the layer (`in_context_edits`)."""
    return in_context_edits(model, tokens, mask, layer, {k: (*f, b_Q, b_K) for k, f in factors.items()}, batch_size)


# --- the same eigenvalue edits on several heads ----------------------------------------------

EDIT_CHANGES = (*(f"{m}_change" for m in EDITED_METRICS), "self_per_partner_lost")  # the keys of `edit_effect`


def eigenvalue_edits(weights: Mapping[tuple[int, int], tuple[Tensor, Tensor]],
                     inputs: Mapping[tuple[int, int], Tensor], factors: Sequence[float], targeted_k: int
                     ) -> dict[str, dict[tuple[int, int], tuple[Tensor, Tensor]]]:
    """Edit name -> head -> its factors (W_Q', W_K'), for heads with `weights[head] = (W_Q, W_K)`: "unedited",
    "factor <f>" (every negative eigenvalue of W_sym times f, `edited_head`) and "targeted" (factor -1 on the
    `targeted_k` components that carry most of `inputs[head]: [n, d_model]`'s negative self-score,
    `self_suppressing_components`)."""
    heads = {hd: QKHead(*w, 1.0) for hd, w in weights.items()}
    spectra = {hd: symmetric_spectrum(qk) for hd, qk in heads.items()}
    factored = lambda qk: (qk.W_Q, qk.W_K)  # noqa: E731
    edits = {"unedited": dict(weights)}
    for factor in factors:
        edits[f"factor {factor:g}"] = {hd: factored(edited_head(qk, spectra[hd], most_negative(spectra[hd].values),
                                                                factor)) for hd, qk in heads.items()}
    edits["targeted"] = {hd: factored(edited_head(qk, spectra[hd], self_suppressing_components(inputs[hd], spectra[hd],
                                                                                               targeted_k), -1.0))
                         for hd, qk in heads.items()}
    return edits


def edit_sweep(model: HookedTransformer, tokens: Tensor, mask: Tensor,
               edits: Mapping[str, Mapping[tuple[int, int], tuple[Tensor, Tensor]]]) -> dict[tuple[int, int], dict]:
    """Head -> edit name -> its semantic metrics in context (`edited_heads_in_context`, one pass per layer and
    edit) and their change from the "unedited" entry (`edit_effect`)."""
    measured = {name: edited_heads_in_context(model, tokens, mask, heads) for name, heads in edits.items()}
    return {hd: {name: {**m[hd], **edit_effect(measured["unedited"][hd], m[hd])} for name, m in measured.items()}
            for hd in edits["unedited"]}


def edit_statistics(sweep: Mapping[tuple[int, int], Mapping[str, Mapping]]) -> dict[tuple[int, int], dict]:
    """Head -> "<edit>_<change>" for every edit but "unedited" and every change of `EDIT_CHANGES`: the flat
    statistics `controls.compare` ranks."""
    return {hd: {f"{name}_{key}": row[key] for name, row in rows.items() if name != "unedited" for key in EDIT_CHANGES}
            for hd, rows in sweep.items()}
