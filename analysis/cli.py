"""The conventions every script shares: arguments, their checks, seeding, devices and the clear-error path.

A script looks like

    def build_parser():
        p = cli.parser(__doc__)
        p.add_argument("--n-prompts", type=cli.positive_int, default=16)
        p.add_argument("--n-words", type=cli.positive_int, default=64)
        p.fits_context("--n-words", lambda n: 1 + n)            # BOS + n words
        p.memory("--n-prompts", lambda a, s: cli.pattern_bytes(s, a.n_prompts, 1 + a.n_words))
        return p

    def main(args) -> None: ...

    if __name__ == "__main__":
        cli.run(main, build_parser())

`run` checks every argument before `main` starts, in this order: the flags' types (counts
positive, seeds in [0, 2**32)), the device, then what needs the model's shape and tokenizer
(read from its config and tokenizer files, never its weights): context lengths, memory bounds,
text prompts and input files; last, it tries the output folder. It then opens the run's outputs
(`infra.staging.output_run`: every file the script saves is staged and moved into place together when
`main` returns) and calls `main`. A `UsageError`, from the checks or from `main`, becomes one
paragraph on stderr starting with "error:" and exit status 2, and leaves no file behind.

Flags several scripts share (--input, --categories, --controls, --heads) are declared and read here too;
which heads they name (the target and its controls) is `analysis.heads`.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from analysis import io, models, prompts
from analysis.errors import UsageError
from analysis.heads import check_head
from analysis.ids import model_id
from analysis.infra import staging
from analysis.io import REPO_ROOT
from analysis.token_maps import INPUT_VIEWS

SEED_LIMIT = 2**32  # NumPy's legacy seeding takes [0, 2**32); every script accepts exactly that range
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")  # devices that run a model; "meta" and friends hold no data


# --- flag types: checked as the arguments are parsed ------------------------------------------


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: a whole number >= `minimum` (its `minimum` attribute says which)."""
    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            rule = "positive" if minimum == 1 else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value
    count.minimum = minimum
    return count


positive_int = int_at_least(1)  # argparse type: a whole number >= 1


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and np.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def seed(text: str) -> int:
    """argparse type: a seed in [0, 2**32)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must lie in [0, 2**32) = [0, {SEED_LIMIT - 1}], got {value}")
    return value


# --- memory ------------------------------------------------------------------------------------


def pattern_bytes(shape: models.ModelShape, n_prompts: int, pos: int, heads: int | None = None,
                  copies: int = 3) -> int:
    """Bytes of attention patterns `[n_prompts, heads, pos, pos]` in float32 (default: every head).

    `all_patterns` holds every head's pattern for the whole prompt set, and the scores take about
    two more tensors of that size (masks, masked copies), hence `copies`. For one head's analyses
    (`heads=1`) the count covers its pattern, the ground-truth mask and their products.
    """
    heads = shape.n_layers * shape.n_heads if heads is None else heads
    return copies * 4 * n_prompts * heads * pos * pos


def available_memory() -> int | None:
    """Bytes of memory available to this process now (psutil, else /proc/meminfo), or None if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(need: float, flags: str, what: str) -> None:
    """A `UsageError` naming `flags` when a run's largest allocation, `need` bytes, exceeds the available memory."""
    available = available_memory()
    if available is not None and need > available:
        raise UsageError(f"This run would hold about {_gib(need)} of {what}, but only {_gib(available)} of "
                         f"memory are available. Lower {flags}.")


