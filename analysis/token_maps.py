"""Token-space views of a head's QK circuit: which token inputs, the 30-token group set, and maps.

A head's score on tokens needs each token's input to the head, E (`[n_tokens, d_model]`). Four
views of E exist (`INPUT_VIEWS`), and every result says which one it used:

    mean     `vocab_input.head_input`, variant "mean": the token at the mean context of the
             reference prompts (`prompts.reference_prompts` over `InputOptions.categories`, the
             script's --categories)
    zero     `vocab_input.head_input`, variant "zero": positions and earlier attention zeroed
    context  `vocab_input.context_head_input`: the real input averaged over random contexts
    study    `vocab_input.head_input`, variant "study": the original study's construction (the
             token-id sequence 0..n_ctx-1 without BOS, mean positional embedding, mean earlier
             attention outputs over that sequence; `vocab_input.study_means`)

A token-space map is then S = E W E^T / attn_scale for a head's W (`attention.attention_scores`);
`analysis.cli.add_input_argument` gives scripts the --input flag, `plotting.group_heatmaps` draws maps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from analysis import prompts
from analysis.vocab_input import ContextSettings, InputSettings, context_head_input, head_input

INPUT_VIEWS = ("mean", "zero", "context", "study")


@dataclass(frozen=True)
class InputOptions:
    """How `token_inputs` builds a view: the category words whose prompts are the "mean" view's reference
    (`categories`; None: `prompts.ALL_CATEGORIES`), with a progress bar (`progress`); and, for the heads that read
    them, the rotary mean rotation M `[d_head, d_head]` of scores between different words (`rotation`; None: M = I,
    absolute positions; `positions.position_treatment`), which `token_inputs` itself does not use."""

    categories: Mapping[str, Sequence[str]] | None = None
    progress: bool = False
    rotation: Tensor | None = None


def token_inputs(model: HookedTransformer, layer: int, view: str, token_ids: Tensor | None = None, seed: int = 0,
                 options: InputOptions = InputOptions()) -> Tensor:
    """`E: [n_tokens, d_model]`, the head inputs of layer `layer` in one of `INPUT_VIEWS` (default: every token).

    The "mean" view averages over `prompts.reference_prompts(model, seed, categories=options.categories)`; the
    reference tokens, hence the categories, are part of its cache key.
    """
    if view not in INPUT_VIEWS:
        raise ValueError(f"view must be one of {INPUT_VIEWS}, got {view!r}")
    if view == "context":
        return context_head_input(model, layer, token_ids, ContextSettings(seed=seed, progress=options.progress))
    reference = (prompts.reference_prompts(model, seed, categories=options.categories or prompts.ALL_CATEGORIES)
                 if view == "mean" else None)
    return head_input(model, layer, reference, view, token_ids, InputSettings(progress=options.progress))


def group_tokens(tokenizer, groups: Mapping[str, Sequence[str]] = prompts.GROUP_SET
                 ) -> tuple[Tensor, list[str], Tensor, list[str]]:
    """(`ids: [n]`, token labels, `group: [n]` group number of each token, group names), in group order."""
    ids = [i for words in groups.values() for i in prompts.single_token_ids(tokenizer, list(words))]
    group = [g for g, words in enumerate(groups.values()) for _ in words]
    return torch.tensor(ids), [w for words in groups.values() for w in words], torch.tensor(group), list(groups)


def block_means(scores: Tensor, group: Tensor) -> dict[str, float]:
    """Mean of `scores: [n, n]` over the diagonal (self), same-group off-diagonal pairs and other-group pairs.

    self = mean_i S[i, i];  in_group = mean over i != j, g_i = g_j;  out_group = mean over g_i != g_j;
    self_minus_in_group < 0 means a token scores itself below its group-mates.
    """
    same = group[:, None] == group[None, :]
    eye = torch.eye(len(group), dtype=torch.bool)
    out = {"self": float(scores[eye].mean()), "in_group": float(scores[same & ~eye].mean()),
           "out_group": float(scores[~same].mean())}
    out["self_minus_in_group"] = out["self"] - out["in_group"]
    return out
