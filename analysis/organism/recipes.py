"""Which shipped organisms share a model's recipe: its other seeds, and its negative control.

An organism's recipe is every training setting but the seed and the planted heads' places, with the
planted kinds (`analysis.replication.recipe`), read from the training log beside its weights. A model
without one (pretrained, random) has no recipe, and so no seeds and no negative control.
"""

from __future__ import annotations

from pathlib import Path

from analysis import replication
from analysis.organism.files import shipped_organisms, training_config


def checkpoint_directory(name: str) -> Path | None:
    """Where the model `name` (a --model value) is saved: a shipped organism's folder or a directory; else None."""
    return shipped_organisms().get(name) or (Path(name) if Path(name).is_dir() else None)


def own_config(name: str) -> dict | None:
    directory = checkpoint_directory(name)
    return training_config(directory) if directory is not None else None


def _shipped_with(reference: dict) -> list[str]:
    configs = {n: training_config(p) for n, p in shipped_organisms().items()}
    return replication.sharing(configs, reference)


def recipe_models(name: str) -> list[str]:
    """`name` and the shipped organisms trained with its recipe, `name` first; [] without a training log."""
    own = own_config(name)
    if own is None:
        return []
    return [name, *(n for n in _shipped_with(replication.recipe(own)) if n != name)]


def negative_controls(name: str) -> list[str]:
    """The shipped organisms trained with `name`'s recipe but with the negative control's heads (decoy, avoider)
    planted in place of the semantic head; [] without a training log or a planted semantic head (a negative
    control has none of its own)."""
    own = own_config(name)
    if own is None or "semantic" not in own.get("planted_heads", {}):
        return []
    kinds = [k for k in own.get("planted_heads", {}) if k != "semantic"] + list(replication.NEGATIVE_CONTROL_KINDS)
    return _shipped_with(replication.with_kinds(replication.recipe(own), kinds))
