"""Where results and figures go, what they record about how they were made, and how they are written.

Layout under an output root `out` (the repository root by default):

    out/results/<model>/<name>.json    results plus provenance
    out/figures/<model>/<name>.pdf|png drawn by `analysis.plotting` (one shared style)

A script's files are one unit: `cli.run` opens a run (`infra.staging.output_run`), `save_results`,
`write_output` and `plotting.save_figure` (through `output_file`) stage into it, and the whole set is
moved into place when the script succeeds. Outside a run each file is written at once, atomically
(`write_atomic`). How the staging works (locks, a journal, roll-forward) is `analysis.infra`'s business.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analysis.errors import UsageError
from analysis.ids import model_id
from analysis.infra import staging
from analysis.infra.atomic import atomic_file

REPO_ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = ("torch", "transformer-lens", "sae-lens", "transformers", "numpy", "scikit-learn", "leidenalg")


# The weight processing of this process's script run (--processing), set by `cli.run` through `filed_under`:
# results and figures of raw weights go to a folder of their own (`ids.model_id`'s "+raw" suffix), and a script
# that reads another's results reads those of its own processing.
_PROCESSING = "default"


@contextmanager
def filed_under(processing: str) -> Iterator[None]:
    """Within the block, results and figures paths are those of `processing`'s folder (`run_id`)."""
    global _PROCESSING
    saved, _PROCESSING = _PROCESSING, processing
    try:
        yield
    finally:
        _PROCESSING = saved


def run_id(model_name: str) -> str:
    """The folder name of `model_name`'s results for the current weight processing (`ids.model_id`)."""
    return model_id(model_name, _PROCESSING)


def results_path(out: Path | str, model_name: str, name: str) -> Path:
    return Path(out) / "results" / run_id(model_name) / f"{name}.json"


def figures_dir(out: Path | str, model_name: str) -> Path:
    return Path(out) / "figures" / run_id(model_name)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def git_commit() -> str:
    """HEAD's hash, with '+dirty' when tracked files differ from it; 'unknown' outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@dataclass(frozen=True)
class Provenance:
    """How a result was made, as far as the script knows: the model's own record (`model.analysis_info`, None for
    none), the script's arguments and its seed (`record` adds what the process knows)."""

    model_info: Mapping[str, Any] | None
    arguments: Mapping[str, Any]
    seed: int

    def record(self) -> dict[str, Any]:
        """Everything needed to say how a result was produced: this, the packages, commit, time and hardware."""
        return {
            "model": dict(self.model_info) if self.model_info is not None else None,
            "arguments": {k: _plain(v) for k, v in self.arguments.items()},
            "seed": self.seed,
            "packages": package_versions(),
            "git_commit": git_commit(),
            "utc_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "hardware": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                         "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        }


def _plain(value: Any) -> Any:
    """JSON-ready copy of tensors, arrays, paths and numpy scalars; NaN and inf become null."""
    if isinstance(value, torch.Tensor):
        return _plain(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value



# --- writing files ------------------------------------------------------------------------------
#
# Every file the package writes goes through `write_atomic` (one file, immediately: a temporary
# beside it, then a rename) or, inside a script's run, through `output_file` (staged with the
# run's other files and moved into place only when the run succeeds; see `infra.staging`).


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def write_atomic(path: Path | str, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` at once and atomically, run or no run (caches, paper inputs)."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(_as_bytes(data))
    return Path(path)


def json_text(obj: Any) -> str:
    """`obj` as the JSON text every results file holds (tensors, arrays and paths made plain; NaN as null)."""
    return staging.results_text(_plain(obj))


def write_json_atomic(path: Path | str, obj: Any) -> Path:
    return write_atomic(path, json_text(obj))


def read_results(out: Path | str, model_name: str, name: str, how: str = "") -> Any:
    """The whole results file out/results/<model>/<name>.json (`read_json`), whose error names the script that
    writes it and `how` it is run (e.g. "make seeds") where given."""
    written_by = f"scripts/{name}.py --model {model_name}" + (f" ({how})" if how else "")
    return read_json(results_path(out, model_name, name), written_by)


def read_json(path: Path | str, written_by: str) -> Any:
    """A JSON input file, or a `UsageError` naming the file, what is wrong and `written_by` (what writes it)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist or is not a file. It is written by {written_by}.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        problem = f"it is not UTF-8 text (byte {err.start})"
    except json.JSONDecodeError as err:
        problem = f"it is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}), perhaps cut short"
    except OSError as err:
        problem = f"it cannot be read ({err.strerror})"
    raise UsageError(f"{path} is damaged: {problem}. Write it again with {written_by}.")



def output_file(path: Path | str) -> AbstractContextManager[Path]:
    """Context manager yielding the path to write `path`'s new content to, as part of the current run.

    Inside a script's run (`infra.staging.output_run`, opened by `cli.run`) the file is staged and
    moved into place with the run's other files once the script succeeds; outside a run it is
    written atomically at once.
    """
    run = staging.current_run()
    return run.staged(path) if run is not None else atomic_file(path)


def write_output(path: Path | str, data: str | bytes) -> Path:
    """Write `data` to `path` as part of the current run (CSV tables, HTML pages; see `output_file`)."""
    with output_file(path) as tmp:
        tmp.write_bytes(_as_bytes(data))
    return Path(path)


def save_results(out: Path | str, model_name: str, name: str, results: Mapping[str, Any], provenance: Provenance
                 ) -> Path:
    """`out/results/<model>/<name>.json` = {"provenance": ..., "results": ...}, as part of the current run.

    In a run, the file is written last of the run's files, and its provenance lists every other
    file of the run with its SHA-256 (`provenance.outputs`), so results and figures can be matched.
    """
    payload = _plain({"provenance": {"model_id": run_id(model_name), **provenance.record()},
                      "results": results})
    path = results_path(out, model_name, name)
    run = staging.current_run()
    if run is not None:
        run.stage_results(path, payload)
        return path
    return write_atomic(path, staging.results_text(payload))


def run_directories(out: Path | str, model_name: str) -> list[Path]:
    """The folders a script's run writes to: `out/results/<model>/` and `out/figures/<model>/`."""
    return [results_path(out, model_name, "x").parent, figures_dir(out, model_name)]
