import math

import pytest
import torch

from analysis.controls import (Sample, Undefined, all_heads, compare, default_controls, head_key,
                               paired_difference, rank_in_direction, separating)
from analysis.heads import control_heads


def test_head_key_and_all_heads():
    assert head_key(1, 5) == "L1H5"
    assert all_heads(2, 2, exclude=[(1, 0)]) == [(0, 0), (0, 1), (1, 1)]


def test_default_controls_are_the_layer_then_top_heads_without_target_or_repeats():
    assert default_controls((1, 3), 4, top_heads=[(0, 2), (1, 1), (1, 3), (0, 2)]) == [(1, 0), (1, 1), (1, 2), (0, 2)]


@pytest.mark.parametrize("direction, value, expected", [("low", 0.1, 1), ("low", 0.5, 3), ("high", 0.5, 2),
                                                        ("high", 0.9, 1), ("low", 0.9, 4)])
def test_rank_counts_strictly_more_extreme_finite_others(direction, value, expected):
    others = [0.2, 0.4, 0.8, math.nan, None]
    assert rank_in_direction(value, others, direction) == expected


def test_a_statistic_equal_for_every_head_is_a_tie_and_does_not_separate():
    stats = {(l, h): {"n_negative": 32.0} for l in range(2) for h in range(4)}
    entry = compare((1, 3), stats, {"n_negative": "high"})["target"]["n_negative"]
    assert (entry["rank"], entry["ties"], entry["rank_chance"]) == (1, 7, 1 / 8)
    assert (entry["verdict"], entry["separates"]) == ("tie", False)


def test_plain_numbers_are_ranked_but_only_described():
    stats = {(1, 3): {"margin": -2.0, "share": 0.5}, (1, 0): {"margin": -1.5, "share": 0.6},
             (0, 2): {"margin": 0.3, "share": math.nan}}
    report = compare((1, 3), stats, {"margin": "low", "share": "high"})
    margin, share = report["target"]["margin"], report["target"]["share"]
    assert (margin["value"], margin["rank"], margin["n_ranked"]) == (-2.0, 1, 3)
    assert margin["strongest_control"] == {"layer": 1, "head": 0, "value": -1.5}
    assert (margin["verdict"], margin["separates"], margin["difference"]) == ("descriptive", False, None)
    assert (share["rank"], share["n_ranked"]) == (2, 2)  # the NaN control is not ranked
    assert report["controls"] == [{"layer": 1, "head": 0, "margin": -1.5, "share": 0.6},
                                  {"layer": 0, "head": 2, "margin": 0.3, "share": None}]
    assert separating(report) == []


def units(mean: float, n: int = 64, spread: float = 0.1, seed: int = 0) -> torch.Tensor:
    return mean + spread * torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_a_target_far_beyond_its_strongest_control_separates_with_a_ci():
    stats = {(1, 3): {"margin": Sample(units(-1.0), "words")}, (1, 0): {"margin": Sample(units(-0.2, seed=1), "words")},
             (0, 1): {"margin": Sample(units(0.5, seed=2), "words")}}
    entry = compare((1, 3), stats, {"margin": "low"})["target"]["margin"]
    diff = entry["difference"]
    assert entry["strongest_control"]["head"] == 0 and entry["verdict"] == "separates"
    assert diff["low"] <= diff["value"] <= diff["high"] < 0 and diff["unit"] == "words" and diff["n_units"] == 64
    assert diff["value"] == pytest.approx(units(-1.0).mean() - units(-0.2, seed=1).mean())
    assert entry["p_value"] == pytest.approx(1 / 1001)  # no resample on the wrong side


def test_a_target_ahead_by_less_than_the_noise_does_not_separate():
    # The old rule (strictly more extreme than every control) called this a separation.
    stats = {(1, 3): {"gain": Sample(units(0.50, spread=0.3), "prompts")},
             (1, 0): {"gain": Sample(units(0.49, spread=0.3, seed=5), "prompts")}}
    entry = compare((1, 3), stats, {"gain": "high"})["target"]["gain"]
    assert entry["rank"] == 1 and entry["verdict"] == "does not separate"
    assert entry["difference"]["low"] < 0 < entry["difference"]["high"] and entry["p_value"] > 0.05


def test_the_bootstrap_is_paired_so_shared_prompt_noise_cancels():
    noise = units(0.0, spread=1.0, seed=7)  # each prompt's difficulty, shared by both heads
    stats = {(1, 3): {"s": Sample(noise - 0.05, "prompts")}, (1, 0): {"s": Sample(noise, "prompts")}}
    diff = compare((1, 3), stats, {"s": "low"})["target"]["s"]["difference"]
    assert diff["low"] == pytest.approx(-0.05) and diff["high"] == pytest.approx(-0.05)


