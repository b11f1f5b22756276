"""Every mechanism results file on the organism says how its claims fare against control heads.

Each mechanism script writes `directions` (which way each statistic points for a self-suppressing head),
`target` (the target head's value and rank for every statistic) and `controls` (one row per control head
with the same statistics): run each with light settings and check that shape, and that the planted
semantic head is the target without being named.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_main
from test_any_model import LIGHT

MECHANISM_SCRIPTS = ("skew_analysis", "svd_sym_skew_heatmap", "svd_group_scaling_heatmap", "svd_rank_ablation",
                     "gradient_steering", "semantic_head", "cosine_attention_analysis", "clustering")
EXTRA = {"svd_rank_ablation": ["--ks", "4", "--scales", "1", "-1"]}  # a 1 x 2 grid, on every control head too


@pytest.fixture(scope="module")
def mechanism_results(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("mechanism")
    run_main("token_freq", "--out", str(out))  # the frequency table that cosine and clustering read
    results = {}
    for name in MECHANISM_SCRIPTS:
        run_main(name, "--out", str(out), *LIGHT[name], *EXTRA.get(name, []))
        results[name] = json.loads((out / "results" / "organism" / f"{name}.json").read_text())["results"]
    return results


@pytest.mark.parametrize("name", MECHANISM_SCRIPTS)
def test_mechanism_results_have_controls_target_and_directions(mechanism_results, name, truth):
    data = mechanism_results[name]
    directions, target, controls = data["directions"], data["target"], data["controls"]
    assert directions and set(directions.values()) <= {"low", "high"}
    assert [target["layer"], target["head"]] == truth["planted_heads"]["semantic"]
    assert controls and all((row["layer"], row["head"]) != (target["layer"], target["head"]) for row in controls)
    assert len({(row["layer"], row["head"]) for row in controls}) == len(controls)  # each control once
    for statistic in directions:
        entry = target[statistic]
        assert set(entry) >= {"value", "rank", "n_ranked", "separates", "strongest_control"}
        if entry["value"] is not None:
            assert 1 <= entry["rank"] <= entry["n_ranked"] <= len(controls) + 1
        assert any(statistic in row for row in controls)  # the controls carry the same statistic
