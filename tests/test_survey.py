"""The ranked survey table with CIs, and characterize_head.py finding the planted semantic head."""

import json

import torch

from analysis import prompts, records, scan, scores
from analysis.patterns import all_patterns, flatten_heads
from analysis.organism.report import THRESHOLDS
from analysis.survey import design_summary, separation, survey_table
import pytest

from conftest import run_main, run_script


def hand_built_survey():
    # 4 prompts, 1 layer, 3 heads. Head 2 is constant at 0.5, head 0 alternates 1/3, head 1 is constant 4.
    s = torch.tensor([[1.0, 4.0, 0.5], [3.0, 4.0, 0.5], [1.0, 4.0, 0.5], [3.0, 4.0, 0.5]])[:, None, :]
    return {m: s if m == "surprisal" else torch.full_like(s, 0.25) for m in scores.SEMANTIC_METRICS}


def test_survey_table_ranks_by_s_with_cis():
    table = survey_table(hand_built_survey(), n_resamples=500)
    assert table["head"].tolist() == [2, 0, 1] and table["rank"].tolist() == [1, 2, 3]
    assert table["surprisal"].tolist() == [0.5, 2.0, 4.0]
    best, alternating = table.iloc[0], table.iloc[1]
    assert best.surprisal_low == best.surprisal_high == 0.5  # a constant has a zero-width CI
    assert 1.0 <= alternating.surprisal_low < 2.0 < alternating.surprisal_high <= 3.0
    assert (table["partner_mass"] == 0.25).all()


def test_separation_exact():
    table = survey_table(hand_built_survey(), n_resamples=500)
    sep = separation(table)
    assert sep["margin"] == 1.5 and sep["best_high"] == 0.5 and sep["separated"]
    assert sep["runner_up"] == [0, 0] and sep["runner_up_surprisal"] == 2.0
    chosen = separation(table, 0, 0)  # a head chosen elsewhere: against the best *other* head, here head 2
    assert chosen["runner_up"] == [0, 2] and chosen["margin"] == -1.5 and not chosen["separated"]
    overlapping = table.copy()
    overlapping.loc[0, "surprisal_high"] = 2.5
    assert not separation(overlapping)["separated"]


def test_shared_prompts_counts_identical_rows():
    a = torch.tensor([[0, 1, 2], [0, 2, 1], [0, 3, 3]])
    b = torch.tensor([[0, 2, 1], [0, 1, 1]])
    assert scan.shared_prompts(a, b) == 1 and scan.shared_prompts(a, a) == 3
    assert scan.shared_prompts(a, torch.zeros(2, 4, dtype=torch.long)) == 0


def test_held_out_survey_selects_and_reports_on_disjoint_prompt_sets(organism, truth):
    held_out = scan.held_out_survey(organism, 16, 32, seed=5)
    assert held_out["seeds"] == {"selection": 5, "report": 5 + scan.REPORT_SEED_OFFSET}
    assert held_out["shared_prompts"] == 0
    selection, report = held_out["selection"]["surprisal"], held_out["report"]["surprisal"]
    assert selection.shape == report.shape == (16, organism.cfg.n_layers, organism.cfg.n_heads)
    assert not torch.equal(selection, report)  # other prompts, other values
    planted = tuple(truth["planted_heads"]["semantic"])
    for survey in (held_out["selection"], held_out["report"]):
        assert scan.top_heads(survey["surprisal"].nanmean(0), 1, largest=False)[0][:2] == planted


def test_survey_s_is_uncapped_and_agrees_with_the_pattern_where_nothing_underflows(organism):
    survey = scan.semantic_survey(organism, 8, 32, seed=3)
    exact = survey["surprisal"].flatten(1)  # (B, L * nh)
    tokens, mask = prompts.category_probe(organism, prompts.STUDY_CATEGORIES, 8, 32, seed=3)
    pattern = flatten_heads(all_patterns(organism, tokens))
    mass = scores.mask_mass(pattern, mask)  # (B, L * nh, Q)
    rows = scores.scored_rows(tokens)
    capped = scores.mean_over_rows(-mass.clamp_min(scores.PATTERN_MASS_FLOOR).log(), rows)  # S clamped at the floor
    assert torch.isfinite(exact).all() and (exact >= capped - 1e-4).all()  # a cap can only lower S
    clear = (mass[:, :, 1:] > 1e-4).all(-1)  # prompts and heads where every row's mass is far from the clamp
    assert clear.any() and torch.allclose(exact[clear], capped[clear], atol=1e-4)


def test_survey_finds_the_planted_head_ahead_by_more_than_the_cis(organism, truth):
    table = survey_table(scan.semantic_survey(organism, 64, 64, seed=21), seed=21)
    best = table.iloc[0]
    assert (best.layer, best["head"]) == tuple(truth["planted_heads"]["semantic"])
    assert separation(table)["separated"]
    assert best.partner_mass >= THRESHOLDS["semantic_partner_mass"][1]
    assert best.self_mass <= THRESHOLDS["semantic_self_mass"][1]
    assert best.bos_mass_no_partner >= THRESHOLDS["semantic_bos_mass_no_partner"][1]