def test_masses_near_one_are_compared_on_the_logit_scale():
    near_one = Sample(torch.full((32,), 0.999, dtype=torch.float64), "prompts", scale="logit")
    also = Sample(torch.full((32,), 0.99, dtype=torch.float64), "prompts", scale="logit")
    diff = paired_difference(near_one, also, "high", n_resamples=50)
    assert diff["value"] == pytest.approx(math.log(0.999 / 0.001) - math.log(0.99 / 0.01), rel=1e-5)


def test_an_undefined_target_is_undefined_and_never_ranked():
    stats = {(1, 3): {"m": None}, (1, 0): {"m": Sample(units(0.0), "words")}}
    entry = compare((1, 3), stats, {"m": "low"})["target"]["m"]
    assert (entry["value"], entry["rank"], entry["verdict"], entry["separates"]) == (None, None, "undefined", False)


def test_an_undefined_statistic_keeps_its_reason_and_leaves_the_ranks():
    stats = {(1, 3): {"m": Sample(units(-1.0), "words")}, (1, 0): {"m": Undefined("constant scores")},
             (1, 1): {"m": Sample(units(0.0), "words")}}
    report = compare((1, 3), stats, {"m": "low"})
    assert report["target"]["m"]["n_ranked"] == 2 and report["target"]["m"]["strongest_control"]["head"] == 1
    alone = compare((1, 0), stats, {"m": "low"})["target"]["m"]
    assert (alone["verdict"], alone["reason"]) == ("undefined", "constant scores")


def test_compare_needs_the_target():
    with pytest.raises(ValueError):
        compare((0, 0), {(1, 1): {"x": 1.0}}, {"x": "low"})


def test_comparison_lines_name_value_rank_strongest_control_and_verdict():
    from analysis.records import comparison_lines

    report = compare((1, 3), {(1, 3): {"margin": -2.0}, (1, 0): {"margin": -1.5}}, {"margin": "low"})
    assert comparison_lines(report) == ["  margin (low): target -2.000, rank 1/2, strongest control L1H0 -1.500: "
                                        "descriptive"]
    stats = {(1, 3): {"margin": Sample(units(-1.0), "words")}, (1, 0): {"margin": Sample(units(-0.2, seed=1), "words")}}
    line = comparison_lines(compare((1, 3), stats, {"margin": "low"}), prefix="")[0]
    assert line.startswith("margin (low): target -0.99") and "difference -0.779 [" in line and line.endswith("separates")
    alone = compare((1, 3), {(1, 3): {"margin": math.nan}}, {"margin": "low"})
    assert comparison_lines(alone, prefix="") == ["margin (low): target n/a, rank -, strongest control -: undefined"]



def test_curve_record_finds_where_the_target_stops_separating():
    from analysis.records import curve_lines, curve_record

    # the target leads by 0.8 at k=1, 0.3 at k=2 (both far beyond the noise) and by nothing at k=4
    target = {"t k=1_gain": units(0.9), "t k=2_gain": units(0.9), "t k=4_gain": units(0.95)}
    decoy = {"t k=1_gain": units(0.1, seed=1), "t k=2_gain": units(0.6, seed=1), "t k=4_gain": units(0.95, seed=2)}
    stats = {(1, 3): {n: Sample(v, "prompt") for n, v in target.items()},
             (1, 0): {n: Sample(v, "prompt") for n, v in decoy.items()}}
    report = compare((1, 3), stats, dict.fromkeys(target, "high"))
    curve = curve_record(report, {1: "t k=1", 2: "t k=2", 4: "t k=4"}, ["gain"])
    assert curve["ks"] == [1, 2, 4] and list(curve["points"]) == ["k=1", "k=2", "k=4"]
    assert curve["points"]["k=2"]["gain"] == report["target"]["t k=2_gain"] and curve["points"]["k=2"]["k"] == 2
    assert curve["separating_ks"] == {"gain": [1, 2]} and curve["largest_separating_k"] == {"gain": 2}
    assert curve["widest_gap_k"] == {"gain": 1}
    assert curve["ends"]["smallest"] == curve["points"]["k=1"] and curve["ends"]["largest"] == curve["points"]["k=4"]
    first, rival = report["target"]["t k=1_gain"], report["target"]["t k=1_gain"]["strongest_control"]["value"]
    assert curve_lines(curve)[0] == f"  k=1: gain {first['value']:+.3f} vs L1H0 {rival:+.3f} separates"
    assert curve_lines(curve)[2].endswith("does not separate")
    nowhere = curve_record(report, {4: "t k=4"}, ["gain"])
    assert nowhere["largest_separating_k"] == {"gain": None} and nowhere["separating_ks"] == {"gain": []}


def test_control_heads_reuse_a_scan_the_caller_already_ran(organism, monkeypatch):
    from analysis import scan

    found = scan.scan_heads(organism, seed=0)
    fresh = control_heads(organism, (1, 3), "default", seed=0)

    def no_second_scan(*args, **kwargs):
        raise AssertionError("control_heads scanned again")

    monkeypatch.setattr(scan, "scan_heads", no_second_scan)
    assert control_heads(organism, (1, 3), "default", found=found) == fresh
    assert len(fresh) >= 3 and (1, 3) not in fresh
