"""Sparse-autoencoder features feeding a head (SAELens), and the head's QK circuit between features.

Which SAE. A head in layer L reads the residual stream `blocks.{L-1}.hook_resid_post`. The SAE
is chosen by what it is and what the model is, never by the model's name (`SAESource`):

* a directory saved by SAELens (`save_inference_model`/`save_model`: cfg.json + weights), or
* a SAELens release and SAE id, e.g. `gpt2-small-resid-post-v5-32k` (GPT-2 small, SAE id = the
  hook name), downloaded from the Hugging Face hub or read from its local cache;
* by default, the model organism's own SAE when it fits the model (`organism_sae_fits`: trained on
  a model of this config name and width): a small TopK SAE trained here with SAELens's
  `SAETrainer` on the hook's activations over the organism's language (seeded; under a minute on
  one CPU core). The one for `blocks.0.hook_resid_post` ships in `analysis/organism/sae/`; others
  are trained once and cached in the user's cache directory. Otherwise the GPT-2 release above.

Whatever the source, an SAE whose `d_in` differs from the model's `d_model` is refused (`check_width`).

Feature-level QK. Each feature's decoder direction d_f goes through the head's LayerNorm as if
it were the residual stream, x_f = LN1(d_f), and then through the head's bilinear form:
s(f, g) = x_f W x_g^T / sqrt(d_head), W = W_Q W_K^T (no biases). Features get the category of
the tokens they fire on, from their mean activation on each category's words in category prompts.
At GPT-2's size (32768 features, 50257 tokens) nothing of size d_sae x d_vocab is formed: mean
activations are kept only for the tokens that occur in the prompts.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from analysis.attention import attention_scores, head_scale, head_weights
from analysis.errors import ModelNotAvailableError, UsageError
from analysis.infra.hub import hub_offline, hub_reachable
from analysis.organism.files import ORGANISM_SAE_DIR
from analysis.organism.language import LanguageSpec, sample_batch, vocabulary
from analysis.organism.train import TrainConfig
from analysis.prompts import STUDY_CATEGORIES, bos_token_id, category_index, single_token_ids
from analysis.self_suppression import group_map_statistics
from analysis.token_maps import block_means
from analysis.vocab_input import CACHE_DIR

GPT2_RELEASE = "gpt2-small-resid-post-v5-32k"
SETTINGS_FILE = "training_settings.json"


def hook_for_layer(layer: int) -> str:
    """The residual stream a layer-`layer` head reads: `blocks.{layer-1}.hook_resid_post`."""
    if layer < 1:
        raise UsageError("SAE features are read from the residual stream after a block; a layer-0 head reads the "
                         "embeddings directly. Pick a head in layer 1 or later (--layer/--head).")
    return f"blocks.{layer - 1}.hook_resid_post"


@dataclass(frozen=True)
class SAESource:
    """Where an SAE comes from: `kind` "path" (a SAELens-saved directory), "pretrained" (a SAELens release
    and SAE id) or "organism" (the model organism's SAE for the hook: shipped, cached or trained now)."""

    kind: str
    release: str | None = None
    sae_id: str | None = None
    path: str | None = None

    def describe(self) -> str:
        return {"path": f"the SAE in {self.path}", "organism": "the organism's SAE",
                "pretrained": f"the SAE {self.sae_id!r} of the SAELens release {self.release!r}"}[self.kind]


def organism_sae_fits(model: HookedTransformer) -> bool:
    """Whether the organism's shipped SAE was trained on a model like this one: the config name it
    records is this model's `cfg.model_name` and its width is this model's `d_model`."""
    config = ORGANISM_SAE_DIR / "blocks.0.hook_resid_post" / "cfg.json"
    if not config.exists():
        return False
    cfg = json.loads(config.read_text())
    return cfg.get("d_in") == model.cfg.d_model and cfg.get("metadata", {}).get("model_name") == model.cfg.model_name


def choose_source(model: HookedTransformer, hook_name: str, release: str | None = None, sae_id: str | None = None,
                  path: str | Path | None = None) -> SAESource:
    """The SAE asked for (`path`, or `release` with `sae_id` defaulting to the hook), else the default:
    the organism's SAE when it fits the model (`organism_sae_fits`), else SAELens's GPT-2 release."""
    if path is not None and (release is not None or sae_id is not None):
        raise UsageError("Give either a local SAE directory (--sae-path) or a SAELens release and id "
                         "(--sae-release/--sae-id), not both.")
    if path is not None:
        if not (Path(path) / "cfg.json").exists():
            raise UsageError(f"{path} holds no cfg.json, so it is not an SAE directory saved by SAELens "
                             "(SAE.save_inference_model or save_model writes cfg.json and the weights).")
        return SAESource("path", path=str(path))
    if release is None and sae_id is None and organism_sae_fits(model):
        return SAESource("organism", sae_id=hook_name)
    return SAESource("pretrained", release=release or GPT2_RELEASE, sae_id=sae_id or hook_name)


def load_sae(model: HookedTransformer, source: SAESource, device: str = "cpu", retrain: bool = False):
    """The SAE of `source`, checked against the model's width (`check_width`)."""
    from sae_lens import SAE

    if retrain and source.kind != "organism":
        raise UsageError("--retrain-sae trains the organism's SAE on its own language; it does not apply to "
                         f"{source.describe()}.")
    if source.kind == "path":
        sae = SAE.load_from_disk(source.path, device=device)
    elif source.kind == "organism":
        sae = organism_sae(model, source.sae_id, retrain=retrain)
    else:
        sae = load_pretrained(source.release, source.sae_id, device)
    check_width(sae, model, source.describe())
    return sae


def sae_for_head(model: HookedTransformer, layer: int, release: str | None = None, sae_id: str | None = None,
                 path: str | Path | None = None, device: str = "cpu", retrain: bool = False, required: bool = False
                 ) -> tuple[str | None, SAESource | None, object, str | None]:
    """(hook, source, SAE, None) for a head in `layer` (`hook_for_layer`, `choose_source`, `load_sae`), or
    (None, None, None, why not) where the default SAE cannot be had: not available here, a width other than
    d_model, or a layer-0 head. With `required` (an SAE or head asked for by flag) that error is raised."""
    try:
        hook = hook_for_layer(layer)
        source = choose_source(model, hook, release, sae_id, path)
        return hook, source, load_sae(model, source, device, retrain=retrain), None
    except UsageError as err:
        if required:
            raise
        return None, None, None, " ".join(str(err).split())


def source_record(hook: str, source: SAESource, sae) -> dict:
    """What a results file records of the SAE: how it was had, the hook it is read at, the source's fields,
    the hook it was trained on, d_in, d_sae and its architecture."""
    kind = {"organism": "trained on the organism with SAELens", "pretrained": "SAELens pretrained",
            "path": "SAELens directory"}[source.kind]
    return {"ran": True, "kind": kind, "hook": hook,
            **{key: value for key, value in vars(source).items() if key != "kind" and value is not None},
            "trained_on_hook": sae.cfg.metadata.hook_name, "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae,
            "architecture": sae.cfg.architecture()}


def check_width(sae, model: HookedTransformer, what: str = "the SAE") -> None:
    """A clear error when the SAE's input width `d_in` is not the model's residual width `d_model`."""
    if sae.cfg.d_in != model.cfg.d_model:
        raise UsageError(
            f"{what[0].upper() + what[1:]} reads {sae.cfg.d_in}-dimensional activations (d_in = {sae.cfg.d_in}), "
            f"but this model's residual stream has d_model = {model.cfg.d_model}: an SAE only fits the model it "
            "was trained on. Pass an SAE of this model with --sae-path DIR or --sae-release/--sae-id.")


def load_pretrained(release: str, sae_id: str, device: str = "cpu"):
    """A SAELens SAE from the hub (or its local cache); a clear error when it cannot be had."""
    from huggingface_hub.errors import EntryNotFoundError
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory and "/" not in release:  # "/" : a hub repository id, passed on as such
        raise UsageError(f"{release!r} is not a SAELens release (see sae_lens's pretrained_saes.yaml; GPT-2 "
                         f"small's residual-stream SAEs are {GPT2_RELEASE!r}), nor a Hugging Face repository id.")
    if release in directory and sae_id not in directory[release].saes_map:
        valid = list(directory[release].saes_map)
        raise UsageError(f"The SAELens release {release!r} has no SAE {sae_id!r}; its ids are "
                         f"{', '.join(valid[:6])}{', ...' if len(valid) > 6 else ''}. Pass one with --sae-id.")
    try:
        # Probe once, as a model load does, so an unreachable hub fails in seconds rather than after retries.
        with contextlib.nullcontext() if hub_reachable() else hub_offline():
            return SAE.from_pretrained(release, sae_id, device=device)
    except (OSError, EntryNotFoundError) as err:  # hub, network and cache errors: "not available here"
        cause = " ".join(str(err).split())[:300]
        raise ModelNotAvailableError(
            f"Could not load the SAE {sae_id!r} of the SAELens release {release!r} ({type(err).__name__}: {cause}). "
            "It is downloaded from the Hugging Face hub on first use: run once with network access, or set "
            "HF_HOME to a cache that holds it, or pass a saved SAE of this model with --sae-path."
        ) from None


# --- training a small SAE on the organism ------------------------------------------------------


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


def organism_sae(model: HookedTransformer, hook_name: str, retrain: bool = False,
                 settings: SAETrainSettings = SAETrainSettings()):
    """The organism's SAE for `hook_name`: shipped, else cached, else trained now and cached."""
    from sae_lens import SAE

    directory = ORGANISM_SAE_DIR / hook_name
    if retrain or not (directory / "cfg.json").exists():
        directory = CACHE_DIR / "sae" / "organism" / f"{hook_name}-seed{settings.seed}"
    if retrain or not (directory / "cfg.json").exists():
        save_sae(train_sae(model, hook_name, settings), directory, settings)
    sae = SAE.load_from_disk(directory)
    check_width(sae, model, f"the SAE in {directory}")
    return sae


def save_sae(sae, directory: Path, settings: SAETrainSettings) -> Path:
    """The inference SAE (weights and config, SAELens's format) plus the settings it was trained with."""
    sae.save_inference_model(directory)
    (directory / SETTINGS_FILE).write_text(json.dumps(asdict(settings), indent=2) + "\n")
    return directory


def variance_explained(sae, x: Tensor) -> float:
    """Fraction of variance explained on `x: [n, d_in]`: 1 - sum |x - x_hat|^2 / sum |x - mean x|^2."""
    with torch.no_grad():
        x = x.to(sae.W_dec)
        reconstruction = sae.decode(sae.encode(x))
        return float(1 - (x - reconstruction).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


# --- features and the head -------------------------------------------------------------------


@torch.no_grad()
def category_activations(model: HookedTransformer, sae, tokens: Tensor, category_of: Tensor, n_categories: int,
                         hook_name: str, batch_size: int = 16) -> tuple[Tensor, Tensor, Tensor]:
    """(`mean_by_category: [d_sae, n_categories]`, `mean_by_token: [d_sae, n_seen]`, `seen: [n_seen]`).

    Mean feature activations over the positions (BOS left out) whose current token is in each
    category / is each token `seen[j]` of the n_seen distinct tokens of `tokens: [batch, pos]`.
    Tokens that never occur have no mean, so they get no column: GPT-2's 32768 features x 50257
    tokens would be 6.6 GB in float32. Accumulated per batch in float32 (means of at most a few
    thousand non-negative activations each).
    """
    layer = int(hook_name.split(".")[1])
    d_sae = sae.cfg.d_sae
    seen, column = torch.unique(tokens[:, 1:], return_inverse=True)  # column: (batch, pos - 1) into seen
    by_token = torch.zeros(d_sae, len(seen))
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start:start + batch_size]
        _, cache = model.run_with_cache(batch.to(model.cfg.device), names_filter=hook_name, stop_at_layer=layer + 1)
        acts = sae.encode(cache[hook_name][:, 1:].to(sae.W_dec)).reshape(-1, d_sae).float().cpu()  # (B T, d_sae)
        by_token.index_add_(1, column[start:start + batch_size].reshape(-1), acts.T)
    counts = torch.bincount(column.reshape(-1), minlength=len(seen)).float()  # (n_seen,) all >= 1
    category = category_of[seen]
    in_category = category >= 0
    by_category = torch.zeros(d_sae, n_categories).index_add_(1, category[in_category], by_token[:, in_category])
    category_counts = torch.zeros(n_categories).index_add_(0, category[in_category], counts[in_category])
    return by_category / category_counts.clamp_min(1), by_token / counts, seen


def select_features(by_category: Tensor, per_category: int = 3, min_share: float = 0.5) -> tuple[Tensor, Tensor]:
    """(`features: [n]`, `category: [n]`): each category's `per_category` most active features among those
    that give it at least `min_share` of their summed per-category mean activation, grouped by category."""
    share = by_category / by_category.sum(-1, keepdim=True).clamp_min(1e-12)  # (d_sae, n_categories)
    features, category = [], []
    for c in range(by_category.shape[1]):
        strength = torch.where(share[:, c] >= min_share, by_category[:, c], torch.zeros_like(by_category[:, c]))
        top = strength.topk(per_category)
        chosen = top.indices[top.values > 0]
        features.append(chosen)
        category.append(torch.full((len(chosen),), c))
    return torch.cat(features), torch.cat(category)


def feature_inputs(model: HookedTransformer, sae, layer: int, features: Tensor) -> Tensor:
    """`[n, d_model]`: x_f = LN1(d_f), each decoder direction normalised as the head normalises its input."""
    with torch.no_grad():
        directions = sae.W_dec[features].to(model.cfg.device, torch.float32)  # (n, d_model)
        return model.blocks[layer].ln1(directions[:, None])[:, 0].float().cpu()


def self_avoidance(scores: Tensor, group: Tensor) -> dict[str, float]:
    """On a feature x feature map `scores: [n, n]` with feature categories `group: [n]`:

    self_below_mates = fraction of features (with a same-category mate) whose self-score is below
    their mean score on same-category mates; best_key_is_mate = fraction whose highest-scoring
    key is another feature of their category; best_key_is_self = fraction whose best key is itself.
    """
    same = group[:, None] == group[None, :]
    eye = torch.eye(len(group), dtype=torch.bool)
    mates = same & ~eye
    has_mate = mates.any(-1)
    mate_mean = (scores * mates).sum(-1) / mates.sum(-1).clamp_min(1)
    best = scores.argmax(-1)
    return {"self_below_mates": float((scores.diagonal() < mate_mean)[has_mate].float().mean()),
            "best_key_is_mate": float(mates[torch.arange(len(group)), best].float().mean()),
            "best_key_is_self": float((best == torch.arange(len(group))).float().mean())}


def top_pairs(scores: Tensor, k: int = 20, include_self: bool = False) -> list[tuple[int, int, float]]:
    """The k highest entries of `scores: [n, n]` as (query index, key index, score), best first."""
    masked = scores.clone()
    if not include_self:
        masked.fill_diagonal_(-torch.inf)
    values, flat = masked.flatten().topk(min(k, masked.numel()))
    n = scores.shape[1]
    return [(int(i) // n, int(i) % n, float(v)) for i, v in zip(flat, values)]


def feature_label(by_token: Tensor, feature: int, token_labels: Sequence[str], n: int = 3) -> str:
    """A feature's name from the (at most n) tokens it fires on most: "f123 ' red'/' blue'/' green'";
    tokens it never fires on are not named. `by_token: [d_sae, n_tokens]` and `token_labels` (one per
    column) cover the same tokens."""
    top = by_token[feature].topk(min(n, by_token.shape[1]))
    names = [repr(token_labels[t]) for t, value in zip(top.indices, top.values) if value > 0]
    return f"f{feature} " + ("/".join(names) or "(never active)")


# --- the study's per-head precision of predicted SAE features -----------------------------------
# Definition read off the study's code (Mamiglia/deep-dive-L1H5: scratch.py `pred_accuracy`,
# src/utils.py `precision` and `random_toks_with_keywords`, src/maps.py `token2feat_attn`); ours is
# written from that description. It is the study's metric; the feature x feature map above is ours.

PRECISION_K = 32  # features predicted and features taken as active, per position
PRECISION_LENGTH = 20  # BOS + 19 tokens per sample
PRECISION_CATEGORIES = ("colours", "animals", "fruits", "emotions", "weather")  # the study's five for this metric


def keyword_prompts(word_ids: Sequence[int], n_prompts: int, d_vocab: int, bos_id: int, seed: int,
                    length: int = PRECISION_LENGTH) -> tuple[Tensor, Tensor]:
    """The study's samples for one category: (`tokens: [n, length]`, `scored: [n, length]`).

    BOS, then uniform random ids; the category's words, shuffled, overwrite sorted distinct random
    positions in 1..length-1, the last keyword forced to the last position. `scored` marks the
    keyword positions except the first keyword (the positions whose overlap counts as true positives).
    """
    n_words = len(word_ids)
    if not 0 < n_words < length:
        raise UsageError(f"A keyword sample of {length} tokens holds 1 to {length - 2} keywords; got {n_words}.")
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, d_vocab, (n_prompts, length), generator=g)
    tokens[:, 0] = bos_id
    scored = torch.zeros(n_prompts, length, dtype=torch.bool)
    words = torch.tensor(list(word_ids))
    for b in range(n_prompts):
        others = 1 + torch.randperm(length - 2, generator=g)[:n_words - 1]  # distinct positions in 1..length-2
        positions = torch.cat([others.sort().values, torch.tensor([length - 1])])
        tokens[b, positions] = words[torch.randperm(n_words, generator=g)]
        scored[b, positions[1:]] = True
    return tokens, scored


def overlap_precision(predicted: Tensor, active: Tensor, scored: Tensor) -> Tensor:
    """`[batch]`: the study's precision of predicted features, TP / (TP + FP), 0 where both are 0.

    `predicted`, `active: [batch, pos, k]` feature indices (distinct within a position); `scored:
    [batch, pos]`. ov_i = |predicted_i ∩ active_i|; TP = sum of ov_i over scored positions, FP over
    every other position. Not |predicted ∩ active| / k.
    """
    overlap = (predicted[..., :, None] == active[..., None, :]).any(-1).sum(-1)  # (B, T)
    tp = (overlap * scored).sum(-1).double()
    fp = (overlap * ~scored).sum(-1).double()
    return torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), torch.zeros_like(tp))


