"""Copying scores, composition scores and token tables: exact hand-built cases, dense cross-checks, the organism."""

import json
import math

import pandas as pd
import pytest
import torch
from transformer_lens import FactoredMatrix

from analysis import circuits
from analysis.attention import QKHead
from analysis.errors import UsageError
from analysis.scan import ScanSettings, scan_heads, top_heads
from conftest import run_main


def test_copying_score_exact():
    eig = lambda m: torch.linalg.eigvals(torch.tensor(m, dtype=torch.float32))  # noqa: E731
    assert math.isclose(circuits.copying_score(eig([[1.0, 0], [0, 3]])).item(), 1.0, abs_tol=1e-6)
    assert math.isclose(circuits.copying_score(eig([[-2.0, 0], [0, -1]])).item(), -1.0, abs_tol=1e-6)
    assert math.isclose(circuits.copying_score(eig([[0.0, -1], [1, 0]])).item(), 0.0, abs_tol=1e-6)  # rotation: +-i
    assert math.isclose(circuits.copying_score(eig([[2.0, 0], [0, -1]])).item(), 1 / 3, abs_tol=1e-6)


def test_factored_copying_scores_equal_dense_ones(organism):
    """On the organism's 168-token vocabulary the dense circuits fit: both methods must agree."""
    full = circuits.ov_copying_scores(organism)
    for layer in range(organism.cfg.n_layers):
        dense_full = organism.W_E @ organism.W_V[layer] @ organism.W_O[layer] @ organism.W_U  # (nh, V, V)
        dense_residual = organism.W_V[layer] @ organism.W_O[layer]  # (nh, d_model, d_model)
        assert torch.allclose(circuits.dense_copying_score(dense_full), full["full"][layer], atol=1e-3)
        assert torch.allclose(circuits.dense_copying_score(dense_residual), full["residual"][layer], atol=1e-3)
    ids = torch.arange(10, 60)
    sub = organism.W_E[ids] @ organism.W_V[1] @ organism.W_O[1] @ organism.W_U[:, ids]
    assert torch.allclose(circuits.copying_score(circuits.full_ov_eigenvalues(organism, ids)[1]),
                          circuits.dense_copying_score(sub), atol=1e-3)


def test_composition_ratio_exact_cases():
    e = torch.eye(4)
    outer = lambda i, j: e[:, i:i + 1] @ e[j:j + 1, :]  # noqa: E731  e_i e_j^T
    # writes into direction 1 and the reader reads direction 1: ||e0 e1^T e1 e2^T|| = 1 = the product of the norms
    assert circuits.composition_ratio(outer(0, 1), outer(1, 2)).item() == pytest.approx(1.0)
    assert circuits.composition_ratio(outer(0, 1), outer(3, 2)).item() == pytest.approx(0.0)  # orthogonal
    half = outer(0, 1) + outer(0, 3)  # writes into 1 and 3; the reader reads only 1: ||e0 e2^T|| / (sqrt 2 * 1)
    assert circuits.composition_ratio(half, outer(1, 2)).item() == pytest.approx(1 / math.sqrt(2))


def test_composition_scores_match_transformer_lens_and_mask_later_pairs(organism):
    for mode in circuits.COMPOSITION_MODES:
        ours = circuits.composition_scores(organism, mode)
        theirs = organism.all_composition_scores(mode).detach()
        valid = ~ours.isnan()
        assert valid[0, :, 1, :].all() and not valid[1, :, 0, :].any() and not valid[1, :, 1, :].any()
        assert torch.allclose(ours[valid], theirs[valid], atol=1e-6)


def test_random_baseline_is_about_one_over_sqrt_d_model():
    for d_model, d_head in ((128, 32), (768, 64)):
        baseline = circuits.random_composition_baseline(d_model, d_head, n_samples=64)
        assert baseline == pytest.approx(1 / math.sqrt(d_model), rel=0.1)


def test_composition_partners_order():
    scores = torch.full((2, 3, 2, 3), float("nan"))
    scores[0, :, 1, 2] = torch.tensor([0.1, 0.5, 0.3])
    expected = [(0, 1, 0.5), (0, 2, pytest.approx(0.3)), (0, 0, pytest.approx(0.1))]
    assert circuits.composition_partners(scores, 1, 2) == expected


def test_induction_head_k_composes_with_the_previous_token_head(organism, truth):
    """Found, not told: the top induction head's strongest K-composition partner is the top previous-token head."""
    scan = scan_heads(organism, ScanSettings(n_random=4, n_repeated=4, repeat_lengths=(50,)), seed=3, categories=None)
    induction = top_heads(scan.induction[50], 1)[0][:2]
    previous = top_heads(scan.previous_token, 1)[0][:2]
    partner = circuits.composition_partners(circuits.composition_scores(organism, "K"), *induction)[0]
    assert partner[:2] == previous
    planted = truth["planted_heads"]
    assert (list(induction), list(previous)) == (planted["induction"], planted["previous_token"])
    assert partner[2] > 2 * circuits.random_composition_baseline(organism.cfg.d_model, organism.cfg.d_head)


# --- token tables ----------------------------------------------------------------------------------


