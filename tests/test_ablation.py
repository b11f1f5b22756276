"""Component ablations: exact hook behaviour, and the organism's semantic head reading token identity."""

import json
import math
from dataclasses import replace

import pytest
import torch
from transformer_lens.utilities import get_act_name

from analysis import ablation, prompts, scan, scores
from analysis.models import load_model
from conftest import run_main, run_script


@pytest.fixture(scope="module")
def probe(organism):
    return prompts.category_probe(organism, prompts.ALL_CATEGORIES, 32, 64, seed=8)


def cached(model, tokens, hooks, names):
    with model.hooks(fwd_hooks=hooks), torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names, stop_at_layer=2)
    return cache


def test_replace_hook_keeps_bos_or_not():
    act = torch.arange(12.0).reshape(1, 3, 4)
    value = torch.tensor([9.0, 8.0, 7.0, 6.0])
    kept = ablation.replace_hook(value)(act, None)
    assert torch.equal(kept[0, 0], act[0, 0]) and torch.equal(kept[0, 1:], value.expand(2, 4))
    assert torch.equal(ablation.replace_hook(value, keep_bos=False)(act, None)[0], value.expand(3, 4))
    assert torch.equal(act, torch.arange(12.0).reshape(1, 3, 4))  # the input is not modified in place


def test_damage_share_exact():
    assert ablation.damage_share(baseline=0.5, ablated=1.0, reference=2.5) == 0.25
    assert ablation.damage_share(baseline=1.0, ablated=1.0, reference=3.0) == 0.0


def test_summary_table_by_mode_and_condition():
    study = {"mean": {"baseline": torch.tensor([1.0, 2.0, 3.0]), "token_embedding": torch.tensor([2.0, 4.0, 9.0])}}
    table = ablation.summary_table(study, n_resamples=50)
    assert list(table) == ["mean"] and list(table["mean"]) == ["baseline", "token_embedding"]
    token = table["mean"]["token_embedding"]
    assert (token["q25"], token["median"], token["q75"]) == (3.0, 4.0, 6.5)
    assert token["mean"] == pytest.approx(5.0) and token["delta_median"] == 2.0


def test_component_means_are_means_after_bos(organism, probe):
    tokens = probe[0]
    means = ablation.component_means(organism, tokens, [get_act_name("pos_embed"), get_act_name("embed")],
                                     batch_size=5)
    assert torch.allclose(means["hook_pos_embed"], organism.W_pos[1:tokens.shape[1]].mean(0), atol=1e-6)
    assert torch.allclose(means["hook_embed"], organism.W_E[tokens[:, 1:]].mean((0, 1)), atol=1e-6)


def test_component_means_the_study_way_include_bos(organism, probe):
    tokens = probe[0]
    means = ablation.component_means(organism, tokens, [get_act_name("pos_embed"), get_act_name("embed")],
                                     batch_size=5, bos_in_means=True)
    assert torch.allclose(means["hook_pos_embed"], organism.W_pos[:tokens.shape[1]].mean(0), atol=1e-6)
    assert torch.allclose(means["hook_embed"], organism.W_E[tokens].mean((0, 1)), atol=1e-6)
    assert ablation.CONVENTIONS["study_bos_ablated"] == {"keep_bos": False, "bos_in_means": True}


def test_zero_ablation_of_position_leaves_only_the_embedding(organism, probe):
    tokens = probe[0][:2]
    zero = ablation.ablation_hooks({n: torch.ones(organism.cfg.d_model) for n in ablation.COMPONENTS.values()},
                                   "zero")["positional_embedding"]
    cache = cached(organism, tokens, zero, {"blocks.0.hook_resid_pre"})
    resid = cache["blocks.0.hook_resid_pre"]
    assert torch.allclose(resid[:, 1:], organism.W_E[tokens[:, 1:]], atol=1e-6)
    assert torch.allclose(resid[:, 0], organism.W_E[tokens[:, 0]] + organism.W_pos[0], atol=1e-6)


def test_mlp_only_residual_hands_layer_1_the_mlp_output(organism, probe):
    tokens = probe[0][:2]
    names = {"blocks.0.hook_mlp_out", "blocks.1.hook_resid_pre"}
    cache = cached(organism, tokens, ablation.mlp_only_residual_hooks(), names)
    clean = cached(organism, tokens, [], names)
    assert torch.allclose(cache["blocks.1.hook_resid_pre"][:, 1:], cache["blocks.0.hook_mlp_out"][:, 1:])
    assert torch.allclose(cache["blocks.1.hook_resid_pre"][:, 0], clean["blocks.1.hook_resid_pre"][:, 0])


def test_semantic_head_reads_token_identity_not_position(organism, truth, probe):
    layer, head = truth["planted_heads"]["semantic"]
    study = ablation.ablation_study(organism, probe, layer, head)
    table = ablation.summary_table(study, n_resamples=500)  # {mode: {condition: summary}}
    for mode in ("mean", "zero"):
        token, position = table[mode]["token_embedding"], table[mode]["positional_embedding"]
        assert token["median"] > position["median"] + 0.3, mode
        assert token["mean_low"] > position["mean_high"], mode  # clearly: the CIs do not touch
        assert table[mode]["baseline"]["median"] < 0.1
        assert table[mode]["baseline"]["delta_median"] == 0
    # The MLP-only residual keeps the token's identity, so the head still works.
    assert table["mean"]["mlp_only_residual"]["median"] < table["mean"]["positional_embedding"]["median"]


