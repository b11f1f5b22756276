"""What a head writes (its OV circuit on category words) and what the model loses without it."""

from __future__ import annotations

import json

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from analysis import output_side, path_records
from analysis.prompts import CategoryWords
from conftest import run_script


def test_ov_boosts_of_an_identity_circuit_have_exact_values():
    """x = e_s, W_V W_O = I, W_U = I over 6 tokens of which 4 are category words in two categories: the logit of t is
    1 if t = s else 0, centred over the 6-token vocabulary: self 1 - 1/6, same and other -1/6."""
    eye = torch.eye(6)
    words = CategoryWords(torch.tensor([1, 2, 3, 4]), torch.tensor([0, 0, 1, 1]))
    boosts = output_side.ov_boosts(eye[words.ids], (eye, eye, eye), words)
    torch.testing.assert_close(boosts["self"], torch.full((4,), 5 / 6))
    torch.testing.assert_close(boosts["same"], torch.full((4,), -1 / 6))
    torch.testing.assert_close(boosts["other"], torch.full((4,), -1 / 6))


def test_ov_boosts_see_a_head_that_raises_its_category_mates():
    """W_U maps a word to its category's mates: s raises each other word of its category by 1, nothing else."""
    words = CategoryWords(torch.tensor([0, 1, 2, 3, 4]), torch.tensor([0, 0, 0, 1, 1]))
    same = (words.category[:, None] == words.category[None, :]).float() - torch.eye(5)
    boosts = output_side.ov_boosts(torch.eye(5), (torch.eye(5), torch.eye(5), same), words)
    assert (boosts["same"] > boosts["other"]).all() and (boosts["same"] > boosts["self"]).all()
    torch.testing.assert_close(boosts["same"] - boosts["other"], torch.ones(5))
    record = path_records.ov_record(boosts, words, ["a", "b", "c", "d", "e"], seed=0)
    assert record["per_word"]["d"]["same_minus_other"] == pytest.approx(1.0)
    assert record["summary"]["same_minus_other"]["low"] == pytest.approx(1.0)


def small_model() -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=2, n_heads=3, d_model=32, d_head=8, d_mlp=64, d_vocab=40, n_ctx=16,
                                  act_fn="gelu_new", normalization_type="LN", seed=1)
    return HookedTransformer(cfg, move_to_device=False).eval()


def test_next_token_loss_is_transformer_lens_loss():
    model = small_model()
    tokens = torch.randint(40, (3, 10), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(output_side.next_token_loss(model(tokens), tokens),
                               model(tokens, return_type="loss", loss_per_token=True).mean(-1))


def test_batched_head_ablations_equal_one_run_per_head():
    model = small_model()
    tokens = torch.randint(40, (5, 9), generator=torch.Generator().manual_seed(1))
    changes = output_side.loss_changes(model, tokens, 1, batch_size=2)
    means = output_side.head_z_means(model, tokens, 1)
    clean = output_side.next_token_loss(model(tokens), tokens)
    for h in range(3):
        def ablate(z, hook, h=h):
            z = z.clone()
            z[:, 1:, h] = means[h]
            return z
        logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", ablate)])
        torch.testing.assert_close(changes[h], output_side.next_token_loss(logits, tokens) - clean,
                                   atol=1e-5, rtol=1e-4)


def test_category_text_is_the_organisms_own_only_for_its_tokenizer(organism):
    tokens = output_side.category_text_tokens(organism, 3, 20, seed=0)
    assert tokens.shape == (3, 20) and (tokens[:, 0] == organism.tokenizer.bos_token_id).all()
    assert torch.equal(tokens, output_side.category_text_tokens(organism, 3, 20, seed=0))
    assert output_side.category_text_tokens(small_model(), 3, 20, seed=0) is None  # no tokenizer


@pytest.mark.e2e
def test_head_output_script_on_the_organism(tmp_path, truth):
    """Measured on the shipped organism: the planted head's mean ablation costs about 0.5 nats of next-token loss
    on its category text, the layer's next head under 0.1; its OV raises the attended word itself most. Asserted:
    the target separates from its layer's other heads, and its self boost beats its same-category boost."""
    result = run_script("head_output", "--out", str(tmp_path), "--n-prompts", "16", "--length", "48")
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "results" / "organism" / "head_output.json").read_text())["results"]
    layer, head = truth["planted_heads"]["semantic"]
    assert [data["target"]["layer"], data["target"]["head"]] == [layer, head]
    assert data["loss"]["text"] == "the organism's category text"
    assert data["loss"]["comparison"]["target"]["loss_change"]["separates"]
    assert set(data["loss"]["by_head"]) == {f"L{layer}H{h}" for h in range(4)}
    assert data["ov"]["summary"]["self_minus_same"]["low"] > 0
    assert (tmp_path / "figures" / "organism" / "head_output.png").stat().st_size > 1000


@pytest.mark.e2e
@pytest.mark.slow
def test_head_output_at_gpt2_size(tmp_path):
    result = run_script("head_output", "--model", "gpt2-random", "--out", str(tmp_path), "--layer", "1", "--head",
                        "5", "--n-prompts", "4", "--length", "16")
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "results" / "gpt2-random" / "head_output.json").read_text())["results"]
    assert data["loss"]["text"] == "category prompts (--categories)" and len(data["loss"]["by_head"]) == 12
    assert len(data["ov"]["per_word"]) == data["categories"]["words"]
