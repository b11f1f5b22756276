"""The atlas: its rules on hand-built heads, its table, and the atlas of the shipped models finding what was planted.

The planted heads are read from each organism's ground truth, here only: the atlas itself is told nothing.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

from analysis import atlas
from analysis.atlas_store import combine, csv_text, model_folder, table_row
from analysis.organism.files import ground_truth, shipped_organisms
from conftest import REPO, run_main, run_script
from test_atlas_page import detail, row_order, wait_for

# --- hand-built heads -----------------------------------------------------------------------------


def verdict(holds: bool, value: float = 1.0) -> dict:
    return {"value": value, "low": value - 0.1, "high": value + 0.1, "holds": holds}


def hand_head(avoids=(False, False), attracts=(False, False), previous=0.0, induction=(0.0, 0.0),
              duplicate=(0.0, 0.0), s=2.0, selection_s=None, layer=0) -> dict:
    """A head record as `atlas.profile_heads` writes it, with the given scores and verdicts per reading."""
    readings = {r: {"self_avoidance": verdict(a, -2.0), "category_attraction": verdict(c, 2.0)}
                for r, a, c in zip(atlas.READINGS, avoids, attracts)}
    interval = {"value": s, "low": s - 0.1, "high": s + 0.1}
    head = {"layer": layer, "head": 0, "depth": float(layer), "previous_token": previous,
            "induction": {"50": induction[0], "20": induction[1]},
            "duplicate": {"50": duplicate[0], "20": duplicate[1]},
            "S": interval, **{m: interval for m in atlas.MASSES}, **readings,
            "selection": {"S": s if selection_s is None else selection_s, "behaviour": readings["behaviour"]},
            "within_model": {"S_percentile": 0.0, "S_z": 0.0}}
    return {**head, "kind": atlas.kind_label(head)}


@pytest.mark.parametrize("head, kind", [
    (hand_head(avoids=(True, True), attracts=(True, True), previous=0.9), "semantic"),  # semantic wins over the rest
    (hand_head(avoids=(True, False), attracts=(True, True)), "category"),  # one reading short of semantic
    (hand_head(avoids=(True, True), attracts=(False, True)), "self-avoider"),
    (hand_head(previous=0.5), "previous-token"),
    (hand_head(previous=0.49), "other"),
    (hand_head(induction=(0.9, 0.3)), "induction"),
    (hand_head(induction=(0.9, 0.29)), "other"),  # one repeat length is not enough
    (hand_head(duplicate=(0.4, 0.4)), "duplicate-token"),
    (hand_head(), "other"),
])
def test_each_head_takes_the_first_kind_whose_rule_it_meets(head, kind):
    assert atlas.kind_label(head) == kind


def test_within_model_gives_the_share_of_other_heads_below_and_the_z_score_against_them():
    percentile, z = atlas.within_model(torch.tensor([1.0, 2.0, 3.0, float("nan")]))
    assert percentile[:3].tolist() == [0.0, 0.5, 1.0]
    # head 0 against heads 1, 2: mean 2.5, std 0.7071 -> z = -1.5 / 0.7071
    assert z[0].item() == pytest.approx(-1.5 / 0.5 ** 0.5)
    assert z[1].item() == pytest.approx(0.0)  # the others, 1 and 3, have mean 2
    percentile, z = atlas.within_model(torch.tensor([5.0, 5.0, 5.0]))
    assert percentile.tolist() == [0.0, 0.0, 0.0] and z.isnan().all()  # no spread: no z-score


def test_the_ranking_puts_heads_with_both_properties_first_and_reads_only_the_selection_set():
    heads = {
        "a": hand_head(s=0.01, selection_s=5.0),  # lowest reported S, but no property: ranked after b and c
        "b": hand_head(avoids=(True, True), attracts=(True, True), s=3.0, selection_s=0.5),
        "c": hand_head(avoids=(True, True), attracts=(True, True), s=0.1, selection_s=0.9),
        "d": hand_head(s=9.0, selection_s=1.0),
    }
    assert atlas.ranked(heads) == {"b": 1, "c": 2, "d": 3, "a": 4}


def test_the_combined_table_ranks_across_models_and_keys_heads_by_model_and_name():
    profiles = {name: {"model": {"id": name, "name": name}, "categories": {"set": "study"},
                       "heads": {"L0H0": hand_head(s=s), "L1H0": hand_head((True, True), (True, True), s=s, layer=1)}}
                for name, s in (("m1", 1.0), ("m2", 0.5))}
    combined = combine(profiles)
    assert list(combined["heads"]) == ["m2/L1H0", "m1/L1H0", "m2/L0H0", "m1/L0H0"]
    assert [h["rank"] for h in combined["heads"].values()] == [1, 2, 3, 4]
    rows = [table_row(h["model"], h["head_name"], h) for h in combined["heads"].values()]
    lines = csv_text(rows).splitlines()
    assert len(lines) == 5 and lines[0].startswith("rank,model,head,")
    assert lines[1].startswith("1,m2,L1H0,")


# --- the atlas of the shipped models ---------------------------------------------------------------

FIVE = ("organism", "organism-llama", "organism-neox", "organism-negative-control", "gpt2-random")


def planted(model: str) -> dict[str, list[int]]:
    return ground_truth(shipped_organisms()[model])["planted_heads"]


@pytest.fixture(scope="module")
def five_model_atlas(tmp_path_factory):
    out = tmp_path_factory.mktemp("atlas")
    done = run_script("atlas", "--models", *FIVE, "--out", str(out), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "atlas.json").read_text())["results"], out


@pytest.mark.e2e
def test_the_atlas_ranks_each_planted_semantic_head_above_every_other_head_of_five_models(five_model_atlas):
    results, _ = five_model_atlas
    semantic = {f"{m}/L{l}H{h}" for m in FIVE[:3] for l, h in [planted(m)["semantic"]]}
    ranks = {key: results["heads"][key]["rank"] for key in semantic}
    assert sorted(ranks.values()) == [1, 2, 3], ranks


@pytest.mark.e2e
def test_no_head_of_the_negative_control_or_of_random_gpt2_gets_both_properties(five_model_atlas):
    results, _ = five_model_atlas
    for key, head in results["heads"].items():
        if head["model"] in ("organism-negative-control", "gpt2-random"):
            assert head["kind"] != "semantic", key
            assert not all(atlas.holds_in_both(head, p) for p in ("self_avoidance", "category_attraction")), key
    control = planted("organism-negative-control")
    l, h = control["decoy"]
    assert results["heads"][f"organism-negative-control/L{l}H{h}"]["kind"] == "category"  # attraction only
    l, h = control["avoider"]
    assert results["heads"][f"organism-negative-control/L{l}H{h}"]["kind"] == "self-avoider"  # avoidance only


@pytest.mark.e2e
def test_the_atlas_labels_each_planted_previous_token_and_induction_head(five_model_atlas):
    results, _ = five_model_atlas
    for model in FIVE[:4]:
        for kind in ("previous_token", "induction"):
            l, h = planted(model)[kind]
            assert results["heads"][f"{model}/L{l}H{h}"]["kind"] == kind.replace("_", "-"), (model, kind)


@pytest.mark.e2e
def test_the_atlas_writes_one_row_per_head_and_its_figure_and_page(five_model_atlas):
    results, out = five_model_atlas
    n_heads = 4 * 8 + 144
    assert len(results["heads"]) == n_heads and results["missing"] == {}
    assert len((out / "atlas.csv").read_text().splitlines()) == n_heads + 1
    for model in FIVE:
        folder = model_folder(out, model)
        assert {p.name for p in folder.iterdir()} == {"profile.json", "heads.csv", "display.json"}
    assert (out / "figures" / "atlas_scatter.pdf").is_file() and (out / "figures" / "atlas_scatter.png").is_file()
    assert (out / "index.html").is_file()


@pytest.mark.e2e
def test_the_page_of_the_five_model_atlas_works_in_a_real_browser(five_model_atlas, browser):
    results, out = five_model_atlas
    browser.get_log("browser")
    browser.get((out / "index.html").as_uri())
    rows = row_order(browser)
    assert rows == list(results["heads"])  # one row per head of every model, in rank order
    l, h = planted("organism-neox")["semantic"]
    key = f"organism-neox/L{l}H{h}"
    browser.execute_script(f"document.querySelector('#atlas-table tbody tr[data-head=\"{key}\"]').click();")
    shown = wait_for(browser, lambda d: (v := detail(d))["head"] == key and v["drawn"] and v)
    assert f"L{l}H{h} of organism-neox" == shown["title"] and "semantic" in shown["text"]
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


# --- the engine: local processes, a killed job, a rerun --------------------------------------------

QUICK = ("--n-prompts", "16", "--n-words", "32", "--scan-prompts", "8", "--n-resamples", "200")


def start_atlas(out, *models: str) -> tuple[subprocess.Popen, dict[str, int]]:
    """scripts/atlas.py on `models` with the local executor, started; once every job has started, the process and
    {model: its job's process id} (submitit's local job id: the process it starts for the job)."""
    args = [sys.executable, str(REPO / "scripts" / "atlas.py"), "--models", *models, "--executor", "local",
            "--out", str(out), *QUICK]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    submitted, deadline = [], time.monotonic() + 120
    while len(submitted) < len(models) and time.monotonic() < deadline:
        submitted = sorted((out / "jobs").glob("*_submitted.pkl")) if (out / "jobs").is_dir() else []
        time.sleep(0.05)
    jobs = {}
    for path in submitted:
        with path.open("rb") as f:
            jobs[pickle.load(f).args[0].model] = int(path.name.split("_")[0])
    return process, jobs


def kill_tree(pid: int) -> None:
    """SIGKILL a job: submitit's process (its local job id) and the worker it started, children first."""
    import psutil

    job = psutil.Process(pid)
    for process in [*job.children(recursive=True), job]:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.e2e