def predicted_features(x: Tensor, decoder_keys: Tensor, W_Q: Tensor, k: int = PRECISION_K) -> Tensor:
    """`[batch, head, pos, k]`: the k features whose decoder direction, as a key, the head's query favours.

    `x: [batch, pos, d_model]` the normalised residual at each query; `decoder_keys: [head, d_sae,
    d_head]` = LN(W_dec) W_K; `W_Q: [head, d_model, d_head]`. score_i[f] = LN(d_f) W_K W_Q^T x_i
    (unscaled, no biases, as the study). Factored: the largest tensor is [batch, pos, d_sae] per head.
    """
    out = []
    for h in range(W_Q.shape[0]):
        q = x @ W_Q[h]  # (B, T, d_head)
        out.append((q @ decoder_keys[h].T).topk(k, dim=-1).indices)  # (B, T, d_sae) -> (B, T, k)
    return torch.stack(out, dim=1)


def active_at_attended_key(active: Tensor, pattern: Tensor) -> Tensor:
    """`[batch, head, pos, k]`: the active features at each query's most-attended key.

    `active: [batch, pos, k]` feature indices per position; `pattern: [batch, head, query, key]`.
    """
    key = pattern.argmax(-1)  # (B, H, Q)
    b = torch.arange(active.shape[0])[:, None, None]
    return active[b, key]  # (B, H, Q, k)


