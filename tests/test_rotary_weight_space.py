"""The mean rotation M in every weight-space analysis, on the rotary organisms: known answers.

Each function that scores words against words reads a word's score on itself at Δ = 0 and its score on any other
word at M = E_Δ[R(Δ)] (`positions.position_treatment`): off the diagonal x_i W_Q M W_K^T x_j^T / scale, on it
x_i W_Q W_K^T x_i^T / scale (biases where the head has them). The expected scores are built here by hand, in float64.
"""

from __future__ import annotations

import pytest
import torch

from analysis import attention, positions, prompts
from analysis import qk_decomposition as qk
from analysis import circuits, clustering, similarity
from analysis.models import load_model
from analysis.sae import features as sae_features
from analysis.self_suppression import group_map_statistics

ORGANISMS = ("organism-llama", "organism-neox")
N = 14  # words


@pytest.fixture(scope="module", params=ORGANISMS)
def rotary_head(request):
    """(model, head with biases and the survey's M, inputs `[N, d_model]`): layer 1, head 0 of a rotary organism."""
    model = load_model(request.param)
    M = positions.position_treatment(model, prompts.STUDY_CATEGORIES).rotation
    head = attention.qk_head(model, 1, 0, bias=True, rotation=M)
    x = torch.randn(N, model.cfg.d_model, generator=torch.Generator().manual_seed(5))
    return model, head, x


def by_hand(x, head, bias: bool = True, scale: float | None = None):
    """`[N, N]` float64: q_i M k_j^T / scale off the diagonal, q_i k_i^T / scale on it (q = x W_Q + b_Q, k likewise)."""
    x, W_Q, W_K, M = (t.double() for t in (x, head.W_Q, head.W_K, head.rotation))
    q, k = x @ W_Q, x @ W_K
    if bias and head.b_Q is not None:
        q, k = q + head.b_Q.double(), k + head.b_K.double()
    scale = head.scale if scale is None else scale
    scores = q @ M @ k.T / scale
    scores.diagonal().copy_((q * k).sum(-1) / scale)
    return scores


def at_zero(x, head):
    """Every pair at Δ = 0: x W_Q W_K^T x^T / scale with biases, float64 (the decoy)."""
    x, W_Q, W_K = (t.double() for t in (x, head.W_Q, head.W_K))
    return (x @ W_Q + head.b_Q.double()) @ (x @ W_K + head.b_K.double()).T / head.scale


def close(a, b, tol: float = 1e-4):
    return torch.allclose(a.double(), b.double(), atol=tol * float(b.abs().max()), rtol=0)


def test_m_moves_the_scores_between_different_words(rotary_head):
    """The checks below can fail: at M the off-diagonal scores are not those at Δ = 0."""
    _, head, x = rotary_head
    off = ~torch.eye(N, dtype=torch.bool)
    assert not close(by_hand(x, head)[off], at_zero(x, head)[off], 1e-2)
    assert torch.allclose(by_hand(x, head).diagonal(), at_zero(x, head).diagonal(), atol=1e-9)


def test_word_score_rows_and_blocks(rotary_head):
    _, head, x = rotary_head
    expected = by_hand(x, head)
    index = torch.tensor([3, 0, 11, 7])
    assert close(attention.word_score_rows(x, index, head), expected[index])
    blocks = torch.cat([block for _, block in qk.word_score_blocks(x, head, chunk_size=5)])
    assert close(blocks, expected)
    assert close(attention.word_score_matrix(x, head), expected)


def test_rank_grid_scores_others_at_m_and_self_at_zero_with_the_edit_alike(rotary_head):
    _, head, x = rotary_head
    spectrum = qk.symmetric_spectrum(head)
    grid = qk.RankGrid([1, 3], [1.0, -1.0], chunk_size=4, queries=torch.tensor([0, 2, 5, 9, 13]))
    ranks = qk.self_ranks_grid(x, head, spectrum, grid)
    base = by_hand(x, head, bias=False, scale=1.0)  # ranks: no biases, any scale
    for k in (1, 3):
        order = qk.most_negative(spectrum.values, k)
        V, lam = spectrum.vectors[:, order].double(), spectrum.values[order].double()
        for s in (1.0, -1.0):
            scores = base + (s - 1) * (x.double() @ V * lam) @ (x.double() @ V).T  # the edit alike at every Δ
            # the stated rule is the edited head's: its extra columns carry the edit, not turned (pad_rotation)
            edited = qk.edited_head(head.without_bias(), spectrum, order, s)
            assert close(attention.word_score_matrix(x, edited), scores / head.scale)
            rows = scores[grid.queries]
            expected = 1 + (rows > rows[torch.arange(5), grid.queries][:, None]).sum(-1)
            assert ranks[k, s].tolist() == expected.tolist()


