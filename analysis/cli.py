"""The conventions every script shares: arguments, seeding, devices and the clear-error path.

A script looks like

    def main(args) -> None: ...

    if __name__ == "__main__":
        cli.run(main, cli.parser(__doc__))

`run` turns a `UsageError` (bad input, missing weights) into one paragraph on stderr and exit
status 2, instead of a traceback.
"""

from __future__ import annotations

import argparse
import random
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from analysis.errors import UsageError
from analysis.io import REPO_ROOT


def parser(description: str | None, *, target_head: bool = False) -> argparse.ArgumentParser:
    """An argument parser with the shared flags; `target_head` adds --layer/--head."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="organism",
                   help="'organism' (shipped, offline), a TransformerLens name such as 'gpt2-small', "
                        "'gpt2-random' (random GPT-2-shaped weights) or a directory written by "
                        "analysis.models.save_model (default: organism)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps or auto (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed for every random choice (default: 0)")
    p.add_argument("--out", type=Path, default=REPO_ROOT,
                   help="output root: results go to OUT/results/<model>/, figures to OUT/figures/<model>/ "
                        "(default: the repository root)")
    if target_head:
        p.add_argument("--layer", type=int, default=None, help="target head's layer (default: best head of the survey)")
        p.add_argument("--head", type=int, default=None, help="target head's index (default: best head of the survey)")
    return p


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; anything else must be a device torch can use here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"--device {name!r} is not a torch device ({err}). Use cpu, cuda, cuda:N, mps or auto.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name!r} asks for CUDA, but this torch build sees no CUDA device. Use --device cpu.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name!r} asks for Apple's MPS backend, which is not available here. Use --device cpu.")
    return device


def check_head(model, layer: int, head: int) -> None:
    """A clear error for a layer or head index outside the model."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise UsageError(
            f"Head L{layer}H{head} does not exist: this model has layers 0-{n_layers - 1} and heads "
            f"0-{n_heads - 1} in each layer. Pass --layer and --head within those ranges."
        )


def check_positive(name: str, value: int | float) -> None:
    if value <= 0:
        raise UsageError(f"{name} must be positive, got {value}.")


def check_positive_args(args: argparse.Namespace, *dests: str) -> None:
    """`check_positive` for each named argument, reported under its flag (n_prompts -> --n-prompts)."""
    for dest in dests:
        check_positive(f"--{dest.replace('_', '-')}", getattr(args, dest))


def run(main: Callable[[argparse.Namespace], object], arg_parser: argparse.ArgumentParser,
        argv: list[str] | None = None) -> None:
    """Parse arguments, seed, call `main`; a `UsageError` becomes one paragraph and exit code 2."""
    args = arg_parser.parse_args(argv)
    try:
        args.device = str(resolve_device(args.device))
        seed_everything(args.seed)
        main(args)
    except UsageError as err:
        message = " ".join(str(err).split())
        print(textwrap.fill(f"error: {message}", width=100), file=sys.stderr)
        sys.exit(2)
