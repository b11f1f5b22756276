"""Every mechanism results file on the organism says how its claims fare against control heads.

Each mechanism script writes `directions` (which way each statistic points for a self-suppressing head),
`target` (the target head's value and rank for every statistic) and `controls` (one row per control head
with the same statistics). `check_controls_shape` checks that shape; the tests that already run each script
call it on their results, and the slow test here runs all eight mechanism scripts with light settings.
"""

from __future__ import annotations

import json

import pytest

from conftest import check_controls_shape, run_main
from test_any_model import LIGHT

MECHANISM_SCRIPTS = ("skew_analysis", "sym_skew_maps", "eigenvalue_scaling", "eigenvalue_rank_ablation",
                     "gradient_steering", "sae_features", "cosine_attention_analysis", "clustering")
EXTRA = {"eigenvalue_rank_ablation": ["--ks", "4", "--scales", "1", "-1"]}  # a 1 x 2 grid, on every control head too


def test_the_shape_check_fails_on_a_results_file_without_controls():
    good = {"directions": {"margin": "low"}, "controls": [{"layer": 0, "head": 0, "margin": 1.0}],
            "target": {"layer": 1, "head": 3, "margin": {"value": -1.0, "rank": 1, "n_ranked": 2, "separates": True,
                                                         "strongest_control": {"layer": 0, "head": 0, "value": 1.0}}}}
    check_controls_shape(good, (1, 3))
    for broken in ({**good, "controls": []}, {k: v for k, v in good.items() if k != "directions"},
                   {**good, "target": {**good["target"], "margin": {"value": -1.0}}},
                   {**good, "controls": [{"layer": 1, "head": 3, "margin": 1.0}]},
                   {**good, "controls": [{"layer": 0, "head": 0}]}):
        with pytest.raises((AssertionError, KeyError)):
            check_controls_shape(broken, (1, 3))
    with pytest.raises(AssertionError):
        check_controls_shape(good, (1, 2))  # not the planted head


@pytest.mark.e2e
@pytest.mark.slow
def test_every_mechanism_results_file_has_controls_target_and_directions(tmp_path, truth):
    run_main("token_freq", "--out", str(tmp_path))  # the frequency table that cosine and clustering read
    for name in MECHANISM_SCRIPTS:
        run_main(name, "--out", str(tmp_path), *LIGHT[name], *EXTRA.get(name, []))
        data = json.loads((tmp_path / "results" / "organism" / f"{name}.json").read_text())["results"]
        check_controls_shape(data, truth["planted_heads"]["semantic"])
