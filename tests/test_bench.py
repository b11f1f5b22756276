"""The benchmark harness: discovery of bench_* functions and the peak-memory measurement (no timings asserted)."""

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))


def test_every_benchmark_is_discovered():
    import run

    names = set(run.discover())
    assert {"scan_batched_vs_per_head", "ov_copying_factored_vs_dense", "token_tables_chunked_vs_dense",
            "patching_batched_vs_per_head", "rank_ablation_grid", "sae_step_gpt2_size", "scripts_gpt2_scale"} <= names


def test_script_sweep_order_and_the_peak_memory_of_a_child():
    import json
    import subprocess

    import bench_scripts

    names = bench_scripts.scripts_in_order()
    assert not set(names) & bench_scripts.EXCLUDED and len(names) == len(set(names))
    assert names.index("token_freq") < names.index("cosine_attention_analysis")  # counts before their readers
    assert {p.stem for p in (REPO / "scripts").glob("*.py")} == set(names) | bench_scripts.EXCLUDED
    child = [sys.executable, "-c", "x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096])"]  # 300 MiB touched
    done = subprocess.run([sys.executable, "-c", bench_scripts.WRAPPER, *child], capture_output=True, text=True)
    measured = json.loads(done.stdout.splitlines()[-1])
    assert measured["rc"] == 0 and 300 * 1024 <= measured["max_rss_kb"] < 600 * 1024
    row = {"rc": 2, "seconds": 1.0, "peak_gb": 0.3, "error": "error: no corpus"}
    table = bench_scripts.markdown({"token_freq": row}, "2 cores")
    assert "| `token_freq` | 0.30 | 1 | 2: error: no corpus |" in table and "2 cores" in table


def test_script_table_from_make_run_stamps(tmp_path):
    import json

    import bench_scripts

    (tmp_path / "scan_heads.json").write_text(json.dumps({"seconds": 12.5, "peak_rss_gb": 2.83}))
    rows = bench_scripts.rows_from_stamps(tmp_path, ["scan_heads", "clustering"])
    assert rows["scan_heads"] == {"rc": 0, "seconds": 12.5, "peak_gb": 2.83}
    assert rows["clustering"]["rc"] is None and rows["clustering"]["peak_gb"] is None
    assert "| `scan_heads` | 2.83 | 12 | 0 |" in bench_scripts.markdown(rows, "make")


MEASURE_AN_ALLOCATION = """
import json, sys, time
import torch
sys.path.insert(0, sys.argv[1])
from benchlib import measure

def allocate():
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB
    time.sleep(0.5)  # long enough for the sampler thread, even on a loaded machine
    return float(x[0])

result, stats = measure(allocate)
print(json.dumps({"result": result, **stats}))
"""


def test_measure_sees_a_large_allocation():
    # In a fresh process: memory that earlier tests freed but the allocator kept would hide the allocation's RSS.
    import json
    import subprocess

    done = subprocess.run([sys.executable, "-c", MEASURE_AN_ALLOCATION, str(REPO / "bench")],
                          capture_output=True, text=True, check=True)
    stats = json.loads(done.stdout.splitlines()[-1])
    assert stats["result"] == 1.0
    assert stats["peak_mb"] > 48 and stats["seconds"] > 0
