"""The atlas at GPT-2 small's size: one model's profile, and the whole command, against the budget of 2 CPU cores."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from analysis import atlas, prompts
from analysis.models import load_model, random_gpt2
from benchlib import Settings, measure

BUDGET = {"seconds": 180, "peak_mb": 4096, "threads": 2}  # the atlas's budget for a GPT-2-small-sized model
REPO = Path(__file__).resolve().parent.parent


def bench_atlas_profile_gpt2_random(settings: Settings) -> dict:
    """Every head of random GPT-2 small profiled (atlas.profile_heads), then the whole `scripts/atlas.py` command
    (load, profile, folder, table, figure, page) as a process on 2 threads: wall time and peak resident memory."""
    threads = torch.get_num_threads()
    torch.set_num_threads(BUDGET["threads"])
    model = random_gpt2(n_layers=2) if settings.quick else load_model("gpt2-random", settings.device)
    categories = prompts.CATEGORY_SETS["study"]
    _, profile = measure(lambda: atlas.profile_heads(model, categories, atlas.AtlasSettings(), settings.seed),
                         settings.device)
    torch.set_num_threads(threads)

    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(REPO / "scripts" / "atlas.py"), "--models", "gpt2-random", "--out", out,
                   "--threads", str(BUDGET["threads"]), "--seed", str(settings.seed)]
        env = {**os.environ, "OMP_NUM_THREADS": str(BUDGET["threads"]), "HF_HUB_OFFLINE": "1"}
        start = time.perf_counter()
        done = subprocess.run(command if not settings.quick else command + ["--n-prompts", "4"], cwd=REPO, env=env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"scripts/atlas.py failed: {done.stderr[-2000:]}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux: the largest child
    command_stats = {"seconds": seconds, "peak_rss_mb": peak_mb}
    within = seconds <= BUDGET["seconds"] and peak_mb <= BUDGET["peak_mb"]
    return {
        "model": f"random GPT-2 small shapes: {model.cfg.n_layers} layers x {model.cfg.n_heads} heads",
        "heads": model.cfg.n_layers * model.cfg.n_heads, "budget": BUDGET,
        "profile": profile, "command": command_stats, "within_budget": within,
        "summary": [f"profile of {model.cfg.n_layers * model.cfg.n_heads} heads {profile['seconds']:.0f} s, "
                    f"+{profile['peak_mb']:.0f} MB; whole command {seconds:.0f} s, peak RSS {peak_mb:.0f} MB "
                    f"({'within' if within else 'OVER'} the budget of {BUDGET['seconds']} s and "
                    f"{BUDGET['peak_mb']} MB on {BUDGET['threads']} threads)"],
    }
