import math

import pytest

from analysis.controls import all_heads, compare, default_controls, head_key, rank_in_direction, separating
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


def test_a_statistic_equal_for_every_head_ranks_first_but_does_not_separate():
    stats = {(l, h): {"n_negative": 32.0} for l in range(2) for h in range(4)}
    report = compare((1, 3), stats, {"n_negative": "high"})
    assert report["target"]["n_negative"]["rank"] == 1
    assert report["target"]["n_negative"]["separates"] is False
    assert separating(report) == []


def test_compare_reports_rank_strongest_control_and_rows():
    stats = {(1, 3): {"margin": -2.0, "share": 0.5}, (1, 0): {"margin": -1.5, "share": 0.6},
             (0, 2): {"margin": 0.3, "share": math.nan}}
    report = compare((1, 3), stats, {"margin": "low", "share": "high"})
    margin, share = report["target"]["margin"], report["target"]["share"]
    assert (margin["value"], margin["rank"], margin["n_ranked"], margin["separates"]) == (-2.0, 1, 3, True)
    assert margin["strongest_control"] == {"layer": 1, "head": 0, "value": -1.5}
    assert (share["rank"], share["n_ranked"], share["separates"]) == (2, 2, False)  # NaN control not ranked
    assert report["controls"] == [{"layer": 1, "head": 0, "margin": -1.5, "share": 0.6},
                                  {"layer": 0, "head": 2, "margin": 0.3, "share": None}]
    assert separating(report) == ["margin"]


def test_compare_needs_the_target():
    with pytest.raises(ValueError):
        compare((0, 0), {(1, 1): {"x": 1.0}}, {"x": "low"})


def test_comparison_lines_name_value_rank_and_strongest_control():
    from analysis.records import comparison_lines

    report = compare((1, 3), {(1, 3): {"margin": -2.0}, (1, 0): {"margin": -1.5}}, {"margin": "low"})
    assert comparison_lines(report) == ["  margin (low): target -2.000, rank 1/2, strongest control L1H0 -1.500"]
    alone = compare((1, 3), {(1, 3): {"margin": math.nan}}, {"margin": "low"})
    assert comparison_lines(alone, prefix="") == ["margin (low): target n/a, rank -, strongest control -"]


def test_control_heads_reuse_a_scan_the_caller_already_ran(organism, monkeypatch):
    from analysis import scan

    found = scan.scan_heads(organism, seed=0)
    fresh = control_heads(organism, (1, 3), "default", seed=0)

    def no_second_scan(*args, **kwargs):
        raise AssertionError("control_heads scanned again")

    monkeypatch.setattr(scan, "scan_heads", no_second_scan)
    assert control_heads(organism, (1, 3), "default", found=found) == fresh
    assert len(fresh) >= 3 and (1, 3) not in fresh
