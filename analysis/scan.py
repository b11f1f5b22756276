"""Scan every head of a model for previous-token, induction, duplicate-token and semantic behaviour.

Each probe is one prompt set of `analysis.prompts` run through `all_patterns` (one batched pass
for all heads); the scores are the functions of `analysis.scores`. Results are `[layer, head]`
tensors, plus the per-prompt `[batch, layer, head]` values where confidence intervals are wanted.
Choosing a script's target head from its --layer/--head flags is `analysis.heads.target_head`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from analysis import prompts, properties, scores
from analysis.patterns import all_patterns, all_patterns_and_scores, flatten_heads


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


def _per_head(model: HookedTransformer, flat: Tensor) -> Tensor:
    """`[..., layer * head]` -> `[..., layer, head]`."""
    return flat.reshape(*flat.shape[:-1], model.cfg.n_layers, model.cfg.n_heads)


def scan_heads(model: HookedTransformer, settings: ScanSettings = ScanSettings(), seed: int = 0,
               categories: Mapping[str, Sequence[str]] | None = prompts.STUDY_CATEGORIES,
               progress: bool = False) -> HeadScan:
    """Run every probe once and score every head."""
    bos, special = prompts.bos_token_id(model), prompts.special_token_ids(model)
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


REPORT_SEED_OFFSET = 1000  # the report prompt set's seed is the selection seed + this: another draw of prompts


def semantic_survey(model: HookedTransformer, n_prompts: int = 64, n_words: int = 64, seed: int = 0,
                    categories: Mapping[str, Sequence[str]] = prompts.STUDY_CATEGORIES) -> dict[str, Tensor]:
    """Per-prompt S and companions of every head, each `[batch, layer, head]`, on category prompts, and the two
    properties' in-context statistics (self_vs_partners, partners_vs_others: `properties.in_context_units`).

    S is exact and uncapped: the pass that collects the patterns also collects the pre-softmax
    scores (`scores.masked_log_mass`).
    """
    tokens, mask = prompts.category_probe(model, categories, n_prompts, n_words, seed)
    pattern, attn_scores = (flatten_heads(t) for t in all_patterns_and_scores(model, tokens))
    partner = mask.clone()
    partner[:, :, 0] = 0  # the semantic mask without its BOS fallback: the earlier, different category-mates
    survey = scores.semantic_scores(pattern, tokens, mask, attn_scores)
    survey |= properties.in_context_units(attn_scores, tokens, partner, scores.same_word_mask(tokens))
    return {k: _per_head(model, v) for k, v in survey.items()}


def shared_prompts(a: Tensor, b: Tensor) -> int:
    """How many prompts of `a: [batch, pos]` also occur, token for token, in `b: [batch, pos]`."""
    if a.shape[1:] != b.shape[1:]:
        return 0
    return int((a[:, None, :] == b[None, :, :]).all(-1).any(1).sum())


def held_out_survey(model: HookedTransformer, n_prompts: int = 64, n_words: int = 64, seed: int = 0,
                    categories: Mapping[str, Sequence[str]] = prompts.STUDY_CATEGORIES) -> dict:
    """The survey on two disjoint prompt sets: one to select the head, one to report it on.

    The selection set is drawn with `seed`, the report set with `seed + REPORT_SEED_OFFSET`, so a
    head's reported S and CIs are not those of the prompts that made it the winner (no winner's
    curse). Returns {"selection": survey, "report": survey, "seeds": {...}, "shared_prompts": n},
    each survey as `semantic_survey` gives it; `shared_prompts` counts prompts drawn in both sets
    (0 unless the category prompts are too short to differ).
    """
    seeds = {"selection": seed, "report": seed + REPORT_SEED_OFFSET}
    shared = shared_prompts(*(prompts.category_probe(model, categories, n_prompts, n_words, s)[0]
                              for s in seeds.values()))
    return {**{name: semantic_survey(model, n_prompts, n_words, s, categories) for name, s in seeds.items()},
            "seeds": seeds, "shared_prompts": shared}


def study_design_survey(model: HookedTransformer, probe: prompts.Probe, batch_size: int = 8) -> Tensor:
    """The study's S of every head on each prompt of `probe` (`prompts.study_design_probe`), `[batch, layer,
    head]`: mean over every row, BOS included, of -ln(max(sum_k A[q,k] M[q,k], 1e-12)) (`scores.study_surprisal`).

    Patterns are collected `batch_size` prompts at a time, so a long prompt (the study's 256 tokens) on a large
    model keeps memory at batch_size x heads x T^2 floats.
    """
    tokens, mask = probe
    per_prompt = []
    for start in range(0, tokens.shape[0], batch_size):
        pattern = flatten_heads(all_patterns(model, tokens[start:start + batch_size], batch_size))
        per_prompt.append(_per_head(model, scores.study_surprisal(pattern, mask[start:start + batch_size])))
    return torch.cat(per_prompt)


def best_semantic_head(model: HookedTransformer, seed: int = 0,
                       categories: Mapping[str, Sequence[str]] = prompts.STUDY_CATEGORIES) -> tuple[int, int]:
    """The head with the lowest mean S on category prompts: the default target of the L1H5 study."""
    surprisal = semantic_survey(model, seed=seed, categories=categories)["surprisal"].nanmean(0)
    layer, head, _ = top_heads(surprisal, 1, largest=False)[0]
    return layer, head
