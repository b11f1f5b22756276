"""The benchmark harness: discovery of bench_* functions and the peak-memory measurement (no timings asserted)."""

import sys
import time

import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))


def test_every_benchmark_is_discovered():
    import run

    names = set(run.discover())
    assert {"scan_batched_vs_per_head", "ov_copying_factored_vs_dense", "token_tables_chunked_vs_dense"} <= names


def test_measure_sees_a_large_allocation():
    from benchlib import measure

    def allocate():
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB
        time.sleep(0.05)  # long enough for the sampler
        return float(x[0])

    result, stats = measure(allocate)
    assert result == 1.0
    assert stats["peak_mb"] > 48 and stats["seconds"] > 0