PRECISION_SHUFFLES = 20  # label permutations of the shuffled-feature null, per sample


def shuffled_labels(predicted: Tensor, d_sae: int, generator: torch.Generator) -> Tensor:
    """`predicted: [batch, pos, k]` feature indices with the feature labels permuted: one random permutation
    of the d_sae labels per sample, the same at every position of it. Each position keeps k distinct
    features, and positions that shared predictions still share them; only which feature is which is lost."""
    perm = torch.rand(predicted.shape[0], d_sae, generator=generator).argsort(-1)  # (B, d_sae)
    return perm.gather(1, predicted.reshape(predicted.shape[0], -1)).reshape(predicted.shape)


@torch.no_grad()
def precision_with_null(model: HookedTransformer, sae, layer: int, tokens: Tensor, scored: Tensor,
                        k: int = PRECISION_K, n_shuffles: int = PRECISION_SHUFFLES, seed: int = 0,
                        batch_size: int = 64) -> dict[str, Tensor]:
    """`{"precision": [batch, head], "shuffled": [batch, head]}`: the study's precision for every head of
    `layer` on keyword samples, and its null with the predicted features' labels shuffled.

    The SAE reads `hook_for_layer(layer)`; the residual and the decoder directions are normalised
    by a LayerNorm without affine, and the SAE encodes the normalised residual (as the study, which
    turns the SAE's own input normalisation off).
    Active features: top k of the SAE's encoding at the most-attended key. Predicted: top k of the
    QK score of each decoder direction as a key (`predicted_features`).
    Null ("shuffled"): the mean precision over `n_shuffles` label permutations of the predicted features
    (`shuffled_labels`). TP / (TP + FP) compares overlaps at keyword positions with overlaps elsewhere, so
    a head whose predictions know nothing of the active features still scores about the keyword positions'
    share of all positions; the permutation keeps everything of the head's predictions but their identity,
    so the null is that chance level for this head, these samples and this SAE (0 shuffles: no null, NaN).
    """
    hook = hook_for_layer(layer)
    W_dec = torch.nn.functional.layer_norm(sae.W_dec.detach().float().cpu(), (model.cfg.d_model,))  # (d_sae, d)
    W_K = model.W_K[layer].detach().float().cpu()  # (H, d_model, d_head)
    W_Q = model.W_Q[layer].detach().float().cpu()
    decoder_keys = torch.einsum("fd,hde->hfe", W_dec, W_K)  # (H, d_sae, d_head)
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, list[Tensor]] = {"precision": [], "shuffled": []}
    for start in range(0, tokens.shape[0], batch_size):
        batch, marks = tokens[start:start + batch_size], scored[start:start + batch_size]
        names = (hook, f"blocks.{layer}.attn.hook_pattern")
        _, cache = model.run_with_cache(batch.to(model.cfg.device), names_filter=lambda n: n in names,
                                        return_type=None)
        resid = cache[hook].float().cpu()  # (B, T, d_model)
        x = torch.nn.functional.layer_norm(resid, (model.cfg.d_model,))
        codes = sae.encode(x.to(sae.W_dec.device, sae.W_dec.dtype)).float().cpu()  # (B, T, d_sae), of the LN'd input
        active = codes.topk(k, dim=-1).indices  # (B, T, k)
        pattern = cache[names[1]].float().cpu()  # (B, H, T, T)
        truth = active_at_attended_key(active, pattern)  # (B, H, T, k)
        predicted = predicted_features(x, decoder_keys, W_Q, k)  # (B, H, T, k)
        n_heads = W_Q.shape[0]
        out["precision"].append(torch.stack([overlap_precision(predicted[:, h], truth[:, h], marks)
                                             for h in range(n_heads)], dim=1))
        null = torch.zeros(len(batch), n_heads, dtype=torch.float64)
        for _ in range(n_shuffles):
            for h in range(n_heads):
                null[:, h] += overlap_precision(shuffled_labels(predicted[:, h], codes.shape[-1], generator),
                                                truth[:, h], marks)
        out["shuffled"].append(null / n_shuffles if n_shuffles else torch.full_like(null, float("nan")))
    return {name: torch.cat(chunks) for name, chunks in out.items()}


