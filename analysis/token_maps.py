"""Token-space views of a head's QK circuit: which token inputs, the 30-token group set, and maps.

A head's score on tokens needs each token's input to the head, E (`[n_tokens, d_model]`). Three
views of E exist (`INPUT_VIEWS`), and every result says which one it used:

    mean     `vocab_input.head_input`, variant "mean": the token at the mean context of the
             reference prompts (`prompts.reference_prompts`)
    zero     `vocab_input.head_input`, variant "zero": positions and earlier attention zeroed
    context  `vocab_input.context_head_input`: the real input averaged over random contexts

A token-space map is then S = E W E^T / sqrt(d_head) for a factored W (`qk_decomposition`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from analysis import prompts, scan
from analysis.errors import UsageError
from analysis.io import use_style
from analysis.models import load_model
from analysis.vocab_input import context_head_input, head_input

INPUT_VIEWS = ("mean", "zero", "context")


def add_input_argument(p: argparse.ArgumentParser, default: str = "mean") -> None:
    p.add_argument("--input", choices=INPUT_VIEWS, default=default,
                   help="token inputs E: 'mean' (token at the reference prompts' mean context), 'zero' "
                        "(positions and earlier attention zeroed) or 'context' (real input averaged over "
                        f"random contexts) (default: {default})")


def require_tokenizer(model: HookedTransformer) -> None:
    """A clear error for a model without a tokenizer (random GPT-2 shapes): token-level analyses need words."""
    if model.tokenizer is None:
        raise UsageError("This analysis maps the study's words to tokens, but the model has no tokenizer "
                         "('gpt2-random' is for speed and memory checks only). Use --model organism or gpt2-small.")


def load_target(args: argparse.Namespace) -> tuple[HookedTransformer, int, int]:
    """(model, layer, head) for a part-2 script: --model on --device (it must have a tokenizer), and
    --layer/--head or, without them, the survey's best semantic head (`scan.target_head`)."""
    model = load_model(args.model, args.device)
    require_tokenizer(model)
    layer, head = scan.target_head(model, args.layer, args.head, args.seed)
    return model, layer, head


def token_inputs(model: HookedTransformer, layer: int, view: str, token_ids: Tensor | None = None, seed: int = 0,
                 progress: bool = False) -> Tensor:
    """`E: [n_tokens, d_model]`, the head inputs of layer `layer` in one of `INPUT_VIEWS` (default: every token)."""
    if view not in INPUT_VIEWS:
        raise ValueError(f"view must be one of {INPUT_VIEWS}, got {view!r}")
    if view == "context":
        return context_head_input(model, layer, token_ids, seed=seed, progress=progress)
    reference = prompts.reference_prompts(model, seed) if view == "mean" else None
    return head_input(model, layer, reference, view, token_ids=token_ids, progress=progress)


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


def group_heatmaps(maps: Sequence[Tensor], titles: Sequence[str], labels: Sequence[str], group: Tensor,
                   suptitle: str | None = None, shared_scale: bool = False):
    """One `[n, n]` token map per panel (query rows, key columns), lines between groups, diverging colours at 0."""
    use_style()
    import matplotlib.pyplot as plt
    import seaborn as sns

    n = len(labels)
    fig, axes = plt.subplots(1, len(maps), figsize=(4.6 * len(maps), 4.4), squeeze=False)
    bound = max(float(m.abs().max()) for m in maps) if shared_scale else None
    boundaries = np.flatnonzero(np.diff(np.asarray(group))) + 1
    for ax, values, title in zip(axes[0], maps, titles):
        vmax = bound or float(values.abs().max())
        sns.heatmap(np.asarray(values, dtype=float), ax=ax, cmap="RdBu_r", center=0, vmin=-vmax, vmax=vmax,
                    square=True, xticklabels=labels, yticklabels=labels, cbar_kws={"shrink": 0.6})
        for b in boundaries:
            ax.axhline(b, color="k", lw=0.6)
            ax.axvline(b, color="k", lw=0.6)
        ax.set(title=title, xlabel="key", ylabel="query")
        ax.tick_params(labelsize=5 if n > 20 else 7)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig
