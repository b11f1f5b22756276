"""A script's outputs as one unit: staged while it runs, moved into place together when it succeeds.

Layout under an output root `out`:

    out/.staging/<run>/   a running script's files, until it succeeds (`OutputRun`)

`cli.run` opens the run (`output_run`); `io.save_results`, `io.write_output` and `io.output_file`
stage into it (`current_run`), and outside a run they write at once (`atomic.atomic_file`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no folder locks
    fcntl = None

from analysis.errors import UsageError
from analysis.infra.atomic import atomic_file, fsync, locked, make_dirs, partial_name, sweep_temporaries, umask

STAGING_DIR = ".staging"  # OUT/.staging/<run>/: a running script's files, until it succeeds
JOURNAL = "commit.json"  # in a run's staging folder: written once every file is there; the moves to make
_RUN: OutputRun | None = None


def results_text(plain: Any) -> str:
    """The text of a results file: `plain` (JSON-ready, `io._plain`) indented, NaN and inf refused."""
    return json.dumps(plain, indent=2, allow_nan=False) + "\n"


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
        fsync(parent)
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
        with locked(run_dir, blocking=False) as free:
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
            created += make_dirs(out)
            for directory in map(Path, directories):
                if directory.exists() and not directory.is_dir():
                    raise UsageError(f"Cannot write the output folder {directory}: a file of that name is in "
                                     "the way. Move the file, or give another --out.")
                created += make_dirs(directory)
                probe = partial_name(directory / "probe")
                os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                probe.unlink()
            with locked(out):
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
            sweep_temporaries(Path(directory))
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
            os.chmod(staged, 0o666 & ~umask())
            fsync(staged)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        previous = self._files.pop(target, None)
        if previous is not None:
            previous.unlink(missing_ok=True)
        self._files[target] = staged

    def stage_results(self, target: Path | str, payload: Mapping[str, Any]) -> None:
        """Keep `target`'s results, JSON-ready (`io._plain`), to be written last at commit."""
        json.dumps(payload, allow_nan=False)  # unserialisable results fail now, where the script can be read
        self._results[Path(os.path.abspath(target))] = dict(payload)

    def _relative(self, target: Path) -> str:
        try:
            return str(target.relative_to(self._out))
        except ValueError:
            return str(target)

    def commit(self) -> None:
        """Write the results files, then the journal, then move everything into place (see the class)."""
        with locked(self.out):
            outputs = {self._relative(t): _sha256(s) for t, s in self._files.items()}
            moves = [(s.name, self._relative(t)) for t, s in self._files.items()]
            for i, (target, payload) in enumerate(self._results.items()):
                staged = self.run_dir / f"results-{i:04d}-{target.name}"
                payload = {**payload, "provenance": {**payload["provenance"], "outputs": outputs}}
                staged.write_text(results_text(payload), encoding="utf-8")
                fsync(staged)
                moves.append((staged.name, self._relative(target)))
            try:
                for _, target in moves:
                    self._created += make_dirs((self._out / target).parent)
                    if (self._out / target).is_dir():
                        raise IsADirectoryError(errno.EISDIR, "a folder is in the way", str(self._out / target))
            except OSError as err:
                self._discard()
                raise UsageError(f"Cannot write {err.filename} ({err.strerror}): the run's outputs were not "
                                 "written and the old ones are unchanged. Give --out a folder you can write.") from None
            with atomic_file(self.run_dir / JOURNAL) as tmp:
                tmp.write_text(json.dumps(moves), encoding="utf-8")
            fsync(self.run_dir)
            _roll_forward(self._out, self.run_dir)
            _remove_if_empty([self._out / STAGING_DIR])
        self._close()

    def abort(self) -> None:
        """Discard the staged files; the old outputs stay as they were."""
        with locked(self.out):
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


def current_run() -> OutputRun | None:
    """The run `output_run` has open in this process, or None outside a script's run."""
    return _RUN