# --- the parser --------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse with the shared flags, one-paragraph errors, and checks declared beside the arguments.

    The declared checks need the model's shape (`models.ModelShape`) or tokenizer and run in
    `validate`, after parsing and before any model is loaded.
    """

    def __init__(self, *args, staged: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.staged = staged  # whether --out is the output root of a run (`infra.staging.output_run`)
        self._context: list[tuple[str, Callable[[int], int]]] = []
        self._bounds: list[tuple[str, Callable[[models.ModelShape], int], str]] = []
        self._memory: list[tuple[str, Callable[[argparse.Namespace, models.ModelShape], float], str]] = []
        self._prompts: list[str] = []
        self._prompt_files: list[str] = []
        self._inputs: list[tuple[str, Callable[[Path, models.ModelShape | None], object]]] = []

    def error(self, message: str):
        # "argument --seed: must lie in ..." -> "--seed must lie in ...";
        # "argument --task: invalid choice ..." -> "--task: invalid choice ..."
        message = re.sub(r"^argument (\S+): (must|expected) ", r"\1 \2 ", message).removeprefix("argument ")
        raise UsageError(f"{message[:1].upper()}{message[1:]}. Run with --help to see every argument.")

    # Declarations (each names the flag the message will tell the user to change).

    def fits_context(self, flag: str, tokens: Callable[[int], int]) -> None:
        """Each value v of `flag` (one or a list) makes prompts of `tokens(v)` tokens: they must fit the context."""
        self._context.append((flag, tokens))

    def at_most(self, flag: str, bound: Callable[[models.ModelShape], int], what: str) -> None:
        """Each value of `flag` must be at most `bound(shape)`, e.g. the vocabulary size; `what` names the bound."""
        self._bounds.append((flag, bound, what))

    def memory(self, flags: str, nbytes: Callable[[argparse.Namespace, models.ModelShape], float],
               what: str = "attention patterns") -> None:
        """The run's largest allocation, `nbytes(args, shape)`, must fit the available memory; `flags` lower it."""
        self._memory.append((flags, nbytes, what))

    def prompt(self, *flags: str) -> None:
        """Text prompts (`prompts.check_text`); adds --truncate, which allows cutting them to the context."""
        self._prompts += flags
        self._add_truncate()

    def prompt_file(self, flag: str) -> None:
        """A text file of prompts, one per line, each checked like a prompt."""
        self._prompt_files.append(flag)
        self._add_truncate()

    def input_file(self, flag: str, check: Callable[[Path, models.ModelShape | None], object]) -> None:
        """An input file read by the script; `check(path, shape)` raises a `UsageError` for a bad one."""
        self._inputs.append((flag, check))

    def _add_truncate(self) -> None:
        if "--truncate" not in self._option_string_actions:
            self.add_argument("--truncate", action="store_true",
                              help="cut text prompts longer than the model's context to its length, instead of "
                                   "refusing them; the cut is recorded in the results (provenance.arguments.truncated)")

    # Checks.

    def _values(self, args: argparse.Namespace, flag: str) -> list:
        value = getattr(args, self._option_string_actions[flag].dest)
        return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]

    def validate(self, args: argparse.Namespace) -> None:
        """Every declared check, in the order of the module docstring (the model's shape is read, not its weights)."""
        needs_model = self._context or self._bounds or self._memory or self._prompts or self._prompt_files
        shape = models.model_shape(args.model) if needs_model or self._inputs else None
        if shape is not None:
            self._check_shape(args, shape)
        if self._prompts or self._prompt_files:
            args.truncated = {}
            texts = [(flag, value) for flag in self._prompts for value in self._values(args, flag)]
            files = [(flag, Path(v)) for flag in self._prompt_files for v in self._values(args, flag)]
            tokenizer = models.model_tokenizer(args.model) if (texts or files) and shape is not None else None
            if tokenizer is not None:
                for flag, text in texts:
                    self._check_prompt(args, tokenizer, text, shape.n_ctx, flag, flag)
                for flag, path in files:
                    for i, line in enumerate(_text_lines(path, flag), 1):
                        self._check_prompt(args, tokenizer, line, shape.n_ctx, f"line {i} of {flag} {path}",
                                           f"{flag}:{i}")
        for flag, check in self._inputs:
            for value in self._values(args, flag):
                check(Path(value), shape)

    def _check_shape(self, args: argparse.Namespace, shape: models.ModelShape) -> None:
        for flag, tokens in self._context:
            for value in self._values(args, flag):
                if tokens(value) > shape.n_ctx:
                    largest = _largest_fitting(tokens, value, shape.n_ctx)
                    hint = f"Use {flag} {largest} or less." if largest else "No value fits this model."
                    raise UsageError(f"{flag} {value} makes prompts of {tokens(value)} tokens (BOS included), but the "
                                     f"model's context holds {shape.n_ctx}. {hint}")
        for flag, bound, what in self._bounds:
            for value in self._values(args, flag):
                if value > bound(shape):
                    raise UsageError(f"{flag} {value} is more than the {bound(shape)} {what} of this model. "
                                     f"Use {flag} {bound(shape)} or less.")
        for flags, nbytes, what in self._memory:
            check_memory(nbytes(args, shape), flags, what)

    def _check_prompt(self, args, tokenizer, text: str, n_ctx: int, what: str, key: str) -> None:
        cut = prompts.check_text(tokenizer, text, n_ctx, what, truncate=getattr(args, "truncate", False))
        if cut is not None:
            args.truncated[key] = cut


