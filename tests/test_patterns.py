"""Running a model for patterns: every head from one pass, one head under hooks."""

import torch
from transformer_lens.utilities import get_act_name

from analysis import patterns, prompts


def test_head_pattern_matches_all_patterns(organism):
    tokens, _ = prompts.category_probe(organism, prompts.ALL_CATEGORIES, 3, 20, seed=8)
    every = patterns.all_patterns(organism, tokens)  # (B, L, nh, T, T)
    assert every.shape == (3, organism.cfg.n_layers, organism.cfg.n_heads, 21, 21)
    assert torch.allclose(patterns.head_pattern(organism, tokens, (1, 2), batch_size=2), every[:, 1, 2], atol=1e-6)
    assert patterns.flatten_heads(every)[:, organism.cfg.n_heads + 2].equal(every[:, 1, 2])  # index layer * nh + head


def test_head_pattern_runs_hooks_and_can_stay_differentiable(organism):
    tokens, _ = prompts.category_probe(organism, prompts.ALL_CATEGORIES, 2, 12, seed=9)
    shift = torch.zeros((), requires_grad=True)

    def add_to_scores(scores, hook):  # adding a constant to a row's scores leaves its softmax unchanged
        return scores + shift

    hooks = [(get_act_name("attn_scores", 1), add_to_scores)]
    plain = patterns.head_pattern(organism, tokens, (1, 2))
    same = patterns.head_pattern(organism, tokens, (1, 2), hooks, grad=True)
    assert torch.allclose(same, plain, atol=1e-6) and same.requires_grad and not plain.requires_grad
    (grad,) = torch.autograd.grad(same.sum(), shift)
    assert abs(float(grad)) < 1e-3  # each row still sums to 1 whatever the shift
