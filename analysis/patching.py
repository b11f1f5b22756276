"""The residual stream read through the unembedding (logit lens) and head-level activation patching.

Logit lens: the residual stream before each layer and after the last, each put through the final
LayerNorm (normalised by its own scale) and the unembedding, gives the model's "current guess"
at every depth. Patching: copy one head's output (`hook_z`, all positions) from a clean run into
a corrupted one and measure how much of the clean logit difference comes back.

Patching is batched: the patched runs of many heads are rows of one forward pass (row i patches
head i), and a pass for the heads of layer l starts from the corrupted run's residual stream at
layer l, since nothing upstream of the patch changes. The result equals one pass per head
(TransformerLens's `get_act_patch_attn_head_out_all_pos`) to float tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.utilities import get_act_name

from analysis import prompts
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


def _check_pair(model: HookedTransformer, clean: Tensor, corrupted: Tensor) -> None:
    if clean.shape != corrupted.shape:
        raise UsageError(f"The clean and corrupted prompts must have the same number of tokens to patch position "
                         f"by position; they have {clean.shape[-1]} and {corrupted.shape[-1]}. Change one word for "
                         "one word.")


def _patch_rows(layer_heads: Sequence[int], clean_z: Tensor) -> Callable:
    """A `hook_z` hook for a batch of `len(layer_heads)` copies of a `[B, pos, head, d_head]` run: copy i
    (rows i B ... i B + B - 1) gets head `layer_heads[i]`'s z from `clean_z` at every position."""
    B = clean_z.shape[0]
    heads = torch.tensor(layer_heads, device=clean_z.device).repeat_interleave(B)  # (n B,)
    rows = torch.arange(len(heads), device=clean_z.device)
    source = torch.arange(B, device=clean_z.device).repeat(len(layer_heads))  # batch row of each copy's prompt

    def hook(z: Tensor, hook) -> Tensor:  # (n B, pos, head, d_head)
        z[rows, :, heads] = clean_z[source, :, heads]
        return z
    return hook


def token_logits(model: HookedTransformer, resid: Tensor, ids: Tensor) -> Tensor:
    """`[n]`: the logit of token `ids[i]` from the last block's `resid: [n, d_model]` (final LN, then
    row i of the unembedding only: two tokens of GPT-2's 50257 cost 2 columns, not the whole W_U)."""
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid[:, None])[:, 0]  # LN expects a position axis
    ids = ids.to(resid.device)
    logits = (resid * model.W_U[:, ids].T).sum(-1) + model.b_U[ids]
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


class TokenPair(NamedTuple):
    """Clean and corrupted prompts as tokens with the answer each calls for, which travel together: `clean,
    corrupted: [batch, pos]` (same length), `answer, wrong: [batch]` token ids (the clean prompt's answer and the
    corrupted one's)."""

    clean: Tensor
    corrupted: Tensor
    answer: Tensor
    wrong: Tensor


