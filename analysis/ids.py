"""A model's id: the unique, readable name its results and figures are filed under.

A name that is not a directory (``organism``, ``gpt2-random``, a TransformerLens name such as
``gpt2-small``) is its own id, made safe for a path. A directory is its base name plus the
first 8 hex digits of the SHA-256 of its resolved path, so two directories that share a base
name (``runs/a/model`` and ``runs/b/model``) never write into one results folder. Results of
raw weights (``--processing none``) get a folder of their own: the id with the suffix ``+raw``
(``gpt2-small+raw``), which no path-safe name contains, so they never mix with processed ones.

Standard library only: the Makefile runs this file (``python3 analysis/ids.py MODEL PROCESSING``) to name
the folders of ``make all MODEL=path/to/dir`` before the virtual environment exists.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

HASH_DIGITS = 8
PROCESSING_SUFFIX = {"default": "", "none": "+raw"}  # --processing -> the id's suffix (models.PROCESSING's keys)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip(".") or "model"


def model_id(model_name: str, processing: str = "default") -> str:
    """`model_name` itself (path-safe) for a hub or built-in name; for a directory, `<base>-<hash8>` of its resolved
    path; either with `PROCESSING_SUFFIX[processing]` appended (``+raw`` for the raw weights)."""
    path = Path(model_name)
    suffix = PROCESSING_SUFFIX[processing]
    if not path.is_dir():
        return _safe(model_name) + suffix
    resolved = str(path.resolve())
    return f"{_safe(path.resolve().name)}-{hashlib.sha256(resolved.encode()).hexdigest()[:HASH_DIGITS]}{suffix}"


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[2:] and sys.argv[2] not in PROCESSING_SUFFIX:
        sys.exit(f"usage: python3 analysis/ids.py MODEL [{'|'.join(PROCESSING_SUFFIX)}]")
    print(model_id(*sys.argv[1:]))
