"""The atlas at GPT-2 small's size: the whole command on one model, against the budget of 2 CPU threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import Settings

BUDGET = {"seconds": 180, "peak_mb": 4096, "threads": 2}  # the atlas's budget for a GPT-2-small-sized model
REPO = Path(__file__).resolve().parent.parent
# bench/run.py's allocator settings (every block of 64 KiB or more by mmap, for memory tracking) slow a run that
# allocates much; the command is measured as a user runs it, without them.
HARNESS_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
WRAPPER = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); rc = subprocess.call(sys.argv[1:]); "
           "print(json.dumps({'rc': rc, 'seconds': time.perf_counter() - t, "
           "'max_rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")


def bench_atlas_profile_gpt2_random(settings: Settings) -> dict:
    """The whole atlas command on gpt2-random's 144 heads, 2 threads, against the budget of 3 minutes and 4 GB.

    `scripts/atlas.py --models gpt2-random` (load, profile, folder, table, figure, page) runs as a process;
    its wall time and peak resident memory are measured."""
    env = {k: v for k, v in os.environ.items() if k not in HARNESS_ENV}
    env |= {"OMP_NUM_THREADS": str(BUDGET["threads"]), "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(REPO / "scripts" / "atlas.py"), "--models", "gpt2-random", "--out", out,
                   "--threads", str(BUDGET["threads"]), "--seed", str(settings.seed), "--device", settings.device]
        if settings.quick:
            command += ["--n-prompts", "4", "--n-resamples", "100"]
        done = subprocess.run([sys.executable, "-c", WRAPPER, *command], cwd=REPO, env=env, capture_output=True,
                              text=True)
    measured = json.loads(done.stdout.splitlines()[-1])
    if measured["rc"] != 0:
        raise RuntimeError(f"scripts/atlas.py failed with exit {measured['rc']}")
    seconds, peak_mb = measured["seconds"], measured["max_rss_kb"] / 1024  # ru_maxrss: KiB on Linux
    within = seconds <= BUDGET["seconds"] and peak_mb <= BUDGET["peak_mb"]
    return {
        "model": "gpt2-random: GPT-2 small's shapes (12 layers x 12 heads, d_model 768, d_vocab 50257)",
        "heads": 144, "budget": BUDGET, "command": {"seconds": seconds, "peak_rss_mb": peak_mb},
        "within_budget": within,
        "summary": [f"whole command on 144 heads {seconds:.0f} s, peak RSS {peak_mb:.0f} MB "
                    f"({'within' if within else 'OVER'} the budget of {BUDGET['seconds']} s and "
                    f"{BUDGET['peak_mb']} MB on {BUDGET['threads']} threads)"],
    }
