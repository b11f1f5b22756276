"""Attention versus cosine similarity: exact small cases, and the organism's category-mates beating self."""

import json
import math

import numpy as np
import pytest
import torch

from analysis import prompts, records, similarity, vocab_input
from analysis.attention import QKHead, qk_head
from conftest import run_main, run_script

# Three 2-d inputs: e0, e1 and their normalised sum; W_Q = W_K = identity, so s(q, k) = x_q . x_k / sqrt(2).
X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1 / math.sqrt(2), 1 / math.sqrt(2)]])
EYE = torch.eye(2)
HEAD = QKHead(EYE, EYE, math.sqrt(2))
R = 1 / math.sqrt(2)


def test_cosine_and_score_minus_self_exact():
    assert torch.allclose(similarity.cosine_matrix(X, 2 * X[:1]), torch.tensor([[1.0], [0.0], [R]]))
    d = similarity.score_minus_self(X, torch.tensor([0, 2]), HEAD)
    # s(q, q) = 1/sqrt(2) for every unit input; s(0, 1) = 0, s(0, 2) = R / sqrt(2), s(2, 0) = s(2, 1) = R / sqrt(2)
    expected = torch.tensor([[0.0, -R, R * R - R], [R * R - R, R * R - R, 0.0]])
    assert torch.allclose(d, expected, atol=1e-6)
    bias = torch.tensor([0.0, 1.0])  # b_K cancels in d; b_Q does not
    key_bias, query_bias = QKHead(EYE, EYE, math.sqrt(2), None, bias), QKHead(EYE, EYE, math.sqrt(2), bias, None)
    assert torch.allclose(similarity.score_minus_self(X, torch.tensor([0]), key_bias), d[:1], atol=1e-6)
    assert not torch.allclose(similarity.score_minus_self(X, torch.tensor([0]), query_bias), d[:1])


@pytest.mark.parametrize("chunk_size", [1, 2, 1024])
def test_study_curve_is_the_studys_dense_recipe(chunk_size):
    # The study's recipe written densely: unscaled scores, log_softmax over keys, `A - A.diagonal()` (which
    # broadcasts the diagonal over rows: column-wise), cos with diagonal 1, closed overlapping windows.
    inputs = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    W_Q, W_K = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)), torch.randn(4, 3)
    logp = torch.log_softmax((inputs @ W_Q) @ (inputs @ W_K).T, dim=-1).double()
    y = logp - logp.diagonal()
    assert torch.allclose(y[0, 1], logp[0, 1] - logp[1, 1])  # column-wise, as in the study
    cos = similarity.cosine_matrix(inputs, inputs).double().fill_diagonal_(1.0)
    windows = similarity.StudyWindows(n_windows=5, width=0.3)
    curve = similarity.study_curve(inputs, QKHead(W_Q, W_K, 2.0), windows, chunk_size=chunk_size)  # unscaled
    for w, c in enumerate(np.linspace(float(cos.min()), 1.0, 5)):
        inside = (cos >= c) & (cos <= c + 0.3)
        assert curve["count"][w] == int(inside.sum())
        if inside.sum() < 2:  # an empty window is NaN, not 0
            assert inside.sum() == 1 or np.isnan(curve["mean"][w])
            continue
        assert curve["mean"][w] == pytest.approx(float(y[inside].mean()), abs=1e-5)
        assert curve["std"][w] == pytest.approx(float(y[inside].std()), abs=1e-5)
        assert curve["mean_bits"][w] == pytest.approx(float(y[inside].mean()) / math.log(2), abs=1e-5)
    assert curve["x"][0] == pytest.approx(float(cos.min()) + 0.15)
    row = similarity.study_curve(inputs, QKHead(W_Q, W_K, 2.0), windows, subtract="row", chunk_size=chunk_size)
    y_row = logp - logp.diagonal()[:, None]  # the row-wise reading: s(q, k) - s(q, q)
    inside = cos >= float(cos.min())
    assert row["mean"][0] == pytest.approx(float(y_row[inside & (cos <= float(cos.min()) + 0.3)].mean()), abs=1e-5)
    # cosine is symmetric, so each window holds (k, q) with (q, k): both readings have the same window means
    filled = curve["count"] > 0
    assert np.allclose(row["mean"][filled], curve["mean"][filled], atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 2, 1024])
def test_binned_pairs_exact_and_chunk_free(chunk_size):
    edges = torch.tensor([-1.0, 0.5, 1.0])  # window 0: cos < 0.5 (orthogonal pairs); window 1: cos >= 0.5
    counts, sums = similarity.binned_pairs(X, edges, HEAD, unit=2.0, chunk_size=chunk_size)
    assert counts.tolist() == [[1, 1], [1, 1], [0, 2]]  # self pairs left out
    d = R * R - R
    expected = 2.0 * torch.tensor([[-R, d], [-R, d], [0.0, 2 * d]], dtype=torch.float64)
    assert torch.allclose(sums, expected, atol=1e-6)


