"""A script's outputs are one unit: all old or all new after any kill, never mixed between runs, usual permissions.

The kill tests fork a child that runs a small script through `cli.run` (results JSON, a CSV and two
figure files) and SIGKILLs itself at the n-th step of writing (every fsync, rename and folder swap
of `analysis.infra`), for every n until a run completes; the parent then checks what is on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from analysis import cli, io
from analysis.infra import atomic, staging

FILES = ("results/organism/demo.json", "results/organism/demo.csv", "figures/organism/demo.pdf",
         "figures/organism/demo.png")


def demo_main(tag: str, pause: float = 0.0):
    def main(args) -> None:
        for name in FILES[1:]:
            io.write_output(args.out / name, f"{name} {tag}\n")
            time.sleep(pause)
        io.save_results(args.out, args.model, "demo", {"tag": tag}, io.Provenance(None, {}, args.seed))
    return main


def run_demo(out: Path, tag: str, pause: float = 0.0) -> None:
    cli.run(demo_main(tag, pause), cli.parser("demo"), ["--out", str(out)])


def tags(out: Path) -> dict[str, str | None]:
    """Which run each output file comes from ("old", "new", ...), None if missing."""
    found = {}
    for name in FILES:
        path = out / name
        if not path.exists():
            found[name] = None
        elif name.endswith(".json"):
            found[name] = json.loads(path.read_text())["results"]["tag"]
        else:
            found[name] = path.read_text().split()[-1]
    return found


def in_child(fn, kill_at: int | None = None, patch_exchange: bool = False) -> int | None:
    """Run `fn` in a forked child that SIGKILLs itself at its `kill_at`-th write step; its signal or None."""
    pid = os.fork()
    if pid == 0:  # the child: count steps, die at the chosen one
        try:
            count = [0]

            def counted(real):
                def step(*args, **kwargs):
                    count[0] += 1
                    if count[0] == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real(*args, **kwargs)
                return step

            os.fsync, os.replace, os.rename = counted(os.fsync), counted(os.replace), counted(os.rename)
            atomic._exchange = counted((lambda a, b: False) if patch_exchange else atomic._exchange)
            fn()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else None


def test_a_run_writes_every_file_with_results_last_and_hashed(tmp_path):
    run_demo(tmp_path, "new")
    assert set(tags(tmp_path).values()) == {"new"}
    outputs = json.loads((tmp_path / FILES[0]).read_text())["provenance"]["outputs"]
    assert outputs == {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in FILES[1:]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "results"]  # no staging left


def test_a_failed_run_leaves_the_old_files_and_nothing_else(tmp_path):
    run_demo(tmp_path, "old")
    before = sorted(str(p) for p in tmp_path.rglob("*"))

    def failing(args):
        demo_main("new")(args)
        raise cli.UsageError("something was wrong after the files were written")

    with pytest.raises(SystemExit) as exit_:
        cli.run(failing, cli.parser("demo"), ["--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert set(tags(tmp_path).values()) == {"old"}
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        run_demo(tmp_path, "new")
        io.write_json_atomic(tmp_path / "plain.json", {"a": 1})
    finally:
        os.umask(old)
    for name in (*FILES, "plain.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_killed_runs_leave_all_old_or_all_new(tmp_path):
    """SIGKILL at every write step: before the next run each file is old or new and new results mean all
    new; after the next run (which sweeps or finishes the killed one) the whole set is old or new."""
    outcomes = []
    for n in range(1, 100):
        out = tmp_path / f"kill{n}"
        run_demo(out, "old")
        signal_ = in_child(lambda: run_demo(out, "new"), kill_at=n)
        seen = tags(out)
        assert set(seen.values()) <= {"old", "new"}, (n, seen)
        if seen[FILES[0]] == "new":
            assert set(seen.values()) == {"new"}, (n, seen)
        with staging.output_run(out):  # the next run into the same folder
            pass
        after = set(tags(out).values())
        assert after in ({"old"}, {"new"}), (n, tags(out))
        assert not (out / staging.STAGING_DIR).exists()
        outcomes.append(after.pop())
        if signal_ is None:  # the run completed: every step has been a kill point
            break
    assert outcomes[-1] == "new" and "old" in outcomes and outcomes.count("new") >= 2, outcomes
    assert len(outcomes) >= 8  # writes, journal, each move: many distinct kill points


def test_concurrent_runs_into_one_folder_never_mix(tmp_path):
    for attempt in range(4):
        out = tmp_path / f"run{attempt}"
        pids = []
        for tag in ("a", "b"):
            pid = os.fork()
            if pid == 0:
                try:
                    run_demo(out, tag, pause=0.02)
                finally:
                    os._exit(0)
            pids.append(pid)
        for pid in pids:
            assert os.waitpid(pid, 0)[1] == 0
        seen = tags(out)
        assert len(set(seen.values())) == 1 and None not in seen.values(), seen
        outputs = json.loads((out / FILES[0]).read_text())["provenance"]["outputs"]
        assert all(hashlib.sha256((out / n).read_bytes()).hexdigest() == h for n, h in outputs.items())


def test_stale_temporaries_are_swept_by_the_next_run(tmp_path):
    results = tmp_path / "results" / "organism"
    results.mkdir(parents=True)
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    stale = [results / f".demo.json.{dead}-abcd1234.partial", results / ".demo.json.k2j4h1x9.tmp"]
    live = results / f".demo.json.{os.getpid()}-abcd1234.partial"  # a live writer's temporary stays
    for path in (*stale, live):
        path.write_text("{half a JSON")
    abandoned = tmp_path / staging.STAGING_DIR / "run-killed"
    abandoned.mkdir(parents=True)
    (abandoned / "0001-demo.csv").write_text("never committed")
    run_demo(tmp_path, "new")
    assert not any(p.exists() for p in stale) and live.exists()
    assert not (tmp_path / staging.STAGING_DIR).exists()


def test_a_folder_in_the_way_fails_before_any_work(tmp_path):
    (tmp_path / "figures").write_text("a file where the figures folder goes")
    called = []
    with pytest.raises(SystemExit):
        cli.run(lambda args: called.append(1), cli.parser("demo"), ["--out", str(tmp_path)])
    assert not called
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures"]


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_a_replaced_folder_is_all_old_or_all_new(tmp_path, exchange):
    """The checkpoint swap (`infra.atomic.staged_directory`), killed at every step; the fallback without an atomic
    exchange is put right by the next writer."""
    def write(target: Path, tag: str) -> None:
        with atomic.staged_directory(target) as folder:
            for name in ("config.json", "model.safetensors", "training_log.json"):
                (folder / name).write_text(tag)

    def state(target: Path) -> set[str]:
        return {p.read_text() for p in target.iterdir()} if target.exists() else set()

    finished = False
    for n in range(1, 40):
        target = tmp_path / f"k{n}" / "checkpoint"
        write(target, "old")
        finished = in_child(lambda: write(target, "new"), kill_at=n, patch_exchange=not exchange) is None
        if exchange:
            assert state(target) in ({"old"}, {"new"}), n
        write(target.with_name("other"), "x")  # an unrelated write leaves this target's leftovers alone
        with pytest.raises(RuntimeError), atomic.staged_directory(target):  # the next writer sweeps, then fails
            raise RuntimeError
        assert state(target) in ({"old"}, {"new"}), n
        assert sorted(p.name for p in target.parent.iterdir()) == ["checkpoint", "other"], n
        if finished:
            break
    assert finished


def _consistent(out: Path, name: str) -> bool:
    """The results JSON of `name` and every file its provenance lists agree (hashes), or neither exists."""
    results = out / "results" / "organism" / f"{name}.json"
    if not results.exists():
        return True
    outputs = json.loads(results.read_text())["provenance"]["outputs"]
    return all(hashlib.sha256((out / n).read_bytes()).hexdigest() == h for n, h in outputs.items())


@pytest.mark.e2e
@pytest.mark.slow
def test_two_real_token_freq_runs_into_one_folder_never_mix(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    runs = [subprocess.Popen([sys.executable, str(REPO / "scripts" / "token_freq.py"), "--out", str(tmp_path),
                              "--seed", str(seed), "--corpus-sequences", "300"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for seed in (1, 2)]
    assert [run.wait(timeout=600) for run in runs] == [0, 0]
    assert _consistent(tmp_path, "token_freq")
    assert "results/organism/token_freq.csv" in json.loads(
        (tmp_path / "results" / "organism" / "token_freq.json").read_text())["provenance"]["outputs"]


@pytest.mark.e2e
@pytest.mark.slow
def test_a_real_script_killed_at_random_moments_leaves_a_consistent_set(tmp_path):
    import random
    import subprocess
    import sys

    from conftest import REPO, run_script

    command = ["logit_lens", "--out", str(tmp_path)]
    assert run_script(*command).returncode == 0
    rng = random.Random(0)
    for _ in range(6):
        process = subprocess.Popen([sys.executable, str(REPO / "scripts" / "logit_lens.py"), *command[1:], "--prompt",
                                    "The cat sat on the mat"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(4, 14))  # start-up, computing, or saving
        process.send_signal(signal.SIGKILL)
        process.wait()
        with staging.output_run(tmp_path):  # the next run sweeps or finishes the killed one
            pass
        assert _consistent(tmp_path, "logit_lens")
        assert not (tmp_path / staging.STAGING_DIR).exists()
