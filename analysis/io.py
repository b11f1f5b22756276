"""Where results and figures go, what they record about how they were made, and how they are written.

Layout under an output root `out` (the repository root by default):

    out/results/<model>/<name>.json    results plus provenance
    out/figures/<model>/<name>.pdf|png drawn by `analysis.plotting` (one shared style)
    out/.staging/<run>/                a running script's files, until it succeeds (`OutputRun`)

A script's files are one unit: `cli.run` opens an `output_run`, `save_results`, `write_output`
and `plotting.save_figure` (through `output_file`) stage into it, and the whole set is moved into
place when the script succeeds.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import errno
import hashlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no folder locks
    fcntl = None

import numpy as np
import torch

from analysis.errors import UsageError
from analysis.ids import model_id

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


# --- writing files ------------------------------------------------------------------------------
#
# Every file the package writes goes through `atomic_file` (one file, immediately: a temporary
# beside it, then a rename) or, inside a script's run, through `output_file` (staged with the
# run's other files and moved into place only when the run succeeds; see `OutputRun`).


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk; folders cannot be fsynced everywhere."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _partial_name(path: Path) -> Path:
    """`.name.<pid>-<random>.partial` beside `path`: a temporary that `_sweep_temporaries` can attribute."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{PARTIAL_SUFFIX}")


