"""scan_heads.py's baseline outputs: the detect_head cross-check and each kind's best head drawn on two sentences."""

import json

import pytest

from conftest import run_main

pytestmark = pytest.mark.e2e  # every test here reads one run of the script


@pytest.fixture(scope="module")
def scan_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("scan")
    run_main("scan_heads", "--out", str(out), "--n-prompts", "4", "--repeat-lengths", "30",
             "--category-prompts", "8", "--category-words", "32", "--detect-prompts", "3", "--top", "3")
    return out, json.loads((out / "results" / "organism" / "scan_heads.json").read_text())["results"]


def test_detect_head_cross_check(scan_results, truth):
    _, data = scan_results
    check = data["detect_head"]
    assert check["induction_ceiling"] == pytest.approx(30 / 61)
    for kind in ("previous_token", "induction", "duplicate"):
        assert check[kind]["max_deviation"] < 1e-5
    top = {kind: [check[kind]["top_heads"][0]["layer"], check[kind]["top_heads"][0]["head"]]
           for kind in ("previous_token", "induction")}
    assert top == {k: truth["planted_heads"][k] for k in ("previous_token", "induction")}


def test_best_heads_drawn_on_both_sentences(scan_results, truth):
    out, data = scan_results
    drawn = data["best_head_patterns"]
    assert drawn["sentences"][1] == "The cat sat on the mat. The cat sat on the mat"
    for kind in ("previous_token", "induction", "semantic"):
        assert [drawn[kind]["layer"], drawn[kind]["head"]] == truth["planted_heads"][kind]
    # on the repeated sentence the induction head attends from the second " cat" ... to what followed the first
    induction = drawn["induction"]["patterns"][1]
    second_sat_row = induction[10]  # BOS The cat sat on the mat . The cat(9) sat(10)
    assert max(range(len(second_sat_row)), key=second_sat_row.__getitem__) == 4  # " on", after the first " sat"
    for name in ("scan_heads", "scan_heads_patterns", "scan_heads_detect_head"):
        assert (out / "figures" / "organism" / f"{name}.png").stat().st_size > 1000