def head_precision(model: HookedTransformer, sae, layer: int, tokens: Tensor, scored: Tensor,
                   k: int = PRECISION_K, batch_size: int = 64) -> Tensor:
    """`[batch, head]`: the study's precision for every head of `layer` on keyword samples (`precision_with_null`
    without its null)."""
    return precision_with_null(model, sae, layer, tokens, scored, k, n_shuffles=0, batch_size=batch_size)["precision"]


def study_precision(model: HookedTransformer, sae, layer: int, n_samples: int, k: int = PRECISION_K,
                    n_shuffles: int = PRECISION_SHUFFLES, seed: int = 0) -> dict[str, dict[str, Tensor]]:
    """`{category: precision_with_null(...)}` on `keyword_prompts` of each of `PRECISION_CATEGORIES`
    (`n_samples` each; category i's samples seeded seed + 10 + i, its shuffles seed + 20 + i)."""
    bos = bos_token_id(model)
    return {name: precision_with_null(model, sae, layer, *keyword_prompts(
        single_token_ids(model.tokenizer, STUDY_CATEGORIES[name]), n_samples, model.cfg.d_vocab, bos, seed + 10 + i),
        k=k, n_shuffles=n_shuffles, seed=seed + 20 + i) for i, name in enumerate(PRECISION_CATEGORIES)}


