"""Shared pieces of the benchmarks: a settings object, and time plus peak memory of one call.

Peak memory is the process's resident set size (RSS), sampled every few milliseconds in a
background thread while the call runs, minus the RSS just before it: what the call itself added
at its worst. On CUDA the peak allocated by torch is reported too.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

MB = 2**20


@dataclass(frozen=True)
class Settings:
    """What every benchmark function receives."""

    device: str = "cpu"
    seed: int = 0
    quick: bool = False  # smaller sizes, for a smoke run


def _rss() -> int:
    try:
        import psutil

        return psutil.Process(os.getpid()).memory_info().rss
    except ImportError:  # Linux without psutil
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakSampler(threading.Thread):
    def __init__(self, interval: float = 0.002):
        super().__init__(daemon=True)
        self.interval, self.peak, self._done = interval, _rss(), threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(self.interval)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, _rss())


def measure(fn: Callable[[], Any], device: str = "cpu", repeats: int = 1) -> tuple[Any, dict[str, float]]:
    """Run `fn` `repeats` times; (its last result, {"seconds": best wall time, "peak_mb": peak added RSS, ...})."""
    cuda = torch.device(device).type == "cuda"
    best, peak_added, result = float("inf"), 0.0, None
    for _ in range(repeats):
        result = None
        gc.collect()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base_cuda = torch.cuda.memory_allocated()
        sampler = _PeakSampler()
        base = _rss()
        sampler.start()
        start = time.perf_counter()
        result = fn()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
        peak_added = max(peak_added, (sampler.stop() - base) / MB)
    stats = {"seconds": best, "peak_mb": peak_added}
    if cuda:
        stats["cuda_peak_mb"] = (torch.cuda.max_memory_allocated() - base_cuda) / MB
    return result, stats


def ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def save_random_sae(directory, d_in: int = 768, d_sae: int = 32768, seed: int = 0):
    """A SAELens StandardSAE with random weights (default: the size of GPT-2 small's 32k residual SAEs),
    saved as SAELens saves one, for a script's --sae-path where the real SAE cannot be downloaded."""
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed)
    StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae)).save_model(directory)
    return directory
