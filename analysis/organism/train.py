"""Training a model organism: a 2-layer transformer with planted heads of known kinds.

The model learns next-token prediction on the synthetic language of `language.py`. On its own
that language grows a semantic head easily, but induction forms late and often as a shifted
variant that the canonical score misses, and the semantic head's fall-back to BOS stays weak.
So designated heads also get an attention-supervision loss: the cross-entropy between the
head's attention pattern and the ground-truth target of its kind (uniform over the keys of its
mask in `analysis.prompts`, `PLANTED_KINDS`):

    loss = LM cross-entropy + w * sum over planted heads of  mean_q -sum_k T[q, k] log A[q, k]

Only *where* those heads attend is supervised; what they write (their OV circuits), every other
head, the MLPs and the embeddings are shaped by the language-modelling loss alone. The analyses
are never told which heads were planted: they scan all heads and must find them.

Held-out categories. The language's category text also uses `prompts.HELD_OUT_CATEGORIES`, but
the supervision never names them: a category kind's targets are built over the supervised
categories only, and rows whose query is a held-out word are left out of its loss (their target
would otherwise be BOS, which would teach the head to ignore those categories). Whether the
planted head attends within held-out categories is then up to next-token prediction.

Kinds. The semantic organism plants previous-token, induction and semantic heads. The negative
control plants, instead of the semantic head, a decoy (its category, itself and its copies
included) and a category-blind self-avoider (anything but itself and its copies): two heads
each with one of the semantic head's two properties and not the other. The avoider's target is
uniform over every other earlier token, so the cross-entropy barely pushes on the little mass it
puts on itself (the gradient on that score is the mass itself): trained on it alone, the avoider
gives itself about as much attention as any one other key. Its loss therefore adds
`AVOIDER_SELF_WEIGHT` times -log(1 - mass on itself and its copies), which makes the avoidance
unambiguous without telling the head anything about categories.

Families (`FAMILIES`): GPT-2 style (LayerNorm, learned absolute positions, GELU MLP); LLaMA
style (RMSNorm, rotary positions, gated SiLU MLP, grouped-query attention, no biases, untied
embeddings); NeoX/Pythia style (parallel attention and MLP, rotary on a quarter of each head's
dimensions, LayerNorm).
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

Head = tuple[int, int]

# Each planted kind: its ground-truth mask (tokens, category_of) -> [batch, query, key], and whether it is a
# category kind (its loss leaves out the rows of held-out words).
PLANTED_KINDS = {
    "previous_token": (lambda tokens, category_of: prompts.previous_token_mask(tokens), False),
    "induction": (lambda tokens, category_of: prompts.induction_mask(tokens), False),
    "semantic": (prompts.semantic_mask, True),
    "decoy": (prompts.same_category_mask, True),
    "avoider": (lambda tokens, category_of: prompts.other_token_mask(tokens), False),
}
AVOIDER_SELF_WEIGHT = 9.0  # the avoider's extra weight on -log(1 - self mass): ten times the cross-entropy's own
# What each organism plants.
ORGANISM_KINDS = {"semantic": ("previous_token", "induction", "semantic"),
                  "negative_control": ("previous_token", "induction", "decoy", "avoider")}

# The architecture of each family, as TransformerLens config fields; rotary_dim is a share of d_head.
FAMILIES: dict[str, dict] = {
    "gpt2": {"normalization_type": "LN", "positional_embedding_type": "standard", "act_fn": "gelu_new"},
    "llama": {"normalization_type": "RMS", "final_rms": True, "positional_embedding_type": "rotary",
              "rotary_share": 1.0, "act_fn": "silu", "gated_mlp": True, "n_key_value_heads": 2,
              "no_biases": True},
    "neox": {"normalization_type": "LN", "positional_embedding_type": "rotary", "rotary_share": 0.25,
             "act_fn": "gelu", "parallel_attn_mlp": True},
}
# Where the planted heads sit by default, per family and organism: the previous-token head in layer 0, the
# others in layer 1; another place in each family, so nothing can depend on where they are.
DEFAULT_PLACEMENT: dict[tuple[str, str], dict[str, Head]] = {
    ("gpt2", "semantic"): {"previous_token": (0, 2), "induction": (1, 1), "semantic": (1, 3)},
    ("gpt2", "negative_control"): {"previous_token": (0, 1), "induction": (1, 2), "decoy": (1, 0), "avoider": (1, 3)},
    ("llama", "semantic"): {"previous_token": (0, 1), "induction": (1, 3), "semantic": (1, 0)},
    ("neox", "semantic"): {"previous_token": (0, 3), "induction": (1, 0), "semantic": (1, 2)},
}


def drawn_placement(kinds: tuple[str, ...], n_layers: int, n_heads: int, seed: int) -> dict[str, Head]:
    """Places for `kinds` drawn with `seed`: the previous-token head at a random head of layer 0, every other kind
    at distinct random heads of the last layer (induction composes with the previous-token head, and the
    category kinds read through the first MLP)."""
    rng = np.random.default_rng(seed)
    later = [k for k in kinds if k != "previous_token"]
    if len(later) > n_heads:
        raise ValueError(f"{len(later)} planted kinds do not fit the {n_heads} heads of the last layer")
    heads = rng.permutation(n_heads)[:len(later)]
    placement = {k: (n_layers - 1, int(h)) for k, h in zip(later, heads)}
    if "previous_token" in kinds:
        placement = {"previous_token": (0, int(rng.integers(n_heads))), **placement}
    return placement


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
    family: str = "gpt2"
    mixture: dict[str, float] = field(default_factory=lambda: {
        "category_text": 0.4, "repeated_chunks": 0.4, "random_tokens": 0.2})
    # (layer, head) of each planted head: the ground truth the analyses must recover unaided.
    planted_heads: dict[str, tuple[int, int]] = field(default_factory=lambda: {
        "previous_token": (0, 2), "induction": (1, 1), "semantic": (1, 3)})


def model_config(config: TrainConfig, d_vocab: int) -> HookedTransformerConfig:
    """The TransformerLens config of `config.family` (`FAMILIES`) at the organism's size."""
    if config.family not in FAMILIES:
        raise ValueError(f"unknown family {config.family!r}; known: {', '.join(FAMILIES)}")
    family = {k: v for k, v in FAMILIES[config.family].items() if k not in ("rotary_share", "no_biases")}
    if "rotary_share" in FAMILIES[config.family]:
        family["rotary_dim"] = int(config.d_head * FAMILIES[config.family]["rotary_share"])
    name = "organism" if config.family == "gpt2" else f"organism-{config.family}"
    return HookedTransformerConfig(
        n_layers=config.n_layers, n_heads=config.n_heads, d_model=config.d_model, d_head=config.d_head,
        d_mlp=config.d_mlp, n_ctx=config.n_ctx, d_vocab=d_vocab, seed=config.seed, model_name=name,
        default_prepend_bos=True, **family)


