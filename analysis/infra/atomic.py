"""One file or one folder replaced in one step: readers see the old one or the new one, never half.

`atomic_file` writes a temporary beside the target and renames it over the target; `staged_directory`
fills a new folder beside the target and swaps it in (renameat2's exchange where Linux has it). The
temporaries carry their writer's process id (`partial_name`), so a later writer can remove those of
killed processes (`sweep_temporaries`). Folders are locked with flock (`locked`) where it exists.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no folder locks
    fcntl = None

from analysis.errors import UsageError

PARTIAL_SUFFIX = ".partial"
_MKSTEMP_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|pdf|png)$")  # hidden mkstemp names: .name.xxxxxxxx.tmp


# --- one file, and a folder's lock ----------------------------------------------------------------


def umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync(path: Path) -> None:
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


def partial_name(path: Path) -> Path:
    """`.name.<pid>-<random>.partial` beside `path`: a temporary that `sweep_temporaries` can attribute."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{PARTIAL_SUFFIX}")


@contextmanager
def atomic_file(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it is renamed over `path`.

    Readers see the old file or the new one, never half of one. The file gets mode 0o666 minus the
    umask, whatever the writer did (a `mkstemp` or safetensors file's 0600 would survive the rename).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def locked(directory: Path, blocking: bool = True) -> Iterator[bool]:
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


def make_dirs(path: Path) -> list[Path]:
    """`mkdir -p path`; returns the folders it created, deepest first (to remove them again if unused)."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
    return missing


# --- temporaries of killed writers --------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temporaries(directory: Path) -> None:
    """Remove temporaries of killed writers from an output folder: `.partial` files (`partial_name`) of
    dead processes, and hidden mkstemp-named files (`.name.xxxxxxxx.tmp|pdf|png`) of writers that used mkstemp."""
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
        elif _MKSTEMP_TEMPORARY.match(name):
            path.unlink(missing_ok=True)


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
        with locked(path, blocking=False) as free:
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
        make_dirs(target.parent)
        with locked(target.parent):
            _sweep_siblings(target)
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
            os.chmod(staging, 0o777 & ~umask())  # mkdtemp's 0700 would become the folder's mode
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
                fsync(path)
            fsync(staging)
            with locked(target.parent):
                if not target.exists():
                    os.rename(staging, target)
                elif _exchange(staging, target):
                    shutil.rmtree(staging)  # it now holds the old folder
                else:
                    old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
                    os.rename(target, old)
                    os.rename(staging, target)
                    shutil.rmtree(old)
                fsync(target.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        os.close(owner_fd)