def test_rank_grid_reads_the_rotation_its_settings_give(rotary_head):
    model, head, _ = rotary_head
    from analysis import self_suppression as ss

    probe = prompts.category_probe(model, prompts.STUDY_CATEGORIES, 2, 8, 1)
    E = torch.randn(40, model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    grids = {name: ss.rank_grid(model, (1, 0), E, probe, qk.RankGrid([1], [1.0], at=[1], rotation=M))
             for name, M in (("M", head.rotation), ("zero", None))}
    plain = qk.self_ranks(E, head.with_rotation(None))
    turned = qk.self_ranks(E, head)
    assert grids["zero"]["units"]["k=1,scale=1"]["rank"].tolist() == plain.double().tolist()
    assert grids["M"]["units"]["k=1,scale=1"]["rank"].tolist() == turned.double().tolist()
    assert plain.tolist() != turned.tolist()


def test_score_minus_self_and_category_pairs(rotary_head):
    _, head, x = rotary_head
    expected = by_hand(x, head)
    index = torch.tensor([1, 4, 12])
    d = similarity.score_minus_self(x, index, head)
    assert close(d, expected[index] - expected[index, index][:, None])
    category = torch.arange(N) % 3
    contrast = similarity.category_pairs(x, category, head, unit=2.0)
    full = 2 * (expected - expected.diagonal()[:, None])
    mates = (category[:, None] == category[None, :]) & ~torch.eye(N, dtype=torch.bool)
    others = category[:, None] != category[None, :]
    want = (full * mates).sum(-1) / mates.sum(-1) - (full * others).sum(-1) / others.sum(-1)
    assert close(contrast.samples["mates_minus_others"].per_unit, want)


def test_study_curve_over_one_window_of_every_pair(rotary_head):
    _, head, x = rotary_head
    s = by_hand(x, head, bias=False, scale=1.0)  # the study's scores: unscaled, no biases
    lse = s.logsumexp(-1)
    every_pair = similarity.StudyWindows(n_windows=1, width=3.0)
    row = similarity.study_curve(x, head, every_pair, subtract="row")
    column = similarity.study_curve(x, head, every_pair, subtract="column")
    y_row = s - s.diagonal()[:, None]
    y_column = s - s.diagonal()[None, :] - lse[:, None] + lse[None, :]
    assert row["count"][0] == column["count"][0] == N * N
    assert row["mean"][0] == pytest.approx(float(y_row.mean()), rel=1e-4, abs=1e-6)
    assert column["std"][0] == pytest.approx(float(y_column.std()), rel=1e-4)


def test_our_graph_keeps_the_top_keys_of_the_rule(rotary_head):
    _, head, x = rotary_head
    expected = by_hand(x, head)
    source, target, score = clustering.top_k_edges(x, head, k=3, keep_self=True, chunk_size=4)
    assert close(score.reshape(N, 3), expected.topk(3, dim=-1).values)
    assert target.reshape(N, 3).tolist() == expected.topk(3, dim=-1).indices.tolist()


def test_study_graph_rows_are_keys_scored_by_the_rule(rotary_head):
    _, head, x = rotary_head
    a = by_hand(x, head, bias=False, scale=1.0).T  # row i = key i, column j = query j: query j's score on key i
    low, high = a.min(-1, keepdim=True).values, a.max(-1, keepdim=True).values
    shifted = a - low / (high - low)
    keep = (shifted >= torch.quantile(shifted, 1 - 3 / N, dim=-1, keepdim=True)) & (shifted > 0)
    source, target, weight = clustering.study_edges(x, head, k=3, chunk_size=4)
    assert sorted(zip(source.tolist(), target.tolist())) == sorted(map(tuple, torch.nonzero(keep).tolist()))
    assert close(weight, shifted[source, target])


def test_token_table_scores_others_and_bos_at_m_and_self_at_zero(rotary_head):
    _, head, x = rotary_head
    bos = torch.randn(x.shape[1], generator=torch.Generator().manual_seed(9))
    q = x.double() @ head.W_Q.double() + head.b_Q.double()
    on_bos = q @ head.rotation.double() @ (bos.double() @ head.W_K.double() + head.b_K.double()) / head.scale
    expected = by_hand(x, head) - on_bos[:, None]  # each query's score minus its score on BOS (at M)
    matrix, shift = circuits.token_qk(x, x, bos, head), circuits.token_self_shift(x, head)
    dense = circuits.with_self_shift(matrix.AB, torch.arange(N), torch.arange(N), shift)
    assert close(dense, expected)
    assert close(circuits.column_max(matrix, 4, shift), expected.amax(0))
    assert not close(matrix.AB.diagonal(), expected.diagonal(), 1e-3)  # the factored matrix alone has self at M
    assert circuits.token_self_shift(x, head.with_rotation(None)) is None
    ov = circuits.token_ov(x, torch.eye(x.shape[1])[:, :4], torch.eye(4), torch.randn(4, N))
    table = circuits.key_pivoted_table(matrix, ov, torch.full((N,), 1 / N), circuits.TableSize(3, 2, 1), 4, shift)
    best_queries = expected[:, table["key_ids"]].T.topk(2, dim=-1).indices
    assert table["query_ids"].tolist() == best_queries.tolist()


def test_sae_feature_map_and_statistics_at_m(rotary_head):
    from types import SimpleNamespace

    model, head, _ = rotary_head
    sae = SimpleNamespace(W_dec=torch.randn(7, model.cfg.d_model, generator=torch.Generator().manual_seed(2)))
    chosen, group = torch.tensor([0, 1, 3, 4, 6]), torch.tensor([0, 0, 1, 1, 1])
    x = sae_features.feature_inputs(model, sae, 1, chosen)
    plain = attention.qk_head(model, 1, 0, rotation=head.rotation)  # the map has no biases
    assert close(sae_features.feature_map(model, sae, 1, 0, chosen, head.rotation), by_hand(x, plain))
    stats = sae_features.feature_map_statistics(model, sae, chosen, group,
                                                sae_features.FeatureMaps(rotation=head.rotation))
    expected = group_map_statistics(x, group, plain, unit="SAE feature")
    assert {k: stats[(1, 0)][k].value for k in expected} == pytest.approx({k: v.value for k, v in expected.items()})
    at_zero_stats = sae_features.feature_map_statistics(model, sae, chosen, group)
    assert at_zero_stats[(1, 0)]["in_minus_out_group"].value != pytest.approx(
        stats[(1, 0)]["in_minus_out_group"].value)


# --- every weight-space script records its treatment on a rotary model ------------------------------------------

RULE = "self at Δ = 0; others at E_Δ[R(Δ)] over "
RECORDED = {"eigenvalue_rank_ablation": RULE, "cosine_attention_analysis": RULE, "clustering": RULE,
            "token_circuit_tables": RULE, "sae_features": RULE, "qk_ov_circuits": "rotary: Q- and K-composition read"}


@pytest.mark.e2e
def test_each_weight_space_script_records_its_position_treatment_on_a_rotary_organism(tmp_path):
    from conftest import run_main
    from test_any_model import LIGHT, results_of

    from analysis.heads import target_head
    from analysis.organism.sae import SAETrainSettings, save_sae, train_sae
    from analysis.sae.sources import hook_for_layer

    model = "organism-llama"
    run_main("token_freq", "--model", model, "--out", str(tmp_path))  # clustering's node tokens read its table
    loaded = load_model(model)  # a small SAE of this model for the target's layer (the shipped one is the organism's)
    hook = hook_for_layer(target_head(loaded, None, None, 0)[0])
    small = SAETrainSettings(d_sae=64, k=4, n_tokens=4096, prompts_per_batch=8, prompt_length=64)
    sae = save_sae(train_sae(loaded, hook, small), tmp_path / "sae", small)
    extra = {"sae_features": ["--sae-path", str(sae)]}
    said = {}
    for name in RECORDED:
        run_main(name, "--model", model, "--out", str(tmp_path), *LIGHT[name], *extra.get(name, []))
        said[name] = results_of(tmp_path, model, name)["results"]["position_treatment"]
    assert {name: text.startswith(RECORDED[name]) for name, text in said.items()} == dict.fromkeys(RECORDED, True), said
    assert "V_k diag((s - 1) λ_k) V_k^T of W_sym is added alike at every Δ" in said["eigenvalue_rank_ablation"]
    assert all("not applied" not in text for text in said.values())