def build_model(config: TrainConfig) -> HookedTransformer:
    cfg = model_config(config, len(vocabulary()))
    # The tokenizer's files are needed only while TransformerLens reloads it by path, here.
    with tempfile.TemporaryDirectory(prefix="organism-tokenizer-") as directory:
        model = HookedTransformer(cfg, tokenizer=build_tokenizer(config.n_ctx, Path(directory)))
    if FAMILIES[config.family].get("no_biases"):
        for name, parameter in model.named_parameters():
            # b_Q, b_O, b_in, b_out, b_U and, under grouped-query attention, the shared _b_K, _b_V: kept at zero
            if name.rsplit(".", 1)[-1].lstrip("_").startswith("b_"):
                parameter.requires_grad_(False)
    return model


def supervision_targets(tokens: torch.Tensor, category_of: torch.Tensor, held_out_of: torch.Tensor,
                        kinds: tuple[str, ...]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """kind -> (`target: [batch, query, key]`, `rows: [batch, query]`): the target attention distribution of each
    planted kind and the rows its loss counts (every row but BOS; for a category kind not the rows whose
    query is a held-out word, `held_out_of: [d_vocab]` bool)."""
    every_row = torch.ones(tokens.shape, dtype=torch.bool)
    every_row[:, 0] = False
    out = {}
    for kind in kinds:
        mask_of, uses_categories = PLANTED_KINDS[kind]
        rows = every_row & ~held_out_of[tokens] if uses_categories else every_row
        out[kind] = (prompts.target_distribution(mask_of(tokens, category_of)), rows)
    return out


def self_mass_penalty(pattern: torch.Tensor, tokens: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean over the counted rows of -log(1 - sum_{k <= q, t_k = t_q} A[q, k]): the mass a head puts on the query
    itself and its earlier copies, as a loss that grows without bound as that mass nears 1. `pattern: [batch, q, k]`,
    `rows: [batch, q]` bool."""
    same = tokens[:, :, None] == tokens[:, None, :]  # (B, T, T); the pattern is 0 above the diagonal
    mass = (pattern * same).sum(-1).clamp_max(1 - 1e-6)
    return (-torch.log1p(-mass) * rows).sum() / rows.sum().clamp_min(1)


def attention_cross_entropy(pattern: torch.Tensor, target: torch.Tensor, rows: torch.Tensor | None = None
                            ) -> torch.Tensor:
    """Mean over the counted rows of -sum_k T[q, k] log A[q, k], for `pattern, target: [batch, q, k]`; `rows:
    [batch, q]` bool (default: every row q >= 1)."""
    log_pattern = pattern.clamp_min(1e-9).log()
    per_row = -(target * torch.where(target > 0, log_pattern, torch.zeros_like(log_pattern))).sum(-1)  # (B, T)
    if rows is None:
        return per_row[:, 1:].mean()
    return (per_row * rows).sum() / rows.sum().clamp_min(1)


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
    held_out_of = prompts.category_index(model.tokenizer, prompts.HELD_OUT_CATEGORIES, model.cfg.d_vocab) >= 0
    kinds = tuple(config.planted_heads)
    rng = np.random.default_rng(config.seed)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trained, lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay)

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
        targets = supervision_targets(tokens, category_of, held_out_of, kinds)
        lm_loss = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks)
        attn_losses = {kind: attention_cross_entropy(captured[kind], *targets[kind]) for kind in kinds}
        if "avoider" in attn_losses:
            attn_losses["avoider"] = attn_losses["avoider"] + AVOIDER_SELF_WEIGHT * self_mass_penalty(
                captured["avoider"], tokens, targets["avoider"][1])
        loss = lm_loss + config.supervision_weight * sum(attn_losses.values())

        for group in optimiser.param_groups:
            group["lr"] = lr_at(step, config)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, config.grad_clip)
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
        "held_out_categories": prompts.HELD_OUT_CATEGORIES,
        "family": config.family,
        "how_planted": "attention supervision of the planted heads' patterns plus next-token loss; held-out "
                       "categories are in the language but never in the supervision; see analysis/organism/train.py",
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