def test_the_local_executor_runs_two_models_at_once_and_the_table_is_built_from_their_folders(tmp_path):
    process, jobs = start_atlas(tmp_path, "organism", "organism-neox")
    assert len(jobs) == 2 and all(alive(pid) for pid in jobs.values())  # two job processes at the same time
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    profiled_in = {json.loads((model_folder(tmp_path, model) / "profile.json").read_text())["results"]["job"]["process"]
                   for model in jobs}
    assert len(profiled_in) == 2 and os.getpid() not in profiled_in and process.pid not in profiled_in
    combined = json.loads((tmp_path / "atlas.json").read_text())["results"]
    assert {h["model"] for h in combined["heads"].values()} == {"organism", "organism-neox"}
    assert len(combined["heads"]) == 16

    (model_folder(tmp_path, "organism") / "profile.json").unlink()  # a folder without its profile is not finished
    again = run_script("atlas", "--models", "organism", "organism-neox", "--out", str(tmp_path), *QUICK)
    assert "organism-neox: finished earlier, skipped" in again.stdout and "organism: to profile" in again.stdout


@pytest.mark.e2e
def test_a_job_killed_mid_run_leaves_its_model_absent_and_the_rerun_completes_it(tmp_path):
    process, by_model = start_atlas(tmp_path, "organism", "organism-neox")
    kill_tree(by_model["organism-neox"])  # mid-run: the job has only just been started
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr[-3000:]
    assert "organism-neox: FAILED" in stderr
    visible = sorted(p.name for p in (tmp_path / "models").iterdir() if not p.name.startswith("."))
    assert visible == ["organism"]  # the killed model is absent, with no partial folder in sight
    missing = json.loads((tmp_path / "atlas.json").read_text())["results"]["missing"]
    assert list(missing) == ["organism-neox"]

    again = run_script("atlas", "--models", "organism", "organism-neox", "--out", str(tmp_path), *QUICK)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "organism: finished earlier, skipped" in again.stdout
    assert "organism-neox: to profile" in again.stdout
    combined = json.loads((tmp_path / "atlas.json").read_text())["results"]
    assert combined["missing"] == {} and len(combined["heads"]) == 16


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("args, says", [
    (("--models", "no-such-model-anywhere"), "no-such-model-anywhere"),
    (("--models", "organism", "organism"), "twice"),
    (("--models", "organism", "--executor", "cloud"), "--executor"),
])
def test_bad_models_or_executors_are_refused_before_any_work(tmp_path, capsys, args, says):
    with pytest.raises(SystemExit) as exit_:
        run_main("atlas", *args, "--out", str(tmp_path))
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


