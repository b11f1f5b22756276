"""Rotary positions: R(Δ) against TransformerLens's scores, the mean rotation, the self-score at Δ = 0, in-context edits."""

import math

import pytest
import torch
from transformer_lens.utilities import get_act_name

from analysis import attention, positions, prompts, rotary
from analysis.properties import trace_term
from analysis.models import load_model
from analysis.patterns import layer_input
from analysis.qk_edits import pattern_from_input

ORGANISMS = ("organism-llama", "organism-neox")


def test_rotation_matrix_hand_built():
    # rotary_dim 2 of d_head 3, ω_0 = base^0 = 1: the pair (0, 1) turns by Δ radians, dimension 2 passes
    r = rotary.Rotary(rotary_dim=2, d_head=3)
    delta = 0.7
    c, s = math.cos(delta), math.sin(delta)
    expected = torch.tensor([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(rotary.rotation_matrix(r, torch.tensor([delta]))[0], expected)
    assert torch.allclose(rotary.rotation_matrix(r, torch.tensor([0.0]))[0], torch.eye(3, dtype=torch.float64))


def test_scores_at_two_positions_depend_on_their_distance_only():
    r = rotary.Rotary(rotary_dim=4, d_head=6, base=100.0)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    for p_q, p_k in ((5, 2), (9, 6), (3, 3), (7, 0)):
        turned = [rotary.apply_rotary(v[None], torch.tensor([p]), r)[0] for v, p in ((q, p_q), (k, p_k))]
        R = rotary.rotation_matrix(r, torch.tensor([float(p_q - p_k)]))[0]
        assert torch.allclose(turned[0] @ turned[1], q @ R @ k)


def test_mean_rotation_is_the_average_over_the_list():
    r = rotary.Rotary(rotary_dim=8, d_head=8)
    distances = torch.tensor([1, 3, 3, 7, 12])
    expected = rotary.rotation_matrix(r, distances.double()).mean(0).float()
    assert torch.allclose(rotary.mean_rotation(r, distances), expected, atol=1e-7)
    assert not torch.allclose(expected, torch.eye(8), atol=1e-2)  # the angles spread: M is no identity


def test_partner_distances_hand_built():
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 3, 1] = mask[0, 2, 0] = mask[1, 3, 2] = True
    assert sorted(rotary.partner_distances(mask).tolist()) == [1, 2, 2]


@pytest.fixture(scope="module", params=ORGANISMS)
def rotary_run(request):
    """A rotary organism (default processing), category tokens, its layer-1 input and TL's scores and patterns."""
    model = load_model(request.param)
    probe = prompts.category_probe(model, prompts.STUDY_CATEGORIES, 4, 24, 0)
    stored = {}
    with torch.no_grad():
        model.run_with_hooks(probe.tokens, fwd_hooks=[
            (get_act_name("attn_scores", 1), lambda a, hook: stored.setdefault("scores", a)),
            (get_act_name("pattern", 1), lambda a, hook: stored.setdefault("pattern", a))])
    return model, probe, layer_input(model, probe.tokens, 1), stored


def test_score_at_distance_matches_transformer_lens(rotary_run):
    model, probe, x, stored = rotary_run
    for head in range(model.cfg.n_heads):
        qk = attention.qk_head(model, 1, head, bias=True)
        q, k = x[0] @ qk.W_Q + qk.b_Q, x[0] @ qk.W_K + qk.b_K  # (T, d_head)
        for p_q, p_k in ((10, 3), (20, 3), (17, 17), (5, 0), (23, 22)):
            R = rotary.rotation_matrix(qk.rotary, torch.tensor([float(p_q - p_k)]))[0].float()
            ours = q[p_q] @ R @ k[p_k] / qk.scale
            assert torch.isclose(ours, stored["scores"][0, head, p_q, p_k], atol=1e-4), (head, p_q, p_k)


def test_self_score_at_distance_zero_is_transformer_lens_diagonal(rotary_run):
    model, _, x, stored = rotary_run
    qk = attention.qk_head(model, 1, 0, bias=True)
    diagonal = stored["scores"][:, 0].diagonal(dim1=-2, dim2=-1)  # (B, T)
    assert torch.allclose(attention.self_attention_scores(x, qk), diagonal, atol=1e-4)
    # and a word set's score matrix keeps it on its diagonal, whatever M
    M = rotary.mean_rotation(qk.rotary, torch.arange(1, 20))
    scores = attention.word_score_matrix(x[0], qk.with_rotation(M))
    assert torch.allclose(scores.diagonal(), diagonal[0], atol=1e-4)
    q, k = x[0] @ qk.W_Q + qk.b_Q, x[0] @ qk.W_K + qk.b_K
    assert torch.allclose(scores[3, 7], q[3] @ M @ k[7] / qk.scale, atol=1e-5)


def test_pattern_from_input_reproduces_transformer_lens(rotary_run):
    model, _, x, stored = rotary_run
    for head in range(model.cfg.n_heads):
        pattern, z = pattern_from_input(x, attention.qk_head(model, 1, head, bias=True))
        assert torch.allclose(pattern, stored["pattern"][:, head], atol=1e-5)
    # the check can fail: without the rotary turn the pattern is off
    plain = pattern_from_input(x, attention.QKHead(*(getattr(attention.qk_head(model, 1, 0, bias=True), f)
                                                     for f in ("W_Q", "W_K", "scale", "b_Q", "b_K"))))[0]
    assert (plain - stored["pattern"][:, 0]).abs().max() > 1e-3


def test_position_treatment_follows_the_model(organism):
    absolute = positions.position_treatment(organism, prompts.STUDY_CATEGORIES)
    assert absolute.rotation is None and absolute.description == positions.ABSOLUTE
    llama = load_model("organism-llama")
    treatment = positions.position_treatment(llama, prompts.STUDY_CATEGORIES)
    assert treatment.rotation.shape == (llama.cfg.d_head, llama.cfg.d_head)
    assert treatment.description.startswith("self at Δ = 0; others at E_Δ[R(Δ)] over ")


def test_trace_term_with_a_rotation_is_the_mean_self_minus_others():
    g = torch.Generator().manual_seed(3)
    x, W_Q, W_K = torch.randn(9, 5, generator=g), torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    M = rotary.mean_rotation(rotary.Rotary(4, 4), torch.tensor([1, 2, 5]))
    qk = attention.QKHead(W_Q, W_K, 2.0, rotation=M)
    s = attention.word_score_matrix(x, qk)
    off = ~torch.eye(9, dtype=torch.bool)
    expected = (s.diagonal() - (s * off).sum(-1) / 8).mean()
    assert math.isclose(trace_term(x, qk), float(expected), rel_tol=1e-4, abs_tol=1e-5)