def _largest_fitting(tokens: Callable[[int], int], value: int, n_ctx: int) -> int | None:
    """The largest v < value with tokens(v) <= n_ctx (tokens grows with v), by bisection; None if v = 1 does not fit."""
    low, high = 0, value  # tokens(low) fits (or low = 0), tokens(high) does not
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if tokens(mid) <= n_ctx else (low, mid)
    return low or None


def _text_lines(path: Path, flag: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file, or a `UsageError` saying why it is not one."""
    if not path.is_file():
        raise UsageError(f"{flag} {path} is not a file. Give a text file with one prompt per line.")
    data = path.read_bytes()
    if b"\0" in data:
        raise UsageError(f"{flag} {path} is a binary file (it holds NUL bytes), not text. Give a text file with "
                         "one prompt per line.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{flag} {path} is not UTF-8 text (byte {err.start} cannot be decoded). Give a UTF-8 "
                         "text file with one prompt per line.") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise UsageError(f"{flag} {path} holds no non-empty line.")
    return lines


def parser(description: str | None, *, target_head: bool = False, staged: bool = True, weights: bool = True,
           out_default: Path = REPO_ROOT, out_help: str | None = None) -> Parser:
    """A `Parser` with the shared flags; `target_head` adds --layer/--head, `weights` --processing.

    `staged=False` is for scripts whose --out is not an output root of results and figures (the
    organism's training writes a checkpoint folder, as one unit of its own).
    """
    p = Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter, staged=staged)
    p.add_argument("--model", default="organism",
                   help="'organism' (shipped, offline; the other shipped ones are 'organism-<name>'), a TransformerLens name such as 'gpt2-small', "
                        "'gpt2-random' (random GPT-2-shaped weights) or a directory written by "
                        "analysis.models.save_model (default: organism)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps or auto (default: cpu)")
    p.add_argument("--seed", type=seed, default=0, help="seed for every random choice, in [0, 2**32) (default: 0)")
    p.add_argument("--out", type=Path, default=out_default,
                   help=out_help or "output root: results go to OUT/results/<model>/, figures to OUT/figures/<model>/ "
                                    "(default: the repository root)")
    if weights:
        p.add_argument("--processing", choices=list(models.PROCESSING), default="default",
                       help="weight processing at load time: 'default' (TransformerLens's from_pretrained: fold_ln, "
                            "center_writing_weights, center_unembed, fold_value_biases) or 'none' (the raw weights, "
                            "as studies of raw Hugging Face weights used); recorded in the results, and 'none' files "
                            "them under OUT/results/<model>+raw/ (default: default)")
    if target_head:
        p.add_argument("--layer", type=int, default=None, help="target head's layer (default: best head of the survey)")
        p.add_argument("--head", type=int, default=None, help="target head's index (default: best head of the survey)")
    return p


def add_results_processing_argument(p: argparse.ArgumentParser) -> None:
    """--processing for a script that reads a run's results, not weights: the run whose folder it reads."""
    p.add_argument("--processing", choices=list(models.PROCESSING), default="default",
                   help="the weight processing of the run whose results are used: 'none' for the raw-weight "
                        "results of --processing none, filed under <model>+raw (default: default)")


def add_input_argument(p: argparse.ArgumentParser, default: str = "mean") -> None:
    """--input: which view of the token inputs E a token-space script uses (`token_maps.INPUT_VIEWS`)."""
    p.add_argument("--input", choices=INPUT_VIEWS, default=default,
                   help="token inputs E: 'mean' (token at the mean context of category prompts of "
                        "--categories), 'zero' (positions and earlier attention zeroed), 'context' (real input "
                        "averaged over random contexts) or 'study' (the original study's construction: token ids "
                        "0..n_ctx-1 as one prompt, mean positions and earlier attention outputs) "
                        f"(default: {default})")


def add_categories_argument(p: argparse.ArgumentParser, default: str = "study") -> None:
    """--categories: which category set the semantic prompts draw from (`prompts.CATEGORY_SETS`)."""
    p.add_argument("--categories", choices=list(prompts.CATEGORY_SETS), default=default,
                   help="category words of the semantic prompts: 'study' (the study's 8 categories, 41 words, "
                        "the set every comparison with its reported values uses) or 'all' (those plus the "
                        f"group-map words, 10 categories) (default: {default})")


def chosen_categories(args: argparse.Namespace) -> tuple[dict[str, list[str]], dict]:
    """(categories, record) for --categories: the category words themselves and what the results record
    of them, `{"set": "study" | "all", "names": [...], "words": n}`."""
    categories = prompts.CATEGORY_SETS[args.categories]
    return categories, {"set": args.categories, "names": list(categories),
                        "words": sum(len(words) for words in categories.values())}


def add_controls_argument(p: argparse.ArgumentParser) -> None:
    """--controls: which control heads a run-based mechanism statistic is computed for (`heads.control_heads`)."""
    p.add_argument("--controls", choices=("default", "all"), default="default",
                   help="control heads: 'default' (every other head of the target's layer plus the scan's top "
                        "previous-token, induction, duplicate-token and semantic heads) or 'all' (every head)")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; anything else must be a device that torch can run a model on here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"--device {name!r} is not a torch device ({err}). Use cpu, cuda, cuda:N, mps or auto.") from None
    if device.type not in DEVICE_TYPES:
        raise UsageError(f"--device {name!r} is not a device that computes (torch's {device.type!r} device holds "
                         "no data). Use cpu, cuda, cuda:N, mps or auto.")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name!r} asks for CUDA, but this torch build sees no CUDA device. "
                             "Use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name!r} asks for Apple's MPS backend, which is not available here. Use --device cpu.")
    if device.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise UsageError(f"--device {name!r} asks for an Intel XPU, which is not available here. Use --device cpu.")
    return device


