"""Every script on the organisms of the other architecture families (LLaMA-style and NeoX-style): each runs on the
whole model and writes its results, or refuses in one paragraph what it cannot do on that model."""

from __future__ import annotations

import json

import pytest

from analysis.ids import model_id
from conftest import run_script
from test_any_model import LIGHT

REFUSED = {"component_ablation": "no positional embedding"}  # the study's components include W_pos: rotary has none


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("model", ["organism-llama", "organism-neox"])
def test_every_demo_script_runs_on_a_rotary_organism_or_says_what_it_cannot_do(model, tmp_path):
    failures = []
    for name, args in LIGHT.items():
        done = run_script(name, "--model", model, "--out", str(tmp_path), *args)
        results = tmp_path / "results" / model_id(model) / f"{name}.json"
        said = " ".join(done.stderr.split())
        if name in REFUSED:
            if done.returncode != 2 or REFUSED[name] not in said or "Traceback" in said:
                failures.append(f"{name}: expected a one-paragraph refusal, got exit {done.returncode}\n"
                                f"{done.stderr[-1500:]}")
        elif done.returncode != 0 or not results.is_file():
            failures.append(f"{name}: exit {done.returncode}\n{done.stderr[-1500:]}")
        elif json.loads(results.read_text())["provenance"]["model_id"] != model_id(model):
            failures.append(f"{name}: results filed under another model")
    assert not failures, "\n\n".join(failures)
