"""SAE features: exact helpers, the shipped organism SAE, training, and the feature-level QK script."""

import json
import math

import pytest
import torch

from analysis import records
from analysis.attention import QKHead
from analysis.errors import UsageError
from analysis.organism.files import ORGANISM_SAE_DIR
from analysis.organism.sae import SAETrainSettings, organism_activations, train_sae
from analysis.sae import features, precision, sources
from conftest import check_controls_shape, run_main


def test_hook_for_layer():
    assert sources.hook_for_layer(1) == "blocks.0.hook_resid_post"
    with pytest.raises(UsageError):
        sources.hook_for_layer(0)


def test_a_head_without_an_sae_is_an_exception_the_script_can_record(organism):
    with pytest.raises(sources.SAEUnavailable) as err:  # a layer-0 head reads no residual stream after a block
        sources.sae_for_head(organism, 0)
    assert "layer 1 or later" in err.value.reason and "\n" not in err.value.reason
    with pytest.raises(UsageError) as asked:  # asked for by flag: the error itself, for the user to fix
        sources.sae_for_head(organism, 0, required=True)
    assert not isinstance(asked.value, sources.SAEUnavailable)
    found = sources.sae_for_head(organism, 1)
    assert found.hook == "blocks.0.hook_resid_post" and found.source.kind == "organism"
    assert found.sae.cfg.d_in == organism.cfg.d_model


def test_select_features_exact():
    by_category = torch.tensor([[5.0, 0.0],   # feature 0: all category 0
                                [3.0, 3.0],   # feature 1: split evenly (share 0.5 counts)
                                [1.0, 9.0],   # feature 2: mostly category 1
                                [4.0, 1.0]])  # feature 3: mostly category 0
    chosen, category = features.select_features(by_category, per_category=2)
    assert chosen.tolist() == [0, 3, 2, 1] and category.tolist() == [0, 0, 1, 1]


def test_self_avoidance_and_top_pairs_exact():
    scores = torch.tensor([[0.0, 5.0, 1.0],
                           [4.0, 9.0, 2.0],
                           [3.0, 1.0, 2.0]])
    group = torch.tensor([0, 0, 1])
    result = features.self_avoidance(scores, group)
    # feature 0: self 0 < mate 5; feature 1: self 9 > mate 4; feature 2 has no mate (left out)
    assert result["self_below_mates"] == 0.5
    assert math.isclose(result["best_key_is_mate"], 1 / 3, rel_tol=1e-6)
    assert math.isclose(result["best_key_is_self"], 1 / 3, rel_tol=1e-6)
    assert features.top_pairs(scores, 2) == [(0, 1, 5.0), (1, 0, 4.0)]
    assert features.top_pairs(scores, 1, include_self=True) == [(1, 1, 9.0)]


def test_shipped_organism_sae_is_small_and_reconstructs(organism):
    directory = ORGANISM_SAE_DIR / "blocks.0.hook_resid_post"
    assert sum(p.stat().st_size for p in directory.iterdir()) < 2 * 2**20
    sae = sources.organism_sae(organism, "blocks.0.hook_resid_post")
    assert sae.cfg.d_in == organism.cfg.d_model and sae.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    batch = next(organism_activations(organism, "blocks.0.hook_resid_post", SAETrainSettings(seed=5)))
    assert sources.variance_explained(sae, batch) > 0.9
    assert sources.variance_explained(sae, batch[:1].expand(4, -1)) < 1  # a constant batch has no variance to explain


def test_training_is_seeded():
    from analysis.models import load_model

    model = load_model("organism")
    settings = SAETrainSettings(d_sae=32, k=4, n_tokens=3 * 8 * 31, prompts_per_batch=8, prompt_length=32)
    a = train_sae(model, "blocks.0.hook_resid_post", settings)
    b = train_sae(model, "blocks.0.hook_resid_post", settings)
    assert torch.equal(a.W_dec, b.W_dec) and a.cfg.d_sae == 32


def test_unknown_pretrained_sae_is_a_clear_error():
    with pytest.raises(UsageError, match="no-such-release"):
        sources.load_pretrained("no-such-release", "blocks.0.hook_resid_post")
    with pytest.raises(UsageError, match="has no SAE 'blocks.99.nowhere'.*--sae-id"):
        sources.load_pretrained(sources.GPT2_RELEASE, "blocks.99.nowhere")


