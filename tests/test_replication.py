"""The organism as a simulation study: recipes, the seed table and the negative control's rules, on hand-built
records with known answers, and on the shipped organisms' training logs."""

import pytest

from analysis import replication
from analysis.organism.recipes import negative_controls, recipe_models

CONFIG = {"n_layers": 2, "lr": 0.003, "seed": 0, "family": "gpt2",
          "planted_heads": {"previous_token": [0, 2], "induction": [1, 1], "semantic": [1, 3]}}


def test_a_recipe_ignores_the_seed_and_the_places_but_not_the_kinds_or_settings():
    moved = {**CONFIG, "seed": 3, "planted_heads": {"previous_token": [0, 0], "induction": [1, 2], "semantic": [1, 0]}}
    other_lr = {**CONFIG, "lr": 0.001}
    control = {**CONFIG, "planted_heads": {"previous_token": [0, 1], "induction": [1, 2], "decoy": [1, 0],
                                           "avoider": [1, 3]}}
    configs = {"a": CONFIG, "b": moved, "c": other_lr, "d": control, "e": None}
    assert replication.sharing(configs, replication.recipe(CONFIG)) == ["a", "b"]
    kinds = ["previous_token", "induction", "decoy", "avoider"]
    assert replication.sharing(configs, replication.with_kinds(replication.recipe(CONFIG), kinds)) == ["d"]


def test_the_shipped_organisms_are_five_seeds_of_one_recipe_and_one_negative_control():
    assert recipe_models("organism") == ["organism", *(f"organism-seed-{k}" for k in range(1, 5))]
    assert negative_controls("organism") == ["organism-negative-control"]
    assert recipe_models("gpt2-random") == [] and negative_controls("gpt2-random") == []
    assert recipe_models("organism-negative-control") == ["organism-negative-control"]
    assert negative_controls("organism-negative-control") == []  # not its own control


def evidence_record(value: float, holds: bool, target=(1, 3), claim=True):
    key = "characterize_head.surprisal"
    prop = {"self_avoidance": {"holds": holds}, "category_attraction": {"holds": True}}
    return {"target": {"layer": target[0], "head": target[1]}, "primary": [key],
            "statistics": {key: {"value": value, "difference": {"value": value - 2.0}}},
            "family": {key: {"p_holm": 0.01 if holds else 0.2, "separates_corrected": holds}},
            "properties": {"target": {"behaviour": prop, "weights": None}}, "claim": {"supported": claim}}


def test_seed_rows_and_summary_count_each_verdict_out_of_n():
    planted = {"previous_token": [0, 2], "semantic": [1, 3]}
    top = {"previous_token": [{"layer": 0, "head": 2}], "semantic": [{"layer": 1, "head": 0}]}
    rows = {"a": replication.seed_row(evidence_record(1.0, True), top, planted),
            "b": replication.seed_row(evidence_record(3.0, False, target=(1, 0), claim=False), top, planted)}
    assert rows["a"]["target_is_planted"] and not rows["b"]["target_is_planted"]
    assert rows["a"]["planted_found_first"] == {"previous_token": True, "semantic": False}
    summary = replication.seed_summary(rows)
    entry = summary["primary"]["characterize_head.surprisal"]
    assert entry["mean"] == 2.0 and entry["sd"] == pytest.approx(2 ** 0.5) and (entry["min"], entry["max"]) == (1, 3)
    assert entry["holds"] == 1 and summary["n"] == 2 and summary["claim_supported"] == 1
    assert summary["both_properties"] == {"behaviour": 1, "weights": 0}
    assert summary["planted_found_first"] == {"previous_token": 2, "semantic": 0}


def test_the_best_head_follows_the_direction_and_a_tie_has_none():
    report = {"target": {"layer": 1, "head": 0, "margin": {"value": -3.0}},
              "controls": [{"layer": 1, "head": 3, "margin": -5.0}, {"layer": 0, "head": 0, "margin": None}]}
    values = replication.head_values(report, "margin")
    assert values == {"L1H0": -3.0, "L1H3": -5.0}
    assert replication.best_head(values, "low") == "L1H3" and replication.best_head(values, "high") == "L1H0"
    assert replication.best_head({"L0H0": 1.0, "L0H1": 1.0}, "high") is None


def test_a_statistic_that_ranks_a_decoy_or_avoider_first_cannot_tell_them_apart():
    planted = {"decoy": [1, 0], "avoider": [1, 3], "induction": [1, 2]}
    assert replication.telling_apart("L1H0", planted) == {"best_head": "L1H0", "best_kind": "decoy",
                                                          "tells_apart": False}
    assert not replication.telling_apart("L1H3", planted)["tells_apart"]
    assert replication.telling_apart("L1H2", planted)["tells_apart"]  # an induction head: not a decoy
    assert replication.telling_apart("L0H1", planted)["tells_apart"]


def test_each_planted_head_must_have_exactly_its_own_property():
    def verdicts(self_avoiding, attracted):
        return {"self_avoidance": {"holds": self_avoiding}, "category_attraction": {"holds": attracted}}

    planted = {"decoy": [1, 0], "avoider": [1, 3]}
    good = replication.expected_properties({"L1H0": verdicts(False, True), "L1H3": verdicts(True, False)}, planted)
    assert good["decoy"]["as_expected"] and good["avoider"]["as_expected"]
    both = replication.expected_properties({"L1H0": verdicts(True, True), "L1H3": verdicts(True, False)}, planted)
    assert not both["decoy"]["as_expected"] and both["avoider"]["as_expected"]
