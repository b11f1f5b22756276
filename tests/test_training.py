"""The organism's training loop is deterministic and its supervision targets are the ground-truth masks."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from analysis import prompts
from analysis.models import WeightProcessing
from analysis.organism.language import (LanguageSpec, category_text, repeated_chunks, sample_batch, vocabulary,
                                         write_corpus)
from analysis.organism.train import TrainConfig, attention_cross_entropy, train


def test_training_is_deterministic_for_a_seed():
    config = dataclasses.replace(TrainConfig(), steps=3, batch_size=4, n_ctx=32)
    a, _ = train(config, progress=False)
    b, _ = train(config, progress=False)
    c, _ = train(dataclasses.replace(config, seed=1), progress=False)
    for (name, x), (_, y), (_, z) in zip(a.state_dict().items(), b.state_dict().items(), c.state_dict().items()):
        assert torch.equal(x, y), name
    assert not torch.equal(a.W_E, c.W_E)


def test_a_family_without_biases_trains_none_and_ships_none():
    """LLaMA-style organisms have no biases: every bias, the shared key and value biases of grouped-query attention
    (TransformerLens's _b_K, _b_V) included, is frozen at zero in training and zero in the shipped checkpoint."""
    from analysis.models import load_model
    from analysis.organism.train import FAMILIES, build_model

    assert FAMILIES["llama"]["no_biases"]
    model = build_model(dataclasses.replace(TrainConfig(), family="llama"))
    biases = {n: p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1].lstrip("_").startswith("b_")}
    assert {"blocks.0.attn._b_K", "blocks.0.attn._b_V", "blocks.0.attn.b_Q"} <= set(biases)
    assert not any(p.requires_grad for p in biases.values())
    shipped = load_model("organism-llama", processing=WeightProcessing.none())
    for name, tensor in shipped.state_dict().items():
        if name.rsplit(".", 1)[-1].lstrip("_").startswith("b_"):
            assert torch.count_nonzero(tensor) == 0, name


def test_attention_cross_entropy_is_zero_only_on_target():
    target = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0.5, 0.5, 0]]])
    exact = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0.5, 0.5, 0]]])
    assert attention_cross_entropy(exact, target).item() < 0.35  # row 2's optimum is log 2 = 0.69, averaged
    assert abs(attention_cross_entropy(exact, target).item() - np.log(2) / 2) < 1e-5
    off = torch.tensor([[[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]]])
    assert attention_cross_entropy(off, target).item() > 10


def test_language_makes_category_mates_and_varied_repeats():
    spec = LanguageSpec.from_vocabulary(vocabulary())
    rng = np.random.default_rng(0)
    category_of = torch.full((spec.d_vocab,), -1)
    for c, ids in enumerate(spec.category_ids):
        category_of[list(ids)] = c
    tokens = torch.from_numpy(np.stack([category_text(rng, spec, 64) for _ in range(32)]))
    partner_rows = prompts.semantic_mask(tokens, category_of)[..., 1:].sum(-1) > 0
    assert 0.1 < partner_rows.float().mean() < 0.9  # both partner rows and BOS-fallback rows occur
    lengths = set()
    for _ in range(20):
        seq = repeated_chunks(rng, spec, 128)
        assert seq[0] == spec.bos_id and len(seq) == 128
        lengths.add(next(p for p in range(4, 61) if np.array_equal(seq[-10:], seq[-10 - p:-p])))  # the period
    assert len(lengths) > 5  # repeat periods vary, so no head can induct by position alone


def test_sampled_corpus_tokenises_back_to_the_sampled_tokens(organism, tmp_path):
    spec = LanguageSpec.from_vocabulary(vocabulary())
    mixture = {"category_text": 1.0, "random_tokens": 1.0}
    rows = sample_batch(np.random.default_rng(3), spec, 8, 40, mixture)
    path = write_corpus(tmp_path / "corpus.txt", rows)
    ids = [i for line in path.read_text().splitlines() for i in organism.tokenizer.encode(line, add_special_tokens=False)]
    expected = rows[:, 1:].flatten().tolist()
    assert ids == expected


def test_building_the_model_leaves_no_temporary_tokenizer_folder(tmp_path, monkeypatch):
    import tempfile

    from analysis.organism.train import build_model

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = build_model(dataclasses.replace(TrainConfig(), n_ctx=32))
    assert model.to_tokens(" red cat").shape == (1, 3)  # the tokenizer works without its files
    assert list(tmp_path.iterdir()) == []


def test_retraining_writes_a_new_folder_unless_told_to_replace_the_shipped_checkpoint(tmp_path):
    import argparse
    import importlib.util

    from analysis.errors import UsageError
    from analysis.organism.files import ORGANISM_DIR
    from conftest import REPO

    spec = importlib.util.spec_from_file_location("train_script", REPO / "scripts" / "train_organism.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = script.build_parser().parse_args([])
    assert args.out == script.DEFAULT_OUT and script.checkpoint_folder(args).resolve() != ORGANISM_DIR.resolve()
    assert script.checkpoint_folder(argparse.Namespace(out=script.DEFAULT_OUT, replace_shipped=True)) == ORGANISM_DIR
    (tmp_path / "notes.txt").write_text("someone's work")
    for out, replace in ((ORGANISM_DIR, False), (tmp_path, False), (tmp_path / "new", True)):
        with pytest.raises(UsageError):
            script.checkpoint_folder(argparse.Namespace(out=out, replace_shipped=replace))


@pytest.mark.slow
@pytest.mark.e2e
def test_retraining_a_shipped_seed_reproduces_its_checkpoint(tmp_path):
    """organism-seed-1, retrained by scripts/train_organism.py with the seed, the planted places and the thread count
    its training log records, gives the shipped weights exactly (training is seeded and deterministic on CPU).
    About 15 to 40 minutes on 2 cores."""
    from safetensors.torch import load_file

    from analysis.organism.files import shipped_organisms
    from conftest import run_script

    directory = shipped_organisms()["organism-seed-1"]
    log = json.loads((directory / "training_log.json").read_text())
    recorded = log["train_config"]
    places = [f"{kind}={layer}.{head}" for kind, (layer, head) in recorded["planted_heads"].items()]
    result = run_script("train_organism", "--seed", str(recorded["seed"]), "--family", recorded["family"],
                        "--threads", str(log["torch_threads"]), "--out", str(tmp_path / "seed-1"), "--planted", *places,
                        timeout=3 * 3600)
    assert result.returncode == 0, result.stderr
    shipped, retrained = load_file(directory / "model.safetensors"), load_file(tmp_path / "seed-1" / "model.safetensors")
    assert set(shipped) == set(retrained)
    for name, weights in shipped.items():
        assert torch.equal(retrained[name], weights), name
    assert json.loads((tmp_path / "seed-1" / "training_log.json").read_text())["train_config"] == recorded