def random_sae(directory, d_in, d_sae=32, seed=0):
    """A SAELens StandardSAE with random weights, saved as SAELens saves one (cfg.json + weights)."""
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed)
    StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae)).save_model(directory)
    return directory


def test_sae_source_follows_the_model_and_the_flags(organism, tmp_path):
    from analysis.models import random_gpt2

    hook = "blocks.0.hook_resid_post"
    assert sources.choose_source(organism, hook) == sources.SAESource("organism", sae_id=hook)
    other = random_gpt2(n_layers=2, with_tokenizer=False)  # another config name and width: not the organism's SAE
    assert not sources.organism_sae_fits(other)
    assert sources.choose_source(other, hook) == sources.SAESource("pretrained", release=sources.GPT2_RELEASE,
                                                                   sae_id=hook)
    assert sources.choose_source(organism, hook, sae_id="x").kind == "pretrained"  # asked for: never overridden
    directory = random_sae(tmp_path / "sae", organism.cfg.d_model)
    assert sources.choose_source(organism, hook, path=directory) == sources.SAESource("path", path=str(directory))
    with pytest.raises(UsageError, match="not both"):
        sources.choose_source(organism, hook, release=sources.GPT2_RELEASE, path=directory)
    with pytest.raises(UsageError, match="no cfg.json"):
        sources.choose_source(organism, hook, path=tmp_path)
    with pytest.raises(UsageError, match="--retrain-sae"):
        sources.load_sae(organism, sources.SAESource("path", path=str(directory)), retrain=True)
    assert sources.load_sae(organism, sources.SAESource("path", path=str(directory))).cfg.d_sae == 32


@pytest.mark.e2e
def test_sae_of_another_width_is_refused_with_a_clear_error(tmp_path, capsys):
    directory = random_sae(tmp_path / "sae16", d_in=16)
    with pytest.raises(SystemExit) as exit_info:
        run_main("sae_features", "--out", str(tmp_path), "--sae-path", str(directory))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    flat = "".join(err.split())  # the paragraph is wrapped to the terminal's width
    for part in ("reads 16-dimensional activations (d_in = 16)", "d_model = 128", "--sae-path"):
        assert "".join(part.split()) in flat, part
    assert not (tmp_path / "results").exists()  # refused before anything was written


def test_category_activations_match_dense_means_over_the_seen_tokens(organism):
    """Per-token means kept for the tokens that occur only: equal to the dense d_sae x d_vocab means there."""
    from analysis import prompts

    hook = "blocks.0.hook_resid_post"
    sae = sources.organism_sae(organism, hook)
    tokens, _ = prompts.category_probe(organism, prompts.ALL_CATEGORIES, 6, 24, seed=3)
    category_of = prompts.category_index(organism.tokenizer, prompts.ALL_CATEGORIES, organism.cfg.d_vocab)
    n_categories = len(prompts.ALL_CATEGORIES)
    by_category, by_token, seen = features.category_activations(organism, sae, tokens, prompts.ALL_CATEGORIES, hook,
                                                                batch_size=4)
    with torch.no_grad():
        _, cache = organism.run_with_cache(tokens, names_filter=hook, stop_at_layer=1)
        acts = sae.encode(cache[hook][:, 1:]).reshape(-1, sae.cfg.d_sae).double()  # (positions, d_sae)
    ids = tokens[:, 1:].reshape(-1)
    one_hot = torch.nn.functional.one_hot(ids, organism.cfg.d_vocab).double()  # (positions, d_vocab)
    dense = (acts.T @ one_hot) / one_hot.sum(0).clamp_min(1)  # (d_sae, d_vocab)
    assert seen.tolist() == sorted(set(ids.tolist())) and by_token.shape == (sae.cfg.d_sae, len(seen))
    assert torch.allclose(by_token.double(), dense[:, seen], atol=1e-5)
    category = category_of[ids]  # (positions,) -1 outside every category
    expected = torch.stack([acts[category == c].mean(0) for c in range(n_categories)], -1)  # (d_sae, C)
    assert torch.allclose(by_category.double(), expected, atol=1e-5)
    assert features.feature_label(by_token, 0, ["a", "b"] * len(seen), n=len(seen) + 5).startswith("f0")


