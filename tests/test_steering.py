"""Gradient steering and the closed-form trace step: exact algebra, and the organism's head steered both ways."""

import json
import math

import pytest
import torch

from analysis import prompts, records, scores, steering
from analysis import qk_edits
from analysis.attention import QKHead, qk_head, self_attention_scores
from analysis.patterns import head_pattern, layer_input
from conftest import run_main


def test_steering_loss_exact():
    self_mass, partner = torch.tensor(0.2), torch.tensor(0.7)
    assert math.isclose(steering.steering_loss(self_mass, partner, "suppress", 2.0).item(), 0.2 - 1.4, abs_tol=1e-6)
    assert math.isclose(steering.steering_loss(self_mass, partner, "restore", 2.0).item(), -0.2 - 1.4, abs_tol=1e-6)


def test_trace_step_adds_eta_W_Q_W_Q_transpose():
    g = torch.Generator().manual_seed(0)
    W_Q, W_K = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    stepped = steering.trace_step(QKHead(W_Q, W_K, 1.0), 0.25)
    Wq, Wk = stepped.W_Q, stepped.W_K
    assert torch.allclose(Wq @ Wk.T, W_Q @ W_K.T + 0.25 * W_Q @ W_Q.T, atol=1e-6)
    # the step is the gradient of trace(W_Q W_K^T) in W_K, scaled by eta
    W_K_leaf = W_K.clone().requires_grad_(True)
    (W_Q @ W_K_leaf.T).trace().backward()
    assert torch.allclose(W_K + 0.25 * W_K_leaf.grad, Wk)
    x = torch.randn(5, 8, generator=g)  # every self-score grows by eta |x W_Q|^2
    grow = self_attention_scores(x, stepped) - self_attention_scores(x, QKHead(W_Q, W_K, 1.0))
    assert torch.allclose(grow, 0.25 * (x @ W_Q).pow(2).sum(-1), atol=1e-4)
    eta = steering.trace_eta(QKHead(W_Q, W_K, 1.0), 0.5)
    assert math.isclose(float((eta * W_Q @ W_Q.T).norm()), 0.5 * float((W_Q @ W_K.T).norm()), rel_tol=1e-5)


@pytest.fixture(scope="module")
def semantic_probe(organism, truth):
    layer, head = truth["planted_heads"]["semantic"]
    train = prompts.category_probe(organism, prompts.ALL_CATEGORIES, 32, 64, seed=31)
    test = prompts.category_probe(organism, prompts.ALL_CATEGORIES, 32, 64, seed=32)
    return layer, head, train, test


@pytest.mark.parametrize("direction", ["suppress", "restore"])
def test_gradient_steering_moves_self_mass_and_keeps_partners(organism, semantic_probe, direction):
    layer, head, train, test = semantic_probe
    before_params = {k: v.clone() for k, v in organism.state_dict().items()}
    own, x = qk_head(organism, layer, head, bias=True), layer_input(organism, train.tokens, layer)
    settings = steering.SteeringSettings(lam=1.0, mu=0.0, lr=1e-2, steps=10, batch_size=16, seed=0)
    run = steering.gradient_steer(own, x, train, direction, settings)
    after = qk_edits.in_context_scores(organism, test, layer, head,
                                       qk_edits.qk_override_hooks(organism, layer, head, run.qk))
    base = qk_edits.in_context_scores(organism, test, layer, head)
    moved = after["self_mass"] - base["self_mass"]
    assert (moved < 0) if direction == "suppress" else (moved > 0)
    assert after["partner_mass"] >= 0.8 * base["partner_mass"]
    assert len(run.history) == 10
    # the model itself is untouched and has no gradients
    assert all(torch.equal(v, organism.state_dict()[k]) for k, v in before_params.items())
    assert all(p.grad is None for p in organism.parameters())