def parse_heads(model, specs: Sequence[str], flag: str = "--heads") -> list[tuple[int, int]]:
    """(layer, head) of each "LAYER.HEAD" spec of a --heads flag, each checked against the model."""
    heads = []
    for spec in specs:
        try:
            layer, head = (int(x) for x in spec.split("."))
        except ValueError:
            raise UsageError(f"{flag} takes LAYER.HEAD pairs such as 1.1; got {spec!r}.") from None
        check_head(model, layer, head)
        heads.append((layer, head))
    return heads


def print_error(err: UsageError) -> None:
    message = " ".join(str(err).split())
    # Never break inside a path or a flag: both must survive copy and paste.
    print(textwrap.fill(f"error: {message}", width=100, break_on_hyphens=False, break_long_words=False),
          file=sys.stderr)


def run(main: Callable[[argparse.Namespace], object], arg_parser: argparse.ArgumentParser,
        argv: list[str] | None = None) -> None:
    """Parse and check the arguments, seed, and call `main` inside one output run (see the module docstring).

    A `UsageError` becomes one paragraph and exit code 2; the run's staged files are then discarded.
    """
    try:
        args = arg_parser.parse_args(argv)
        args.device = str(resolve_device(args.device))
        if isinstance(arg_parser, Parser):
            arg_parser.validate(args)
        staged = getattr(arg_parser, "staged", True)
        with io.filed_under(getattr(args, "processing", "default")):  # raw weights: a results folder of their own
            outputs = (staging.output_run(args.out, io.run_directories(args.out, args.model)) if staged
                       else nullcontext())
            with outputs:
                seed_everything(args.seed)
                main(args)
    except UsageError as err:
        print_error(err)
        sys.exit(2)


def add_models_argument(p: Parser, default: Sequence[str]) -> None:
    """--models A B ...: the models of a many-model run (default `default`); --model X alone runs X only."""
    p.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                   help="models to run, each as --model takes it (default: " + " ".join(default) + ")")
    p.set_defaults(model=None, default_models=list(default))
    p._option_string_actions["--model"].help = "one model only (same as --models MODEL)"


def chosen_models(args: argparse.Namespace) -> list[str]:
    """The models of --models, else --model, else the default; each checked (`models.model_shape`: an unknown
    name is a `UsageError`), duplicates (by id) refused."""
    names = args.models or ([args.model] if args.model else args.default_models)
    seen: dict[str, str] = {}
    for name in names:
        models.model_shape(name)
        other = seen.setdefault(model_id(name), name)
        if other != name or names.count(name) > 1:
            raise UsageError(f"--models names the same model twice ({other!r} and {name!r}). Give each model once.")
    return list(names)