@pytest.mark.e2e
def test_the_slurm_executor_is_refused_where_there_is_no_cluster(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun anywhere
    with pytest.raises(SystemExit) as exit_:
        run_main("atlas", "--models", "organism", "--executor", "slurm", "--out", str(tmp_path / "out"))
    assert exit_.value.code == 2
    assert "not on one" in capsys.readouterr().err and not (tmp_path / "out" / "models").exists()


def test_the_slurm_executor_gets_partition_gpus_time_memory_and_threads_per_job(tmp_path, monkeypatch):
    from analysis.infra.jobs import JobSettings, executor_for

    srun = tmp_path / "srun"  # submitit only looks for srun on PATH when it makes the executor; nothing is sent
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    executor = executor_for(JobSettings(executor="slurm", folder=tmp_path / "jobs", timeout_min=30, cpus=4,
                                        partition="gpu", gpus=1, mem_gb=16))
    parameters = executor._executor.parameters
    assert parameters["partition"] == "gpu" and parameters["mem"] == "16G" and parameters["time"] == 30
    assert parameters["gpus_per_node"] == 1 and parameters["cpus_per_task"] == 4


@pytest.mark.e2e
def test_a_finished_model_profiled_with_other_settings_is_refused_not_mixed_into_the_table(tmp_path, capsys):
    run_main("atlas", "--models", "organism", "--out", str(tmp_path), *QUICK)
    with pytest.raises(SystemExit) as exit_:
        run_main("atlas", "--models", "organism", "--out", str(tmp_path), "--n-prompts", "8", *QUICK[2:])
    assert exit_.value.code == 2 and "n_prompts" in capsys.readouterr().err
    run_main("atlas", "--models", "organism", "--out", str(tmp_path), "--n-prompts", "8", *QUICK[2:], "--redo")
    profile = json.loads((model_folder(tmp_path, "organism") / "profile.json").read_text())["results"]
    assert profile["settings"]["n_prompts"] == 8
