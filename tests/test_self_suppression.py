"""Self-suppression statistics: hand-built cases, the Sylvester fact, and a known-answer head against a decoy."""

import math

import pytest
import torch

from analysis import self_suppression as ss
from analysis.attention import QKHead
from analysis.controls import Undefined, compare
from analysis.properties import both_hold, unit_margins, weight_verdicts
from analysis.qk_decomposition import RankGrid, spectrum_summary, symmetric_spectrum


def test_partner_margins_and_below_partners_on_a_hand_built_matrix():
    # words 0, 1, 2 in category 0, word 3 alone in category 1
    scores = torch.tensor([[-1.0, 2.0, 4.0, 0.0],
                           [0.0, 5.0, 1.0, 0.0],
                           [1.0, 1.0, 0.5, 9.0],
                           [0.0, 0.0, 0.0, 3.0]])
    category = torch.tensor([0, 0, 0, 1])
    margins = unit_margins(scores, category)["self_vs_partners"]
    assert margins[:3].tolist() == pytest.approx([-1 - 3.0, 5 - 0.5, 0.5 - 1.0])
    assert math.isnan(margins[3])  # no partner
    assert ss.below_partners(scores, category).tolist() == [True, False, True, False]


def test_top_k_share_counts_the_most_negative_terms():
    # W = W_Q W_K^T = diag(-3, -1, 2), symmetric: W_sym's non-zero eigenvalues are -3 (e0), -1 (e1), 2 (e2)
    W_Q, W_K = torch.eye(3), torch.diag(torch.tensor([-3.0, -1.0, 2.0]))
    x = torch.ones(1, 3)
    spectrum = symmetric_spectrum(QKHead(W_Q, W_K, 1.0))
    # negative part of x^T W_sym x = -3 - 1; the most negative component carries 3 of 4
    assert ss.negative_share_top_k(x, spectrum, 1.0, 1) == pytest.approx(0.75, abs=1e-5)
    assert ss.negative_share_top_k(x, spectrum, 1.0, 2) == pytest.approx(1.0, abs=1e-5)


def test_gaussian_like_has_the_inputs_mean_and_covariance():
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 1
    y = ss.gaussian_like(x, 200_000, seed=1)
    assert torch.allclose(y.mean(0), x.mean(0), atol=0.05)
    assert torch.allclose(torch.cov(y.T), torch.cov(x.T), atol=0.15)


