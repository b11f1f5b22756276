"""Scan every head of a model for previous-token, induction, duplicate-token and semantic behaviour.

Each probe is one prompt set run through `all_patterns` (one batched pass for all heads); the
scores are the functions of `analysis.scores`. Results are `[layer, head]` tensors, plus the
per-prompt `[batch, layer, head]` values where confidence intervals are wanted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from analysis import prompts, scores
from analysis.errors import UsageError
from analysis.patterns import all_patterns, flatten_heads


@dataclass(frozen=True)
class ScanSettings:
    n_random: int = 16  # prompts of uniform random tokens (previous-token probe)
    random_length: int = 64
    n_repeated: int = 16  # [BOS] + r + r prompts (induction and duplicate-token probes)
    repeat_lengths: tuple[int, ...] = (50, 20)  # 50 is ARENA's; a second length rules out position tricks
    n_category: int = 64  # category-word prompts (semantic probe)
    category_words: int = 64


@dataclass
class HeadScan:
    """Scores of every head, `[layer, head]`, and per-prompt semantic values `[batch, layer, head]`."""

    previous_token: Tensor
    previous_token_no_bos: Tensor
    induction: dict[int, Tensor]
    duplicate: dict[int, Tensor]
    semantic: dict[str, Tensor] = field(default_factory=dict)  # per prompt: surprisal and companions


def bos_token_id(model: HookedTransformer) -> int:
    """BOS id: the tokenizer's, or GPT-2's last id for a model without one (random GPT-2 shapes)."""
    tokenizer = model.tokenizer
    return tokenizer.bos_token_id if tokenizer is not None else model.cfg.d_vocab - 1


def special_token_ids(model: HookedTransformer) -> list[int]:
    return list(model.tokenizer.all_special_ids) if model.tokenizer is not None else [model.cfg.d_vocab - 1]


def _per_head(model: HookedTransformer, flat: Tensor) -> Tensor:
    """`[..., layer * head]` -> `[..., layer, head]`."""
    return flat.reshape(*flat.shape[:-1], model.cfg.n_layers, model.cfg.n_heads)


def category_probe(model: HookedTransformer, categories: Mapping[str, Sequence[str]], n_prompts: int,
                   n_words: int, seed: int) -> tuple[Tensor, Tensor]:
    """Category-word prompts and their ground-truth mask: (`tokens: [batch, pos]`, `mask: [batch, q, k]`)."""
    if model.tokenizer is None:
        raise UsageError("The semantic probe needs a tokenizer to map category words to tokens; this model has none.")
    word_ids = [prompts.single_token_ids(model.tokenizer, words) for words in categories.values()]
    tokens = prompts.category_sequences(word_ids, n_prompts, n_words, bos_token_id(model), seed)
    category_of = prompts.category_index(model.tokenizer, categories, model.cfg.d_vocab)
    return tokens, prompts.semantic_mask(tokens, category_of)


def semantic_scores(pattern: Tensor, tokens: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Per-prompt S and its companions, each `[batch, head]`, for `pattern: [batch, head, q, k]`."""
    rows = scores.scored_rows(tokens)
    return {"surprisal": scores.semantic_surprisal(pattern, mask, rows),
            **scores.semantic_companions(pattern, tokens, mask, rows)}


def scan_heads(model: HookedTransformer, settings: ScanSettings = ScanSettings(), seed: int = 0,
               categories: Mapping[str, Sequence[str]] | None = prompts.ALL_CATEGORIES,
               progress: bool = False) -> HeadScan:
    """Run every probe once and score every head."""
    bos, special = bos_token_id(model), special_token_ids(model)
    d_vocab = model.cfg.d_vocab

    random = prompts.random_tokens(settings.n_random, settings.random_length, d_vocab, bos, seed, special)
    pattern = flatten_heads(all_patterns(model, random, progress=progress))
    previous = _per_head(model, scores.previous_token_score(pattern).mean(0))
    previous_no_bos = _per_head(model, scores.previous_token_score(pattern, exclude_bos=True).mean(0))

    induction, duplicate = {}, {}
    for i, length in enumerate(settings.repeat_lengths):
        repeated = prompts.random_repeated_tokens(settings.n_repeated, length, d_vocab, bos, seed + 1 + i, special)
        pattern = flatten_heads(all_patterns(model, repeated, progress=progress))
        induction[length] = _per_head(model, scores.induction_score(pattern, length).mean(0))
        duplicate[length] = _per_head(model, scores.duplicate_token_score(pattern, length).mean(0))

    semantic = {}
    if categories is not None:
        semantic = semantic_survey(model, settings.n_category, settings.category_words, seed + 100, categories)
    return HeadScan(previous, previous_no_bos, induction, duplicate, semantic)


def top_heads(score: Tensor, k: int = 5, largest: bool = True) -> list[tuple[int, int, float]]:
    """The k best heads of a `[layer, head]` score as (layer, head, value), best first."""
    flat = score.flatten()
    order = flat.argsort(descending=largest)[:k]
    n_heads = score.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads, float(flat[i])) for i in order]


def semantic_survey(model: HookedTransformer, n_prompts: int = 64, n_words: int = 64, seed: int = 0,
                    categories: Mapping[str, Sequence[str]] = prompts.ALL_CATEGORIES) -> dict[str, Tensor]:
    """Per-prompt S and companions of every head, each `[batch, layer, head]`, on category prompts."""
    tokens, mask = category_probe(model, categories, n_prompts, n_words, seed)
    pattern = flatten_heads(all_patterns(model, tokens))
    return {k: _per_head(model, v) for k, v in semantic_scores(pattern, tokens, mask).items()}


def best_semantic_head(model: HookedTransformer, seed: int = 0) -> tuple[int, int]:
    """The head with the lowest mean S on category prompts: the default target of the L1H5 study."""
    surprisal = semantic_survey(model, seed=seed)["surprisal"].nanmean(0)
    layer, head, _ = top_heads(surprisal, 1, largest=False)[0]
    return layer, head


def target_head(model: HookedTransformer, layer: int | None, head: int | None, seed: int = 0) -> tuple[int, int]:
    """--layer/--head when both are given (checked), else the survey's best semantic head."""
    from analysis.cli import check_head

    if (layer is None) != (head is None):
        raise UsageError("Give both --layer and --head, or neither to use the survey's best semantic head.")
    if layer is None:
        return best_semantic_head(model, seed)
    check_head(model, layer, head)
    return layer, head
