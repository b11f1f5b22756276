"""The Hugging Face hub: whether it answers, its offline mode, and TransformerLens's pretrained loads.

A load probes the hub once (`hub_reachable`). Without an answer it runs in the hub's offline mode
(`hub_offline`: the local cache only, no retries; for the `datasets` library `datasets_offline`), so an
unreachable hub fails in seconds. Weights
that are not available here (`unavailable_errors`) become one `ModelNotAvailableError` that says
what to do; anything else is a bug and surfaces as one.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
from collections.abc import Iterator, Mapping

from transformer_lens import HookedTransformer

from analysis.errors import ModelNotAvailableError, UsageError

HUB_PROBE_SECONDS = 3.0  # one connection attempt to the hub before a load; without an answer the load is offline


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """What "these weights are not available here" looks like: file, cache, hub and connection errors.

    The hub client's errors (huggingface_hub.errors), a missing cache entry and transformers' "could
    not connect" are all OSError; the HTTP clients' own errors are added where installed. Anything
    else is a bug and surfaces as one.
    """
    errors: list[type[BaseException]] = [OSError]
    for module, attribute in (("huggingface_hub.errors", "HfHubHTTPError"), ("httpx", "HTTPError"),
                              ("httpx2", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(importlib.import_module(module), attribute))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def official_name(name: str) -> str:
    """The Hugging Face name of a TransformerLens pretrained model, or a `UsageError` for an unknown name."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name)
    except ValueError:
        raise UsageError(
            f"Unknown model {name!r}. Use 'organism' (the offline model organism), 'gpt2-random', a "
            "directory written by analysis.models.save_model, or a TransformerLens pretrained name "
            "such as 'gpt2-small' or 'attn-only-2l' (see transformer_lens.loading_from_pretrained."
            "OFFICIAL_MODEL_NAMES)."
        ) from None


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether one TCP connection to the Hugging Face endpoint (HF_ENDPOINT) opens within `timeout` seconds.

    False at once in offline mode (HF_HUB_OFFLINE). One attempt, no retries: the answer decides
    whether a load may use the network at all.
    """
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:  # no route, refused, DNS failure, timeout
        return False


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Hugging Face's offline mode (HF_HUB_OFFLINE semantics) for the duration: the local cache only, no retries."""
    from huggingface_hub import constants

    saved, saved_env = constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE, os.environ["HF_HUB_OFFLINE"] = True, "1"
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


@contextlib.contextmanager
def datasets_offline() -> Iterator[None]:
    """`hub_offline`, and the `datasets` library's own switch (datasets.config.HF_HUB_OFFLINE, read once when it
    is imported) for the duration: datasets load from their local cache only, without retries."""
    from datasets import config

    saved = config.HF_HUB_OFFLINE
    config.HF_HUB_OFFLINE = True
    try:
        with hub_offline():
            yield
    finally:
        config.HF_HUB_OFFLINE = saved


def load_pretrained(name: str, device: str, processing: Mapping[str, bool]) -> tuple[HookedTransformer, str]:
    """(`HookedTransformer.from_pretrained(name)` with the weight-processing flags `processing`, in eval mode,
    its Hugging Face name); a `ModelNotAvailableError` that says what to do where the weights are not available."""
    official = official_name(name)
    online = hub_reachable()  # probe once, so an unreachable hub fails in seconds rather than after retries
    try:
        with contextlib.nullcontext() if online else hub_offline():
            model = HookedTransformer.from_pretrained(name, device=device, **processing)
    except unavailable_errors() as err:
        from huggingface_hub.constants import HF_HUB_CACHE

        cause = " ".join(str(err).split())[:300]
        raise ModelNotAvailableError(
            f"Could not load the weights of {name!r} (Hugging Face name {official!r}): they are not in "
            f"the local Hugging Face cache at {HF_HUB_CACHE} and the hub "
            f"{'could not be reached' if online else 'did not answer a connection attempt (loaded offline)'} "
            f"({type(err).__name__}: {cause}). Run the same command once on a machine with network "
            "access to download them, or set HF_HOME to a directory whose hub cache holds them, or use "
            "--model organism, which ships with this repository."
        ) from None
    model.eval()
    return model, official