@pytest.mark.e2e
def test_component_ablation_script_end_to_end(tmp_path, truth):
    result = run_script("component_ablation", "--out", str(tmp_path), "--n-prompts", "16", "--seed", "1")
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "results" / "organism" / "component_ablation.json").read_text())["results"]
    assert [data["target"]["layer"], data["target"]["head"]] == truth["planted_heads"]["semantic"]
    conditions = {(mode, condition) for mode, rows in data["table"].items() for condition in rows}
    assert len(conditions) == 12 and len(data["per_prompt"]["zero"]["token_embedding"]) == 16
    assert all(d > 0 for d in data["token_minus_positional_median"].values())
    mean = data["table"]["mean"]
    assert data["positional_share_of_token_damage"]["mean"] == pytest.approx(ablation.damage_share(
        mean["baseline"]["median"], mean["positional_embedding"]["median"], mean["token_embedding"]["median"]))
    assert (tmp_path / "figures" / "organism" / "component_ablation.png").stat().st_size > 1000
    assert "token_embedding" in result.stdout
    # the study's convention (BOS ablated, means with BOS) beside ours, keyed by convention and condition
    by = data["by_convention"]
    assert set(by) == {"ours_bos_kept", "study_bos_ablated"} and by["ours_bos_kept"] == data["table"]["mean"]
    assert set(by["study_bos_ablated"]) == set(data["table"]["mean"])
    assert by["study_bos_ablated"]["baseline"] == data["table"]["mean"]["baseline"]
    assert by["study_bos_ablated"]["token_embedding"]["median"] != data["table"]["mean"]["token_embedding"]["median"]
    # the study's convention scored with the study's S: the BOS row counts 0 in a mean over 1 + n_words rows
    n_words = 64
    assert data["study_convention_our_prompts"]["baseline"]["median"] == pytest.approx(
        by["study_bos_ablated"]["baseline"]["median"] * n_words / (n_words + 1), rel=1e-4)
    # the study's way in full: its 128 prompts of 63 words from the figure-era keywords, the last row sent to BOS
    design = data["study_design"]
    assert design["n_words"] == 63 and design["n_prompts"] == 128 and design["left_out"] == [" 2", " 4"]
    assert list(design["categories"]) == list(prompts.STUDY_FIGURE_CATEGORIES)
    assert set(data["study_way"]) == set(data["table"]["mean"]) and len(data["study_way_per_prompt"]["baseline"]) == 128
    # the last row's partners count against the head: with the quirk its unablated median is far worse than without
    assert data["study_way"]["baseline"]["median"] > 5 * data["study_way_without_last_row_quirk"]["baseline"]["median"]
    assert data["categories"] == {"set": "study", "names": list(prompts.STUDY_CATEGORIES), "words": 41}


def test_ablation_scores_the_exact_uncapped_surprisal_of_the_survey(organism, truth):
    # The baseline condition is the unablated head: its per-prompt S is the survey's (exact, from the scores).
    layer, head = truth["planted_heads"]["semantic"]
    probe = prompts.category_probe(organism, prompts.STUDY_CATEGORIES, 6, 16, seed=3)
    zero = ablation.AblationSettings(("zero",))
    study = ablation.ablation_study(organism, probe, layer, head, zero)
    survey = scan.semantic_survey(organism, 6, 16, seed=3)["surprisal"][:, layer, head]
    assert torch.allclose(study["zero"]["baseline"], survey, atol=1e-5)
    # zeroing the token embedding drives some rows far past the 13.8-nat cap of a clamped S; the study's S caps rows at 27.6
    ours = ablation.ablation_study(organism, probe, layer, head, zero)["zero"]["token_embedding"]
    theirs = ablation.ablation_study(organism, probe, layer, head, replace(zero, score="study"))["zero"]
    assert float(ours.max()) > -math.log(scores.PATTERN_MASS_FLOOR)
    assert float(theirs["token_embedding"].max()) <= -math.log(scores.STUDY_EPS) + 1e-6
    with pytest.raises(ValueError, match="score"):
        ablation.ablation_study(organism, probe, layer, head, replace(zero, score="mine"))


@pytest.mark.e2e
def test_component_ablation_rejects_bad_counts(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_main("component_ablation", "--out", str(tmp_path), "--n-prompts", "0")
    assert exit_.value.code == 2 and "--n-prompts must be positive" in capsys.readouterr().err


def test_a_rotary_model_has_no_positional_embedding_to_ablate_and_is_refused(organism, capsys):
    assert ablation.missing_components(organism) == []
    llama = load_model("organism-llama")
    assert ablation.missing_components(llama) == ["positional_embedding"]
    with pytest.raises(SystemExit) as stopped:
        run_main("component_ablation", "--model", "organism-llama")
    assert stopped.value.code == 2 and "no positional embedding" in capsys.readouterr().err
