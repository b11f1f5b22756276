"""Shared fixtures: the shipped organism (loaded once) and a scratch output root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# OpenMP's threads sleep while they wait instead of spinning. On a CPU shared with other work, spinning threads
# stall each other: small batched operations (an SVD of a stack of matrices) then take orders of magnitude longer
# than the work. Read once, when torch loads its OpenMP runtime, hence set before the import; the scripts the tests
# start inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def organism():
    from analysis.models import load_model

    return load_model("organism")


@pytest.fixture(scope="session")
def truth():
    from analysis.organism.files import ground_truth

    return ground_truth()


def run_script(name: str, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run scripts/<name>.py as a user would; returns the completed process (never raises on failure)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "scripts" / f"{name}.py"), *args], cwd=REPO,
                          capture_output=True, text=True, env=full_env, timeout=timeout)


def run_main(name: str, *args: str) -> None:
    """Run scripts/<name>.py's main in this process through `cli.run` (fast: no fresh interpreter).

    For checks of argument handling and clear errors; `cli.run` exits with status 2 on a UsageError.
    """
    import importlib.util

    from analysis import cli

    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cli.run(module.main, module.build_parser(), list(args))


def check_controls_shape(results: dict, target) -> None:
    """A mechanism results file's `directions`, `target` (value and rank of every statistic) and `controls`
    (each control head once, never the target, carrying the same statistics), with `target` = (layer, head)."""
    directions, entry, controls = results["directions"], results["target"], results["controls"]
    assert directions and set(directions.values()) <= {"low", "high"}
    assert [entry["layer"], entry["head"]] == list(target)
    heads = [(row["layer"], row["head"]) for row in controls]
    assert heads and tuple(target) not in heads and len(set(heads)) == len(heads)
    for statistic in directions:
        assert set(entry[statistic]) >= {"value", "rank", "n_ranked", "separates", "strongest_control"}
        if entry[statistic]["value"] is not None:
            assert 1 <= entry[statistic]["rank"] <= entry[statistic]["n_ranked"] <= len(controls) + 1
        assert all(statistic in row for row in controls)  # the controls carry the same statistic


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """Hugging Face without the network: the hub and `datasets` in offline mode (the switches they read at import
    and the environment a subprocess reads), and the counts and datasets caches under tmp_path."""
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


HELD_OUT_SCRIPTS = ("characterize_head", "skew_analysis", "clustering", "cosine_attention_analysis")


def run_held_out(out, held_root, extra: dict[str, tuple[str, ...]] | None = None) -> None:
    """What `make held-out` runs, after the supervised run under `out`: the four scripts with --categories held_out
    on the supervised survey's head into `held_root` (its token counts from `out`), then scripts/held_out.py.
    `extra`: more arguments per script (light settings). Asserts every step succeeds."""
    results = Path(out) / "results" / "organism"
    target = json.loads((results / "characterize_head.json").read_text())["results"]["target"]
    inputs = {"cosine_attention_analysis": ("--freq-csv", str(results / "token_freq.csv")),
              "clustering": ("--frequencies", str(results / "token_freq.csv"))}
    for script in HELD_OUT_SCRIPTS:
        done = run_script(script, "--out", str(held_root), "--categories", "held_out", "--layer",
                          str(target["layer"]), "--head", str(target["head"]), *inputs.get(script, ()),
                          *(extra or {}).get(script, ()))
        assert done.returncode == 0, f"{script} (held out): {done.stderr[-2000:]}"
    done = run_script("held_out", "--out", str(out), "--held-out-root", str(held_root))
    assert done.returncode == 0, done.stderr[-2000:]


# --- a real browser, for the pages the project ships ------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium under chromedriver, headless, with a fresh profile; skipped where either is missing."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("the atlas page's browser test needs Debian's chromium and chromedriver "
                    "(apt-get install chromium chromium-driver); "
                    f"found chromium: {chromium}, chromedriver: {driver}")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra: make setup")
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="atlas-page-profile-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}", "--window-size=1500,1100"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        session = webdriver.Chrome(service=Service(driver), options=options)
        try:
            yield session
        finally:
            session.quit()