@pytest.mark.slow
def test_pretrained_sae_unavailable_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(UsageError, match="gpt2-small-resid-post-v5-32k"):
        sources.load_pretrained(sources.GPT2_RELEASE, "blocks.0.hook_resid_post")


@pytest.mark.e2e
def test_sae_features_script_with_a_saved_sae_directory(tmp_path):
    directory = ORGANISM_SAE_DIR / "blocks.0.hook_resid_post"  # the shipped SAE, passed as a path
    run_main("sae_features", "--out", str(tmp_path), "--n-prompts", "16", "--sae-path", str(directory))
    data = json.loads((tmp_path / "results" / "organism" / "sae_features.json").read_text())["results"]
    assert data["sae"]["kind"] == "SAELens directory" and data["sae"]["path"] == str(directory)
    assert data["sae"]["d_in"] == 128 and data["sae"]["hook"] == "blocks.0.hook_resid_post"


@pytest.mark.e2e
def test_sae_features_script(tmp_path, truth):
    run_main("sae_features", "--out", str(tmp_path), "--n-prompts", "32",
             "--categories", "all")
    data = json.loads((tmp_path / "results" / "organism" / "sae_features.json").read_text())["results"]
    assert [data["head"]["layer"], data["head"]["head"]] == truth["planted_heads"]["semantic"]
    assert len(data["features"]) == len(data["map"]) > 10
    assert data["sae"]["variance_explained_on_category_prompts"] > 0.9
    means = data["block_means"]
    assert means["in_group"] > means["out_group"]  # same-category features attend to each other
    assert len(data["top_pairs"]) == 20 and data["top_pairs_same_category"] > 0.5
    assert (tmp_path / "figures" / "organism" / "sae_features.png").stat().st_size > 1000
    assert data["categories"]["set"] == "all" and data["categories"]["words"] == 63
    check_controls_shape(data, truth["planted_heads"]["semantic"])
    # one compare over the feature map's statistics (every head) and the study's precision (the layer's heads)
    assert data["directions"] == {"self_minus_in_group": "low", "in_minus_out_group": "high",
                                  "margin_normalised": "low", "below_partners_share": "high", "precision": "high"}
    layer = data["head"]["layer"]
    assert len(data["controls"]) == 7  # every other head of the organism
    assert data["target"]["in_minus_out_group"]["n_ranked"] == 8
    assert data["target"]["self_minus_in_group"]["value"] == pytest.approx(means["self_minus_in_group"], abs=1e-4)
    layer_rows = [c for c in data["controls"] if c["layer"] == layer]
    assert sorted(c["head"] for c in layer_rows) == [h for h in range(4) if h != data["head"]["head"]]
    assert all(0 <= c["precision"] <= 1 and "precision_colours" in c and 0 <= c["precision_shuffled"] <= 1
               for c in layer_rows)
    assert all(c["precision"] is None for c in data["controls"] if c["layer"] != layer)
    assert data["target"]["precision"]["n_ranked"] == 4 and 0 <= data["target"]["precision"]["value"] <= 1
    # the verdict's k: the shipped TopK SAE activates 16 features everywhere, fewer than the study's 32
    assert {key: data["k_verdict"][key] for key in ("k", "active_count", "study_k")} == {
        "k": 16, "active_count": 16, "study_k": 32}
    curve = data["precision_curve"]
    assert list(curve) == ["k=1", "k=2", "k=4", "k=8", "k=16"]  # no k beyond the active count
    assert data["target"]["precision"]["value"] == pytest.approx(curve["k=16"]["target"]["value"])
    assert data["null"]["k"] == 16
    assert data["null"]["precision_shuffled"] == pytest.approx(curve["k=16"]["null"]["value"])
    assert data["target"]["precision"]["difference"]["unit"] == "keyword sample"  # a paired CI over samples
    for entry in curve.values():
        assert set(entry["by_head"]) == {f"L{layer}H{h}" for h in range(4)}
        assert entry["target"]["low"] <= entry["target"]["value"] <= entry["target"]["high"]
    # the planted head predicts the features at its attended key: at k = 1 far above its null and every control
    small = curve["k=1"]
    assert small["target"]["low"] > small["null"]["high"]
    assert small["target"]["low"] > small["strongest_control"]["high"]
    # the null: predicted features' labels shuffled, at k = 16 near the keyword positions' share (4 of 20)
    assert 0.1 < data["null"]["precision_shuffled"] < 0.35
    for name in ("sae_features_controls", "sae_features_precision"):
        assert (tmp_path / "figures" / "organism" / f"{name}.png").stat().st_size > 1000