@pytest.mark.e2e
def test_gradient_steering_script(tmp_path, truth):
    run_main("gradient_steering", "--out", str(tmp_path), "--steps", "5", "--n-prompts", "16",
             "--trace-relative", "0.3", "0.1", "--top", "5")
    data = json.loads((tmp_path / "results" / "organism" / "gradient_steering.json").read_text())["results"]
    assert [data["head"]["layer"], data["head"]["head"]] == truth["planted_heads"]["semantic"]
    assert set(data["metrics"]) == {"before", "suppress", "restore", "trace 0.3", "trace 0.1"}
    assert data["mu"] == 1.0 and "mu * bos_mass_no_partner" in data["objective"]  # the BOS term is on by default
    assert data["categories"]["set"] == "study" and len(data["categories"]["names"]) == 8
    for name in ("suppress", "restore", "trace 0.3"):
        assert set(data["runs"][name]["relative_change"]) == {"W_Q", "W_K", "W_QK"}
    assert data["runs"]["trace 0.3"]["relative_change"]["W_QK"] == pytest.approx(0.3, abs=1e-4)  # by construction
    assert data["runs"]["trace 0.3"]["relative_change"]["W_Q"] == 0
    assert set(data["trace_curve"]) == {"0.3", "0.1"} and data["trace_curve"]["0.3"] == {
        "eta": data["runs"]["trace 0.3"]["eta"], **data["metrics"]["trace 0.3"]}
    assert set(data["matched"]) == {"suppress", "restore"}
    for row in data["matched"].values():  # matched at the gradient run's own self mass, or outside the curve
        assert row["trace"] is None or row["trace"]["self_mass"] == pytest.approx(row["self_mass"], abs=1e-9)
    target = data["target"]
    assert [target["layer"], target["head"]] == truth["planted_heads"]["semantic"]
    assert set(data["directions"]) == {"self_mass_before", "bos_no_partner_before", "restore_self_gain",
                                       "restore_partner_change", "trace_self_gain"}
    assert {f"L{r['layer']}H{r['head']}" for r in data["controls"]} == set(data["control_edits"])
    assert len(data["controls"]) >= 3
    assert data["metrics"]["trace 0.3"]["self_mass"] > data["metrics"]["before"]["self_mass"]
    largest = data["largest_trace_step"]  # named by the script: the closed-form step with the largest eta
    assert largest["name"] == "trace 0.3" and largest["eta"] == data["runs"]["trace 0.3"]["eta"]
    assert data["runs"]["trace 0.3"]["eta"] > data["runs"]["trace 0.1"]["eta"]
    assert largest["metrics"] == data["metrics"]["trace 0.3"]
    assert data["metrics"]["before"]["partner_mass_change"] == 0
    top = data["top_keys"]["before"]
    assert len(top["keys"]) == 5 and top["query_self_rank"] > 5  # Monday is not among its own top keys
    assert top["keys"][0] in prompts.ALL_CATEGORIES["days"]  # a mate comes first
    for name in ("gradient_steering", "gradient_steering_top_keys", "gradient_steering_controls"):
        assert (tmp_path / "figures" / "organism" / f"{name}.png").stat().st_size > 1000