def random_factored(n_rows, n_cols, rank=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return FactoredMatrix(torch.randn(n_rows, rank, generator=g), torch.randn(rank, n_cols, generator=g))


@pytest.mark.parametrize("chunk", [1, 7, 64, None])
def test_chunked_reductions_equal_dense(chunk):
    m = random_factored(50, 40)
    dense = m.AB
    assert torch.allclose(circuits.column_max(m, chunk), dense.amax(0))
    centred = dense - dense.mean(-1, keepdim=True)
    assert torch.allclose(circuits.centred_row_max(m, chunk), centred.amax(-1), atol=1e-5)


def test_token_qk_subtracts_the_bos_score():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8, generator=g)
    W_Q, W_K, b_Q, b_K = (torch.randn(*s, generator=g) for s in ((8, 4), (8, 4), (4,), (4,)))
    qk = circuits.token_qk(x, x, x[0], QKHead(W_Q, W_K, 2.0, b_Q, b_K)).AB
    raw = (x @ W_Q + b_Q) @ (x @ W_K + b_K).T / 2
    assert torch.allclose(qk, raw - raw[:, :1], atol=1e-5)
    assert torch.allclose(qk[:, 0], torch.zeros(6))


def test_key_pivoted_table_hand_built():
    # 4 tokens. QK[q, k]: key 2 is wanted by query 3; key 1 by query 0 (less). OV copies each key.
    qk = FactoredMatrix(torch.eye(4), torch.tensor([[0.0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 5, 0]]))
    ov = FactoredMatrix(torch.eye(4), 4 * torch.eye(4))  # row k: 4 at o = k, mean 1 -> OVc max 3
    p = torch.full((4,), 0.25)
    table = circuits.key_pivoted_table(qk, ov, p, circuits.TableSize(n_keys=2, n_queries=1, n_outputs=1), chunk_size=2)
    w = 0.25**0.1
    assert table["key_ids"].tolist() == [2, 1]
    assert torch.allclose(table["key_scores"], torch.tensor([5 * 3 * w, 2 * 3 * w]))
    assert table["query_ids"][:, 0].tolist() == [3, 0] and table["output_ids"][:, 0].tolist() == [2, 1]
    # a token that never occurs (p = 0) cannot be a key
    p0 = torch.tensor([0.5, 0.5, 0.0, 0.0])
    assert circuits.key_pivoted_table(qk, ov, p0, circuits.TableSize(1, 1, 1))["key_ids"].tolist() == [1]


def test_token_probabilities_from_a_frequency_table():
    table = pd.DataFrame({"token": ["a", "b"], "id": [2, 0], "count": [3, 1], "probability": [0.75, 0.25]})
    assert circuits.token_probabilities(table, 4).tolist() == [0.25, 0.0, 0.75, 0.0]
    with pytest.raises(UsageError, match="another tokenizer"):
        circuits.token_probabilities(table, 2)


# --- scripts -------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_qk_ov_circuits_script(tmp_path, capsys, truth):
    run_main("qk_ov_circuits", "--out", str(tmp_path), "--n-prompts", "4", "--baseline-samples", "32")
    data = json.loads((tmp_path / "results" / "organism" / "qk_ov_circuits.json").read_text())["results"]
    planted = truth["planted_heads"]
    induction = data["top_induction_head"]
    assert [induction["layer"], induction["head"]] == planted["induction"]
    previous = data["top_previous_token_head"]
    assert [previous["layer"], previous["head"]] == planted["previous_token"]
    partner = data["induction_strongest_k_partner"]
    assert [partner["layer"], partner["head"]] == planted["previous_token"]
    assert partner["score"] > data["composition_baseline"]["random_matrices"]
    assert data["copying_score"]["full_W_E_W_V_W_O_W_U"][induction["layer"]][induction["head"]] > 0
    assert set(data["eigenvalues"]) == {"L{}H{}".format(*planted[k]) for k in ("previous_token", "induction")}
    for name in ("qk_ov_circuits", "qk_ov_circuits_eigenvalues", "qk_ov_circuits_composition"):
        assert (tmp_path / "figures" / "organism" / f"{name}.png").stat().st_size > 1000
    assert "K-composition into" in capsys.readouterr().out


@pytest.mark.e2e
def test_qk_ov_circuits_rejects_bad_heads(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main("qk_ov_circuits", "--out", str(tmp_path), "--n-prompts", "2", "--heads", "1.9")
    assert exit_info.value.code == 2
    assert "Head L1H9 does not exist" in capsys.readouterr().err


@pytest.mark.e2e
def test_token_circuit_tables_script(tmp_path, organism, truth):
    # a frequency file in token_freq.py's format, in which the planted semantic head's best key is rare
    from analysis.frequency import frequency_table, write_frequency_csv

    counts = torch.ones(organism.cfg.d_vocab, dtype=torch.long).numpy() * 10
    run_main("token_circuit_tables", "--out", str(tmp_path), "--keys", "4")
    uniform = json.loads((tmp_path / "results" / "organism" / "token_circuit_tables.json").read_text())["results"]
    assert [uniform["layer"], uniform["head"]] == truth["planted_heads"]["semantic"]  # the survey's best semantic head
    assert len(uniform["table"]) == 4 and len(uniform["table"][0]["queries"]) == 6
    first = uniform["table"][0]
    counts[first["key_id"]] = 0  # never seen: p = 0, so it must leave the table
    freq = write_frequency_csv(frequency_table(counts, organism.tokenizer), tmp_path / "freq.csv")
    run_main("token_circuit_tables", "--out", str(tmp_path), "--keys", "4", "--freq", str(freq))
    weighted = json.loads((tmp_path / "results" / "organism" / "token_circuit_tables.json").read_text())["results"]
    assert first["key_id"] not in [row["key_id"] for row in weighted["table"]]
    assert weighted["token_probabilities"] == str(freq)
    assert (tmp_path / "figures" / "organism" / "token_circuit_tables.png").stat().st_size > 1000