@contextmanager
def atomic_file(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it is renamed over `path`.

    Readers see the old file or the new one, never half of one. The file gets mode 0o666 minus the
    umask, whatever the writer did (a `mkstemp` or safetensors file's 0600 would survive the rename).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_name(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def write_atomic(path: Path | str, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` at once and atomically, run or no run (caches, paper inputs)."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(_as_bytes(data))
    return Path(path)


def write_text_atomic(path: Path | str, text: str) -> Path:
    return write_atomic(path, text)


def _json_text(obj: Any) -> str:
    return json.dumps(_plain(obj), indent=2, allow_nan=False) + "\n"


def write_json_atomic(path: Path | str, obj: Any) -> Path:
    return write_atomic(path, _json_text(obj))


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


def output_file(path: Path | str):
    """Context manager yielding the path to write `path`'s new content to, as part of the current run.

    Inside a script's run (`output_run`, opened by `cli.run`) the file is staged and moved into
    place with the run's other files once the script succeeds; outside a run it is written
    atomically at once.
    """
    return _RUN.staged(path) if _RUN is not None else atomic_file(path)


def write_output(path: Path | str, data: str | bytes) -> Path:
    """Write `data` to `path` as part of the current run (CSV tables, HTML pages; see `output_file`)."""
    with output_file(path) as tmp:
        tmp.write_bytes(_as_bytes(data))
    return Path(path)


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
    """`out/results/<model>/<name>.json` = {"provenance": ..., "results": ...}, as part of the current run.

    In a run, the file is written last of the run's files, and its provenance lists every other
    file of the run with its SHA-256 (`provenance.outputs`), so results and figures can be matched.
    """
    payload = {"provenance": {"model_id": run_id(model_name), **provenance(model_info, arguments, seed)},
               "results": results}
    path = results_path(out, model_name, name)
    if _RUN is not None:
        _RUN.stage_results(path, payload)
        return path
    return write_json_atomic(path, payload)


# --- one run's outputs, as one unit --------------------------------------------------------------

STAGING_DIR = ".staging"  # OUT/.staging/<run>/: a running script's files, until it succeeds
JOURNAL = "commit.json"  # in a run's staging folder: written once every file is there; the moves to make
PARTIAL_SUFFIX = ".partial"
_OLD_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|pdf|png)$")  # mkstemp names of earlier versions
_RUN: OutputRun | None = None


@contextmanager
def _locked(directory: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on a folder (flock on the folder itself; released when the process dies).

    Yields False when `blocking` is False and another process holds the lock. Where `fcntl` does
    not exist (Windows) nothing is locked.
    """
    if fcntl is None:
        yield True
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _make_dirs(path: Path) -> list[Path]:
    """`mkdir -p path`; returns the folders it created, deepest first (to remove them again if unused)."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
    return missing


def _remove_if_empty(directories: Sequence[Path]) -> None:
    for directory in sorted(directories, key=lambda d: len(Path(os.path.abspath(d)).parts), reverse=True):
        try:
            directory.rmdir()
        except OSError:
            pass


def _move(source: Path, target: Path) -> None:
    """Rename `source` over `target`; across file systems, copy beside the target first, then rename."""
    try:
        os.replace(source, target)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        with atomic_file(target) as tmp:
            shutil.copyfile(source, tmp)
        source.unlink()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _roll_forward(out: Path, run_dir: Path) -> None:
    """Finish a committed run: move every staged file still there to its target, results last; remove the folder."""
    entries = json.loads((run_dir / JOURNAL).read_text(encoding="utf-8"))
    parents = set()
    for staged_name, target in entries:
        staged, target = run_dir / staged_name, out / target  # a relative target is under out
        if staged.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _move(staged, target)
            parents.add(target.parent)
    for parent in parents:
        _fsync(parent)
    shutil.rmtree(run_dir)


def _sweep(out: Path) -> None:
    """Finish or remove the staging folders of runs that were killed (their owner's lock is free).

    A run killed after its journal was written is rolled forward (its outputs were complete); one
    killed before is removed (the old outputs stay). Call with `out` locked.
    """
    staging = out / STAGING_DIR
    if not staging.is_dir():
        return
    for run_dir in sorted(staging.iterdir()):
        if not run_dir.is_dir():
            run_dir.unlink(missing_ok=True)
            continue
        with _locked(run_dir, blocking=False) as free:
            if not free:
                continue  # a live run
            if (run_dir / JOURNAL).exists():
                try:
                    _roll_forward(out, run_dir)
                except (OSError, ValueError) as err:
                    raise UsageError(
                        f"A run killed while it moved its finished files into place left them in {run_dir}, and "
                        f"they cannot be moved now ({err}). Move them by hand (the targets are listed in "
                        f"{run_dir / JOURNAL}) or delete that folder."
                    ) from None
            else:
                shutil.rmtree(run_dir, ignore_errors=True)
    try:
        staging.rmdir()
    except OSError:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_temporaries(directory: Path) -> None:
    """Remove temporaries of killed writers from an output folder: `.partial` files of dead processes
    and the hidden mkstemp files that earlier versions of this module left behind."""
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        name = path.name
        if not name.startswith(".") or not path.is_file():
            continue
        if name.endswith(PARTIAL_SUFFIX):
            pid = name.removesuffix(PARTIAL_SUFFIX).rsplit(".", 1)[-1].split("-")[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                path.unlink(missing_ok=True)
        elif _OLD_TEMPORARY.match(name):
            path.unlink(missing_ok=True)


class OutputRun:
    """Every file one script run writes, made visible together when the run succeeds.

    Files are written into a staging folder `out/.staging/<run>/` (the owner holds a lock on it).
    `commit` then, with `out` locked (so two runs into one `out` never interleave):
    1. writes the results JSON last of all, with the run's other files and their hashes in its provenance;
    2. writes the journal `commit.json`, the list of moves: from here on the run counts as done;
    3. moves every file into place (os.replace), results JSON last, and removes the staging folder.
    A run killed before step 2 leaves the old files untouched and its staging folder is removed
    by the next run; one killed during step 3 is finished (rolled forward) by the next run. So the
    outputs are the old complete set or the new complete set.
    """

    def __init__(self, out: Path, run_dir: Path, owner_fd: int | None, created: list[Path]):
        self.out, self.run_dir = out, run_dir
        self._out = Path(os.path.abspath(out))
        self._owner_fd = owner_fd
        self._created = created  # folders made for this run, removed again if it leaves them empty
        self._files: dict[Path, Path] = {}  # target -> staged file
        self._results: dict[Path, dict] = {}  # target -> results payload, serialised at commit
        self._count = 0

    @classmethod
    def open(cls, out: Path | str, directories: Sequence[Path | str] = ()) -> OutputRun:
        """Lock `out`, finish or remove killed runs' leftovers, and create this run's staging folder.

        `directories` are the folders the run will write to: each is created if missing and
        tried with a probe file now, so that an unwritable target fails before any work.
        """
        out = Path(out)
        created: list[Path] = []
        try:
            if out.exists() and not out.is_dir():
                raise UsageError(f"--out {out} is a file, not a folder. Give --out a folder (it is created if "
                                 "missing).")
            created += _make_dirs(out)
            for directory in map(Path, directories):
                if directory.exists() and not directory.is_dir():
                    raise UsageError(f"Cannot write the output folder {directory}: a file of that name is in "
                                     "the way. Move the file, or give another --out.")
                created += _make_dirs(directory)
                probe = _partial_name(directory / "probe")
                os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                probe.unlink()
            with _locked(out):
                _sweep(out)
                staging = out / STAGING_DIR
                staging.mkdir(exist_ok=True)
                run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=staging))
                owner_fd = os.open(run_dir, os.O_RDONLY)
                if fcntl is not None:
                    fcntl.flock(owner_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            _remove_if_empty(created)
            where = err.filename or out
            raise UsageError(f"Cannot write the output folder {where} ({err.strerror or err}). Give --out a "
                             "folder you can write (it is created if missing).") from None
        except BaseException:
            _remove_if_empty(created)
            raise
        for directory in directories:
            _sweep_temporaries(Path(directory))
        return cls(out, run_dir, owner_fd, created)

    @contextmanager
    def staged(self, target: Path | str) -> Iterator[Path]:
        """Yield a fresh staged path for `target`; once the block succeeds it is `target`'s new content."""
        target = Path(os.path.abspath(target))
        self._count += 1
        staged = self.run_dir / f"{self._count:04d}-{target.name}"
        os.close(os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        try:
            yield staged
            os.chmod(staged, 0o666 & ~_umask())
            _fsync(staged)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        previous = self._files.pop(target, None)
        if previous is not None:
            previous.unlink(missing_ok=True)
        self._files[target] = staged

    def stage_results(self, target: Path | str, payload: Mapping[str, Any]) -> None:
        plain = _plain(payload)
        json.dumps(plain, allow_nan=False)  # unserialisable results fail now, where the script can be read
        self._results[Path(os.path.abspath(target))] = plain

    def _relative(self, target: Path) -> str:
        try:
            return str(target.relative_to(self._out))
        except ValueError:
            return str(target)

    def commit(self) -> None:
        """Write the results files, then the journal, then move everything into place (see the class)."""
        with _locked(self.out):
            outputs = {self._relative(t): _sha256(s) for t, s in self._files.items()}
            moves = [(s.name, self._relative(t)) for t, s in self._files.items()]
            for i, (target, payload) in enumerate(self._results.items()):
                staged = self.run_dir / f"results-{i:04d}-{target.name}"
                payload = {**payload, "provenance": {**payload["provenance"], "outputs": outputs}}
                staged.write_text(_json_text(payload), encoding="utf-8")
                _fsync(staged)
                moves.append((staged.name, self._relative(target)))
            try:
                for _, target in moves:
                    self._created += _make_dirs((self._out / target).parent)
                    if (self._out / target).is_dir():
                        raise IsADirectoryError(errno.EISDIR, "a folder is in the way", str(self._out / target))
            except OSError as err:
                self._discard()
                raise UsageError(f"Cannot write {err.filename} ({err.strerror}): the run's outputs were not "
                                 "written and the old ones are unchanged. Give --out a folder you can write.") from None
            with atomic_file(self.run_dir / JOURNAL) as tmp:
                tmp.write_text(json.dumps(moves), encoding="utf-8")
            _fsync(self.run_dir)
            _roll_forward(self._out, self.run_dir)
            _remove_if_empty([self._out / STAGING_DIR])
        self._close()

    def abort(self) -> None:
        """Discard the staged files; the old outputs stay as they were."""
        with _locked(self.out):
            self._discard()

    def _discard(self) -> None:  # with self.out locked
        shutil.rmtree(self.run_dir, ignore_errors=True)
        _remove_if_empty([self._out / STAGING_DIR, *self._created])
        self._close()

    def _close(self) -> None:
        if self._owner_fd is not None:
            os.close(self._owner_fd)
            self._owner_fd = None


@contextmanager
def output_run(out: Path | str, directories: Sequence[Path | str] = ()) -> Iterator[OutputRun]:
    """The current run (see `OutputRun`): committed when the block succeeds, discarded when it fails."""
    global _RUN
    if _RUN is not None:
        raise RuntimeError("an output run is already open in this process")
    run = OutputRun.open(out, directories)
    _RUN = run
    try:
        yield run
    except BaseException:
        _RUN = None
        run.abort()
        raise
    _RUN = None
    run.commit()


def run_directories(out: Path | str, model_name: str) -> list[Path]:
    """The folders a script's run writes to: `out/results/<model>/` and `out/figures/<model>/`."""
    return [results_path(out, model_name, "x").parent, figures_dir(out, model_name)]


# --- a folder replaced as one unit (the organism's checkpoint) ---------------------------------


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _sweep_siblings(target: Path) -> None:
    """Leftovers of killed `staged_directory` writers beside `target`: unfinished folders are removed; if a
    kill fell between the two renames of a swap (no atomic exchange here), the old folder is put back."""
    for path in target.parent.glob(f".{target.name}.old-*"):
        if not target.exists():
            os.rename(path, target)
        else:
            shutil.rmtree(path, ignore_errors=True)
    for path in target.parent.glob(f".{target.name}.new-*"):
        with _locked(path, blocking=False) as free:
            if free:
                shutil.rmtree(path, ignore_errors=True)


@contextmanager
def staged_directory(target: Path | str) -> Iterator[Path]:
    """Yield a new folder beside `target` to fill; when the block succeeds it replaces `target` in one step.

    On failure (or a kill) `target` is untouched; the unfinished folder is removed now or by the
    next call for the same target.
    """
    target = Path(os.path.abspath(target))
    try:
        _make_dirs(target.parent)
        with _locked(target.parent):
            _sweep_siblings(target)
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
            os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 would become the folder's mode
            owner_fd = os.open(staging, os.O_RDONLY)
            if fcntl is not None:
                fcntl.flock(owner_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        raise UsageError(f"Cannot write the folder {target} ({err.strerror or err}). Give a folder you can "
                         "write.") from None
    try:
        try:
            yield staging
            for path in staging.rglob("*"):
                _fsync(path)
            _fsync(staging)
            with _locked(target.parent):
                if not target.exists():
                    os.rename(staging, target)
                elif _exchange(staging, target):
                    shutil.rmtree(staging)  # it now holds the old folder
                else:
                    old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
                    os.rename(target, old)
                    os.rename(staging, target)
                    shutil.rmtree(old)
                _fsync(target.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        os.close(owner_fd)