def test_the_below_partners_null_keeps_the_real_labels_and_is_seeded():
    x = torch.randn(20, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    category = torch.arange(20) % 4  # 4 categories of 5: every word has 4 partners
    zero = QKHead(torch.zeros(64, 4, dtype=torch.float64), torch.zeros(64, 4, dtype=torch.float64), 1.0)
    assert ss.below_partners_null(x, category, zero, 5, seed=0).tolist() == [0.0] * 5  # 0 < 0 never holds
    # W = -I scores each vector below the others by its squared norm: random vectors with the words' moments are
    # below their 4 partners as often as the words are, so beating this null needs more than the moments give
    avoider = QKHead(torch.eye(64, dtype=torch.float64), -torch.eye(64, dtype=torch.float64), 1.0)
    null = ss.below_partners_null(x, category, avoider, 20, seed=1)
    assert torch.equal(null, ss.below_partners_null(x, category, avoider, 20, seed=1))
    assert float(null.mean()) > 0.9 and float(ss.below_partners(x @ -x.T, category).double().mean()) == 1.0


def test_every_full_rank_head_has_exactly_d_head_negative_eigenvalues():
    """Sylvester's law of inertia: W_sym = ½ [W_Q W_K] J [W_Q W_K]^T, J with d_head eigenvalues of each sign."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        W_Q, W_K = torch.randn(32, 6, generator=generator), torch.randn(32, 6, generator=generator)
        summary = spectrum_summary(symmetric_spectrum(QKHead(W_Q, W_K, 1.0)).values)
        assert (summary["n_negative"], summary["n_positive"]) == (6, 6)


# --- the known-answer test: β Σ_k c_k c_kᵀ − γ P_identity + a BOS term, against a decoy and random heads ---

N_CATEGORIES, WORDS_PER_CATEGORY = 4, 5
N_WORDS = N_CATEGORIES * WORDS_PER_CATEGORY


def _world():
    """Orthonormal directions: c_k per category, e_t per word, m shared by every word, b for BOS.

    Word t's input is x_t = c_{cat(t)} + e_t + m; BOS's is b. d_model = N_CATEGORIES + N_WORDS + 2.
    """
    d_model = N_CATEGORIES + N_WORDS + 2
    basis = torch.eye(d_model, dtype=torch.float64)
    C, E, m, b = basis[:N_CATEGORIES], basis[N_CATEGORIES:N_CATEGORIES + N_WORDS], basis[-2], basis[-1]
    category = torch.arange(N_WORDS) // WORDS_PER_CATEGORY
    x = C[category] + E + m
    return x, category, C, E, m, b


def _head(beta: float, gamma: float, delta: float):
    """Factors with W_Q W_K^T = β Σ c_k c_k^T − γ Σ_t e_t e_t^T + δ m b^T (the BOS term: every word's query
    scores the BOS key δ, so the head falls back to BOS when no partner is there)."""
    _, _, C, E, m, b = _world()
    W_Q = torch.cat([beta ** 0.5 * C, gamma ** 0.5 * E, delta ** 0.5 * m[None]]).T
    W_K = torch.cat([beta ** 0.5 * C, -gamma ** 0.5 * E, delta ** 0.5 * b[None]]).T
    return W_Q, W_K


def test_the_planted_head_separates_the_decoy_ties_it_on_attraction_the_avoider_on_self():
    x, category, *_ = _world()
    heads = {(0, 0): _head(beta=4.0, gamma=6.0, delta=3.0), (0, 1): _head(beta=4.0, gamma=0.0, delta=3.0),
             (0, 2): _head(beta=0.0, gamma=6.0, delta=3.0)}  # planted, decoy (itself included), category-blind avoider
    d_head = heads[(0, 0)][0].shape[1]
    generator = torch.Generator().manual_seed(0)
    for h in range(3, 8):  # random controls of the same shape
        heads[(0, h)] = tuple(torch.randn(x.shape[1], d_head, generator=generator, dtype=torch.float64)
                              for _ in range(2))
    qks = {head: QKHead(W_Q, W_K, 1.0) for head, (W_Q, W_K) in heads.items()}
    stats = {head: ss.head_statistics(x, category, qk, seed=0, n_repeats=20) for head, qk in qks.items()}

    # the planted head: self-score -γ below each partner's β, every word below every partner; its partners score β
    # and the 19 other words 4 β / 19 on average (its 4 partners among them), so attraction is β 15/19
    assert stats[(0, 0)]["margin"].value == pytest.approx(-6.0, abs=1e-9)
    assert stats[(0, 0)]["below_partners_share"].value == 1.0
    assert stats[(0, 0)]["category_attraction"].value == pytest.approx(4.0 * 15 / 19, abs=1e-9)
    assert stats[(0, 1)]["margin"].value == pytest.approx(0.0, abs=1e-9)  # the decoy scores itself as its partners
    assert stats[(0, 2)]["category_attraction"].value == pytest.approx(0.0, abs=1e-9)  # the avoider is category-blind

    # margin = self against random words (the shuffled-label null, closed form) - category attraction, word by word
    for s in stats.values():
        assert s["margin"].value == pytest.approx(s["self_vs_random_words"] - s["category_attraction"].value, abs=1e-9)

    report = compare((0, 0), stats, ss.DIRECTIONS)["target"]
    assert report["below_partners_share"]["verdict"] == "tie"  # the avoider is below every partner too
    assert report["category_attraction"]["verdict"] == "tie"  # the decoy is as attracted to its category
    without_avoider = compare((0, 0), {h: s for h, s in stats.items() if h != (0, 2)}, ss.DIRECTIONS)["target"]
    # with the avoider gone, the planted head is singled out with a CI by the scale-free statistics (a random
    # head's raw scores spread far wider than the planted ones, so its raw margin's CI is too wide to separate)
    assert without_avoider["margin_normalised"]["difference"]["high"] < 0
    assert without_avoider["below_partners_share"]["difference"]["low"] > 0
    assert all(without_avoider[name]["separates"] for name in ("margin_normalised", "below_partners_share"))

    verdicts = {head: weight_verdicts(x, category, qk, n_resamples=200) for head, qk in qks.items()}
    assert both_hold(verdicts[(0, 0)])
    assert [verdicts[(0, 1)][p]["holds"] for p in ("self_avoidance", "category_attraction")] == [False, True]
    assert [verdicts[(0, 2)][p]["holds"] for p in ("self_avoidance", "category_attraction")] == [True, False]
    assert not any(both_hold(verdicts[(0, h)]) for h in range(3, 8))


def test_a_head_with_a_zero_qk_form_gets_every_statistic_defined_or_undefined_with_a_reason():
    x, category, *_ = _world()
    zero = QKHead(torch.zeros(x.shape[1], 3, dtype=torch.float64), torch.zeros(x.shape[1], 3, dtype=torch.float64), 1.0)
    stats = ss.head_statistics(x, category, zero, seed=0, n_repeats=5)
    assert isinstance(stats["margin_normalised"], Undefined) and isinstance(stats["top1_negative_share"], Undefined)
    assert stats["margin"].value == 0.0 and stats["below_partners_share"].value == 0.0
    report = compare((0, 0), {(0, 0): stats, (0, 1): ss.head_statistics(x, category, QKHead(*_head(4.0, 6.0, 3.0), 1.0),
                                                                         seed=0, n_repeats=5)}, ss.DIRECTIONS)
    assert report["target"]["margin_normalised"]["verdict"] == "undefined"
    assert "no spread" in report["target"]["margin_normalised"]["reason"]
    zero_verdicts = weight_verdicts(x, category, zero, n_resamples=50)
    assert not zero_verdicts["self_avoidance"]["holds"] and not zero_verdicts["category_attraction"]["holds"]


def test_rank_queries_is_a_seeded_sample_and_every_token_when_the_vocabulary_is_small():
    sample = ss.rank_queries(1000, 50, seed=3)
    assert len(sample) == 50 and len(set(sample.tolist())) == 50 and sample.tolist() == sorted(sample.tolist())
    assert torch.equal(sample, ss.rank_queries(1000, 50, seed=3))
    assert not torch.equal(sample, ss.rank_queries(1000, 50, seed=4))
    assert ss.rank_queries(50, 50, seed=3) is None and ss.rank_queries(50, 2048, seed=3) is None


def test_sampled_self_ranks_are_the_full_ranks_of_those_queries():
    # Queries are a subset, keys stay every token: each sampled query's rank is its rank in the full grid.
    from analysis import qk_decomposition as qk

    g = torch.Generator().manual_seed(0)
    x, W_Q, W_K = torch.randn(300, 16, generator=g), torch.randn(16, 4, generator=g), torch.randn(16, 4, generator=g)
    head = QKHead(W_Q, W_K, 1.0)
    spectrum = symmetric_spectrum(head)
    queries = ss.rank_queries(300, 40, seed=1)
    full = qk.self_ranks_grid(x, head, spectrum, qk.RankGrid([1, 3], [1.0, -1.0], chunk_size=64))
    part = qk.self_ranks_grid(x, head, spectrum, qk.RankGrid([1, 3], [1.0, -1.0], chunk_size=7, queries=queries))
    for cell, ranks in full.items():
        assert torch.equal(part[cell], ranks[queries]), cell
    assert not torch.equal(full[3, -1.0], full[3, 1.0])  # the edit moves ranks: the comparison can fail


def test_best_cell_is_the_lowest_mean_rank():
    cells = {"a": {"mean_rank": 5.0}, "b": {"mean_rank": 2.0}, "c": {"mean_rank": 2.0}, "d": {"mean_rank": 9.0}}
    assert ss.best_cell(cells) is cells["b"]


def values(stats: dict) -> dict:
    """A head's statistics as numbers (a Sample's value)."""
    return {key: getattr(value, "value", value) for key, value in stats.items()}


def test_rank_ablation_measures_the_target_and_its_controls_alike(organism):
    from analysis import prompts
    from analysis.token_maps import token_inputs

    probe = prompts.category_probe(organism, prompts.STUDY_CATEGORIES, 4, 16, seed=0)
    E = {l: token_inputs(organism, l, "mean") for l in (0, 1)}
    queries = ss.rank_queries(organism.cfg.d_vocab, 60, seed=0)
    grid = RankGrid([1, 8], [1.0, -1.0], [1], queries=queries)
    study = ss.rank_ablation(organism, [(1, 3), (1, 1), (0, 2)], E.__getitem__, probe, ss.RankAblation(grid))
    assert set(study["statistics"]) == {(1, 3), (1, 1), (0, 2)} and set(study["control_grids"]) == {"L1H1", "L0H2"}
    assert study["best"] is ss.best_cell(study["grid"]["cells"])
    own = ss.rank_grid(organism, (0, 2), E[0], probe, grid)
    expected = ss.rank_statistics(own, study["best"]) | ss.rank_samples(own, study["best"])
    assert values(study["statistics"][(0, 2)]) == pytest.approx(values(expected))
    assert study["statistics"][(0, 2)]["mean_rank"].unit == "query token"
    cheap = ss.rank_ablation(organism, [(1, 3), (0, 2)], E.__getitem__, probe, ss.RankAblation(grid, "best"))
    assert set(cheap["directions"]) == set(ss.RANK_DIRECTIONS) and not cheap["control_grids"]
    for key, value in values(cheap["statistics"][(0, 2)]).items():
        assert values(study["statistics"][(0, 2)])[key] == pytest.approx(value, abs=1e-4), key
