"""Which sparse autoencoder (SAELens) a head's features come from, loaded and checked.

A head in layer L reads the residual stream `blocks.{L-1}.hook_resid_post` (`hook_for_layer`). The
SAE is chosen by what it is and what the model is, never by the model's name (`SAESource`,
`choose_source`):

* a directory saved by SAELens (`save_inference_model`/`save_model`: cfg.json + weights), or
* a SAELens release and SAE id, e.g. `gpt2-small-resid-post-v5-32k` (GPT-2 small, SAE id = the
  hook name), downloaded from the Hugging Face hub or read from its local cache;
* by default, the model organism's own SAE when it fits the model (`organism_sae_fits`: trained on
  a model of this config name and width): a small TopK SAE trained with SAELens's `SAETrainer` on
  the hook's activations over the organism's language (`organism.sae`; seeded, under a minute on
  one CPU core). The one for `blocks.0.hook_resid_post` ships in `analysis/organism/sae/`; others
  are trained once and cached in the user's cache directory (`organism_sae`). Otherwise the GPT-2
  release above.

Whatever the source, an SAE whose `d_in` differs from the model's `d_model` is refused (`check_width`).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from analysis.errors import ModelNotAvailableError, UsageError
from analysis.infra.hub import hub_offline, hub_reachable
from analysis.organism.files import ORGANISM_SAE_DIR
from analysis.organism.sae import SAETrainSettings, save_sae, train_sae
from analysis.vocab_input import CACHE_DIR

GPT2_RELEASE = "gpt2-small-resid-post-v5-32k"


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


@dataclass(frozen=True)
class HeadSAE:
    """The SAE a head's features come from: the residual stream it is read at (`hook`), where it came from
    (`source`) and the SAE itself."""

    hook: str
    source: SAESource
    sae: object


class SAEUnavailable(UsageError):
    """No SAE can be had for a head by default (not available here, a width other than d_model, or a layer-0
    head); `reason` says why in one line. A script records the reason and leaves its SAE step out."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SAERequest:
    """Which SAE a script asks for (--sae-path, --sae-release/--sae-id, --retrain-sae): a SAELens directory `path`,
    or a `release` and `sae_id`, or none of them (the default, `choose_source`); `retrain` trains the organism's
    SAE again."""

    release: str | None = None
    sae_id: str | None = None
    path: str | Path | None = None
    retrain: bool = False


def sae_for_head(model: HookedTransformer, layer: int, request: SAERequest = SAERequest(), device: str = "cpu",
                 required: bool = False) -> HeadSAE:
    """The SAE `request` asks for, for a head in `layer` (`hook_for_layer`, `choose_source`, `load_sae`). Where it
    cannot be had, `SAEUnavailable`; with `required` (an SAE or head asked for by flag) the error itself is raised."""
    try:
        hook = hook_for_layer(layer)
        source = choose_source(model, hook, request.release, request.sae_id, request.path)
        return HeadSAE(hook, source, load_sae(model, source, device, retrain=request.retrain))
    except UsageError as err:
        if required:
            raise
        raise SAEUnavailable(" ".join(str(err).split())) from None


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


def variance_explained(sae, x: Tensor) -> float:
    """Fraction of variance explained on `x: [n, d_in]`: 1 - sum |x - x_hat|^2 / sum |x - mean x|^2."""
    with torch.no_grad():
        x = x.to(sae.W_dec)
        reconstruction = sae.decode(sae.encode(x))
        return float(1 - (x - reconstruction).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