def test_shuffled_labels_permute_feature_ids_the_same_way_at_every_position():
    predicted = torch.tensor([[[0, 1, 2], [0, 1, 2], [3, 4, 5]], [[5, 4, 3], [1, 0, 2], [2, 3, 4]]])  # (2, 3, 3)
    got = precision.shuffled_labels(predicted, 6, torch.Generator().manual_seed(0))
    assert got.shape == predicted.shape and bool(((got >= 0) & (got < 6)).all())
    assert all(len(set(row.tolist())) == 3 for row in got.reshape(-1, 3))  # still k distinct features
    assert torch.equal(got[0, 0], got[0, 1])  # positions that shared predictions still share them
    for b in range(2):  # one permutation per sample: equal ids map to equal ids, different to different
        pairs = {(int(p), int(g)) for p, g in zip(predicted[b].flatten(), got[b].flatten())}
        assert len({p for p, _ in pairs}) == len(pairs) == len({g for _, g in pairs})
    assert not torch.equal(got, predicted)


def test_precision_counts_where_overlaps_fall_so_its_null_is_near_the_scored_share():
    # Overlap 1 at every position (the prediction is always the active feature), 2 of 10 positions scored:
    # precision = TP / (TP + FP) is the scored share, 0.2, even for perfect predictions; shuffled labels
    # overlap at random positions (about 1 in 10, scored or not), and samples without any overlap count 0.
    active = torch.arange(10).reshape(1, 10, 1).expand(64, 10, 1)
    scored = torch.zeros(64, 10, dtype=torch.bool)
    scored[:, 8:] = True
    assert torch.allclose(precision.overlap_precision(active, active, scored),
                          torch.full((64,), 0.2, dtype=torch.float64))
    shuffled = precision.shuffled_labels(active, 10, torch.Generator().manual_seed(1))
    null = precision.overlap_precision(shuffled, active, scored).mean()
    assert 0.05 < float(null) < 0.25


def test_keyword_prompts_place_every_word_once_and_the_last_at_the_end():
    words = [101, 102, 103, 104, 105]
    tokens, scored = precision.keyword_prompts(words, 6, d_vocab=100, bos_id=0, seed=1)
    assert tokens.shape == scored.shape == (6, precision.PRECISION_LENGTH) and (tokens[:, 0] == 0).all()
    for row, marks in zip(tokens, scored):
        positions = [i for i, t in enumerate(row.tolist()) if t in words]
        assert sorted(row[positions].tolist()) == words and positions[-1] == precision.PRECISION_LENGTH - 1
        assert marks.nonzero().flatten().tolist() == positions[1:]  # every keyword but the first
    assert torch.equal(tokens, precision.keyword_prompts(words, 6, 100, 0, seed=1)[0])


def test_overlap_precision_exact():
    # 1 prompt, 3 positions, k = 2. Overlaps: position 0 (unscored) 1, position 1 (scored) 2, position 2 (scored) 0.
    predicted = torch.tensor([[[1, 2], [3, 4], [5, 6]]])
    active = torch.tensor([[[2, 9], [4, 3], [7, 8]]])
    scored = torch.tensor([[False, True, True]])
    assert math.isclose(precision.overlap_precision(predicted, active, scored).item(), 2 / 3)
    none = precision.overlap_precision(predicted, torch.full_like(active, 0), scored)
    assert none.item() == 0.0  # no overlap anywhere: 0, not NaN


def test_predicted_features_and_attended_key_agree_with_dense_products():
    torch.manual_seed(0)
    x, W_dec, W_Q, W_K = torch.randn(2, 5, 8), torch.randn(40, 8), torch.randn(3, 8, 4), torch.randn(3, 8, 4)
    keys = torch.einsum("fd,hde->hfe", W_dec, W_K)
    got = precision.predicted_features(x, keys, W_Q, k=3)
    dense = torch.einsum("btd,hde,hfe->bhtf", x, W_Q, keys)  # x W_Q (W_dec W_K)^T
    assert torch.equal(got, dense.topk(3, -1).indices)
    active = torch.arange(2 * 5 * 3).reshape(2, 5, 3)
    pattern = torch.zeros(2, 1, 5, 5)
    pattern[..., 0] = 1.0
    pattern[0, 0, 4] = torch.tensor([0, 0.1, 0.2, 0.6, 0.1])
    picked = precision.active_at_attended_key(active, pattern)
    assert torch.equal(picked[0, 0, 4], active[0, 3]) and torch.equal(picked[1, 0, 2], active[1, 0])


