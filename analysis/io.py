"""Where results and figures go, and what they record about how they were made.

Layout under an output root `out` (the repository root by default):

    out/results/<model>/<name>.json    results plus provenance, written atomically
    out/figures/<model>/<name>.pdf|png one shared style
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = ("torch", "transformer-lens", "sae-lens", "transformers", "numpy", "scikit-learn", "leidenalg")


def model_slug(model_name: str) -> str:
    """A directory-safe name for a model: its own name, or a local directory's base name."""
    name = Path(model_name).name if os.sep in model_name else model_name
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"


def results_path(out: Path | str, model_name: str, name: str) -> Path:
    return Path(out) / "results" / model_slug(model_name) / f"{name}.json"


def figures_dir(out: Path | str, model_name: str) -> Path:
    return Path(out) / "figures" / model_slug(model_name)


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


def provenance(model_info: Mapping[str, Any] | None, arguments: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """Everything needed to say how a result was produced."""
    return {
        "model": dict(model_info) if model_info is not None else None,
        "arguments": {k: _plain(v) for k, v in arguments.items()},
        "seed": seed,
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


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write via a temporary file in the same directory and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path | str, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(_plain(obj), indent=2, allow_nan=False) + "\n")


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())


def save_results(
    out: Path | str,
    model_name: str,
    name: str,
    results: Mapping[str, Any],
    *,
    model_info: Mapping[str, Any] | None,
    arguments: Mapping[str, Any],
    seed: int,
) -> Path:
    """`out/results/<model>/<name>.json` = {"provenance": ..., "results": ...}, atomically."""
    payload = {"provenance": provenance(model_info, arguments, seed), "results": results}
    return write_json_atomic(results_path(out, model_name, name), payload)


# --- figures ---------------------------------------------------------------------------------

_STYLE_SET = False


def use_style() -> None:
    """One look for every figure: seaborn's paper context, white grid, colour-blind palette."""
    global _STYLE_SET
    if _STYLE_SET:
        return
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.1)
    matplotlib.rcParams.update({"figure.dpi": 120, "savefig.dpi": 200, "savefig.bbox": "tight",
                                "pdf.fonttype": 42, "axes.titleweight": "bold"})
    _STYLE_SET = True


def save_figure(fig, out: Path | str, model_name: str, name: str) -> list[Path]:
    """Save `fig` as PDF and PNG under `out/figures/<model>/`, each written atomically."""
    import matplotlib.pyplot as plt

    directory = figures_dir(out, model_name)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("pdf", "png"):
        path = directory / f"{name}.{ext}"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=f".{ext}")
        os.close(fd)
        try:
            fig.savefig(tmp, format=ext)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        paths.append(path)
    plt.close(fig)
    return paths
