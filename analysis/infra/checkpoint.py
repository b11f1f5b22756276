"""A model directory written by `models.save_model`, checked before anything loads from it.

It holds config.json (TransformerLens's config), model.safetensors (the weights), optionally
weight_processing.json (how the weights were processed before saving) and the tokenizer files.
`check_directory` checks them all without loading the weights and names the bad file in one
`UsageError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from analysis.errors import UsageError

CONFIG_FILE, WEIGHTS_FILE, PROCESSING_FILE = "config.json", "model.safetensors", "weight_processing.json"
# TransformerLens's weight-processing flags, the keys a processing record may hold (`models.WeightProcessing`).
PROCESSING_FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
_SHAPE_KEYS = ("n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx")


def load_tokenizer(directory: Path | str):
    """The tokenizer saved in a model directory, loaded from its files (never from a hub), or None."""
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    if not (directory / "tokenizer.json").exists():
        return None
    return PreTrainedTokenizerFast.from_pretrained(str(directory))


def read_processing(directory: Path) -> dict[str, bool] | None:
    """The directory's weight-processing record ({flag: bool} over `PROCESSING_FLAGS`), None where it has
    none; a `ValueError` when the file is not such a record."""
    path = directory / PROCESSING_FILE
    if not path.exists():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(record, dict) or not all(isinstance(v, bool) for v in record.values()) or not set(
            record) <= set(PROCESSING_FLAGS):
        raise ValueError(f"{path} is not a weight-processing record")
    return record


def _damaged(directory: Path, file: str, problem: str) -> UsageError:
    return UsageError(
        f"The model directory {directory} is damaged: {directory / file} {problem}. A model directory holds "
        f"{CONFIG_FILE}, {WEIGHTS_FILE} and the tokenizer files written by analysis.models.save_model; write it "
        "again (for the shipped organism: `git checkout -- analysis/organism/checkpoint`)."
    )


def read_config(directory: Path) -> dict[str, Any]:
    """config.json as keyword arguments of `HookedTransformerConfig` (dtype as a torch dtype), checked."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"{directory} is a directory but holds no {CONFIG_FILE}, so it was not written by "
                         "analysis.models.save_model. Give --model a directory written by save_model.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _damaged(directory, CONFIG_FILE, "is not text") from None
    except json.JSONDecodeError as err:
        raise _damaged(directory, CONFIG_FILE, f"is not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(config, dict):
        raise _damaged(directory, CONFIG_FILE, f"holds a JSON {type(config).__name__}, not a model config")
    wrong = [k for k in _SHAPE_KEYS if not (type(config.get(k)) is int and config[k] > 0)]
    if wrong:
        raise _damaged(directory, CONFIG_FILE, "lacks positive whole numbers for " + ", ".join(wrong))
    dtype = config.get("dtype", "float32")
    if not (isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype)):
        raise _damaged(directory, CONFIG_FILE, f"names an unknown dtype {dtype!r}")
    config["dtype"] = getattr(torch, dtype)
    try:
        HookedTransformerConfig(**config)
    except (TypeError, ValueError, AssertionError) as err:
        raise _damaged(directory, CONFIG_FILE, f"is not a TransformerLens config ({err})") from None
    return config


def _expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape for a config, from a model built on the meta device (no memory, no time)."""
    with torch.device("meta"):
        model = HookedTransformer(HookedTransformerConfig(**{**config, "tokenizer_name": None}, device="meta"),
                                  move_to_device=False)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_directory(directory: Path | str) -> dict[str, Any]:
    """Check a model directory before loading it; its config (`read_config`), or a `UsageError` naming the bad file.

    config.json must be a valid TransformerLens config, model.safetensors must be complete and hold
    exactly the config's parameters with the config's shapes, weight_processing.json (if present)
    must be a processing record, and the tokenizer (if present) must load and fit the vocabulary.
    """
    from safetensors import SafetensorError, safe_open

    directory = Path(directory)
    config = read_config(directory)
    try:
        read_processing(directory)
    except ValueError:
        raise _damaged(directory, PROCESSING_FILE, "is not a weight-processing record") from None
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise _damaged(directory, WEIGHTS_FILE, "is missing")
    try:
        with safe_open(str(weights), "pt") as handle:
            found = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise _damaged(directory, WEIGHTS_FILE, f"cannot be read, perhaps cut short ({err})") from None
    expected = _expected_shapes(config)
    problems = [f"{k} is {found[k]} but the config gives {v}"
                for k, v in expected.items() if k in found and found[k] != v]
    problems += [f"{k} is missing" for k in expected if k not in found]
    problems += [f"{k} is not a parameter of this config" for k in found if k not in expected]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise _damaged(directory, WEIGHTS_FILE, f"does not match {CONFIG_FILE}: {shown}")
    if (directory / "tokenizer.json").exists():
        try:
            tokenizer = load_tokenizer(directory)
        except Exception as err:  # noqa: BLE001  the tokenizers library reports a malformed file as plain Exception
            raise _damaged(directory, "tokenizer.json", f"cannot be loaded ({type(err).__name__}: {err})") from None
        if len(tokenizer) > config["d_vocab"]:
            raise _damaged(directory, "tokenizer.json", f"has {len(tokenizer)} tokens, more than the "
                                                        f"{config['d_vocab']} of the config's vocabulary")
    return config
