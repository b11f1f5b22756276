"""The residual stream read through the unembedding (logit lens) and head-level activation patching.

Logit lens: the residual stream before each layer and after the last, each put through the final
LayerNorm (normalised by its own scale) and the unembedding, gives the model's "current guess"
at every depth. Patching: copy one head's output (`hook_z`, all positions) from a clean run into
a corrupted one and measure how much of the clean logit difference comes back.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.patching import get_act_patch_attn_head_out_all_pos

from analysis.errors import UsageError


@torch.no_grad()
def residual_stack(model: HookedTransformer, tokens: Tensor) -> tuple[Tensor, list[str]]:
    """`[n_layers + 1, batch, pos, d_model]`: resid_pre of every layer, then the final resid_post; and labels."""
    _, cache = model.run_with_cache(tokens.to(model.cfg.device),
                                    names_filter=lambda name: name.endswith(("hook_resid_pre", "hook_resid_post")))
    stack, labels = cache.accumulated_resid(incl_mid=False, apply_ln=False, return_labels=True)
    return stack, labels


@torch.no_grad()
def logit_lens(model: HookedTransformer, tokens: Tensor) -> tuple[Tensor, list[str]]:
    """`log_probs: [n_layers + 1, batch, pos, d_vocab]` = log_softmax(unembed(LN_final(resid))) at every depth.

    Each residual is normalised by its own scale (the final LayerNorm module recomputes it), so the
    last row equals the model's own output distribution.
    """
    stack, labels = residual_stack(model, tokens)
    return model.unembed(model.ln_final(stack.flatten(0, 1))).unflatten(0, stack.shape[:2]).log_softmax(-1), labels


def next_token_log_probs(log_probs: Tensor, tokens: Tensor) -> Tensor:
    """`[depth, batch, pos - 1]`: log p(token[t + 1]) at position t, for `log_probs: [depth, batch, pos, vocab]`."""
    target = tokens[:, 1:].to(log_probs.device)  # (B, T-1)
    index = target[None, :, :, None].expand(log_probs.shape[0], -1, -1, 1)
    return log_probs[:, :, :-1].gather(-1, index)[..., 0]


def logit_difference(logits: Tensor, answer: Tensor, wrong: Tensor) -> Tensor:
    """`[batch]`: logit(answer) - logit(wrong) at the last position, for `logits: [batch, pos, d_vocab]`."""
    last = logits[:, -1]  # (B, vocab)
    pick = lambda ids: last.gather(-1, ids[:, None].to(last.device))[:, 0]  # noqa: E731
    return pick(answer) - pick(wrong)


def recovered_fraction(patched: Tensor, clean: float, corrupted: float) -> Tensor:
    """(patched - corrupted) / (clean - corrupted): 0 = no effect, 1 = the clean behaviour fully restored."""
    return (patched - corrupted) / (clean - corrupted)


@torch.no_grad()
def head_patching(model: HookedTransformer, clean: Tensor, corrupted: Tensor, answer: Tensor,
                  wrong: Tensor) -> dict[str, Tensor | float]:
    """Patch each head's `hook_z` (every position) from the clean into the corrupted run.

    `clean, corrupted: [batch, pos]` (same length), `answer, wrong: [batch]` token ids: the
    answer of the clean prompt and of the corrupted one. Returns the clean and corrupted mean logit
    differences and `recovered: [layer, head]`, the fraction of the clean logit difference each
    patch restores (TransformerLens's `get_act_patch_attn_head_out_all_pos`, one pass per head).
    """
    if clean.shape != corrupted.shape:
        raise UsageError(f"The clean and corrupted prompts must have the same number of tokens to patch position "
                         f"by position; they have {clean.shape[-1]} and {corrupted.shape[-1]}. Change one word for "
                         "one word.")
    device = model.cfg.device
    clean_logits, clean_cache = model.run_with_cache(clean.to(device), names_filter=lambda n: n.endswith("hook_z"))
    clean_ld = float(logit_difference(clean_logits, answer, wrong).mean())
    corrupted_ld = float(logit_difference(model(corrupted.to(device)), answer, wrong).mean())
    if abs(clean_ld - corrupted_ld) < 1e-6:
        raise UsageError("The clean and corrupted prompts give the same logit difference, so nothing can be "
                         "recovered. Choose a corruption that changes the answer.")
    metric: Callable[[Tensor], Tensor] = lambda logits: recovered_fraction(  # noqa: E731
        logit_difference(logits, answer, wrong).mean(), clean_ld, corrupted_ld)
    recovered = get_act_patch_attn_head_out_all_pos(model, corrupted.to(device), clean_cache, metric)
    return {"clean_logit_diff": clean_ld, "corrupted_logit_diff": corrupted_ld, "recovered": recovered.float().cpu()}
