"""load_model / save_model: the organism, round trips, and clear errors for what cannot load."""

import json

import pytest
import torch

from analysis.errors import ModelNotAvailableError, UsageError
from analysis.models import WeightProcessing, gpt2_tokenizer, load_model, save_model
from conftest import run_script


def test_organism_loads_offline_with_processing_recorded(organism):
    info = organism.analysis_info
    assert info["name"] == "organism"
    assert info["weight_processing"] == {"fold_ln": True, "center_writing_weights": True,
                                         "center_unembed": True, "fold_value_biases": True}
    assert organism.cfg.n_layers >= 2 and organism.cfg.d_mlp > 0  # GPT-2 style: MLPs, LayerNorm
    assert organism.cfg.normalization_type == "LNPre"  # LayerNorm weights folded in
    assert organism.to_str_tokens(" red Monday 1989", prepend_bos=True) == ["<|endoftext|>", " red", " Monday", " 1989"]


def test_processing_does_not_change_the_function(organism):
    raw = load_model("organism", processing=WeightProcessing.none())
    tokens = organism.to_tokens("The cat sat on the mat. The cat sat on the mat")
    # Centering the unembedding shifts every logit of a position by the same amount.
    a, b = organism(tokens).log_softmax(-1), raw(tokens).log_softmax(-1)
    assert torch.allclose(a, b, atol=1e-4)


def test_save_and_load_round_trip(organism, tmp_path):
    save_model(organism, tmp_path / "saved")
    loaded = load_model(str(tmp_path / "saved"))
    tokens = organism.to_tokens(" red blue dog cat Monday")
    assert torch.allclose(organism(tokens), loaded(tokens), atol=1e-5)
    assert loaded.analysis_info["weight_processing"] == organism.analysis_info["weight_processing"]
    assert loaded.to_str_tokens(" red") == organism.to_str_tokens(" red")


def test_the_record_of_planted_heads_travels_with_the_directory_not_the_name(organism, tmp_path, truth):
    """What decides the organism's passages of the paper is the model's own ground-truth file, never its name."""
    assert organism.analysis_info["ground_truth"] == truth
    assert organism.analysis_info["source"] == "analysis/organism/checkpoint"  # the same in every clone
    save_model(organism, tmp_path / "plain")
    assert load_model(str(tmp_path / "plain")).analysis_info["ground_truth"] is None
    (tmp_path / "plain" / "ground_truth.json").write_text(json.dumps(truth))
    retrained = load_model(str(tmp_path / "plain")).analysis_info
    assert retrained["ground_truth"] == truth and retrained["source"] == str((tmp_path / "plain").resolve())


def test_saved_files_get_the_usual_permissions_and_pass_the_directory_check(organism, tmp_path):
    import os

    from analysis.infra.checkpoint import check_directory
    from analysis.models import ModelShape

    old = os.umask(0o022)
    try:
        save_model(organism, tmp_path / "saved")
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "saved").iterdir()}["model.safetensors"] == 0o644
    assert ModelShape.of(check_directory(tmp_path / "saved")) == ModelShape.of(organism.cfg)


def test_a_processing_record_holds_exactly_the_flags_of_weight_processing():
    import dataclasses

    from analysis.infra.checkpoint import PROCESSING_FLAGS

    assert PROCESSING_FLAGS == tuple(f.name for f in dataclasses.fields(WeightProcessing))


def test_a_bug_while_loading_is_not_reported_as_missing_weights(monkeypatch):
    from transformer_lens import HookedTransformer

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug, not a missing file")

    monkeypatch.setattr(HookedTransformer, "from_pretrained", broken)
    with pytest.raises(ZeroDivisionError):
        load_model("gpt2-small")


def test_unknown_model_is_a_clear_error():
    with pytest.raises(UsageError, match="Unknown model 'gpt7-huge'"):
        load_model("gpt7-huge")


def test_missing_weights_name_the_model_the_cache_and_the_fix(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # The hub reads HF_HUB_OFFLINE once, at import; patch the constant so no request is attempted.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotAvailableError) as err:
        load_model("gpt2-small")
    message = str(err.value)
    assert "'gpt2-small'" in message and "HF_HOME" in message and "network" in message


@pytest.mark.e2e
def test_script_prints_one_paragraph_and_exits_nonzero(tmp_path):
    result = run_script("scan_heads", "--model", "gpt2-small", "--out", str(tmp_path),
                        env={"HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 2
    assert result.stderr.startswith("error: Could not load the weights of 'gpt2-small'")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "results").exists()


def test_random_gpt2_has_gpt2_small_shapes():
    model = load_model("gpt2-random")
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model, model.cfg.d_vocab) == (12, 12, 768, 50257)


def test_gpt2_tokenizer_is_gpt2s_own_bpe_offline():
    # transformers 5 gives a one-token tokenizer when the files are passed as paths: check the real thing.
    tokenizer = gpt2_tokenizer()
    assert len(tokenizer) == 50257
    assert tokenizer.encode(" red cat Monday", add_special_tokens=False) == [2266, 3797, 3321]
    assert tokenizer.bos_token_id == 50256


def test_random_gpt2_carries_gpt2s_tokenizer():
    model = load_model("gpt2-random")
    assert model.to_tokens(" red cat Monday").tolist() == [[50256, 2266, 3797, 3321]]
    assert "GPT-2's tokenizer" in model.analysis_info["source"]
