"""The organism's files: where the shipped checkpoint and its SAE live, and the records a trained organism
keeps beside its weights.

scripts/train_organism.py writes, beside the weights, what was planted in the model
(GROUND_TRUTH_FILE: {"planted_heads": {kind: [layer, head]}, "categories": {name: [word, ...]}}) and how
it was trained (TRAINING_LOG_FILE). `ground_truth` reads the first; `has_organism_vocabulary` says whether
a tokenizer is the organism's, whatever its model is called.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from analysis.infra.checkpoint import load_tokenizer

ORGANISM_DIR = Path(__file__).resolve().parent / "checkpoint"  # the shipped checkpoint
ORGANISM_SAE_DIR = Path(__file__).resolve().parent / "sae"  # the shipped SAE, one folder per hook
# The other shipped organisms, one folder each: the recipe retrained with other seeds, the negative control
# and the other architecture families (each folder's training_log.json says how it was made).
ZOO_DIR = Path(__file__).resolve().parent / "zoo"
SHIPPED_PREFIX = "organism-"  # --model organism-<folder of ZOO_DIR>
GROUND_TRUTH_FILE, TRAINING_LOG_FILE = "ground_truth.json", "training_log.json"


def shipped_organisms() -> dict[str, Path]:
    """Every shipped organism's checkpoint folder by its --model name: 'organism' (the main one) and
    'organism-<folder>' for each folder of ZOO_DIR that holds a config."""
    zoo = sorted(p for p in ZOO_DIR.glob("*/config.json")) if ZOO_DIR.is_dir() else []
    return {"organism": ORGANISM_DIR, **{SHIPPED_PREFIX + p.parent.name: p.parent for p in zoo}}


def ground_truth(directory: Path = ORGANISM_DIR) -> dict | None:
    """What was planted in the model saved in `directory` (its GROUND_TRUTH_FILE; default: the shipped
    organism's), or None where it records nothing."""
    path = directory / GROUND_TRUTH_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def training_config(directory: Path) -> dict | None:
    """How the model saved in `directory` was trained (its TRAINING_LOG_FILE's train_config), or None."""
    path = directory / TRAINING_LOG_FILE
    return json.loads(path.read_text()).get("train_config") if path.is_file() else None


@functools.lru_cache(maxsize=1)
def _organism_vocabulary() -> tuple[tuple[str, int], ...]:
    tokenizer = load_tokenizer(ORGANISM_DIR)
    return tuple(sorted(tokenizer.get_vocab().items())) if tokenizer is not None else ()


def has_organism_vocabulary(tokenizer) -> bool:
    """Whether `tokenizer` is the organism's: the same tokens with the same ids as the shipped checkpoint's.

    What decides the organism's defaults (its sampled corpus, its trained SAE, the induction
    patching task) for any model that speaks its synthetic language, whatever the model is called.
    """
    return tokenizer is not None and tuple(sorted(tokenizer.get_vocab().items())) == _organism_vocabulary()
