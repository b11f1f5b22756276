"""A trimmed copy of one run's results: only the entries the paper read, for the paper's tests."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

from analysis.io import write_json_atomic
from writeup.results import RUNS_DIR, Results, walk


def trimmed_copy(results: Results, dest: Path | str, scripts: Sequence[str]) -> list[Path]:
    """Write to `dest` (a results/<model>/ to be) only the entries `results` has read, and make's run stamps.

    A path through a list keeps the whole list, so indices stay valid.
    """
    kept: dict[str, dict] = {}
    for source, path in sorted(results.read):
        if not results.is_output(source):
            continue
        keys = walk(results.load(source), path)
        cut = next((i for i, k in enumerate(keys) if isinstance(k, int)), len(keys))  # the first list index
        keep = keys[:max(cut, 1)]
        node, src = kept.setdefault(source, {}), results.load(source)
        for key in keep[:-1]:
            src = src[key]
            node = node.setdefault(key, {})
        node[keep[-1]] = copy.deepcopy(src[keep[-1]])
    dest = Path(dest)
    written = [write_json_atomic(dest / f"{source}.json", data) for source, data in kept.items()]
    for script in scripts:
        stamp = results.run_stamp(script)
        if stamp:
            written.append(write_json_atomic(dest / RUNS_DIR / f"{script}.json", stamp))
    return written