@pytest.mark.e2e
def test_gradient_steering_script_rejects_a_multi_token_query(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        run_main("gradient_steering", "--out", str(tmp_path), "--query", " Monday Tuesday")
    assert exit_info.value.code == 2


def test_steering_loss_bos_term():
    self_mass, partner, bos = torch.tensor(0.2), torch.tensor(0.7), torch.tensor(0.9)
    loss = steering.steering_loss(self_mass, partner, "restore", 1.0, bos, mu=0.5)
    assert math.isclose(loss.item(), -0.2 - 0.7 - 0.45, abs_tol=1e-6)
    assert math.isclose(steering.steering_loss(self_mass, partner, "restore", 1.0, bos, mu=0.0).item(), -0.9,
                        abs_tol=1e-6)


def test_weight_change_exact():
    W_Q, W_K = torch.eye(4)[:, :2], 2 * torch.eye(4)[:, :2]
    change = steering.weight_change(QKHead(W_Q, W_K, 1.0), QKHead(2 * W_Q, W_K, 1.0))  # W_Q doubles: W_QK doubles
    assert change["W_Q"] == pytest.approx(1.0) and change["W_K"] == pytest.approx(0.0)
    assert change["W_QK"] == pytest.approx(1.0, abs=1e-6)


def test_interpolate_at_interpolates_and_refuses_to_extrapolate():
    curve = [{"self_mass": 0.0, "partner_mass": 1.0}, {"self_mass": 0.4, "partner_mass": 0.6},
             {"self_mass": 0.2, "partner_mass": 0.9}]  # unsorted on purpose
    assert steering.interpolate_at(curve, "self_mass", 0.3)["partner_mass"] == pytest.approx(0.75)
    assert steering.interpolate_at(curve, "self_mass", 0.1)["partner_mass"] == pytest.approx(0.95)
    assert steering.interpolate_at(curve, "self_mass", 0.5) is None


def test_gradient_steering_mu_keeps_bos_fallback(organism, semantic_probe):
    layer, head, train, test = semantic_probe
    own, x = qk_head(organism, layer, head, bias=True), layer_input(organism, train.tokens, layer)
    bos = {}
    for mu in (0.0, 5.0):
        settings = steering.SteeringSettings(lam=1.0, mu=mu, lr=3e-2, steps=10, batch_size=16, seed=0)
        run = steering.gradient_steer(own, x, train, "restore", settings)
        hooks = qk_edits.qk_override_hooks(organism, layer, head, run.qk)
        bos[mu] = qk_edits.in_context_scores(organism, test, layer, head, hooks)["bos_mass_no_partner"]
    assert bos[5.0] > bos[0.0] + 0.05


def hand_edits():
    """A HeadEdits with known metrics: before, a restore run and two trace sizes (no model run)."""
    def m(self_mass, partner, bos, s=1.0):
        return {"self_mass": self_mass, "partner_mass": partner, "bos_mass_no_partner": bos, "surprisal": s}
    W = torch.eye(4)[:, :2]
    metrics = {"before": m(0.0, 1.0, 0.9), "restore": m(0.15, 0.8, 0.5, 2.0),
               "trace 0.1": m(0.1, 0.9, 0.6), "trace 0.2": m(0.2, 0.7, 0.1, 3.0)}
    change = {"W_Q": 0.0, "W_K": 0.1, "W_QK": 0.1}
    runs = {"restore": {"history": [], "relative_change": change},
            "trace 0.1": {"eta": 0.5, "relative": 0.1, "relative_change": change},
            "trace 0.2": {"eta": 1.0, "relative": 0.2, "relative_change": change}}
    return steering.HeadEdits({name: QKHead(W, W, 1.0) for name in metrics}, metrics, runs)


def test_head_edit_bookkeeping_exact():
    edits = hand_edits()
    assert steering.trace_name(0.3) == "trace 0.3" and steering.trace_name(1.0) == "trace 1"
    assert steering.trace_curve(edits) == {"0.1": {"eta": 0.5, **edits.metrics["trace 0.1"]},
                                           "0.2": {"eta": 1.0, **edits.metrics["trace 0.2"]}}
    row = steering.matched_comparison(edits, ["restore"])["restore"]  # self 0.15: halfway between the two trace sizes
    assert row["self_mass"] == 0.15 and row["gradient"] is edits.metrics["restore"]
    assert row["trace"]["partner_mass"] == pytest.approx(0.8) and row["trace"]["surprisal"] == pytest.approx(2.0)
    record = records.edits_record(edits, ["restore"])
    assert record["largest_trace_step"]["name"] == "trace 0.2" and record["trace_curve"] == steering.trace_curve(edits)
    assert record["matched"] == steering.matched_comparison(edits, ["restore"]) and record["metrics"] is edits.metrics
    stats = steering.head_statistics(edits)
    assert stats == pytest.approx({"self_mass_before": 0.0, "bos_no_partner_before": 0.9, "trace_self_gain": 0.2,
                                   "restore_self_gain": 0.15, "restore_partner_change": -0.2})
    assert set(steering.statistic_directions(["suppress"])) == {"self_mass_before", "bos_no_partner_before",
                                                                "trace_self_gain"}
    assert steering.statistic_directions(["restore"]) == steering.STATISTIC_DIRECTIONS
    others = records.control_edits({(1, 3): edits, (0, 2): edits}, (1, 3), ["restore"])
    assert set(others) == {"L0H2"} and others["L0H2"]["relative_change"]["trace 0.2"] == {"W_Q": 0.0, "W_K": 0.1,
                                                                                         "W_QK": 0.1}
    lines = records.steering_lines(edits.metrics | {n: {**m, "partner_mass_change": 0.0}
                                                     for n, m in edits.metrics.items()},
                                    {n: {"keys": [" a", " b"]} for n in edits.metrics},
                                    steering.matched_comparison(edits, ["restore"]), " a")
    assert len(lines) == 5 and lines[-1].startswith("matched at self 0.150 (restore)")


def test_query_top_keys_exact():
    E = torch.eye(3)  # three tokens; W_Q = W_K = I, scale 1: each query's scores are its row of E E^T = I
    W = torch.eye(3)
    flip = (W, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))  # query 0 now scores key 1
    table = steering.query_top_keys(E, 0, {"before": QKHead(W, W, 1.0), "flip": QKHead(*flip, 1.0)}, ["x", "y", "z"],
                                    k=2)
    assert table["before"]["keys"][0] == "x" and table["before"]["query_self_rank"] == 1
    assert table["flip"]["keys"][0] == "y" and table["flip"]["query_self_rank"] == 2
    assert table["flip"]["scores"].tolist()[0] == 1.0


