"""One model's results files, read along dotted JSON paths, with a record of every entry read."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from analysis.errors import UsageError
from analysis.ids import model_id
from analysis.io import REPO_ROOT, read_json
from analysis.models import checkpoint_path
from analysis.organism.files import GROUND_TRUTH_FILE, ORGANISM_DIR, TRAINING_LOG_FILE

PAPER_DIR = REPO_ROOT / "paper"
FIXED_SOURCES: dict[str, Path] = {  # sources that are no script's output: the repository's own files
    "reported": PAPER_DIR / "reported_gpt2.json",  # citations typed from the literature, never outputs
}
# Records saved beside a model organism's weights (scripts/train_organism.py). A model that came with its own
# (scan_heads recorded its ground truth) is described by them, so a retrained organism's paper reads its own;
# any other model's paper describes the shipped organism that tests the analyses.
CHECKPOINT_SOURCES: dict[str, str] = {"ground_truth": GROUND_TRUTH_FILE, "training_log": TRAINING_LOG_FILE}
MODEL_SOURCE, MODEL_TRUTH = ("scan_heads", "provenance.model.source"), ("scan_heads", "provenance.model.ground_truth")
RUNS_DIR = ".runs"  # results/<model>/.runs/<script>.json: {"seconds", "peak_rss_gb"}, written by make
_INDEX = re.compile(r"-?\d+")


def walk(obj: Any, path: str) -> list[str | int]:
    """The keys and list indices that the dotted `path` names in `obj`, in order.

    A list takes a number (-1 is the last entry). A mapping takes the longest run of the path's
    parts that is one of its keys, so keys with dots in them work: "factors.0.5.self_mass" reads
    factors["0.5"]["self_mass"] when "0.5" is a key. Raises KeyError with the first part not found.
    """
    parts, steps = path.split("."), []
    while parts:
        if isinstance(obj, list) and _INDEX.fullmatch(parts[0]) and -len(obj) <= int(parts[0]) < len(obj):
            key, used = int(parts[0]), 1
        elif isinstance(obj, Mapping):
            used = next((n for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in obj), 0)
            if not used:
                raise KeyError(parts[0])
            key = ".".join(parts[:used])
        else:
            raise KeyError(parts[0])
        obj, parts = obj[key], parts[used:]
        steps.append(key)
    return steps


def lookup(obj: Any, path: str) -> Any:
    """`obj` followed along a dotted path such as "results.top_heads.semantic.0.score"."""
    for key in walk(obj, path):
        obj = obj[key]
    return obj


class Results:
    """The JSON files of one model's run, each read once; records every entry the paper reads."""

    def __init__(self, root: Path | str, model: str, fixed: Mapping[str, Path] = FIXED_SOURCES,
                 processing: str = "default"):
        self.root, self.model, self.fixed, self.processing = Path(root), model, dict(fixed), processing
        self._cache: dict[str, Any] = {}
        self.read: set[tuple[str, str]] = set()  # (source, path) pairs, for trimmed fixture copies

    @property
    def directory(self) -> Path:
        return self.root / "results" / model_id(self.model, self.processing)

    def kind(self, source: str) -> str:
        """Where `source` comes from: "output" (a script's results file), "fixed" (a repository file) or
        "checkpoint" (a record saved beside the organism's weights, CHECKPOINT_SOURCES)."""
        return "fixed" if source in self.fixed else "checkpoint" if source in CHECKPOINT_SOURCES else "output"

    def is_output(self, source: str) -> bool:
        """Whether `source` is a script's results file (not a repository or checkpoint file)."""
        return self.kind(source) == "output"

    def path(self, source: str) -> Path:
        if source in self.fixed:
            return self.fixed[source]
        if source in CHECKPOINT_SOURCES:
            own = self.get(*MODEL_TRUTH, default=None) is not None
            return (checkpoint_path(self.get(*MODEL_SOURCE)) if own else ORGANISM_DIR) / CHECKPOINT_SOURCES[source]
        return self.directory / f"{source}.json"

    def load(self, source: str) -> Any:
        if source not in self._cache:
            path = self.path(source)
            hint, writer = {  # what to do when the file is missing, and who writes it
                "output": (f"run `make figures MODEL={self.model}` (or scripts/{source}.py --model {self.model})",
                           f"`python scripts/{source}.py --model {self.model}`"),
                "fixed": ("it is one of the repository's own files: restore it with git",
                          "git (it is one of the repository's own files)"),
                "checkpoint": ("it is one of the model checkpoint's own records (scripts/train_organism.py writes it)",
                               "scripts/train_organism.py (a checkpoint record)"),
            }[self.kind(source)]
            if not path.exists():
                raise UsageError(f"The paper needs {path}, which does not exist; {hint}.")
            self._cache[source] = read_json(path, writer)
        return self._cache[source]

    def get(self, source: str, path: str, **default: Any) -> Any:
        """The entry at `path` of `source`; a missing entry is an error, or `default=...` where one is given."""
        try:
            value = lookup(self.load(source), path)
        except KeyError as err:
            if "default" in default:
                return default["default"]
            raise UsageError(
                f"{self.path(source)} has no entry {path!r} (no key {err.args[0]!r}): either the script's output "
                "changed since the paper's spec in writeup/spec.py was written (update the spec, or rerun the "
                "script if its results file is older than the script), or the script ran with arguments that "
                "leave the entry out (the paper reads what the scripts' defaults compute)."
            ) from None
        self.read.add((source, path))
        return value

    def run_stamp(self, script: str) -> dict[str, float]:
        """make's record of a script's last run: {"seconds": wall time, "peak_rss_gb": peak memory}, or {}."""
        stamp = self.directory / RUNS_DIR / f"{script}.json"
        return read_json(stamp, f"`make figures MODEL={self.model}`") if stamp.exists() else {}

    def run_seconds(self, script: str) -> float | None:
        """Wall time of a script's last run by make, or None if make did not run it."""
        return self.run_stamp(script).get("seconds")
