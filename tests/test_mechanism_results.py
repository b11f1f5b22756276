"""Every mechanism results file on the organism says how its claims fare against control heads.

Each mechanism script writes `directions` (which way each statistic points for a self-suppressing head),
`target` (the target head's value and rank for every statistic) and `controls` (one row per control head
with the same statistics). `check_controls_shape` checks that shape; the tests that already run each script
call it on their results, and the slow test here runs all eight mechanism scripts with light settings.
"""

from __future__ import annotations

import json

import pytest
import torch

from analysis.ids import model_id
from analysis.models import load_model, save_model
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


IDLE_HEADS = ((0, 0), (1, 0))  # zero W_Q, W_K, b_Q, b_K: every score 0, uniform attention, as a pruned head


@pytest.mark.e2e
def test_every_mechanism_script_runs_on_a_model_with_idle_heads_and_says_what_is_undefined(tmp_path, truth):
    """Heads whose QK form is zero are legitimate: every mechanism script completes, an undefined statistic is
    recorded as undefined with its reason and left out of the ranks, and the evidence is still gathered."""
    model = load_model("organism")
    with torch.no_grad():
        for layer, head in IDLE_HEADS:
            attn = model.blocks[layer].attn
            for weight in (attn.W_Q, attn.W_K, attn.b_Q, attn.b_K):
                weight[head].zero_()
    directory = save_model(model, tmp_path / "idle")
    layer, head = truth["planted_heads"]["semantic"]
    common = ["--model", str(directory), "--out", str(tmp_path)]
    run_main("token_freq", *common)
    run_main("characterize_head", *common, *LIGHT["characterize_head"], "--layer", str(layer), "--head", str(head))
    for name in MECHANISM_SCRIPTS:
        run_main(name, *common, *LIGHT[name], *EXTRA.get(name, []), "--layer", str(layer), "--head", str(head))
    results = tmp_path / "results" / model_id(str(directory))
    skew = json.loads((results / "skew_analysis.json").read_text())["results"]
    idle = {(row["layer"], row["head"]): row for row in skew["controls"] if (row["layer"], row["head"]) in IDLE_HEADS}
    for row in idle.values():
        assert row["margin_normalised"] is None and "no spread" in row["undefined"]["margin_normalised"]
        assert row["margin"] == 0.0 and row["below_partners_share"] == 0.0
    assert skew["target"]["margin_normalised"]["n_ranked"] == 8 - len(IDLE_HEADS)
    for key in ("L0H0", "L1H0"):
        assert not any(v["holds"] for p, v in skew["properties"]["by_head"][key].items() if p != "both_hold")
    run_main("evidence", *common)
    evidence = json.loads((results / "evidence.json").read_text())["results"]
    assert evidence["properties"]["heads_with_both"]["weights"] == [f"L{layer}H{head}"]
