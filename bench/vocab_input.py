"""Memory bounds of the vocabulary-level analyses at GPT-2 small's size (random weights, same shapes).

  head_input       layer 1's input for all 50257 tokens, in chunks of 4096 (no 50257 x 50257 matrix)
  cosine_pairs     d(q, k) and cos(q, k) windows over all ordered pairs of N = 8192 tokens, in query
                   chunks of 1024; the issue's bound is 2 GB

Each case runs in a fresh interpreter, so one case's freed memory cannot hide the next one's
peak. Reported: wall seconds, the process's peak resident memory (model and libraries
included) and the peak increase during the computation alone (Linux: /proc/self/clear_refs
resets the high-water mark after setup).

    python bench/vocab_input.py                # every case, a JSON list on stdout
    python bench/vocab_input.py cosine_pairs   # one case
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIMITS_MB = {"cosine_pairs": 2048}  # the bound for N = 8192


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _setup(case: str):
    """The model, head inputs and anything else the case needs before it is measured."""
    import torch

    sys.path.insert(0, str(REPO))
    from analysis import prompts, vocab_input
    from analysis.models import load_model

    torch.manual_seed(0)
    model = load_model("gpt2-random")
    reference = prompts.reference_prompts(model, seed=0)
    if case == "head_input":
        return lambda: vocab_input.head_input(model, 1, reference, use_cache=False)
    if case == "cosine_pairs":
        from analysis import similarity

        inputs = vocab_input.head_input(model, 1, reference, token_ids=torch.arange(8192), use_cache=False)
        weights = vocab_input.head_weights(model, 1, 5, include_bias=True)
        edges = torch.linspace(-1, 1, 81)
        return lambda: similarity.windowed_means(*similarity.binned_pairs(inputs, edges, *weights, chunk_size=1024))
    raise ValueError(f"unknown case {case!r}; cases: head_input, cosine_pairs")


def measure(case: str) -> dict:
    """Run one case in this process and measure it."""
    work = _setup(case)
    before = _status_mb("VmRSS")
    resettable = _reset_peak()
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    result = {"case": case, "seconds": round(seconds, 2), "peak_rss_mb": round(peak),
              "peak_increase_mb": round(peak - before) if resettable else None}
    if case in LIMITS_MB:
        result |= {"limit_mb": LIMITS_MB[case], "within_limit": peak <= LIMITS_MB[case]}
    return result


def run(cases: list[str] | None = None) -> list[dict]:
    """Every case (or `cases`), each in a fresh interpreter."""
    results = []
    for case in cases or ["head_input", "cosine_pairs"]:
        out = subprocess.run([sys.executable, __file__, "--one", case], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(measure(sys.argv[2])))
    else:
        print(json.dumps(run(sys.argv[1:] or None), indent=2))