def test_score_unit_and_window_edges():
    assert similarity.score_unit("nats", 8.0) == 1.0
    assert math.isclose(similarity.score_unit("bits-unscaled", 8.0), 8.0 / math.log(2))  # undo the scale, in bits
    with pytest.raises(ValueError):
        similarity.score_unit("other", 8.0)
    assert similarity.window_edges(0.5).tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]


def test_example_query_and_category_pairs_exact():
    # query X[2] against keys X[0], X[1] (itself left out): d = s(q, k) - s(q, q), s(q, q) = 1 / sqrt(2)
    ex = similarity.example_query(X[2:], 0, similarity.Keys(X[:2], ["a", "b"], torch.tensor([0, 1])), HEAD,
                                  unit=2.0, n_labels=1)
    assert torch.allclose(ex["diff"], 2.0 * torch.full((2,), R * R - R), atol=1e-6)
    assert torch.allclose(ex["cosine"], torch.tensor([R, R]))
    assert ex["mates"].tolist() == [True, False] and [k["token"] for k in ex["mate_keys"]] == ["a"]
    assert len(ex["top_keys"]) == 1 and ex["top_keys"][0]["score_minus_self"] == pytest.approx(2 * (R * R - R))
    no_category = similarity.Keys(X[:2], ["a", "b"], torch.tensor([-1, -1]))
    assert not similarity.example_query(X[2:], -1, no_category, QKHead(EYE, EYE, 1.0))["mates"].any()  # no mates
    pairs = similarity.category_pairs(X, torch.tensor([0, 0, 1]), HEAD)
    assert pairs.pooled["mates_pairs"] == 2 and pairs.pooled["mates_mean"] == pytest.approx(-R)  # e0, e1: 0 - 1/sqrt(2)


def test_windowed_means_exact_with_query_bootstrap():
    counts = torch.tensor([[2, 0], [2, 1], [2, 0]])
    sums = torch.tensor([[2.0, 0.0], [4.0, -1.0], [6.0, 0.0]], dtype=torch.float64)
    w = similarity.windowed_means(counts, sums, n_resamples=300, min_pairs=2)
    assert w["pairs"].tolist() == [6, 1] and w["mean"][0] == 2.0 and np.isnan(w["mean"][1])
    assert 1.0 <= w["low"][0] < 2.0 < w["high"][0] <= 3.0  # query means 1, 2, 3


def test_beats_self_from_and_peak_exact():
    centres = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    gpt2_like = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, np.nan])
    assert math.isclose(similarity.beats_self_from(centres, gpt2_like), 0.75)  # halfway between -1 and 1
    assert similarity.peak(centres, gpt2_like) == (0.9, 2.0)
    assert similarity.beats_self_from(centres, np.array([1.0, 2.0, -1.0, 0.5, 0.2, 0.1])) == 0.5  # run reaches the bottom
    assert similarity.beats_self_from(centres, -np.ones(6)) is None


def test_category_contrast_exact():
    diff = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.0, -3.0], [-2.0, 4.0, 0.0]])
    cosine = torch.tensor([[1.0, 0.9, 0.1], [0.9, 1.0, 0.3], [0.1, 0.3, 1.0]])
    out = similarity.category_contrast(diff, cosine, torch.tensor([0, 0, 1]))
    assert out["mates_mean"] == 1.5 and out["mates_beat_self"] == 1.0 and out["mates_pairs"] == 2
    assert out["others_mean"] == -0.5 and out["others_beat_self"] == 0.25 and out["others_pairs"] == 4
    assert math.isclose(out["mates_cosine"], 0.9, rel_tol=1e-6) and math.isclose(out["others_cosine"], 0.2, rel_tol=1e-6)
    # per word: row 0 mates {2.0} others {-1.0}; row 1 mates {1.0} others {-3.0}; word 2 has no mate
    samples = similarity.contrast_samples(diff, torch.tensor([0, 0, 1]))
    assert samples["mates_minus_others"].per_unit[:2].tolist() == [3.0, 4.0]
    assert math.isnan(samples["mates_minus_others"].per_unit[2]) and samples["mates_minus_others"].value == 3.5
    assert samples["word_mates_beat_self"].per_unit[:2].tolist() == [1.0, 1.0]


def test_category_mates_beat_self_on_the_organism(organism, truth):
    layer, head = truth["planted_heads"]["semantic"]
    category_of = prompts.category_index(organism.tokenizer, prompts.ALL_CATEGORIES, organism.cfg.d_vocab)
    ids = torch.nonzero(category_of >= 0)[:, 0]
    x = vocab_input.head_input(organism, layer, prompts.reference_prompts(organism, 3), token_ids=ids,
                               settings=vocab_input.InputSettings(use_cache=False))
    own = qk_head(organism, layer, head, bias=True)
    contrast = similarity.category_contrast(
        similarity.score_minus_self(x, torch.arange(len(ids)), own),
        similarity.cosine_matrix(x, x), category_of[ids])
    assert contrast["mates_mean"] > 0.5 and contrast["mates_beat_self"] > 0.75  # measured: 0.92 and 0.85
    assert contrast["mates_mean"] > contrast["others_mean"] + 1.0
    assert contrast["mates_cosine"] > contrast["others_cosine"]  # mates are the more similar inputs