def test_zero_valued_codes_are_not_active_features():
    # 1 sample, 3 positions (position 0 unscored), d_sae = 4, k = 3: the study's codes.topk(3) fills every active set
    # to 3 features, zero-valued ones by tie-breaking; the active set holds only the non-zero codes.
    codes = torch.tensor([[[0.0, 0.0, 0.0, 2.0],    # one non-zero code: feature 3
                           [3.0, 1.0, 2.0, 0.0],    # three non-zero codes: 0, 2, 1 (largest first)
                           [0.0, 4.0, 0.0, 0.0]]])  # one non-zero code: feature 1
    predicted = torch.tensor([[[0, 1, 2], [0, 1, 3], [0, 2, 3]]])
    scored = torch.tensor([[False, True, True]])
    active = precision.active_features(codes, 3)
    assert active.tolist() == [[[3, -1, -1], [0, 2, 1], [1, -1, -1]]]
    assert precision.active_count(codes).tolist() == [[1, 3, 1]]
    # before: position 0 overlaps 2 (two of the zero-valued 0, 1, 2, whichever topk picks), position 1 overlaps
    # {0, 1}: 2, position 2 overlaps 2 (two of the zero-valued 0, 2, 3): TP = 4, FP = 2, precision 4/6
    before = codes.topk(3, dim=-1).indices
    assert math.isclose(precision.overlap_precision(predicted, before, scored).item(), 4 / 6)
    # now: position 0 overlaps nothing (feature 3 is not predicted), position 1 {0, 1}: 2, position 2 nothing:
    # TP = 2, FP = 0, precision 1
    assert precision.overlap_precision(predicted, active, scored).item() == 1.0
    # at k = 1 the active sets are each position's largest code: 3, 0, 1; predicted 0, 0, 0: TP 1, FP 0
    assert precision.active_features(codes, 1).tolist() == [[[3], [0], [1]]]
    assert precision.overlap_precision(predicted[..., :1], precision.active_features(codes, 1), scored).item() == 1.0


def test_the_verdicts_k_is_the_studys_32_only_where_the_sae_activates_32_features():
    topk_sae = torch.full((6, 20), 16)  # a TopK SAE with k = 16: 16 non-zero codes everywhere
    choice = precision.choose_k(topk_sae)
    assert choice == precision.KChoice(16, 16, 32, "active_count")
    assert precision.curve_ks(choice) == (1, 2, 4, 8, 16)
    wide = torch.tensor([[40, 50, 10, 60]])  # median (lower middle) 40 >= 32: the study's k
    assert precision.choose_k(wide) == precision.KChoice(32, 40, 32, "study_k")
    assert precision.curve_ks(precision.choose_k(wide)) == (1, 2, 4, 8, 16, 32)
    odd = precision.choose_k(torch.tensor([20, 20, 3]))  # median 20: a k off the grid joins the curve
    assert odd.k == 20 and precision.curve_ks(odd) == (1, 2, 4, 8, 16, 20)
    record = records.k_verdict_record(choice)
    assert (record["k"], record["active_count"], record["study_k"]) == (16, 16, 32)
    assert "16 non-zero codes" in record["rule"] and "fewer than the study's k = 32" in record["rule"]
    assert "at least 32" in records.k_verdict_record(precision.choose_k(wide))["rule"]


def test_the_shipped_topk_sae_activates_its_k_features_at_every_position(organism):
    sae = sources.organism_sae(organism, "blocks.0.hook_resid_post")
    samples = precision.category_samples(organism, 4, seed=0)
    counts = precision.sample_active_counts(organism, sae, 1, samples)
    assert counts.shape == (4 * len(precision.PRECISION_CATEGORIES), precision.PRECISION_LENGTH)
    assert bool((counts == sae.cfg.k).all())  # TopK: exactly cfg k non-zero codes, never 32
    assert precision.choose_k(counts).k == sae.cfg.k