@torch.no_grad()
def head_patching(model: HookedTransformer, pair: TokenPair, batch_size: int = 64, progress: bool = False
                  ) -> dict[str, Tensor | float]:
    """Patch each head's `hook_z` (every position) from the clean into the corrupted run of `pair`.

    `pair.clean, pair.corrupted: [batch, pos]` (same length), `pair.answer, pair.wrong: [batch]` token ids: the
    answer of the clean prompt and of the corrupted one. Returns the clean and corrupted mean logit
    differences and `recovered: [layer, head]`, the fraction of the clean logit difference each
    patch restores, (LD_patched - LD_corrupted) / (LD_clean - LD_corrupted) with LD the mean over
    the batch. Up to `batch_size` rows (patched heads x prompts) share a forward pass; the pass for
    layer l's heads starts at layer l from the corrupted residual stream, and only the answer and
    wrong logits of the last position are computed.
    """
    clean, corrupted, answer, wrong = pair
    _check_pair(model, clean, corrupted)
    device, n_layers = model.cfg.device, model.cfg.n_layers
    clean, corrupted = clean.to(device), corrupted.to(device)
    clean_logits, clean_cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_z"))
    corrupted_logits, corrupted_cache = model.run_with_cache(corrupted, names_filter=lambda n: n.endswith("resid_pre"))
    clean_ld = float(logit_difference(clean_logits, answer, wrong).mean())
    corrupted_ld = float(logit_difference(corrupted_logits, answer, wrong).mean())
    if abs(clean_ld - corrupted_ld) < 1e-6:
        raise UsageError("The clean and corrupted prompts give the same logit difference, so nothing can be "
                         "recovered. Choose a corruption that changes the answer.")
    B = clean.shape[0]
    # A shortformer model adds its positional embedding inside every block, which a pass that starts
    # at a later layer would not see: start those at the embeddings.
    restart = model.cfg.positional_embedding_type != "shortformer"
    per_pass = max(1, batch_size // B)
    recovered = torch.empty(n_layers, model.cfg.n_heads)
    for layer in tqdm(range(n_layers), desc="patching", disable=not progress, leave=False):
        for start in range(0, model.cfg.n_heads, per_pass):
            heads = list(range(start, min(start + per_pass, model.cfg.n_heads)))
            hooks = [(get_act_name("z", layer), _patch_rows(heads, clean_cache[get_act_name("z", layer)]))]
            with model.hooks(fwd_hooks=hooks):
                if restart:
                    resid = corrupted_cache[get_act_name("resid_pre", layer)].repeat(len(heads), 1, 1)
                    resid = model(resid, start_at_layer=layer, stop_at_layer=n_layers)  # (n B, pos, d_model)
                else:
                    resid = model(corrupted.repeat(len(heads), 1), stop_at_layer=n_layers)
            last = resid[:, -1]  # (n B, d_model): only the answer position, only the two tokens
            n = len(heads)
            ld = token_logits(model, last, answer.repeat(n)) - token_logits(model, last, wrong.repeat(n))
            recovered[layer, start:start + len(heads)] = recovered_fraction(
                ld.reshape(len(heads), B).mean(-1), clean_ld, corrupted_ld).float().cpu()
    return {"clean_logit_diff": clean_ld, "corrupted_logit_diff": corrupted_ld, "recovered": recovered}


# --- prompt pairs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptPair:
    """A clean prompt and a corrupted one of the same length, with the answer each one calls for."""

    clean: str
    corrupted: str
    answer: str  # the clean prompt's next token, e.g. " Mary"
    wrong: str  # the corrupted prompt's next token


TASKS: dict[str, PromptPair] = {
    # indirect-object identification (Wang et al. 2022): the names swapped in the second clause
    "ioi": PromptPair(prompts.IOI_SENTENCE, "When John and Mary went to the store, Mary gave a drink to",
                      " Mary", " John"),
    # induction: the earlier copy changed, so only a head that moves it forward can give the answer
    "induction": PromptPair("The old man saw a box on the hill. The old man saw a",
                            "The old man saw a tree on the hill. The old man saw a", " box", " tree"),
}


def encode_pair(model: HookedTransformer, pair: PromptPair) -> TokenPair:
    """(`clean, corrupted: [1, pos]`, `answer, wrong: [1]`); a `UsageError` when the tokenizer cannot
    encode the pair for patching (answers not single tokens, unknown words, lengths that differ)."""
    answer, wrong = (torch.tensor(prompts.single_token_ids(model.tokenizer, [w])) for w in (pair.answer, pair.wrong))
    clean, corrupted = model.to_tokens(pair.clean).cpu(), model.to_tokens(pair.corrupted).cpu()
    tokenizer = model.tokenizer
    unk = getattr(tokenizer, "unk_token_id", None)  # GPT-2's is its BOS/EOS: byte-level BPE has no unknown word
    words = [tokenizer.encode(text, add_special_tokens=False) for text in (pair.clean, pair.corrupted)]
    if unk is not None and unk not in (tokenizer.bos_token_id, tokenizer.eos_token_id) and any(
            unk in ids for ids in words):
        raise UsageError(f"The prompts {pair.clean!r} / {pair.corrupted!r} hold words outside this model's "
                         "vocabulary; write prompts in words it knows.")
    _check_pair(model, clean, corrupted)
    return TokenPair(clean, corrupted, answer, wrong)


@torch.no_grad()
def choose_task(model: HookedTransformer, tasks: dict[str, PromptPair] = TASKS) -> tuple[str, str]:
    """(task name, why): the first task, in `tasks` order, that the model solves (clean logit difference
    > 0 > corrupted: it gives each prompt its own answer), else the first its tokenizer can encode."""
    encodable, reasons = [], []
    for name, pair in tasks.items():
        try:
            clean, corrupted, answer, wrong = encode_pair(model, pair)
        except UsageError:
            reasons.append(f"{name}: the tokenizer cannot encode its prompts")
            continue
        encodable.append(name)
        logits = model(torch.cat([clean, corrupted]).to(model.cfg.device))  # (2, pos, d_vocab)
        ld = logit_difference(logits, answer.repeat(2), wrong.repeat(2))
        if ld[0] > 0 > ld[1]:
            return name, f"the model solves {name} (logit difference clean {ld[0]:+.2f}, corrupted {ld[1]:+.2f})"
        reasons.append(f"{name}: not solved (clean {ld[0]:+.2f}, corrupted {ld[1]:+.2f})")
    if not encodable:
        raise UsageError("None of the patching tasks (" + ", ".join(tasks) + ") can be written in this model's "
                         "tokens. Give your own pair with --clean, --corrupted, --answer and --wrong.")
    return encodable[0], "no task is solved (" + "; ".join(reasons) + f"): the first encodable, {encodable[0]}"