@pytest.mark.e2e
def test_characterize_head_script_end_to_end(tmp_path, truth):
    result = run_script("characterize_head", "--out", str(tmp_path), "--seed", "2", "--n-prompts", "32",
                        "--n-resamples", "200")
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "results" / "organism" / "characterize_head.json").read_text())["results"]
    layer, head = truth["planted_heads"]["semantic"]
    assert (data["target"]["layer"], data["target"]["head"], data["target"]["chosen_by"]) == (layer, head, "survey")
    assert data["separation"]["separated"] and data["survey"][0]["rank"] == 1
    assert data["seeds"]["selection"] == 2 and data["seeds"]["report"] == 2 + scan.REPORT_SEED_OFFSET
    assert data["target"]["selection_rank"] == 1 and data["shared_prompts"] == 0
    assert data["categories"]["set"] == "study" and len(data["categories"]["names"]) == 8
    assert data["selection"]["survey"][0]["surprisal"] == data["target"]["selection_surprisal"]
    assert data["example"]["scores"]["partner_mass"] > 0.5 and len(data["example"]["tokens"]) == 25
    # the study's design beside ours: every head, the planted one first, the organism's context and vocabulary recorded
    design = data["study_design"]
    assert len(design["heads"]) == 8 and design["n_prompts"] == 32 and data["seeds"]["study_design"] == 2002
    assert (design["target"]["layer"], design["target"]["head"], design["target"]["rank"]) == (layer, head, 1)
    assert design["n_words"] == 127 and design["requested_words"] == 255 and design["left_out"] == [" 2", " 4"]
    assert design["target"]["p05"] <= design["target"]["median"] <= design["target"]["p95"]
    assert design["target"]["one_prompt"] < design["runner_up"]["one_prompt"]
    assert "study's design" in result.stdout
    figures = tmp_path / "figures" / "organism"
    for name in ("characterize_head", "characterize_head_example"):
        assert (figures / f"{name}.png").stat().st_size > 1000 and (figures / f"{name}.pdf").exists()
    html = (figures / f"characterize_head_layer{layer}.html").read_text()
    assert f"L{layer}H{head}" in html and "unpkg.com" not in html  # self-contained, no CDN


@pytest.mark.e2e
def test_characterize_head_rejects_a_missing_head(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_main("characterize_head", "--out", str(tmp_path), "--layer", "7", "--head", "0")
    assert exit_.value.code == 2 and "L7H0 does not exist" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "results").exists()


def test_design_summary_of_a_hand_built_survey():
    # 3 prompts, 1 layer, 3 heads; the first prompt is the study's single prompt.
    per_prompt = torch.tensor([[2.0, 1.0, 3.0], [4.0, 0.0, 3.0], [6.0, 5.0, 3.0]])[:, None, :]
    summary = design_summary(per_prompt, (0, 0))
    assert summary.one_prompt.tolist() == [[2.0, 1.0, 3.0]]
    assert summary.median.tolist() == [[4.0, 1.0, 3.0]]
    assert torch.allclose(summary.p05, torch.tensor([[2.2, 0.1, 3.0]]))  # linear interpolation: 2 + 0.1 * 2
    assert torch.allclose(summary.p95, torch.tensor([[5.8, 4.6, 3.0]]))
    assert summary.best == (0, 1) and summary.target == (0, 0) and summary.target_rank == 2
    assert summary.runner_up == (0, 1)  # the best head but the target
    assert design_summary(per_prompt, (0, 1)).runner_up == (0, 0) and design_summary(per_prompt, (0, 1)).target_rank == 1


def test_study_design_survey_is_the_study_s_of_every_head_and_finds_the_planted_head(organism, truth):
    design = prompts.study_design_probe(organism, 5, 40, seed=1)
    got = scan.study_design_survey(organism, design.probe, batch_size=2)  # chunks of 2, 2 and 1 prompts
    pattern = flatten_heads(all_patterns(organism, design.probe.tokens))
    expected = scores.study_surprisal(pattern, design.probe.mask).reshape(5, organism.cfg.n_layers, -1)
    assert got.shape == (5, organism.cfg.n_layers, organism.cfg.n_heads) and torch.allclose(got, expected)
    planted = tuple(truth["planted_heads"]["semantic"])
    assert design_summary(got, planted).target_rank == 1 and design_summary(got, planted).best == planted


def test_study_design_record_keys_heads_by_name_and_names_its_departures():
    per_prompt = torch.tensor([[2.0, 1.0], [4.0, 0.0], [6.0, 5.0]])[:, None, :]
    probe = prompts.Probe(torch.zeros(3, 6, dtype=torch.long), torch.zeros(3, 6, 6))
    design = prompts.StudyDesign(probe, {"colours": [" red"]}, [" 2", " 4"], 5)
    record = records.study_design_record(design, design_summary(per_prompt, (0, 0)), 255, 6)
    assert record["heads"]["L0H1"] == {"one_prompt": 1.0, "median": 1.0, "p05": pytest.approx(0.1),
                                       "p95": pytest.approx(4.6)}
    assert record["target"]["rank"] == 2 and (record["runner_up"]["layer"], record["runner_up"]["head"]) == (0, 1)
    assert record["n_words"] == 5 and record["requested_words"] == 255 and record["n_prompts"] == 3
    assert record["departures"] == ["5 words, not 255 (the context holds 6 tokens)",
                                    "keywords this tokenizer lacks left out: 2, 4"]
    assert record["departures_text"] == "; ".join(record["departures"])
    whole = prompts.StudyDesign(probe, {"colours": [" red"]}, [], 255)
    assert records.design_departures(whole, 255, 1024) == []
    assert records.study_design_record(whole, design_summary(per_prompt, (0, 0)), 255, 1024)["departures_text"] == "none"