def precision_by_head(per_category: dict[str, dict[str, Tensor]]) -> dict[int, dict[str, float]]:
    """head -> {precision, precision_shuffled, precision_<category>...} from `study_precision`'s
    `{category: {"precision": [batch, head], "shuffled": [batch, head]}}`:

    precision_c(h) = mean_b P_c[b, h];  precision(h) = mean_c precision_c(h);  precision_shuffled(h) the same
    mean over categories of the shuffled null's sample means.
    """
    names = list(per_category)
    n_heads = per_category[names[0]]["precision"].shape[1]
    out = {}
    for h in range(n_heads):
        own = {n: float(per_category[n]["precision"].mean(0)[h]) for n in names}
        null = [float(per_category[n]["shuffled"].mean(0)[h]) for n in names]
        out[h] = {"precision": sum(own.values()) / len(own), "precision_shuffled": sum(null) / len(null),
                  **{f"precision_{n}": value for n, value in own.items()}}
    return out


def feature_map_statistics(model: HookedTransformer, sae, features: Tensor, group: Tensor, layer: int | None = None,
                           precision: dict[int, dict[str, float]] | None = None
                           ) -> dict[tuple[int, int], dict[str, float | None]]:
    """(layer, head) -> `self_suppression.group_map_statistics` of the features' map, for every head (each
    layer's heads see the decoder directions through that layer's LayerNorm: `feature_inputs`). With
    `precision` (`precision_by_head` of the SAE's `layer`), each head of that layer gets its row, every other
    head precision and precision_shuffled None (the study's precision is defined for the SAE's layer only)."""
    stats = {}
    for l in range(model.cfg.n_layers):
        x = feature_inputs(model, sae, l, features)  # (n, d_model)
        for h in range(model.cfg.n_heads):
            W_Q, W_K, _, _ = head_weights(model, l, h)
            stats[(l, h)] = group_map_statistics(x, group, W_Q, W_K, head_scale(model.cfg, l))
            if precision is not None:
                stats[(l, h)].update(precision.get(h) if l == layer else {"precision": None,
                                                                          "precision_shuffled": None})
    return stats


