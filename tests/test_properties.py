"""The two properties on hand-built heads whose answer is known: each property found where it was built
and not where it was left out, with noise and an anisotropic input covariance."""

import math

import pytest
import torch

from analysis import properties
from analysis.attention import QKHead, attention_scores

N_CATEGORIES, PER_CATEGORY = 8, 5
N = N_CATEGORIES * PER_CATEGORY
D = 96


def hand_built(seed: int = 0, noise: float = 0.1):
    """Word inputs x_t = a_t e_t + u_c(t) + noise, with e_t, u_c orthonormal, token scales a_t in [0.5, 2], and
    Gaussian noise of a covariance whose variances span two orders of magnitude; and the three QK forms

        semantic  W = alpha sum_c u_c u_c^T - gamma sum_t e_t e_t^T
        avoider   W = -gamma sum_t e_t e_t^T       (category-blind: no category term)
        decoy     W = alpha sum_c u_c u_c^T        (its category, itself included)

    each as factors (W_Q, W_K) with W = W_Q W_K^T."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    e, u = basis[:N], basis[N:N + N_CATEGORIES]  # (N, D), (C, D)
    category = torch.arange(N) // PER_CATEGORY
    scales = 0.5 + 1.5 * torch.rand(N, generator=g, dtype=torch.float64)
    variances = torch.logspace(-1, 1, D, dtype=torch.float64)  # anisotropic noise
    x = scales[:, None] * e + u[category] + noise * torch.randn(N, D, generator=g, dtype=torch.float64) * variances.sqrt()
    alpha, gamma = 2.0, 3.0
    heads = {
        "semantic": (torch.cat([alpha ** 0.5 * u.T, gamma ** 0.5 * e.T], 1), torch.cat([alpha ** 0.5 * u.T, -gamma ** 0.5 * e.T], 1)),
        "avoider": (gamma ** 0.5 * e.T, -gamma ** 0.5 * e.T),
        "decoy": (alpha ** 0.5 * u.T, alpha ** 0.5 * u.T),
        "zero": (torch.zeros(D, 4, dtype=torch.float64), torch.zeros(D, 4, dtype=torch.float64)),
    }
    return x, category, heads


EXPECTED = {"semantic": (True, True), "avoider": (True, False), "decoy": (False, True), "zero": (False, False)}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", list(EXPECTED))
def test_each_hand_built_head_gets_exactly_its_own_properties(kind, seed):
    x, category, heads = hand_built(seed)
    scores = attention_scores(x, x, QKHead(*heads[kind], 1.0))
    verdicts = properties.verdicts(properties.unit_margins(scores, category), n_resamples=500, seed=seed)
    found = (verdicts["self_avoidance"]["holds"], verdicts["category_attraction"]["holds"])
    assert found == EXPECTED[kind], verdicts
    assert properties.both_hold(verdicts) == (kind == "semantic")


def test_margins_of_a_tiny_map_by_hand():
    scores = torch.tensor([[1.0, 3.0, 0.0], [2.0, -1.0, 4.0], [5.0, 5.0, 5.0]])
    category = torch.tensor([0, 0, 1])
    m = properties.unit_margins(scores, category)
    # word 0: partner {1}, others {1, 2}; word 1: partner {0}, others {0, 2}; word 2: no partner
    assert m["self_vs_partners"][:2].tolist() == [1.0 - 3.0, -1.0 - 2.0]
    assert m["partners_vs_others"][:2].tolist() == [3.0 - 1.5, 2.0 - 3.0]
    assert m["self_vs_others"][:2].tolist() == [1.0 - 1.5, -1.0 - 3.0]
    assert all(math.isnan(float(v[2])) for v in m.values())
    total = m["self_vs_partners"] + m["partners_vs_others"]
    assert torch.allclose(total[:2], m["self_vs_others"][:2])


def test_the_trace_term_is_the_margin_with_shuffled_labels_in_closed_form():
    x, category, heads = hand_built(3)
    qk = QKHead(*heads["semantic"], 2.0)
    scores = attention_scores(x, x, qk)
    closed = properties.trace_term(x, qk)
    assert float(properties.unit_margins(scores, category)["self_vs_others"].mean()) == pytest.approx(closed)
    # averaged over label permutations, the partner margin tends to it
    g = torch.Generator().manual_seed(0)
    shuffled = [properties.unit_margins(scores, category[torch.randperm(N, generator=g)])["self_vs_partners"].mean()
                for _ in range(400)]
    assert float(torch.stack(shuffled).mean()) == pytest.approx(closed, abs=0.05 * abs(closed))


def test_a_head_with_no_partners_anywhere_has_no_verdict_and_a_reason():
    verdicts = properties.verdicts(properties.unit_margins(torch.eye(4), torch.arange(4)))
    assert not verdicts["self_avoidance"]["holds"] and verdicts["self_avoidance"]["value"] is None
    assert "no interval" in verdicts["self_avoidance"]["reason"]


def test_in_context_units_read_log_ratios_of_attention_from_the_scores():
    # one prompt: BOS, a, b (a's category-mate), a again; z built so each row's answer is known
    tokens = torch.tensor([[0, 1, 2, 1]])
    partner = torch.zeros(1, 4, 4)
    partner[0, 2, 1] = partner[0, 3, 2] = 1  # b -> a; second a -> b
    same_word = torch.zeros(1, 4, 4)
    for q, k in [(1, 1), (2, 2), (3, 3), (3, 1)]:
        same_word[0, q, k] = 1
    z = torch.full((1, 1, 4, 4), -7.0).tril() + torch.full((4, 4), float("-inf")).triu(1)  # -inf above the diagonal
    z[0, 0, 2, 1], z[0, 0, 2, 2] = 2.0, -1.0  # row 2: partner 2, self -1, no other key besides BOS
    z[0, 0, 3, 2], z[0, 0, 3, 3], z[0, 0, 3, 1] = 3.0, 0.0, -2.0  # row 3: partner 3, self/copies mean -1
    units = properties.in_context_units(z, tokens, partner, same_word)
    assert units["self_vs_partners"][0, 0] == pytest.approx(((-1 - 2) + (-1 - 3)) / 2)
    assert math.isnan(float(units["partners_vs_others"][0, 0]))  # no row has an other key


def test_a_consistent_but_small_tilt_is_not_a_property():
    # every word scores itself 0.1 below its partners and partners 0.3 above the rest, without noise: CIs of
    # width 0 exclude 0, but a key getting 90% of another's attention is no avoidance (MIN_EFFECT = log 2)
    category = torch.arange(20) // 4
    same = (category[:, None] == category[None, :]).double()
    scores = 0.3 * same - 0.4 * torch.eye(20, dtype=torch.float64)
    margins = properties.unit_margins(scores, category)
    assert torch.allclose(margins["self_vs_partners"], torch.full((20,), -0.4, dtype=torch.float64))
    verdicts = properties.verdicts(margins)
    assert verdicts["self_avoidance"]["high"] == pytest.approx(-0.4) and not verdicts["self_avoidance"]["holds"]
    assert not verdicts["category_attraction"]["holds"]
    assert properties.verdicts(properties.unit_margins(3 * scores, category))["self_avoidance"]["holds"]
