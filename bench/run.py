"""Run the speed and memory benchmarks and write bench/results/<benchmark>.json.

Every module bench/bench_<topic>.py contributes its functions named bench_<name>(settings) -> dict;
this script finds them all, so adding a benchmark means adding such a function (or module).
Each result file holds the returned dict and the provenance (packages, hardware, git commit).

    python bench/run.py                  # every benchmark
    python bench/run.py --only scan      # those whose name contains "scan"
    python bench/run.py --quick          # smaller sizes, a smoke run
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

# glibc: serve every block of 64 KiB or more by mmap and hand freed memory straight back, so the
# resident set size tracks live tensors and a benchmark's peak is not hidden by memory that an
# earlier one freed. These must be set before the process starts, hence the re-exec.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
if __name__ == "__main__" and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR.parent), str(BENCH_DIR)]

from analysis import cli, io  # noqa: E402
from benchlib import Settings  # noqa: E402
from records import machine  # noqa: E402

RESULTS_DIR = BENCH_DIR / "results"


def discover() -> dict[str, callable]:
    """Every bench_* function of every bench/bench_*.py module, by name (module order, then definition order)."""
    found = {}
    for path in sorted(BENCH_DIR.glob("bench_*.py")):
        module = importlib.import_module(path.stem)
        for name, fn in vars(module).items():
            if name.startswith("bench_") and callable(fn) and getattr(fn, "__module__", None) == module.__name__:
                found[name.removeprefix("bench_")] = fn
    return found


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", default=None, help="run the benchmarks whose name contains any of these")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, not for the README)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR,
                   help="directory for the result files (default: bench/results)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = p.parse_args(argv)

    benchmarks = discover()
    if args.list:
        print("\n".join(f"{name}: {(fn.__doc__ or '').strip().splitlines()[0]}" for name, fn in benchmarks.items()))
        return
    chosen = {n: f for n, f in benchmarks.items() if args.only is None or any(o in n for o in args.only)}
    if not chosen:
        sys.exit(f"error: no benchmark matches {args.only}; run with --list to see them.")
    try:
        device = str(cli.resolve_device(args.device))
    except cli.UsageError as err:
        sys.exit(f"error: {err}")
    settings = Settings(device=device, seed=args.seed, quick=args.quick)
    for name, fn in chosen.items():
        cli.seed_everything(args.seed)
        print(f"== {name}", flush=True)
        where = machine()  # the load average before the benchmark, beside the CPU count
        start = time.perf_counter()
        results = fn(settings)
        payload = {"provenance": io.Provenance(None, vars(args), args.seed).record(), "machine": where,
                   "benchmark": name, "description": (fn.__doc__ or "").strip(), "results": results}
        path = io.write_json_atomic(args.out / f"{name}.json", payload)
        for line in results.get("summary", []):
            print(f"   {line}")
        print(f"   {time.perf_counter() - start:.0f} s; {path}", flush=True)


if __name__ == "__main__":
    main()