@pytest.mark.e2e
def test_cosine_attention_script_end_to_end(tmp_path, truth):
    result = run_script("cosine_attention_analysis", "--out", str(tmp_path), "--n-resamples", "200",
                        env={"ANALYSIS_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "results" / "organism" / "cosine_attention_analysis.json").read_text())["results"]
    assert [data["target"]["layer"], data["target"]["head"]] == truth["planted_heads"]["semantic"]
    assert data["settings"]["variant"] == "mean" and data["settings"]["biases_included"]
    n = data["settings"]["n_tokens"]
    assert n == 181 and data["settings"]["pairs"] == n * (n - 1)  # 183 tokens, 2 special
    assert data["category_contrast"]["mates_beat_self"] > 0.85  # measured: 0.89
    assert data["categories"]["set"] == "study"  # the study's 8 categories, 41 words: 170 ordered mate pairs
    assert data["category_contrast"]["mates_pairs"] == 7 * 5 * 4 + 6 * 5
    mates = {m["token"] for m in data["example"]["mates"]}
    assert {" blue", " green"} <= mates
    # " red" prefers its mates to itself: all but at most one (with the study's 8 categories as the mean view's
    # reference, " blue" sits just below self; the 10-category union put every mate above)
    above_self = [m["score_minus_self"] > 0 for m in data["example"]["mates"]]
    assert sum(above_self) >= len(above_self) - 1 and len(above_self) >= 4
    # " red"'s best key is another colour of the organism's language (" silver" is one, not in the study's list)
    assert data["example"]["top_keys"][0]["token"] in set(truth["categories"]["colours"]) - {" red"}
    assert (tmp_path / "figures" / "organism" / "cosine_attention_analysis.png").stat().st_size > 1000
    # the study's curve beside ours: BOS among the tokens, 50 overlapping windows of 0.03, bits
    study = data["study"]
    assert len(study["x"]) == 50 and study["width"] == 0.03 and study["subtract"] == "column"
    assert study["count"][-1] >= n + 1  # the last window [0.97, 1] holds every self pair (BOS's too)
    assert study["mean_bits"][0] == pytest.approx(study["mean"][0] / math.log(2))
    assert data["study_row"]["subtract"] == "row"
    # the same curve on the study's own head input: another input, so another curve, windows of the same kind
    on_input = data["study_on_study_input"]
    assert len(on_input["x"]) == 50 and on_input["width"] == 0.03 and on_input["mean_bits"] != study["mean_bits"]
    assert on_input["count"][-1] >= n + 1
    # controls: the category contrast of every head, the planted head first
    assert set(data["directions"]) == {"mates_minus_others", "word_mates_beat_self"}
    assert len(data["controls"]) == 2 * 4 - 1  # the organism: 2 layers x 4 heads, the target left out
    assert data["target"]["mates_minus_others"]["rank"] == 1 and data["target"]["mates_minus_others"]["separates"]
    # per word, each word weighing equally, the contrast tracks the pooled one: both well above zero
    pooled = data["category_contrast"]["mates_mean"] - data["category_contrast"]["others_mean"]
    assert data["target"]["mates_minus_others"]["value"] == pytest.approx(pooled, rel=0.25) and pooled > 1


@pytest.mark.e2e
def test_cosine_attention_needs_a_frequency_table_for_a_subset(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_main("cosine_attention_analysis", "--out", str(tmp_path), "--n-tokens", "50", "--layer", "1", "--head", "0")
    assert exit_.value.code == 2 and "token_freq.py" in " ".join(capsys.readouterr().err.split())


def test_profile_record_study_curves_and_category_words():
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(0))  # 870 pairs: every window is filled
    profile = similarity.similarity_profile(x, HEAD, similarity.ProfileSettings(width=0.5, n_resamples=10))
    record = records.profile_record(profile)
    assert record["peak"] == dict(zip(("cosine", "mean"), profile["peak"]))
    assert record["beats_self_from_cosine"] == profile["beats_self_from"]
    assert list(record["windows"]["centre"]) == list(profile["centres"])
    curves = similarity.study_curves(X, HEAD, chunk_size=2)
    column = similarity.study_curve(X, HEAD, subtract="column")
    assert np.allclose(curves["study"]["mean_bits"], column["mean_bits"], equal_nan=True)
    assert curves["study_row"]["subtract"] == "row" and "row" not in curves["study"]["definition"][:20]
    assert curves["study"]["peak"]["bits"] == pytest.approx(float(np.nanmax(column["mean_bits"])))
    ids, category = similarity.category_words(torch.tensor([-1, 2, -1, 0]))
    assert ids.tolist() == [1, 3] and category.tolist() == [2, 0]
