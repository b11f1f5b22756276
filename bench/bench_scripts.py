"""Every script at GPT-2 small's size: peak resident memory and wall time of each, run as a user runs it.

Each script of scripts/ (but train_organism, build_paper and make_paper_inputs, which are not
investigations) runs as its own process on `--model gpt2-random` with its default settings, in the
Makefile's demo order (so that token_freq's counts exist before the scripts that read them), with a
fresh vocabulary-input cache and the hub offline. Its peak RSS is the child's `ru_maxrss`, read by a
small wrapper process that runs nothing else. sae_features gets `--sae-path` to a random SAE of
GPT-2's real size (32768 x 768), since SAELens's GPT-2 SAE cannot be downloaded here; every other
script gets no argument but --model and --out. Writes bench/results/scripts_gpt2_scale.{json,md}
(the JSON through run.py) and keeps going when a script fails, recording its exit status and the
last lines it printed. `make all MODEL=gpt2-random` records the same two figures per script in its
run stamps; `python bench/bench_scripts.py results/gpt2-random/.runs` prints them as this table.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import Settings, save_random_sae

REPO = Path(__file__).resolve().parent.parent
EXCLUDED = {"train_organism", "build_paper", "make_paper_inputs"}
LIMIT_GB = 6.0
# Runs `argv`, then prints {"rc", "seconds", "max_rss_kb"} of that one child (Linux: ru_maxrss in KiB).
WRAPPER = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); rc = subprocess.call(sys.argv[1:]); "
           "print(json.dumps({'rc': rc, 'seconds': time.perf_counter() - t, "
           "'max_rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")


def scripts_in_order() -> list[str]:
    """The Makefile's DEMO_SCRIPTS order, then any other script of scripts/ (alphabetical), minus EXCLUDED."""
    demo = []
    for line in (REPO / "Makefile").read_text().splitlines():
        match = re.match(r"DEMO_SCRIPTS\s*[:+]?=\s*(.*)", line)
        if match:
            demo += match.group(1).split()
    present = sorted(p.stem for p in (REPO / "scripts").glob("*.py"))
    ordered = [s for s in demo if s in present] + [s for s in present if s not in demo]
    return [s for s in ordered if s not in EXCLUDED]


def run_script(name: str, model: str, out: Path, extra: list[str], env: dict, timeout: float) -> dict:
    """One script in its own process: exit status, wall seconds, peak RSS (GB), the last lines of its output."""
    argv = [sys.executable, str(REPO / "scripts" / f"{name}.py"), "--model", model, "--out", str(out), *extra]
    log = out / f"{name}.log"
    with open(log, "w") as handle:
        try:
            done = subprocess.run([sys.executable, "-c", WRAPPER, *argv], cwd=REPO, env=env, timeout=timeout,
                                  stdout=subprocess.PIPE, stderr=handle, text=True)
        except subprocess.TimeoutExpired:
            return {"rc": None, "seconds": timeout, "peak_gb": None, "error": f"timed out after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    measured = json.loads(lines[-1])  # the wrapper's line comes last; the script's own output comes before
    result = {"rc": measured["rc"], "seconds": round(measured["seconds"], 1),
              "peak_gb": round(measured["max_rss_kb"] * 1024 / 1e9, 2), "arguments": extra}
    if measured["rc"] != 0:
        tail = [line for line in log.read_text().replace("\r", "\n").splitlines() if line.strip()][-4:]
        result["error"] = " ".join(" ".join(tail).split())[-600:]
    return result


def markdown(rows: dict[str, dict], machine: str) -> str:
    lines = [f"Every script on `--model gpt2-random` with its default settings; {machine}.", "",
             "| script | peak RSS (GB) | wall (s) | exit |", "|---|---|---|---|"]
    for name, row in rows.items():
        peak = "" if row["peak_gb"] is None else f"{row['peak_gb']:.2f}"
        status = "0" if row["rc"] == 0 else f"{row['rc']}: {row.get('error', '')[:160]}"
        lines.append(f"| `{name}` | {peak} | {row['seconds']:.0f} | {status} |")
    return "\n".join(lines) + "\n"


def rows_from_stamps(runs_dir: Path, names: list[str]) -> dict[str, dict]:
    """The same table from make's run stamps (`results/<id>/.runs/<script>.json`: seconds and peak_rss_gb), so one
    `make all MODEL=gpt2-random` serves as this benchmark; a script without a stamp did not finish under make."""
    rows = {}
    for name in names:
        stamp = runs_dir / f"{name}.json"
        if stamp.exists():
            data = json.loads(stamp.read_text())
            rows[name] = {"rc": 0, "seconds": data["seconds"], "peak_gb": data.get("peak_rss_gb")}
        else:
            rows[name] = {"rc": None, "seconds": 0.0, "peak_gb": None, "error": "no run stamp: failed or not run"}
    return rows


def measure_scripts(names: list[str], model: str = "gpt2-random", timeout: float = 3600,
                    markdown_path: Path | None = None) -> dict:
    """Run `names` one after another as described above; the per-script table."""
    with tempfile.TemporaryDirectory(prefix="bench-scripts-") as tmp:
        tmp = Path(tmp)
        out, cache = tmp / "out", tmp / "cache"
        out.mkdir()
        sae_dir = save_random_sae(tmp / "random-sae-32k")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # as a user's shell has it
        env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", ANALYSIS_CACHE_DIR=str(cache))
        extras = {"sae_features": ["--sae-path", str(sae_dir)]}
        rows = {}
        for name in names:
            rows[name] = run_script(name, model, out, extras.get(name, []), env, timeout)
            row = rows[name]
            print(f"   {name}: exit {row['rc']}, {row['seconds']:.0f} s, peak {row['peak_gb']} GB", flush=True)
    machine = (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
               f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    if markdown_path is not None:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(markdown(rows, machine))
    return {"model": model, "machine": machine, "limit_gb": LIMIT_GB, "scripts": rows}


def bench_scripts_gpt2_scale(settings: Settings) -> dict:
    """Peak RSS and wall time of every script on gpt2-random with its defaults (about half an hour on 2 cores)."""
    names = scripts_in_order()
    if settings.quick:  # a smoke run: the scripts whose GPT-2-scale cost this benchmark was made to watch
        names = [n for n in names if n in ("activation_patching", "sae_features", "eigenvalue_rank_ablation")]
    result = measure_scripts(names, markdown_path=Path(__file__).resolve().parent / "results"
                             / "scripts_gpt2_scale.md")
    rows = result["scripts"]
    failed = [n for n, r in rows.items() if r["rc"] != 0]
    over = [n for n, r in rows.items() if r["peak_gb"] is not None and r["peak_gb"] > LIMIT_GB]
    worst = max(rows, key=lambda n: rows[n]["peak_gb"] or 0)
    result["summary"] = [f"{len(rows)} scripts, {sum(r['seconds'] for r in rows.values()):.0f} s in all; highest peak "
                         f"{rows[worst]['peak_gb']} GB ({worst}); over {LIMIT_GB:g} GB: {over or 'none'}; "
                         f"failed: {failed or 'none'}"]
    result["within_limit"] = not over
    return result


if __name__ == "__main__":  # python bench/bench_scripts.py results/gpt2-random/.runs: make's stamps as the table
    stamps = Path(sys.argv[1])
    print(markdown(rows_from_stamps(stamps, scripts_in_order()), f"from make's run stamps in {stamps}"), end="")
