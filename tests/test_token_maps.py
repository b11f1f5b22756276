"""Token-space helpers: the context view of head inputs, the group set, block means."""

import pytest
import torch

from analysis import prompts, token_maps
from analysis.models import load_model
from analysis.vocab_input import ContextSettings, InputSettings, context_head_input, head_input


def test_context_input_is_an_average_of_real_forward_passes():
    # Without positional embeddings, a layer-0 head's input is LN1(W_E[t]) in every context:
    # the context average must be exactly the zero view.
    model = load_model("organism")
    with torch.no_grad():
        model.W_pos.zero_()
    ids = torch.tensor([3, 7, 40, 100])
    got = context_head_input(model, 0, ids, ContextSettings(n_contexts=3, length=20, seed=1))
    zero = head_input(model, 0, variant="zero", token_ids=ids, settings=InputSettings(use_cache=False))
    assert torch.allclose(got, zero, atol=1e-5)


def test_context_input_is_seeded_and_depends_on_context(organism):
    ids = torch.tensor([5, 9])
    a = context_head_input(organism, 1, ids, ContextSettings(n_contexts=4, seed=2))
    assert torch.equal(a, context_head_input(organism, 1, ids, ContextSettings(n_contexts=4, seed=2)))
    assert not torch.allclose(a, context_head_input(organism, 1, ids, ContextSettings(n_contexts=4, seed=3)))
    assert a.shape == (2, organism.cfg.d_model)


def test_token_inputs_dispatch(organism):
    ids = torch.tensor([4, 8])
    mean = head_input(organism, 1, prompts.reference_prompts(organism, 0), "mean", token_ids=ids)
    assert torch.equal(token_maps.token_inputs(organism, 1, "mean", ids), mean)
    zero = head_input(organism, 1, variant="zero", token_ids=ids)
    assert torch.equal(token_maps.token_inputs(organism, 1, "zero", ids), zero)
    with pytest.raises(ValueError):
        token_maps.token_inputs(organism, 1, "other", ids)


def test_group_tokens_and_block_means(organism):
    ids, labels, group, names = token_maps.group_tokens(organism.tokenizer)
    assert len(ids) == 30 and labels[0] == " Monday" and names[0] == "days"
    assert torch.bincount(group).tolist() == [6] * 5
    scores = torch.tensor([[1.0, 2.0, 3.0],
                           [4.0, 5.0, 6.0],
                           [7.0, 8.0, 9.0]])
    means = token_maps.block_means(scores, torch.tensor([0, 0, 1]))
    assert means == {"self": 5.0, "in_group": 3.0, "out_group": 6.0, "self_minus_in_group": 2.0}  # out: 3, 6, 7, 8


def test_the_mean_view_follows_the_categories_and_keys_its_cache_on_them(organism, tmp_path, monkeypatch):
    from analysis import vocab_input

    monkeypatch.setattr(vocab_input, "CACHE_DIR", tmp_path)
    ids = torch.tensor([4, 8, 30])
    study = token_maps.token_inputs(organism, 1, "mean", ids, options=token_maps.InputOptions(prompts.STUDY_CATEGORIES))
    union = token_maps.token_inputs(organism, 1, "mean", ids, options=token_maps.InputOptions(prompts.ALL_CATEGORIES))
    assert torch.equal(union, token_maps.token_inputs(organism, 1, "mean", ids))  # the default: the 10-category union
    expected = head_input(organism, 1, prompts.reference_prompts(organism, 0, categories=prompts.STUDY_CATEGORIES),
                          "mean", token_ids=ids, settings=InputSettings(use_cache=False))
    assert torch.allclose(study, expected) and not torch.allclose(study, union)
    assert len(list(tmp_path.rglob("*.pt"))) == 2  # one cache entry per category set


def test_the_study_view_dispatches_to_the_studys_construction(organism):
    ids = torch.tensor([4, 8])
    study = head_input(organism, 1, variant="study", token_ids=ids, settings=InputSettings(use_cache=False))
    assert torch.allclose(token_maps.token_inputs(organism, 1, "study", ids), study)
    assert "study" in token_maps.INPUT_VIEWS
