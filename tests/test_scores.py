"""Head scores on hand-built attention patterns with exact answers."""

import math

import numpy as np
import torch

from analysis import prompts, scores


def uniform_causal(pos: int) -> torch.Tensor:
    return torch.ones(pos, pos).tril() / torch.arange(1, pos + 1)[:, None]


def test_previous_token_score_exact():
    perfect = torch.zeros(1, 1, 4, 4)
    perfect[0, 0, 0, 0] = 1
    perfect[0, 0, [1, 2, 3], [0, 1, 2]] = 1
    assert scores.previous_token_score(perfect).item() == 1.0
    uniform = uniform_causal(4)[None, None]
    # A[i, i-1] = 1/(i+1) for i = 1..3
    assert math.isclose(scores.previous_token_score(uniform).item(), (1 / 2 + 1 / 3 + 1 / 4) / 3, rel_tol=1e-6)
    assert math.isclose(scores.previous_token_score(uniform, exclude_bos=True).item(), (1 / 3 + 1 / 4) / 2, rel_tol=1e-6)


def test_induction_and_duplicate_scores_exact():
    L = 3
    pos = 1 + 2 * L
    induction = torch.zeros(1, 1, pos, pos)
    duplicate = torch.zeros(1, 1, pos, pos)
    for q in range(pos):
        induction[0, 0, q, q - L + 1 if q > L else 0] = 1
        duplicate[0, 0, q, q - L if q > L else 0] = 1
    assert scores.induction_score(induction, L).item() == 1.0
    assert scores.duplicate_token_score(induction, L).item() == 0.0
    assert scores.duplicate_token_score(duplicate, L).item() == 1.0
    half = 0.5 * induction + 0.5 * duplicate
    assert scores.induction_score(half, L).item() == 0.5


def test_induction_score_agrees_with_the_induction_mask():
    tokens = prompts.random_repeated_tokens(2, 6, d_vocab=1000, bos_id=0, seed=3)
    pattern = torch.softmax(torch.randn(2, 3, 13, 13).masked_fill(torch.ones(13, 13).triu(1).bool(), -1e9), -1)
    mass = scores.mask_mass(pattern, prompts.induction_mask(tokens))[..., 7:].mean(-1)
    assert torch.allclose(mass, scores.induction_score(pattern, 6), atol=1e-6)


def test_semantic_surprisal_and_companions_exact():
    category_of = torch.tensor([-1, 0, 0, 0])
    tokens = torch.tensor([[0, 1, 2, 1]])  # BOS red blue red
    mask = prompts.semantic_mask(tokens, category_of)  # rows: BOS, BOS, {1}, {2}
    pattern = torch.tensor([[[[1.0, 0, 0, 0],
                              [0.8, 0.2, 0, 0],
                              [0.5, 0.25, 0.25, 0],
                              [0.1, 0.1, 0.6, 0.2]]]])
    rows = scores.scored_rows(tokens)
    s = scores.semantic_surprisal(pattern, mask, rows)
    expected = -(math.log(0.8) + math.log(0.25) + math.log(0.6)) / 3
    assert math.isclose(s.item(), expected, rel_tol=1e-6)
    comp = scores.semantic_companions(pattern, tokens, mask, rows)
    assert math.isclose(comp["partner_mass"].item(), (0.25 + 0.6) / 2, rel_tol=1e-6)
    assert math.isclose(comp["self_mass"].item(), (0.2 + 0.25 + 0.3) / 3, rel_tol=1e-6)  # row 3: self 0.2 + copy 0.1
    assert math.isclose(comp["bos_mass_no_partner"].item(), 0.8, rel_tol=1e-6)
    assert math.isclose(comp["argmax_accuracy"].item(), 2 / 3, rel_tol=1e-6)  # row 2's argmax is BOS: a miss
    # the split: self = A[q, q] over rows 1..3; copies = row 3's earlier " red" at key 1 only
    assert math.isclose(comp["self_only_mass"].item(), (0.2 + 0.25 + 0.2) / 3, rel_tol=1e-6)
    assert math.isclose(comp["copies_mass"].item(), (0 + 0 + 0.1) / 3, rel_tol=1e-6)
    assert math.isclose(comp["self_only_mass"].item() + comp["copies_mass"].item(), comp["self_mass"].item(),
                        rel_tol=1e-6)


