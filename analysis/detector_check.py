"""Cross-check of our head scores against TransformerLens's `head_detector.detect_head`.

`detect_head` scores text prompts: it tokenises each with BOS prepended, runs it alone, and with
`error_measure="mul"` returns sum(A * D) / sum(A) per head, where D is a 0/1 detection pattern,
averaged over prompts. Since every row of A sums to 1, sum(A) = T (tokens, BOS included), so on a
prompt [BOS] + r + r with |r| = L, T = 2L + 1, and r free of repeated tokens:

    previous-token:   detect = ours * 2L / (2L + 1)    (ours: mean over the 2L rows after BOS)
    induction:        detect = ours * L / (2L + 1)     (ours: mean over the L second-half rows)
    duplicate-token:  detect = ours * L / (2L + 1)

so detect_head's induction and duplicate-token ceiling is L / (2L + 1) (0.495 at L = 50), not 1.
Drawing r without replacement from tokens that re-tokenise to themselves makes these identities
exact, which is what the cross-check verifies.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.head_detector import detect_head

from analysis import prompts, scores
from analysis.errors import UsageError
from analysis.patterns import all_patterns, flatten_heads

KINDS = {"previous_token": "previous_token_head", "induction": "induction_head", "duplicate": "duplicate_token_head"}
_WORD = re.compile(r"^ [A-Za-z0-9]+$")


def roundtrip_word_ids(tokenizer, d_vocab: int) -> list[int]:
    """Ids of tokens ' word' (a space, then letters or digits) that tokenise back to exactly themselves.

    A text made of such words tokenises into exactly those ids, in every GPT-2-style tokenizer.
    """
    ids = []
    for i in range(d_vocab):
        text = tokenizer.decode([i])
        if _WORD.match(text) and tokenizer.encode(text, add_special_tokens=False) == [i]:
            ids.append(i)
    return ids


def repeated_word_prompts(model: HookedTransformer, n_prompts: int, half_length: int,
                          seed: int) -> tuple[list[str], Tensor]:
    """Texts r + r, r = `half_length` distinct round-trip words, and their tokens `[n_prompts, 1 + 2L]` (BOS first)."""
    prompts.require_tokenizer(model, "The detect_head cross-check scores text prompts")
    if 2 * half_length + 1 >= model.cfg.n_ctx:
        raise UsageError(f"detect_head needs prompts shorter than the context ({model.cfg.n_ctx} tokens); "
                         f"[BOS] + r + r with |r| = {half_length} is {2 * half_length + 1}. Use a shorter length.")
    words = roundtrip_word_ids(model.tokenizer, model.cfg.d_vocab)
    if len(words) < half_length:
        raise UsageError(f"Only {len(words)} tokens of this vocabulary re-tokenise to themselves as ' word'; "
                         f"a repeat length of {half_length} distinct tokens is too long. Use a shorter one.")
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n_prompts):
        r = model.tokenizer.decode(rng.choice(words, size=half_length, replace=False).tolist())
        texts.append(r + r)
    tokens = model.to_tokens(texts, prepend_bos=True).cpu()
    if tokens.shape[1] != 2 * half_length + 1:
        raise RuntimeError("repeated word prompts did not tokenise back into [BOS] + r + r")
    return texts, tokens


def expected_ratio(kind: str, half_length: int) -> float:
    """detect_head's score divided by ours on [BOS] + r + r (see the module docstring)."""
    t = 2 * half_length + 1
    return (t - 1) / t if kind == "previous_token" else half_length / t


@torch.no_grad()
def our_scores(model: HookedTransformer, tokens: Tensor, half_length: int) -> dict[str, Tensor]:
    """Our three scores `[layer, head]` on `tokens: [batch, 1 + 2L]`, from one batched pass."""
    pattern = flatten_heads(all_patterns(model, tokens))
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    return {"previous_token": scores.previous_token_score(pattern).mean(0).reshape(shape),
            "induction": scores.induction_score(pattern, half_length).mean(0).reshape(shape),
            "duplicate": scores.duplicate_token_score(pattern, half_length).mean(0).reshape(shape)}


@torch.no_grad()
def detect_head_scores(model: HookedTransformer, texts: list[str]) -> dict[str, Tensor]:
    """TransformerLens's `detect_head` ("mul") of every head, `[layer, head]`, for each of our kinds."""
    return {kind: detect_head(model, texts, name).float().cpu() for kind, name in KINDS.items()}


def cross_check(model: HookedTransformer, n_prompts: int, half_length: int, seed: int) -> dict[str, dict]:
    """Per kind: detect_head's map, ours on the same prompts, the expected ratio and the largest deviation from it."""
    texts, tokens = repeated_word_prompts(model, n_prompts, half_length, seed)
    ours, theirs = our_scores(model, tokens, half_length), detect_head_scores(model, texts)
    out = {}
    for kind in KINDS:
        ratio = expected_ratio(kind, half_length)
        out[kind] = {"detect_head": theirs[kind], "ours": ours[kind], "expected_ratio": ratio,
                     "max_deviation": float((theirs[kind] - ratio * ours[kind]).abs().max())}
    return out
