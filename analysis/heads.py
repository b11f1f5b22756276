"""Which heads a script studies: its target head and the control heads it is ranked against.

The target is the head named by --layer/--head (checked against the model) or, without them, the
survey's best semantic head (`scan.best_semantic_head`). The controls are every other head, or by
default the target's layer and the scan's top head of each kind (`controls.default_controls`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformer_lens import HookedTransformer

from analysis import controls, models, prompts, scan
from analysis.errors import UsageError


def check_head(model, layer: int, head: int) -> None:
    """A clear error for a layer or head index outside the model."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise UsageError(
            f"Head L{layer}H{head} does not exist: this model has layers 0-{n_layers - 1} and heads "
            f"0-{n_heads - 1} in each layer. Pass --layer and --head within those ranges."
        )


def target_head(model: HookedTransformer, layer: int | None, head: int | None, seed: int = 0,
                categories: Mapping[str, Sequence[str]] = prompts.STUDY_CATEGORIES) -> tuple[int, int]:
    """--layer/--head when both are given (checked), else the survey's best semantic head on `categories`."""
    if (layer is None) != (head is None):
        raise UsageError("Give both --layer and --head, or neither to use the survey's best semantic head.")
    if layer is None:
        return scan.best_semantic_head(model, seed, categories)
    check_head(model, layer, head)
    return layer, head


def load_target(args: Any) -> tuple[HookedTransformer, int, int]:
    """(model, layer, head) for a script about one head's token-level behaviour, from its parsed flags: --model
    on --device with --processing (it must have a tokenizer), and --layer/--head or, without them, the
    survey's best semantic head on the --categories words where the script has that flag."""
    model = models.load_model(args.model, args.device, args.processing)
    prompts.require_tokenizer(model)
    categories = prompts.CATEGORY_SETS[args.categories] if hasattr(args, "categories") else prompts.STUDY_CATEGORIES
    layer, head = target_head(model, args.layer, args.head, args.seed, categories)
    return model, layer, head


def control_heads(model: HookedTransformer, target: tuple[int, int], which: str = "default",
                  seed: int = 0, found: scan.HeadScan | None = None) -> list[tuple[int, int]]:
    """The control heads for `--controls`: `controls.all_heads` without the target, or
    `controls.default_controls` with the scan's top head of each kind; the scan is `found` when the
    caller already ran one (`scan.scan_heads`), else it is run here (with `seed`)."""
    if which == "all":
        return controls.all_heads(model.cfg.n_layers, model.cfg.n_heads, exclude=[target])
    found = scan.scan_heads(model, seed=seed) if found is None else found
    longest = max(found.induction)
    kinds = [(found.previous_token, True), (found.induction[longest], True), (found.duplicate[longest], True),
             (found.semantic["surprisal"].nanmean(0), False)]
    top = [scan.top_heads(score, 1, largest=largest)[0][:2] for score, largest in kinds]
    return controls.default_controls(target, model.cfg.n_heads, top)
