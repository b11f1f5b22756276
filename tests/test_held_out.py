"""Held-out categories: the summary's maths on hand-built readings, and the held-out run on the organism."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import run_held_out, run_script

from analysis import held_out, records
from analysis.controls import head_key
from analysis.held_out import Reading, disjoint, statistic_row
from analysis.io import REPO_ROOT

# Light settings (as `make all LIGHT=1`): every entry the summary reads is kept.
LIGHT = {"characterize_head": ("--n-prompts", "16", "--n-words", "32", "--n-resamples", "200", "--study-prompts", "2",
                               "--study-words", "32"),
         "skew_analysis": ("--n-null-draws", "50"), "cosine_attention_analysis": ("--n-tokens", "500",
                                                                                  "--n-resamples", "100"),
         "clustering": ("--n-tokens", "500")}


def test_disjoint_compares_the_ends_of_both_intervals():
    assert disjoint(Reading(0.9, 0.85, 0.95), Reading(0.05, 0.02, 0.08)) is True
    assert disjoint(Reading(0.05, 0.02, 0.08), Reading(0.9, 0.85, 0.95)) is True
    assert disjoint(Reading(0.5, 0.4, 0.6), Reading(0.55, 0.59, 0.7)) is False  # 0.59 < 0.6: they overlap
    assert disjoint(Reading(0.5, 0.4, 0.6), Reading(0.5)) is None  # no CI on one side


def test_statistic_row_on_a_hand_built_pair():
    supervised = Reading(0.977, 0.976, 0.979, "separates")
    held = Reading(0.052, 0.040, 0.066, "does not separate")
    row = statistic_row(supervised, held)
    assert row["shift"] == pytest.approx(0.052 - 0.977)
    assert row["disjoint"] is True
    assert row["supervised"] == {"value": 0.977, "low": 0.976, "high": 0.979, "verdict": "separates", "success": True}
    assert row["held_out"]["success"] is False and row["recovers"] is False and row["same_verdict"] is False


def test_a_property_verdict_reads_as_holds_and_a_descriptive_value_recovers_nothing():
    row = statistic_row(Reading(-6.9, -7.0, -6.8, True), Reading(-1.2, -1.5, -0.9, True))
    assert row["held_out"]["verdict"] == "holds" and row["recovers"] is True and row["same_verdict"] is True
    assert row["disjoint"] is True and row["shift"] == pytest.approx(5.7)
    row = statistic_row(Reading(-6.9, -7.0, -6.8, True), Reading(0.1, -0.2, 0.4, False))
    assert row["held_out"]["verdict"] == "does not hold" and row["recovers"] is False
    descriptive = statistic_row(Reading(0.92), Reading(0.13))
    assert descriptive["recovers"] is None and descriptive["disjoint"] is None
    assert descriptive["shift"] == pytest.approx(0.13 - 0.92)
    undefined = statistic_row(Reading(0.5, verdict="separates"), Reading(None, verdict="undefined"))
    assert undefined["shift"] is None and undefined["recovers"] is False


def test_the_record_sorts_statistics_by_verdict_and_decides_generalisation_from_behaviour():
    rows = {"partner_mass": statistic_row(Reading(0.98, verdict="separates"), Reading(0.05, verdict="does not separate")),
            "self_avoidance_behaviour": statistic_row(Reading(-6.9, verdict=True), Reading(-2.0, verdict=True)),
            "category_attraction_behaviour": statistic_row(Reading(21.0, verdict=True), Reading(0.3, verdict=False)),
            "cosine_mates_minus_self": statistic_row(Reading(0.92), Reading(0.13))}
    record = records.held_out_record(rows, (1, 3), {"held_out": {"set": "held_out"}})
    assert record["by_verdict"] == {"recovers": ["self_avoidance_behaviour"],
                                    "does not recover": ["partner_mass", "category_attraction_behaviour"],
                                    "no verdict": ["cosine_mates_minus_self"]}
    assert record["generalises"] is False  # one behavioural property fails on held-out prompts
    assert record["statistics"]["partner_mass"]["file"] == "characterize_head"
    rows["category_attraction_behaviour"] = statistic_row(Reading(21.0, verdict=True), Reading(3.0, verdict=True))
    assert held_out.generalises(rows) is True
    assert records.held_out_lines(record)[-1] == ("L1H3 does not generalise to the held-out categories; recovered by: "
                                                  "self_avoidance_behaviour")


def test_every_statistic_reads_from_a_script_of_the_runs():
    assert held_out.SCRIPTS == ("characterize_head", "skew_analysis", "clustering", "cosine_attention_analysis")
    paths = held_out.STATISTICS["self_avoidance_weights"].paths("L1H3")
    assert paths == {"value": "results.properties.by_head.L1H3.self_avoidance.value",
                     "verdict": "results.properties.by_head.L1H3.self_avoidance.holds",
                     "low": "results.properties.by_head.L1H3.self_avoidance.low",
                     "high": "results.properties.by_head.L1H3.self_avoidance.high"}
    assert held_out.STATISTICS["surprisal"].paths("L1H3")["high"] == "results.target.surprisal_high"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True)


@pytest.mark.e2e
def test_summary_without_results_is_one_paragraph_and_exit_2(tmp_path):
    done = run("scripts/held_out.py", "--out", str(tmp_path))
    assert done.returncode == 2
    said = " ".join(done.stderr.split())
    assert "characterize_head.json does not exist" in said and "Traceback" not in said


@pytest.mark.e2e
def test_the_planted_semantic_head_ignores_the_held_out_categories(tmp_path, truth):
    """On held-out prompts the organism's semantic head, told nothing of these categories in training, sends almost
    all its attention to BOS (measured: partner mass 0.050, BOS mass without a mate 0.999 on the full run): it
    avoids itself, but is not drawn to held-out category-mates."""
    layer, head = truth["planted_heads"]["semantic"]
    done = run_script("characterize_head", "--out", str(tmp_path), "--categories", "held_out", "--layer", str(layer),
                      "--head", str(head), *LIGHT["characterize_head"])
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "results" / "organism" / "characterize_head.json").read_text())["results"]
    assert results["categories"]["names"] == list(truth["held_out_categories"])
    target = results["target"]
    assert target["partner_mass_high"] < 0.2 and target["bos_mass_no_partner_low"] > 0.9
    assert target["surprisal_low"] > 3.0  # supervised categories: S below 0.1 nats
    assert results["comparison"]["target"]["partner_mass"]["verdict"] == "does not separate"
    verdicts = results["properties"]["by_head"][head_key(layer, head)]
    assert verdicts["self_avoidance"]["holds"] and not verdicts["category_attraction"]["holds"]


@pytest.mark.e2e
@pytest.mark.slow
def test_held_out_summary_on_the_organism(tmp_path):
    """`make held-out` end to end at light settings: the supervised run, the held-out run on its head, the summary."""
    for script in ("scan_heads", "token_freq", *LIGHT):
        done = run_script(script, "--out", str(tmp_path), *LIGHT.get(script, ()))
        assert done.returncode == 0, f"{script}: {done.stderr[-2000:]}"
    run_held_out(tmp_path, tmp_path / "held_out", LIGHT)
    record = json.loads((tmp_path / "results" / "organism" / "held_out.json").read_text())["results"]
    assert record["ran"] and record["generalises"] is False
    assert record["categories"]["held_out"]["set"] == "held_out" and record["categories"]["supervised"]["set"] == "study"
    stats = record["statistics"]
    assert stats["partner_mass"]["supervised"]["value"] > 0.9 and stats["partner_mass"]["held_out"]["value"] < 0.2
    assert stats["partner_mass"]["disjoint"] is True and stats["partner_mass"]["recovers"] is False
    assert stats["category_attraction_behaviour"]["recovers"] is False
    assert stats["ari"]["supervised"]["verdict"] == "separates" and stats["ari"]["recovers"] is False
    assert set(stats) == set(held_out.STATISTICS)


@pytest.mark.e2e
def test_a_model_without_held_out_categories_gets_a_record_that_says_so(tmp_path):
    results = tmp_path / "results" / "organism"
    results.mkdir(parents=True)
    (results / "characterize_head.json").write_text(json.dumps({"provenance": {"model": {"ground_truth": None}},
                                                                "results": {}}))
    done = run("scripts/held_out.py", "--out", str(tmp_path), "--held-out-root", str(tmp_path / "none"))
    assert done.returncode == 0, done.stderr
    record = json.loads((results / "held_out.json").read_text())["results"]
    assert record == {"ran": False, "reason": "the model's recorded ground truth lists no held-out categories"}
