import pytest

from analysis import evidence


def test_holm_by_hand():
    # sorted: a 0.01 * 3 = 0.03; c 0.03 * 2 = 0.06; b 0.04 * 1 = 0.04, raised to the running maximum 0.06
    adjusted = evidence.holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})


def test_holm_leaves_untestable_statistics_out_of_the_count():
    assert evidence.holm({"a": 0.01, "b": None}) == {"a": 0.01, "b": None}
    assert evidence.holm({"a": 0.3, "b": 0.2}) == pytest.approx({"a": 0.4, "b": 0.4})  # monotone: 0.3 raised to 0.4
    assert evidence.holm({"a": 0.9, "b": 0.8}) == {"a": 1.0, "b": 1.0}  # capped at 1


def test_a_separation_that_does_not_survive_the_correction_is_not_counted():
    entries = {("characterize_head", "surprisal"): {"verdict": "separates", "separates": True, "p_value": 0.001},
               ("skew_analysis", "margin"): {"verdict": "separates", "separates": True, "p_value": 0.02},
               ("skew_analysis", "below_partners_share"): {"verdict": "does not separate", "separates": False,
                                                           "p_value": 0.5}}
    family = evidence.family_verdicts(entries)
    assert family["characterize_head.surprisal"]["separates_corrected"]
    assert family["skew_analysis.margin"]["p_holm"] == pytest.approx(0.04)  # 0.02 * 2, second of three
    assert not family["skew_analysis.margin"]["separates_corrected"]  # separates alone, not in the family
    missing = evidence.family_verdicts({("skew_analysis", "margin"): None})["skew_analysis.margin"]
    assert missing == {"verdict": "missing", "p_value": None, "p_holm": None, "rank_chance": None,
                       "separates_corrected": False}


def test_the_family_is_named_once_in_order():
    assert [name for _, name in evidence.PRIMARY] == ["surprisal", "margin", "below_partners_share"]



def test_a_file_whose_comparison_did_not_run_is_recorded_without_a_report():
    """sae_features of a model with no SAE writes its reasons and no comparison: it is named with its reason, the
    files that compared keep their reports, and a file not run at all is neither."""
    comparison = {"directions": {"margin": "low"}, "target": {"margin": {"value": -1.0}}}
    files = {"characterize_head": {"results": {"comparison": comparison}},
             "sae_features": {"results": {"head": {"layer": 1, "head": 3}, "not_run": ["feature map", "precision"]}},
             "skew_analysis": None}
    reports, no_report = evidence.comparison_reports(files)
    assert reports["characterize_head"] == comparison
    assert reports["sae_features"] is None and reports["skew_analysis"] is None
    assert list(no_report) == ["sae_features"]