def precision_null(value: float, n_shuffles: int) -> dict:
    """The results record of the precision's shuffled-label null for the target: its value and what it says."""
    return {"precision_shuffled": value,
            "says": "the study's precision with the predicted features' labels permuted (a random permutation of "
                    f"the SAE's feature ids per sample, {n_shuffles} draws, mean): the chance level of "
                    "TP / (TP + FP) for this head, these samples and this SAE"}


def name_features(model: HookedTransformer, sae, hook: str, tokens: Tensor, categories: dict[str, list[str]],
                  per_category: int = 3) -> tuple[Tensor, Tensor, list[str], float]:
    """(`features: [n]`, `group: [n]`, labels, variance explained): each category's most active features on
    category prompts `tokens: [batch, pos]` (`category_activations`, `select_features`), named by the tokens
    they fire on most (`feature_label`), and the SAE's `variance_explained` on 16 of those prompts (BOS left out)."""
    category_of = category_index(model.tokenizer, categories, model.cfg.d_vocab)
    by_category, by_token, seen = category_activations(model, sae, tokens, category_of, len(categories), hook)
    layer = int(hook.split(".")[1]) + 1  # the hook is the residual stream this layer reads
    _, cache = model.run_with_cache(tokens[:16].to(model.cfg.device), names_filter=hook, stop_at_layer=layer)
    explained = variance_explained(sae, cache[hook][:, 1:].reshape(-1, model.cfg.d_model))
    features, group = select_features(by_category, per_category)
    token_labels = model.tokenizer.batch_decode([[int(i)] for i in seen])  # one per column of by_token
    return features, group, [feature_label(by_token, int(f), token_labels) for f in features], explained