def test_head_precision_finds_the_planted_head_at_small_k(organism, truth):
    layer, target = truth["planted_heads"]["semantic"]
    sae = sources.organism_sae(organism, "blocks.0.hook_resid_post")
    words = [organism.to_single_token(w) for w in (" red", " blue", " green", " yellow", " purple")]
    samples = precision.keyword_prompts(words, 16, organism.cfg.d_vocab, organism.tokenizer.bos_token_id, seed=0)
    settings = precision.PrecisionSettings(ks=(1, 16), n_shuffles=3)
    per_head = precision.head_precision(organism, sae, layer, samples, settings)
    assert per_head.shape == (2, 16, organism.cfg.n_heads)
    assert ((per_head >= 0) & (per_head <= 1)).all()
    both = precision.precision_with_null(organism, sae, layer, samples, settings)
    assert torch.equal(both["precision"], per_head) and both["shuffled"].shape == per_head.shape
    mean, null = per_head[0].mean(0), both["shuffled"][0].mean(0)  # at k = 1, per head
    assert int(mean.argmax()) == target and mean[target] > 0.4  # the planted semantic head predicts its features
    assert all(mean[h] < 0.2 for h in range(organism.cfg.n_heads) if h != target) and null[target] < 0.1


def test_precision_by_head_pools_samples_at_one_k():
    # two categories, two samples, three heads, two k; shuffled null a constant per category
    per_category = {"a": {"precision": torch.tensor([[[1.0, 0.0, 0.5], [0.0, 0.0, 0.5]],
                                                     [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]),
                          "shuffled": torch.full((2, 2, 3), 0.2)},
                    "b": {"precision": torch.tensor([[[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
                                                     [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]]),
                          "shuffled": torch.full((2, 2, 3), 0.4)}}
    rows = precision.precision_by_head(per_category, 0)
    assert set(rows) == {0, 1, 2}
    assert rows[0]["precision"].per_unit.tolist() == [1.0, 0.0, 1.0, 1.0]  # the units: a's samples, then b's
    assert rows[0]["precision"].value == pytest.approx(0.75) and rows[0]["precision"].unit == "keyword sample"
    assert rows[0]["precision_shuffled"] == pytest.approx(0.3)
    assert (rows[0]["precision_a"], rows[0]["precision_b"]) == pytest.approx((0.5, 1.0))
    assert rows[1]["precision"].value == pytest.approx(0.25) and rows[2]["precision"].value == pytest.approx(0.25)
    assert precision.precision_by_head(per_category, 1)[2]["precision"].value == pytest.approx(0.5)


def test_precision_curve_and_null_comparison_exact():
    # 1 k, 40 samples, 2 heads: head 0 precision 1 on every sample against a null of 0.25; head 1 equal to its null
    both = {"precision": torch.stack([torch.ones(40), torch.full((40,), 0.25)], -1)[None],
            "shuffled": torch.full((1, 40, 2), 0.25)}
    curve = precision.precision_curve(both, n_resamples=200)
    assert curve["precision"].value.tolist() == [[1.0, 0.25]] and curve["null"].value.tolist() == [[0.25, 0.25]]
    assert curve["minus_null"].value.tolist() == [[0.75, 0.0]]
    assert curve["precision"].low.tolist() == curve["precision"].high.tolist() == [[1.0, 0.25]]  # no spread
    assert precision.above_null(both, 0, 0, 200)["above"]
    assert not precision.above_null(both, 0, 1, 200)["above"]  # a difference of exactly 0 never lies above 0
    spread = torch.linspace(0, 1, 40)
    noisy = {"precision": spread[None, :, None].expand(1, 40, 2), "shuffled": torch.zeros(1, 40, 2)}
    interval = precision.precision_curve(noisy, n_resamples=500)["precision"]
    assert interval.low[0, 0] < interval.value[0, 0] < interval.high[0, 0]
    assert float(interval.value[0, 0]) == pytest.approx(0.5)


def test_precision_curve_record_keys_heads_and_picks_the_strongest_control():
    value = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.5, 0.5]], dtype=torch.float64)  # (k, head)
    zeros = torch.zeros_like(value)
    curve = {"precision": precision.Interval(value, value - 0.05, value + 0.05),
             "null": precision.Interval(zeros + 0.1, zeros, zeros + 0.2),
             "minus_null": precision.Interval(value - 0.1, value - 0.2, value)}
    record = records.precision_curve_record(curve, (1, 16), layer=1, target=0)
    assert list(record) == ["k=1", "k=16"]
    first = record["k=1"]
    assert first["target"] == pytest.approx({"value": 0.9, "low": 0.85, "high": 0.95})
    assert first["null"] == pytest.approx({"value": 0.1, "low": 0.0, "high": 0.2})
    assert first["target_minus_null"]["value"] == pytest.approx(0.8)
    assert first["strongest_control"]["head"] == 2 and first["strongest_control"]["value"] == pytest.approx(0.3)
    assert set(first["by_head"]) == {"L1H0", "L1H1", "L1H2"} and first["by_head"]["L1H1"]["null"]["value"] == 0.1
    assert record["k=16"]["strongest_control"]["head"] == 1  # a tie goes to the lower head
    assert record["k=16"]["k"] == 16


