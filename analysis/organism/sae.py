"""Training the organism's own sparse autoencoder: a small TopK SAE on one hook's activations.

SAELens's `SAETrainer` reads the hook's activations (BOS left out, shuffled) over batches of the
organism's synthetic language, sampled as its training sampled them (`organism_activations`); the
run is seeded and deterministic on CPU. `save_sae` writes SAELens's inference format plus the
settings it was trained with. The shipped one (`files.ORGANISM_SAE_DIR`) and the cache are read by
`sae.sources.organism_sae`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from analysis.organism.language import LanguageSpec, sample_batch, vocabulary
from analysis.organism.train import TrainConfig

SETTINGS_FILE = "training_settings.json"


@dataclass(frozen=True)
class SAETrainSettings:
    d_sae: int = 512
    k: int = 16  # active features per token (TopK)
    n_tokens: int = 1_000_000
    prompts_per_batch: int = 32
    prompt_length: int = 128
    lr: float = 3e-3  # constant: in trials a cosine decay to lr/10 left the SAE far worse
    seed: int = 0


def organism_activations(model: HookedTransformer, hook_name: str, settings: SAETrainSettings
                         ) -> Iterator[Tensor]:
    """Endless `[n, d_model]` batches of `hook_name` activations (BOS left out, shuffled) on the organism's language."""
    spec = LanguageSpec.from_vocabulary(vocabulary())
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    layer = int(hook_name.split(".")[1])
    while True:
        tokens = torch.from_numpy(sample_batch(rng, spec, settings.prompts_per_batch, settings.prompt_length,
                                               TrainConfig().mixture))
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=hook_name,
                                            stop_at_layer=layer + 1)
        acts = cache[hook_name][:, 1:].reshape(-1, model.cfg.d_model).float().cpu()
        yield acts[torch.randperm(len(acts), generator=generator)]


def train_sae(model: HookedTransformer, hook_name: str, settings: SAETrainSettings = SAETrainSettings()):
    """A TopK SAE trained with SAELens's `SAETrainer` on the organism's activations (deterministic on CPU)."""
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    torch.manual_seed(settings.seed)
    config = TopKTrainingSAEConfig(d_in=model.cfg.d_model, d_sae=settings.d_sae, k=settings.k)
    config.metadata.model_name = model.cfg.model_name
    config.metadata.hook_name = hook_name
    sae = TopKTrainingSAE(config)
    trainer_config = SAETrainerConfig(
        total_training_samples=settings.n_tokens, lr=settings.lr, lr_end=settings.lr, device="cpu",
        train_batch_size_samples=settings.prompts_per_batch * (settings.prompt_length - 1))
    return SAETrainer(trainer_config, sae, organism_activations(model, hook_name, settings)).fit()


def save_sae(sae, directory: Path, settings: SAETrainSettings) -> Path:
    """The inference SAE (weights and config, SAELens's format) plus the settings it was trained with."""
    sae.save_inference_model(directory)
    (directory / SETTINGS_FILE).write_text(json.dumps(asdict(settings), indent=2) + "\n")
    return directory