def test_surprisal_from_scores_is_exact_where_the_pattern_underflows():
    # BOS red blue: row 2's only partner (key 1) scores 120 below BOS and self, so its mass e^-120
    # underflows float32 (the pattern says 0); the scores still give S = 120 nats for that row.
    tokens = torch.tensor([[0, 1, 2]])
    mask = prompts.semantic_mask(tokens, torch.tensor([-1, 0, 0]))  # rows: BOS, BOS, {1}
    z = torch.tensor([[[[0.0, 0, 0], [0.0, 0.0, 0], [0.0, -120.0, 0.0]]]])
    z = z.masked_fill(torch.ones(3, 3).triu(1).bool(), float("-inf"))  # causal, as hook_attn_scores
    pattern = torch.softmax(z, -1)
    assert pattern[0, 0, 2, 1] == 0  # underflowed
    rows = scores.scored_rows(tokens)
    log_mass = scores.masked_log_mass(z, mask)[0, 0]
    expected_row2 = -120 - math.log(2 + math.exp(-120))
    assert math.isclose(log_mass[1].item(), math.log(0.5), rel_tol=1e-12)  # row 1: BOS of {BOS, self}
    assert math.isclose(log_mass[2].item(), expected_row2, rel_tol=1e-12)
    s = scores.semantic_surprisal(pattern, mask, rows, attn_scores=z)
    assert math.isclose(s.item(), (math.log(2) - expected_row2) / 2, rel_tol=1e-6)
    assert s.item() > -math.log(scores.PATTERN_MASS_FLOOR)  # beyond the 13.8-nat cap of a clamped S
    # without the scores the pattern's 0 is floored at float32's smallest normal (~87 nats), finite
    floored = scores.semantic_surprisal(pattern, mask, rows)
    assert math.isfinite(floored.item()) and floored.item() < s.item()


def test_masked_log_mass_agrees_with_the_pattern_and_ignores_the_upper_triangle():
    torch.manual_seed(0)
    tokens = torch.tensor([[0, 1, 2, 1, 3, 2]])
    mask = prompts.semantic_mask(tokens, torch.tensor([-1, 0, 0, 1]))
    z = torch.randn(1, 2, 6, 6)
    causal = torch.ones(6, 6).tril().bool()
    pattern = torch.softmax(z.masked_fill(~causal, float("-inf")), -1)
    expected = scores.mask_mass(pattern, mask).log()
    assert torch.allclose(scores.masked_log_mass(z, mask).float(), expected, atol=1e-5)  # z's upper part is noise


def test_bootstrap_ci_brackets_the_mean_and_ignores_nan():
    values = np.array([[1.0], [2.0], [3.0], [np.nan]])
    mean, low, high = scores.bootstrap_ci(values, seed=0)
    assert mean[0] == 2.0 and low[0] <= 2.0 <= high[0] and 1.0 <= low[0] and high[0] <= 3.0
    constant = scores.bootstrap_ci(np.ones((10, 2)))
    assert np.allclose(constant, 1.0)


def test_study_surprisal_counts_the_bos_row_and_clamps_at_1e_12():
    # 1 prompt, 3 rows: BOS (mass 1), a row with mass 0.5 on its target, a row with mass 0 (clamped at 1e-12).
    pattern = torch.tensor([[[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]]])  # (1, 1, 3, 3)
    mask = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # row 2 marks only itself
    got = scores.study_surprisal(pattern, mask)
    expected = (0.0 + math.log(2) + -math.log(1e-12)) / 3  # every row in the mean, BOS's 0 included
    assert got.shape == (1, 1) and math.isclose(got.item(), expected, rel_tol=1e-6)
    ours = scores.semantic_surprisal(pattern, mask, scores.scored_rows(torch.zeros(1, 3)))
    assert ours.item() > got.item() * 3 / 2  # ours leaves BOS out and has no 1e-12 clamp (float32 floor instead)


def test_semantic_scores_are_the_semantic_metrics():
    tokens = torch.tensor([[0, 1, 2, 1]])
    mask = prompts.semantic_mask(tokens, torch.tensor([-1, 0, 0]))
    got = scores.semantic_scores(uniform_causal(4)[None, None], tokens, mask)
    assert tuple(got) == scores.SEMANTIC_METRICS