def test_steering_from_the_layer_input_matches_the_hooked_model(organism, semantic_probe):
    """Steps computed from the layer's input (one run of the model) are the steps of the hooked model."""
    layer, head, (tokens, mask), _ = semantic_probe
    own = qk_head(organism, layer, head, bias=True)
    edited = own.with_factors(own.W_Q, own.W_K + 0.3 * own.W_Q)  # so that the check is not only of the model's own
    x = layer_input(organism, tokens[:8], layer)
    masses = steering.head_masses(x, prompts.Probe(tokens[:8], mask[:8]), edited)
    hooks = qk_edits.qk_override_hooks(organism, layer, head, edited)
    pattern = head_pattern(organism, tokens[:8], (layer, head), hooks)[:, None]
    expected = scores.semantic_companions(pattern, tokens[:8], mask[:8], scores.scored_rows(tokens[:8]))
    for key, value in masses.items():
        assert float(value) == pytest.approx(float(expected[key].nanmean()), abs=1e-6), key


def test_steer_heads_measures_every_head_and_condition(organism, semantic_probe):
    layer, head, train, test = semantic_probe
    plan = steering.SteeringPlan(["restore"], [0.3], steering.SteeringSettings(steps=2))
    per_head = steering.steer_heads(organism, [(layer, head), (0, 2)], train, test, plan)
    assert list(per_head) == [(layer, head), (0, 2)]
    for edits in per_head.values():
        assert list(edits.metrics) == ["before", "restore", "trace 0.3"] and len(edits.runs["restore"]["history"]) == 2
        assert edits.metrics["before"]["partner_mass_change"] == 0
    base = qk_edits.in_context_scores(organism, test, 0, 2)  # "before" is the unedited head, measured in the model
    assert per_head[(0, 2)].metrics["before"]["self_mass"] == pytest.approx(base["self_mass"], abs=1e-6)
