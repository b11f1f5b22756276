"""Training the model organism: a 2-layer GPT-2-style model with three planted heads.

The model learns next-token prediction on the synthetic language of `language.py`. On its own
that language grows a semantic head easily, but induction forms late and often as a shifted
variant that the canonical score misses, and the semantic head's fall-back to BOS stays weak.
So three designated heads also get an attention-supervision loss: the cross-entropy between
the head's attention pattern and the ground-truth target of its kind (uniform over the keys of
the masks in `analysis.prompts`):

    loss = LM cross-entropy + w * sum over planted heads of  -sum_k T[q, k] log A[q, k]

Only *where* those heads attend is supervised; what they write (their OV circuits), every other
head, the MLPs and the embeddings are shaped by the language-modelling loss alone. The analyses
are never told which heads were planted: they scan all heads and must find them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig

from analysis import prompts
from analysis.models import WeightProcessing, save_model
from analysis.organism.files import GROUND_TRUTH_FILE, TRAINING_LOG_FILE
from analysis.organism.language import LanguageSpec, build_tokenizer, sample_batch, vocabulary


@dataclass(frozen=True)
class TrainConfig:
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 128
    d_head: int = 32
    d_mlp: int = 512
    n_ctx: int = 128
    steps: int = 3000
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 200
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    supervision_weight: float = 1.0
    seed: int = 0
    mixture: dict[str, float] = field(default_factory=lambda: {
        "category_text": 0.4, "repeated_chunks": 0.4, "random_tokens": 0.2})
    # (layer, head) of each planted head: the ground truth the analyses must recover unaided.
    planted_heads: dict[str, tuple[int, int]] = field(default_factory=lambda: {
        "previous_token": (0, 2), "induction": (1, 1), "semantic": (1, 3)})


def build_model(config: TrainConfig) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=config.n_layers, n_heads=config.n_heads, d_model=config.d_model, d_head=config.d_head,
        d_mlp=config.d_mlp, n_ctx=config.n_ctx, d_vocab=len(vocabulary()), act_fn="gelu_new",
        normalization_type="LN", positional_embedding_type="standard", seed=config.seed,
        model_name="organism", default_prepend_bos=True,
    )
    # The tokenizer's files are needed only while TransformerLens reloads it by path, here.
    with tempfile.TemporaryDirectory(prefix="organism-tokenizer-") as directory:
        return HookedTransformer(cfg, tokenizer=build_tokenizer(config.n_ctx, Path(directory)))


def supervision_targets(tokens: torch.Tensor, category_of: torch.Tensor) -> dict[str, torch.Tensor]:
    """Target attention distributions `[batch, query, key]` of each planted kind."""
    return {
        "previous_token": prompts.target_distribution(prompts.previous_token_mask(tokens)),
        "induction": prompts.target_distribution(prompts.induction_mask(tokens)),
        "semantic": prompts.target_distribution(prompts.semantic_mask(tokens, category_of)),
    }


def attention_cross_entropy(pattern: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over batch and rows q >= 1 of -sum_k T[q, k] log A[q, k], for `pattern, target: [batch, q, k]`."""
    log_pattern = pattern.clamp_min(1e-9).log()
    per_row = -(target * torch.where(target > 0, log_pattern, torch.zeros_like(log_pattern))).sum(-1)
    return per_row[:, 1:].mean()


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(config: TrainConfig, progress: bool = True, eval_every: int = 500,
          evaluate=None) -> tuple[HookedTransformer, list[dict]]:
    """Train from scratch; deterministic on CPU for a fixed config (seeded data and init)."""
    torch.manual_seed(config.seed)
    model = build_model(config)
    model.train()
    spec = LanguageSpec.from_vocabulary(vocabulary())
    category_of = prompts.category_index(model.tokenizer, prompts.ALL_CATEGORIES, model.cfg.d_vocab)
    rng = np.random.default_rng(config.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.98),
                                  weight_decay=config.weight_decay)

    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for kind, (layer, head) in config.planted_heads.items():
        def keep(pattern, hook, kind=kind, head=head):  # pattern: (B, nh, T, T)
            captured[kind] = pattern[:, head]
        hooks.append((f"blocks.{layer}.attn.hook_pattern", keep))

    log: list[dict] = []
    bar = tqdm(range(config.steps), desc="training organism", disable=not progress)
    for step in bar:
        tokens = torch.from_numpy(sample_batch(rng, spec, config.batch_size, config.n_ctx, config.mixture))
        targets = supervision_targets(tokens, category_of)
        lm_loss = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks)
        attn_losses = {kind: attention_cross_entropy(captured[kind], targets[kind]) for kind in config.planted_heads}
        loss = lm_loss + config.supervision_weight * sum(attn_losses.values())

        for group in optimiser.param_groups:
            group["lr"] = lr_at(step, config)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimiser.step()

        record = {"step": step, "lm_loss": lm_loss.item(), **{f"attn_{k}": v.item() for k, v in attn_losses.items()}}
        if evaluate is not None and (step + 1) % eval_every == 0:
            model.eval()
            record["eval"] = evaluate(model)
            model.train()
        log.append(record)
        bar.set_postfix(lm=f"{record['lm_loss']:.3f}", **{k[:4]: f"{v.item():.3f}" for k, v in attn_losses.items()})
    model.eval()
    return model, log


def save_organism(model: HookedTransformer, config: TrainConfig, log: list[dict], directory: Path,
                  seconds: float, final_eval: dict) -> None:
    """Weights (unprocessed), tokenizer, config, ground truth and a compact training log, into `directory`.

    The files are written one by one: give a fresh folder (`infra.atomic.staged_directory` makes one and
    swaps it into place whole).
    """
    save_model(model, directory, processing=WeightProcessing.none())
    ground_truth = {
        "planted_heads": {k: list(v) for k, v in config.planted_heads.items()},
        "categories": prompts.ALL_CATEGORIES,
        "how_planted": "attention supervision of the planted heads' patterns plus next-token loss; "
                       "see analysis/organism/train.py",
    }
    (directory / GROUND_TRUTH_FILE).write_text(json.dumps(ground_truth, indent=2) + "\n")
    every = max(1, len(log) // 100)
    summary = {
        "train_config": dataclasses.asdict(config),
        "seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "final_eval": final_eval,
        "log": [r for i, r in enumerate(log) if i % every == 0 or "eval" in r or i == len(log) - 1],
    }
    (directory / TRAINING_LOG_FILE).write_text(json.dumps(summary, indent=1) + "\n")


def timed_train(config: TrainConfig, **kwargs) -> tuple[HookedTransformer, list[dict], float]:
    start = time.perf_counter()
    model, log = train(config, **kwargs)
    return model, log, time.perf_counter() - start