def test_feature_map_record_exact():
    scores = torch.tensor([[0.0, 5.0, 1.0],
                           [4.0, 9.0, 2.0],
                           [3.0, 1.0, 2.0]])
    group = torch.tensor([0, 0, 1])
    record = records.feature_map_record(scores, torch.tensor([7, 2, 40]), ["f7 x", "f2 y", "f40 z"], group,
                                       ["animals", "colours"], n_pairs=3)
    assert record["features"] == [{"id": 7, "label": "f7 x", "category": "animals"},
                                  {"id": 2, "label": "f2 y", "category": "animals"},
                                  {"id": 40, "label": "f40 z", "category": "colours"}]
    # top off-diagonal pairs: (0, 1) 5, (1, 0) 4, (2, 0) 3; the first two within animals
    assert [(p["query"], p["key"], p["score"]) for p in record["top_pairs"]] == [
        ("f7 x", "f2 y", 5.0), ("f2 y", "f7 x", 4.0), ("f40 z", "f7 x", 3.0)]
    assert record["top_pairs"][2]["query_category"] == "colours"
    assert record["top_pairs_same_category"] == pytest.approx(2 / 3)
    assert record["block_means"]["in_group"] == pytest.approx(4.5)
    assert record["self_avoidance"]["self_below_mates"] == 0.5


def test_feature_map_and_its_statistics_through_each_layers_layernorm(organism):
    from types import SimpleNamespace

    from analysis.self_suppression import group_map_statistics

    sae = SimpleNamespace(W_dec=torch.randn(6, organism.cfg.d_model, generator=torch.Generator().manual_seed(0)))
    chosen, group = torch.tensor([0, 2, 3, 5]), torch.tensor([0, 0, 1, 1])
    # the map, from the model's own weights written out densely
    x = organism.blocks[1].ln1(sae.W_dec[chosen][:, None])[:, 0].detach()
    W = organism.W_Q[1, 3] @ organism.W_K[1, 3].T
    dense = x @ W @ x.T / organism.cfg.attn_scale
    assert torch.allclose(features.feature_map(organism, sae, 1, 3, chosen), dense.detach(), atol=1e-4)
    rows = {h: {"precision": float(h), "precision_shuffled": 0.1} for h in range(organism.cfg.n_heads)}
    stats = features.feature_map_statistics(organism, sae, chosen, group, features.FeatureMaps(1, rows))
    assert set(stats) == {(l, h) for l in range(organism.cfg.n_layers) for h in range(organism.cfg.n_heads)}
    assert stats[(1, 2)]["precision"] == 2.0 and stats[(0, 2)]["precision"] is None
    x0 = organism.blocks[0].ln1(sae.W_dec[chosen][:, None])[:, 0].detach()
    expected = group_map_statistics(x0, group, QKHead(organism.W_Q[0, 2].detach(), organism.W_K[0, 2].detach(),
                                                      organism.cfg.attn_scale))
    assert {k: stats[(0, 2)][k].value for k in expected} == pytest.approx({k: v.value for k, v in expected.items()},
                                                                         abs=1e-5)
    assert stats[(0, 2)]["self_minus_in_group"].unit == "SAE feature"
    assert stats[(1, 3)]["self_minus_in_group"].value != pytest.approx(stats[(0, 3)]["self_minus_in_group"].value)