def feature_map(model: HookedTransformer, sae, layer: int, head: int, features: Tensor) -> Tensor:
    """`[n, n]`: s(f, g) = LN1(d_f) W_Q W_K^T LN1(d_g)^T / attn_scale for the head, query feature by key feature."""
    W_Q, W_K, _, _ = head_weights(model, layer, head)
    x = feature_inputs(model, sae, layer, features)  # (n, d_model)
    return attention_scores(x, x, W_Q, W_K, head_scale(model.cfg, layer))


def feature_map_record(scores: Tensor, features: Tensor, labels: Sequence[str], group: Tensor,
                       names: Sequence[str], n_pairs: int = 20) -> dict:
    """The feature x feature map `scores: [n, n]` as results: each feature (id, label, category name), the map,
    `token_maps.block_means`, `self_avoidance`, the `n_pairs` top off-diagonal pairs with their categories and
    top_pairs_same_category = the share of those pairs whose query and key share a category (0 without pairs)."""
    pairs = [{"query": labels[q], "key": labels[k], "query_category": names[int(group[q])],
              "key_category": names[int(group[k])], "score": s} for q, k, s in top_pairs(scores, n_pairs)]
    same = sum(p["query_category"] == p["key_category"] for p in pairs)
    return {"features": [{"id": int(f), "label": label, "category": names[int(g)]}
                         for f, label, g in zip(features, labels, group)],
            "map": scores, "block_means": block_means(scores, group), "self_avoidance": self_avoidance(scores, group),
            "top_pairs": pairs, "top_pairs_same_category": same / max(len(pairs), 1)}
