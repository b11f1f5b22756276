"""QK decomposition: exact small cases, TransformerLens cross-checks, and the organism's semantic head."""

import json
import math

import pytest
import torch

from analysis import prompts
from analysis import qk_decomposition as qk
from analysis import qk_edits
from analysis import self_suppression as ss
from analysis.attention import (QKHead, attention_scores, head_scale, pad_bias, qk_head,
                                self_attention_scores)
from analysis.controls import Sample, compare
from analysis.heads import target_head
from analysis.patterns import head_pattern
from analysis.token_maps import group_tokens, token_inputs
from conftest import check_controls_shape, run_main


def key_of(entry):
    return f"L{entry['layer']}H{entry['head']}"


def random_factors(d_model=12, d_head=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d_model, d_head, generator=g), torch.randn(d_model, d_head, generator=g)


def random_head(d_model=12, d_head=3, seed=0, scale=1.0):
    return QKHead(*random_factors(d_model, d_head, seed), scale)


def test_parts_are_the_symmetric_and_skew_halves():
    head = random_head()
    W_Q, W_K = head.W_Q, head.W_K
    W = W_Q @ W_K.T
    assert torch.allclose(head.W.AB, W)
    assert torch.allclose(qk.symmetric_part(head).AB, (W + W.T) / 2, atol=1e-6)
    assert torch.allclose(qk.skew_part(head).AB, (W - W.T) / 2, atol=1e-6)
    norms = qk.relative_norms(head)
    assert math.isclose(norms["W"] ** 2, norms["sym"] ** 2 + norms["skew"] ** 2, rel_tol=1e-5)
    assert math.isclose(norms["sym"], float(((W + W.T) / 2).norm()), rel_tol=1e-5)


def test_spectrum_of_a_hand_built_head():
    # W = e1 e2^T: W_sym = (e1 e2^T + e2 e1^T) / 2 has eigenvalues -1/2 (e1 - e2) and +1/2 (e1 + e2)
    e = torch.eye(3)
    spectrum = qk.symmetric_spectrum(QKHead(e[:, :1], e[:, 1:2], 1.0))
    assert torch.allclose(spectrum.values, torch.tensor([-0.5, 0.5]))
    v = spectrum.vectors[:, 0] * torch.sign(spectrum.vectors[0, 0])
    assert torch.allclose(v, torch.tensor([1.0, -1.0, 0.0]) / math.sqrt(2), atol=1e-6)
    summary = qk.spectrum_summary(spectrum.values)
    assert (summary["n_negative"], summary["n_positive"], summary["n_zero"]) == (1, 1, 0)
    assert summary["negative_total"] == 0.5 and summary["trace"] == 0.0 and summary["negative_share"] == 0.5


def test_rank_deficient_head_counts_numerical_zeros_as_zero():
    """W_Q = [A, B], W_K = [A, -B] (d_head 4): [W_Q, W_K] has rank 4 < 2 d_head, and W = A A^T - B B^T is
    symmetric with 2 positive and 2 negative eigenvalues: the other 4 of the 2 d_head are exact zeros."""
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
    W_Q, W_K = torch.cat([A, B], 1), torch.cat([A, -B], 1)
    assert torch.linalg.matrix_rank(torch.cat([W_Q, W_K], 1)) == 4 < 2 * W_Q.shape[1]
    values = qk.symmetric_spectrum(QKHead(W_Q, W_K, 1.0)).values
    dense = torch.linalg.eigvalsh((A @ A.T - B @ B.T).double())
    assert (dense < -1e-6).sum() == 2 and (dense > 1e-6).sum() == 2
    assert (values < 0).sum() > 2  # the numerical zeros come out with either sign: a bare `< 0` overcounts
    summary = qk.spectrum_summary(values)
    assert (summary["n_negative"], summary["n_positive"], summary["n_zero"]) == (2, 2, 4)
    negative = qk.most_negative(values)
    assert len(negative) == summary["n_negative"] == 2  # one definition of the count
    assert torch.allclose(values[negative].double().sort().values, dense[:2], rtol=1e-4)
    assert qk.eigenvalue_signs(values).tolist() == [-1, -1, 0, 0, 0, 0, 1, 1]


def test_spectrum_is_complete_and_matches_dense_and_transformer_lens():
    head = random_head(d_model=16, d_head=4)
    spectrum = qk.symmetric_spectrum(head)
    sym = qk.symmetric_part(head)
    assert spectrum.values.shape == (8,)  # all 2 d_head eigenpairs, not a truncation
    dense = torch.linalg.eigvalsh(sym.AB.double())
    nonzero = dense[dense.abs() > 1e-6].float()
    assert torch.allclose(spectrum.values, nonzero, atol=1e-4)
    tl = sym.eigenvalues.real.sort().values  # TransformerLens: eigenvalues of the small product BA
    assert torch.allclose(spectrum.values, tl, atol=1e-4)
    V = spectrum.vectors
    assert torch.allclose(V.T @ V, torch.eye(8), atol=1e-5)
    assert torch.allclose(V @ torch.diag(spectrum.values) @ V.T, sym.AB, atol=1e-5)
    # at most d_head eigenvalues of each sign (Sylvester's law of inertia)
    assert (spectrum.values < 0).sum() <= 4 and (spectrum.values > 0).sum() <= 4


def test_skew_part_cannot_change_self_scores():
    scale = math.sqrt(3)
    head = random_head(scale=scale)
    x = torch.randn(20, 12)
    W, sym, skew = head.W, qk.symmetric_part(head), qk.skew_part(head)
    as_head = lambda part: head.with_factors(part.A, part.B.T)  # noqa: E731  (a part W = A B as factors A, B^T)
    self_scores = self_attention_scores(x, head)
    assert torch.allclose(self_scores, ((x @ W.AB) * x).sum(-1) / scale, atol=1e-5)  # dense
    assert torch.allclose(self_scores, self_attention_scores(x, as_head(sym)), atol=1e-5)
    assert self_attention_scores(x, as_head(skew)).abs().max() < 1e-5
    assert torch.allclose(self_scores, attention_scores(x, x, head).diagonal(), atol=1e-5)
    positive, negative = qk.self_score_parts(x, qk.symmetric_spectrum(head), scale)
    assert (positive >= 0).all() and (negative <= 0).all()
    assert torch.allclose(positive + negative, self_scores, atol=1e-4)


def test_biases_fold_into_the_input():
    W_Q, W_K = random_factors()
    b_Q, b_K = torch.randn(3), torch.randn(3)
    xq, xk = torch.randn(5, 12), torch.randn(7, 12)
    folded = qk.with_bias(QKHead(W_Q, W_K, 2.0, b_Q, b_K))
    assert folded.b_Q is None and folded.b_K is None and folded.scale == 2.0
    by_hand = (xq @ W_Q + b_Q) @ (xk @ W_K + b_K).T / 2.0
    assert torch.allclose(attention_scores(qk.append_one(xq), qk.append_one(xk), folded), by_hand, atol=1e-4)


def test_score_blocks_are_the_token_scores_in_chunks():
    head = random_head()
    xq, xk = torch.randn(7, 12), torch.randn(5, 12)
    W = qk.symmetric_part(head)  # inner dimension 2 d_head
    blocks = torch.cat([block for _, block in qk.score_blocks(xq, xk, QKHead(W.A, W.B.T, 2.0), chunk_size=3)])
    assert torch.allclose(blocks, xq @ W.AB @ xk.T / 2.0, atol=1e-4)


def test_widened_edited_factors_keep_the_models_scale(organism, truth):
    """Edited factors have d_head + k columns; their scores must still divide by the model's sqrt(d_head)."""
    layer, head = truth["planted_heads"]["semantic"]
    weights = qk_head(organism, layer, head, bias=True)
    W_Q, W_K, b_Q, b_K = weights.W_Q, weights.W_K, weights.b_Q, weights.b_K
    spectrum = qk.symmetric_spectrum(weights)
    negative = qk.most_negative(spectrum.values)
    scale = head_scale(organism.cfg, layer)
    assert scale == weights.scale == math.sqrt(organism.cfg.d_head)
    tokens = prompts.reference_prompts(organism, seed=5, n_prompts=2, n_words=12)
    name = f"blocks.{layer}.ln1.hook_normalized"
    with torch.no_grad():
        _, cache = organism.run_with_cache(tokens, stop_at_layer=layer + 1,
                                           names_filter=[name, f"blocks.{layer}.attn.hook_attn_scores"])
    x = cache[name]  # (B, T, d_model): what the head's own W_Q, W_K read
    own = cache[f"blocks.{layer}.attn.hook_attn_scores"][:, head]  # TransformerLens's scores
    causal = torch.ones(own.shape[-2:], dtype=torch.bool).tril()

    # factor 1: widened factors of the unedited W must give the model's own scores
    edited = qk.edited_head(weights, spectrum, negative, 1.0)
    A, B = edited.W_Q, edited.W_K
    width = A.shape[1]
    assert width == organism.cfg.d_head + len(negative) > organism.cfg.d_head
    assert edited.scale == scale and torch.equal(edited.b_Q, pad_bias(b_Q, width))  # the head's scale, padded biases
    b_A, b_B = pad_bias(b_Q, width), pad_bias(b_K, width)
    wide = attention_scores(x, x, edited)
    assert torch.allclose(wide[:, causal], own[:, causal], atol=1e-4)
    scaled_by_width = QKHead(A, B, math.sqrt(width), b_A, b_B)  # a scale read off the factors' width would be wrong
    assert not torch.allclose(attention_scores(x, x, scaled_by_width)[:, causal], own[:, causal], atol=1e-2)
    # factor -1: W' = A B^T by hand, d_model x d_model; the padded biases act through W_Q, W_K's columns only
    edited = qk.edited_head(weights, spectrum, negative, -1.0)
    A, B = edited.W_Q, edited.W_K
    by_hand = (x @ (A @ B.T) @ x.transpose(-1, -2) + (x @ W_K @ b_Q)[:, None, :] + (x @ W_Q @ b_K)[:, :, None]
               + b_Q @ b_K) / math.sqrt(organism.cfg.d_head)
    got = attention_scores(x, x, edited)
    assert torch.allclose(got, by_hand, atol=1e-3) and not torch.allclose(got, wide, atol=1e-2)
    assert torch.allclose(attention_scores(x[0], x[0], edited.without_bias()), x[0] @ (A @ B.T) @ x[0].T / scale,
                          atol=1e-3)


def test_self_ranks_and_rank_metrics_exact():
    # keys = queries = e1, e2, e3, so the scores are M itself
    M = torch.tensor([[1.0, 2.0, 3.0],   # self 1: beaten by 2 and 3 -> rank 3
                      [0.0, 5.0, 1.0],   # rank 1
                      [4.0, 9.0, 4.0]])  # beaten by 9 only (ties do not count) -> rank 2
    ranks = qk.self_ranks(torch.eye(3), QKHead(M, torch.eye(3), 1.0), chunk_size=2)
    assert ranks.tolist() == [3, 1, 2]
    metrics = qk.rank_metrics(ranks, at=(1, 2))
    assert metrics["mean_rank"] == 2.0
    assert math.isclose(metrics["mrr"], (1 / 3 + 1 + 1 / 2) / 3)
    assert math.isclose(metrics["acc@1"], 1 / 3) and math.isclose(metrics["acc@2"], 2 / 3)


def test_eigenvalue_edits():
    head = random_head(d_model=10, d_head=3)
    W_Q, W_K = head.W_Q, head.W_K
    spectrum = qk.symmetric_spectrum(head)
    negative = qk.most_negative(spectrum.values)
    assert (spectrum.values[negative] < 0).all()
    assert spectrum.values[negative].tolist() == sorted(spectrum.values[negative].tolist())  # most negative first
    assert torch.allclose(qk.edited_head(head, spectrum, negative, 1.0).W.AB, W_Q @ W_K.T, atol=1e-6)  # factor 1
    edited = qk.edited_head(head, spectrum, negative[:1], -2.0).W.AB
    W = W_Q @ W_K.T
    assert torch.allclose((edited - edited.T) / 2, (W - W.T) / 2, atol=1e-5)  # skew part kept
    expected = spectrum.values.clone()
    expected[negative[0]] *= -2
    got = torch.linalg.eigvalsh(((edited + edited.T) / 2).double()).float()
    assert torch.allclose(got[got.abs() > 1e-5].sort().values, expected.sort().values, atol=1e-4)
    assert pad_bias(torch.tensor([1.0, 2.0]), 4).tolist() == [1.0, 2.0, 0.0, 0.0]
    assert pad_bias(torch.tensor([1.0, 2.0]), 2).tolist() == [1.0, 2.0] and pad_bias(None, 3) is None


def test_self_suppressing_components_rank_by_contribution():
    # W_sym has λ = -3 along e3, -1 along e2, 2 along e1; the input lies mostly along e2, so λ = -1 carries more of the
    # negative self-score (-1 * 9) than λ = -3 does (-3 * 1)
    spectrum = qk.Spectrum(torch.tensor([-3.0, -1.0, 2.0]), torch.eye(3)[:, [2, 1, 0]])
    x = torch.tensor([[0.0, 3.0, 1.0]])
    assert qk.self_suppressing_components(x, spectrum).tolist() == [1, 0]  # -9 before -3
    assert qk.self_suppressing_components(x, spectrum, 1).tolist() == [1]


def test_edit_effect_exact():
    before = {"self_mass": 0.1, "partner_mass": 0.9, "bos_mass_no_partner": 0.8, "surprisal": 0.2}
    after = {"self_mass": 0.5, "partner_mass": 0.7, "bos_mass_no_partner": 0.6, "surprisal": 0.9}
    effect = qk_edits.edit_effect(before, after)
    assert effect["self_mass_change"] == pytest.approx(0.4) and effect["partner_mass_change"] == pytest.approx(-0.2)
    assert effect["bos_mass_no_partner_change"] == pytest.approx(-0.2) and effect["surprisal_change"] == pytest.approx(0.7)
    assert effect["self_mass_log_odds_change"] == pytest.approx(math.log(9))  # logit(0.5) - logit(0.1) = 0 + log 9
    assert set(effect) == set(qk_edits.EDIT_CHANGES)  # changes only: no ratio forced by conservation of mass


def test_edited_heads_in_context_matches_one_head_at_a_time(organism):
    probe = prompts.category_probe(organism, prompts.ALL_CATEGORIES, 8, 32, seed=5)
    edits = {}
    for h in (0, 2):
        weights = qk_head(organism, 1, h, bias=True)
        spectrum = qk.symmetric_spectrum(weights)
        edits[(1, h)] = qk.edited_head(weights, spectrum, qk.most_negative(spectrum.values), -1.0)
    together = qk_edits.edited_heads_in_context(organism, probe, edits)
    for (l, h), edited in edits.items():
        hooks = qk_edits.qk_override_hooks(organism, l, h, edited)
        alone = qk_edits.in_context_scores(organism, probe, l, h, hooks)
        assert together[(l, h)] == pytest.approx(alone, abs=1e-5, nan_ok=True)


def test_override_hooks_reproduce_the_model_and_recompute_scores(organism):
    tokens = prompts.reference_prompts(organism, seed=3, n_prompts=4, n_words=20)
    weights = qk_head(organism, 1, 2, bias=True)
    clean = head_pattern(organism, tokens, (1, 2))
    same = head_pattern(organism, tokens, (1, 2), qk_edits.qk_override_hooks(organism, 1, 2, weights))
    assert torch.allclose(clean, same, atol=1e-5)
    spectrum = qk.symmetric_spectrum(weights)  # wider factors of the same W, biases padded by the edit
    wide_head = qk.edited_head(weights, spectrum, qk.most_negative(spectrum.values), 1.0)
    wide = head_pattern(organism, tokens, (1, 2), qk_edits.qk_override_hooks(organism, 1, 2, wide_head))
    assert wide_head.W_Q.shape[1] > weights.W_Q.shape[1] and torch.allclose(clean, wide, atol=1e-5)
    zero = torch.zeros_like(weights.W_Q)  # every score 0: uniform over the causal keys, A[q, k] = 1 / (q + 1)
    uniform_head = QKHead(zero, zero, weights.scale)
    uniform = head_pattern(organism, tokens, (1, 2), qk_edits.qk_override_hooks(organism, 1, 2, uniform_head))
    expected = torch.ones(21, 21).tril() / torch.arange(1, 22)[:, None]
    assert torch.allclose(uniform, expected.expand_as(uniform), atol=1e-6)
    other_head = head_pattern(organism, tokens, (1, 0), qk_edits.qk_override_hooks(organism, 1, 2, uniform_head))
    assert torch.allclose(other_head, head_pattern(organism, tokens, (1, 0)))  # only the target head changes


def test_rank_grid_equals_one_edit_at_a_time(organism, truth):
    """Every cell of the batched grid: the same self-ranks as `self_ranks` of that cell's edited factors,
    and the same in-context metrics as running the model with that cell's override hooks."""
    from analysis.token_maps import token_inputs

    layer, head = truth["planted_heads"]["semantic"]
    weights = qk_head(organism, layer, head, bias=True)
    spectrum = qk.symmetric_spectrum(weights)
    E = token_inputs(organism, layer, "mean")
    ks, scales = [1, 8, 32], [1.0, 0.0, -2.0]
    grid = qk.self_ranks_grid(E, weights, spectrum, qk.RankGrid(ks, scales, chunk_size=7))  # chunks not dividing n
    probe = prompts.category_probe(organism, prompts.ALL_CATEGORIES, 8, 32, seed=4)
    edited = {(k, s): qk.edited_head(weights, spectrum, qk.most_negative(spectrum.values, k), s)
              for k in ks for s in scales}
    in_context = qk_edits.in_context_edits(organism, probe, layer, edited, batch_size=3)
    for (k, s), cell in edited.items():
        assert torch.equal(grid[k, s], qk.self_ranks(E, cell)), (k, s)
        hooks = qk_edits.qk_override_hooks(organism, layer, head, cell)
        expected = qk_edits.in_context_scores(organism, probe, layer, head, hooks)
        assert in_context[k, s] == pytest.approx(expected, abs=1e-6), (k, s)
    assert grid[32, -2.0].double().mean() < grid[32, 1.0].double().mean() / 2  # the edits do move the ranks
    assert in_context[32, -2.0]["self_mass"] > 5 * in_context[32, 1.0]["self_mass"]
    with pytest.raises(ValueError, match="more negative eigenvalues"):
        qk.self_ranks_grid(E, weights, spectrum, qk.RankGrid([10**4], [1.0]))


def test_flipping_the_semantic_heads_most_self_suppressing_component_frees_it_more_than_any_other_head(
        organism, truth):
    """The planted head's self-avoidance lives in a few negative components of W_sym: flipping the two that carry most
    of the category words' negative self-score raises its self mass, prompt for prompt, by more than the same edit
    raises any other head's of its layer (paired CI excludes 0). Flipping every negative eigenvalue would not do: it
    frees the self-attention of almost any head (and by Sylvester every head has d_head of them)."""
    layer, head = target_head(organism, None, None)  # found unaided
    assert [layer, head] == truth["planted_heads"]["semantic"]
    heads = {(layer, h): qk_head(organism, layer, h, bias=True) for h in range(organism.cfg.n_heads)}
    for qk_of in heads.values():  # Sylvester: the count is a fact of every full-rank head, not evidence
        assert qk.spectrum_summary(qk.symmetric_spectrum(qk_of).values)["n_negative"] == organism.cfg.d_head
    ids, _, category, _ = group_tokens(organism.tokenizer, prompts.STUDY_CATEGORIES)
    x = token_inputs(organism, layer, "mean", token_ids=ids)
    edits = qk_edits.eigenvalue_edits(heads, {hd: x for hd in heads}, [], targeted_k=2)
    probe = prompts.category_probe(organism, prompts.STUDY_CATEGORIES, 32, 64, seed=21)
    sweep = qk_edits.edit_sweep(organism, probe, edits)
    gains = {hd: Sample(sweep[hd]["targeted"]["self_mass"] - sweep[hd]["unedited"]["self_mass"], "prompt")
             for hd in heads}
    report = compare((layer, head), {hd: {"gain": g} for hd, g in gains.items()}, {"gain": "high"})
    assert report["target"]["gain"]["separates"] and report["target"]["gain"]["difference"]["low"] > 0


@pytest.mark.e2e
def test_decomposition_scripts_end_to_end(tmp_path, truth):
    out = str(tmp_path)
    scripts = (("skew_analysis", ()), ("sym_skew_maps", ()), ("eigenvalue_scaling", ("--n-prompts", "16")))
    for name, extra in scripts:
        run_main(name, "--out", out, *extra)
        for ext in ("pdf", "png"):
            assert (tmp_path / "figures" / "organism" / f"{name}.{ext}").stat().st_size > 1000
    results = tmp_path / "results" / "organism"
    skew = json.loads((results / "skew_analysis.json").read_text())["results"]
    assert [skew["head"]["layer"], skew["head"]["head"]] == truth["planted_heads"]["semantic"]
    assert skew["without_bias"]["spectrum"]["n_negative"] > 0
    assert skew["without_bias"]["norms"]["skew"] < skew["without_bias"]["norms"]["sym"]
    assert len(skew["without_bias"]["eigenvalues"]) == 2 * 32
    assert skew["without_bias"]["check"]["max_abs_self_W_minus_sym"] < 1e-3
    # with the biases folded in the count is still d_head, and the results say it is forced
    assert skew["with_bias"]["spectrum"]["n_negative"] == skew["d_head"] == 32
    assert skew["with_bias"]["spectrum"]["forced"].startswith("Sylvester: [W_Q; b_Q] has d_head columns")
    # controls: every other head; the count ties everywhere (Sylvester), the partner margin singles the head out
    for name in ("skew_analysis", "sym_skew_maps", "eigenvalue_scaling"):
        check_controls_shape(json.loads((results / f"{name}.json").read_text())["results"],
                             truth["planted_heads"]["semantic"])
    assert skew["categories"]["set"] == "study" and skew["category_words"]["n_words"] == 41
    assert len(skew["controls"]) == 7 and skew["directions"]["margin"] == "low"
    assert skew["sylvester"]["heads_with_d_head_negative"] == skew["sylvester"]["n_heads"] == 8
    assert skew["target"]["n_negative_eigenvalues"]["rank"] == 1
    assert not skew["target"]["n_negative_eigenvalues"]["separates"]
    assert {"margin", "below_partners_share"} <= set(skew["separating"])  # normalised margin: not in this organism
    assert skew["null"]["self_vs_random_words"]["value"] > skew["target"]["margin"]["value"]
    assert skew["null"]["below_partners"]["beats_null"]
    semantic = "L{}H{}".format(*truth["planted_heads"]["semantic"])
    assert [key for key, v in skew["properties"]["by_head"].items() if v["both_hold"]] == [semantic]
    assert (tmp_path / "figures" / "organism" / "skew_analysis_controls.png").stat().st_size > 1000
    maps = json.loads((results / "sym_skew_maps.json").read_text())["results"]
    assert maps["check"]["max_abs_diag_skew"] < 1e-4 and len(maps["tokens"]) == 30
    assert maps["block_means"]["base"]["in_group"] > maps["block_means"]["base"]["out_group"]
    assert len(maps["controls"]) == 7 and set(maps["directions"]) == set(ss.GROUP_MAP_DIRECTIONS)
    assert maps["target"]["self_minus_in_group"]["value"] == pytest.approx(
        maps["block_means"]["base"]["self_minus_in_group"], abs=1e-5)
    assert "self_minus_in_group" in maps["separating"]
    scaling = json.loads((results / "eigenvalue_scaling.json").read_text())["results"]
    assert list(scaling["factors"]) == ["1", "0.5", "0", "-1"]  # keyed by factor, in the order of --factors
    by_factor = {key: row["in_context"]["self_mass"] for key, row in scaling["factors"].items()}
    assert by_factor["-1"] >= 5 * by_factor["1"]
    assert by_factor["1"] == pytest.approx(scaling["unedited_in_context"]["self_mass"], abs=1e-5)
    target = scaling["target"]  # the same sweep on the control heads, ranked
    assert [target["layer"], target["head"]] == truth["planted_heads"]["semantic"]
    curve_ks = scaling["targeted_curve"]["ks"]
    assert set(scaling["directions"]) == {"factor -1_self_mass_change", "factor 0_self_mass_change",
                                          "targeted_self_mass_change"} | {
        f"targeted k={k}_{change}" for k in curve_ks for change in ("self_mass_change", "self_mass_log_odds_change")}
    control_keys = {f"L{row['layer']}H{row['head']}" for row in scaling["controls"]}
    n_heads = len([k for k in scaling["edits"] if k.startswith(f"L{target['layer']}H")])
    assert len(control_keys) >= n_heads - 1 and key_of(target) not in control_keys
    key = key_of(target)
    assert scaling["edits"][key]["factor -1"]["self_mass_change"] == pytest.approx(
        by_factor["-1"] - scaling["edits"][key]["unedited"]["self_mass"], abs=1e-5)
    assert target["factor -1_self_mass_change"]["difference"]["unit"] == "prompt"  # per-prompt Samples: a CI
    # the targeted edit as a curve over k: every head, each k compared; the planted head separates at k = 1
    curve = scaling["targeted_curve"]
    assert curve["ks"] == [1, 2, 4, 8, 16] and curve["n_negative"] == 32 and list(curve["points"])[0] == "k=1"
    assert 1 in curve["separating_ks"]["self_mass_change"] and curve["largest_separating_k"]["self_mass_change"] >= 1
    gains = [curve["points"][f"k={k}"]["self_mass_change"]["value"] for k in curve["ks"]]
    # one component flipped gives self mass back and all sixteen give more (k = 1 and 2 are level here: 0.035 each)
    assert gains[0] > 0 and gains[-1] > 10 * gains[0]
    assert scaling["edits"][key]["targeted k=4"] == scaling["edits"][key]["targeted"]  # --targeted-k 4 is k = 4
    assert (tmp_path / "figures" / "organism" / "eigenvalue_scaling_curve.png").stat().st_size > 1000


@pytest.mark.e2e
def test_rank_ablation_script(tmp_path, truth):
    run_main("eigenvalue_rank_ablation", "--out", str(tmp_path), "--ks", "4", "100", "--scales", "1", "-1",
             "--n-prompts", "8", "--n-words", "32")
    data = json.loads((tmp_path / "results" / "organism" / "eigenvalue_rank_ablation.json").read_text())["results"]
    check_controls_shape(data, truth["planted_heads"]["semantic"])
    k_max = data["n_negative_eigenvalues"]
    assert set(data["cells"]) == {"k=4,scale=1", "k=4,scale=-1", f"k={k_max},scale=1", f"k={k_max},scale=-1"}
    cells = {(c["k"], c["scale"]): c for c in data["cells"].values()}  # k = 100 capped at the negatives
    assert data["unedited_cell"] == cells[(4, 1.0)]  # the first k at scale 1
    assert data["best_cell"] == min(cells.values(), key=lambda c: c["mean_rank"])
    assert cells[(k_max, -1.0)]["mean_rank"] < cells[(k_max, 1.0)]["mean_rank"]
    assert cells[(k_max, -1.0)]["self_mass"] > cells[(k_max, 1.0)]["self_mass"]
    assert cells[(4, 1.0)]["mean_rank"] == cells[(k_max, 1.0)]["mean_rank"]  # scale 1 edits nothing
    # the study's scale: ranks from 0 over the 183 keys; accuracy@K only below V/2
    assert cells[(4, 1.0)]["mean_rank_normalised"] == pytest.approx((cells[(4, 1.0)]["mean_rank"] - 1) / 183)
    assert data["at"] == [1] and set(data["acc_dropped"]) == {"128", "1024"} and "acc@128" not in cells[(4, 1.0)]
    # the study's way: its factors rebuild this head's W unedited, and its edit at (24, -2) moves self far less
    study = data["study_edit"]
    assert (study["k"], study["scale"]) == (24, -2.0) and study["edited"]["imaginary_share"] < 1e-3
    assert study["unedited"]["mean_rank"] == pytest.approx(cells[(4, 1.0)]["mean_rank"])
    assert study["edited"]["mean_rank_normalised"] > 10 * cells[(k_max, -1.0)]["mean_rank_normalised"]
    # every control head gets the whole grid, measured as the target's: the statistics come from each grid
    assert set(data["directions"]) == {"mean_rank", "mean_rank_change", "self_mass_change", "best_mean_rank_change",
                                       "best_self_mass_change"}
    assert data["target"]["mean_rank"]["value"] == pytest.approx(cells[(4, 1.0)]["mean_rank"], rel=1e-6)
    assert data["target"]["best_mean_rank_change"]["value"] == pytest.approx(
        data["best_cell"]["mean_rank"] - cells[(4, 1.0)]["mean_rank"], rel=1e-6)
    assert len(data["controls"]) >= 3 and len(data["control_grids"]) == len(data["controls"])
    for row in data["controls"]:
        grid = data["control_grids"][f"L{row['layer']}H{row['head']}"]
        assert {c["scale"] for c in grid.values()} == {1.0, -1.0}
        unedited = next(c for c in grid.values() if c["scale"] == 1.0)
        assert row["mean_rank"] == pytest.approx(unedited["mean_rank"], rel=1e-9)
        assert row["mean_rank_change"] == pytest.approx(row["edited_mean_rank"] - row["mean_rank"], abs=1e-9)
        assert row["best_self_mass_change"] == pytest.approx(
            max(c["self_mass"] for c in grid.values()) - unedited["self_mass"], abs=1e-9)


def test_rank_ablation_best_cell_on_controls_agrees_with_the_grid(organism):
    # The cheap path (--control-cells best) and the grid measure the same edit the same way.
    layer, head = 1, 1  # the planted induction head: a control
    E = token_inputs(organism, layer, "mean")
    probe = prompts.category_probe(organism, prompts.STUDY_CATEGORIES, 4, 16, seed=0)
    grid = ss.rank_grid(organism, (layer, head), E, probe, qk.RankGrid(ks=[4], scales=[-1.0], at=[1]))
    assert set(grid["cells"]) == {"k=4,scale=-1"}  # scale 1 measured (unedited) but not a cell
    best = grid["cells"]["k=4,scale=-1"]
    from_grid = ss.rank_statistics(grid, best)
    direct = ss.best_cell_edit(organism, (layer, head), best, E, probe, qk.RankGrid(ks=[4], scales=[-1.0]))
    for key, value in direct.items():
        if key in ss.RANK_DIRECTIONS:  # a Sample, as rank_samples gives it from the grid
            value, expected = value.value, ss.rank_samples(grid, best)[key].value
        else:
            expected = from_grid[key]
        assert expected == pytest.approx(value, abs=1e-4), key


def test_eigenvalue_edits_and_statistics_exact():
    head = random_head(scale=2.0)
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(1))
    edits = qk_edits.eigenvalue_edits({(0, 1): head}, {(0, 1): x}, [1.0, -1.0], targeted_k=2, ks=[1, 2])
    assert list(edits) == ["unedited", "factor 1", "factor -1", "targeted", "targeted k=1", "targeted k=2"]
    assert torch.allclose(edits["factor 1"][(0, 1)].W.AB, head.W.AB, atol=1e-5)  # factor 1 gives W back
    assert edits["targeted"][(0, 1)].W_Q.shape == (12, 3 + 2)  # d_head + the 2 targeted components
    assert torch.equal(edits["targeted k=2"][(0, 1)].W.AB, edits["targeted"][(0, 1)].W.AB)  # the same two components
    assert edits["targeted k=1"][(0, 1)].W_Q.shape == (12, 3 + 1)
    assert all(edit[(0, 1)].scale == 2.0 for edit in edits.values())  # the head's own scale, whatever the width
    spectrum = qk.symmetric_spectrum(head)
    flipped = qk.symmetric_spectrum(edits["factor -1"][(0, 1)]).values  # every negative eigenvalue flipped
    assert flipped.min() > -1e-4 and float(flipped.sum()) == pytest.approx(float(spectrum.values.abs().sum()), rel=1e-4)
    # a head with 3 negative eigenvalues: k = 16 flips all 3, the same edit as k = 3
    assert qk_edits.curve_ks([1, 2, 4, 8, 16], 3) == [1, 2, 3] and qk_edits.curve_ks([16, 4], 32) == [4, 16]
    wide = qk_edits.eigenvalue_edits({(0, 1): head}, {(0, 1): x}, [], targeted_k=3, ks=[16])
    assert torch.allclose(wide["targeted k=16"][(0, 1)].W.AB, wide["targeted"][(0, 1)].W.AB)


def test_edit_statistics_are_per_prompt_samples_of_the_changes():
    nan = math.nan
    before = {"self_mass": torch.tensor([0.1, 0.2, 0.3]), "partner_mass": torch.tensor([0.8, nan, 0.6]),
              "bos_mass_no_partner": torch.tensor([nan, 0.7, nan]), "surprisal": torch.tensor([1.0, 2.0, 3.0])}
    after = {"self_mass": torch.tensor([0.5, 0.5, 0.8]), "partner_mass": torch.tensor([0.4, nan, 0.2]),
             "bos_mass_no_partner": torch.tensor([nan, 0.3, nan]), "surprisal": torch.tensor([2.0, 2.0, 5.0])}
    sweep = {(1, 3): {"unedited": before, "targeted k=2": after}}
    stats = qk_edits.edit_statistics(sweep)[(1, 3)]
    assert set(stats) == {f"targeted k=2_{c}" for c in qk_edits.EDIT_CHANGES}
    gain = stats["targeted k=2_self_mass_change"]
    assert gain.unit == "prompt" and torch.allclose(gain.per_unit, torch.tensor([0.4, 0.3, 0.5]))
    assert gain.value == pytest.approx(0.4)
    assert stats["targeted k=2_partner_mass_change"].value == pytest.approx(-0.4)  # the NaN prompt left out
    log_odds = stats["targeted k=2_self_mass_log_odds_change"]  # logit(mean 0.6) - logit(mean 0.2) = log 1.5 + log 4
    assert log_odds.value == pytest.approx(math.log(6), rel=1e-5)
    rows = qk_edits.edit_rows(sweep)[(1, 3)]  # the means results keep, and their changes: the Samples' values
    assert rows["targeted k=2"]["self_mass"] == pytest.approx(0.6) and rows["unedited"]["self_mass_change"] == 0
    assert all(rows["targeted k=2"][c] == pytest.approx(stats[f"targeted k=2_{c}"].value, rel=1e-5)
               for c in qk_edits.EDIT_CHANGES)


def test_edit_sweep_unedited_changes_nothing(organism):
    probe = prompts.category_probe(organism, prompts.STUDY_CATEGORIES, 4, 16, seed=0)
    heads = {(0, 2): qk_head(organism, 0, 2, bias=True), **{(1, h): qk_head(organism, 1, h, bias=True) for h in (0, 3)}}
    sweep = qk_edits.edit_sweep(organism, probe, {"unedited": heads, "same": heads}, batch_size=3)
    assert set(sweep) == {(0, 2), (1, 0), (1, 3)} and sweep[(1, 3)]["same"]["self_mass"].shape == (4,)
    rows = qk_edits.edit_rows(sweep)
    for per_edit in rows.values():
        assert per_edit["same"]["self_mass_change"] == 0 and per_edit["unedited"]["surprisal_change"] == 0
    for hd in heads:
        assert rows[hd]["unedited"]["self_mass"] == pytest.approx(
            qk_edits.in_context_scores(organism, probe, *hd)["self_mass"], abs=1e-6)


def test_in_context_edit_units_are_each_prompt_on_its_own(organism):
    probe = prompts.category_probe(organism, prompts.STUDY_CATEGORIES, 5, 16, seed=7)
    weights = qk_head(organism, 1, 3, bias=True)
    spectrum = qk.symmetric_spectrum(weights)
    edits = {"own": weights, "flip": qk.edited_head(weights, spectrum, qk.most_negative(spectrum.values), -1.0)}
    units = qk_edits.in_context_edit_units(organism, probe, 1, edits, batch_size=2)
    assert units["own"]["self_mass"].shape == (5,)
    for i in range(5):
        alone = qk_edits.in_context_edits(organism, prompts.Probe(probe.tokens[i:i + 1], probe.mask[i:i + 1]), 1, edits)
        for key in edits:
            assert {m: float(v[i]) for m, v in units[key].items()} == pytest.approx(alone[key], abs=1e-6, nan_ok=True)
    assert qk_edits.in_context_edits(organism, probe, 1, edits) == {
        key: pytest.approx({m: float(v.nanmean()) for m, v in per.items()}) for key, per in units.items()}
    assert (units["flip"]["self_mass"] > units["own"]["self_mass"]).all()  # every prompt, not only on average


def test_in_context_edits_exact_on_a_uniform_head(organism):
    """Zero factors: every causal key gets 1 / (q + 1), so S = mean over rows of -log(marked keys / (q + 1))."""
    probe = prompts.category_probe(organism, prompts.STUDY_CATEGORIES, 4, 16, seed=2)
    tokens, mask = probe
    zero = torch.zeros(organism.cfg.d_model, organism.cfg.d_head)
    weights = qk_head(organism, 1, 3, bias=True)
    got = qk_edits.in_context_edits(organism, probe, 1, {"zero": QKHead(zero, zero, weights.scale), "own": weights},
                                    batch_size=3)
    q = torch.arange(tokens.shape[1], dtype=torch.float64)
    marked = (mask.double() * torch.ones(len(q), len(q), dtype=torch.float64).tril()).sum(-1)  # (B, T)
    expected = (-(marked / (q + 1)).log())[:, 1:].mean(-1).mean()  # rows after BOS, then prompts
    assert got["zero"]["surprisal"] == pytest.approx(float(expected), abs=1e-5)
    own = qk_edits.in_context_scores(organism, probe, 1, 3)  # the head's own weights: the model's own pattern
    assert got["own"] == pytest.approx(own, abs=1e-5)


def test_normalised_rank_and_trivial_accuracy_cutoffs():
    assert qk.normalised_rank(1.0, 168) == 0.0  # every token its own best key: 0, as the study's argsort positions
    assert qk.normalised_rank(85.0, 168) == pytest.approx(0.5)
    assert set(qk.trivial_accuracy_ks([1, 83, 84, 128, 1024], 168)) == {"84", "128", "1024"}
    assert qk.trivial_accuracy_ks([1, 128, 1024], 50257) == {}


def test_the_studys_edit_is_an_eigenvalue_edit_in_the_solvers_order():
    # d_model = d_head: every eigenpair is kept, so the study's factors rebuild W exactly; W diagonal: the solver
    # returns the eigenvalues in the diagonal's order, so "the first k" are known
    W_Q = torch.diag(torch.tensor([-3.0, 1.0, 2.0]))
    head = QKHead(W_Q, torch.eye(3), 1.0)
    U_Q, values, U_K = qk.study_eigen_factors(head)
    assert torch.allclose(values.real, torch.tensor([-3.0, 1.0, 2.0])) and torch.allclose((U_Q * values) @ U_K,
                                                                                          W_Q.to(U_Q.dtype))
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    ranks, imag = qk.study_edit_ranks(x, head, (1, 1.0), chunk_size=7)
    assert torch.equal(ranks, qk.self_ranks(x, head)) and imag == 0.0
    flipped = QKHead(torch.diag(torch.tensor([3.0, 1.0, 2.0])), torch.eye(3), 1.0)  # the first eigenvalue times -1
    ranks, _ = qk.study_edit_ranks(x, head, (1, -1.0), queries=torch.tensor([0, 5, 39]))
    assert torch.equal(ranks, qk.self_ranks(x, flipped)[[0, 5, 39]])
    assert not torch.equal(ranks, qk.self_ranks(x, head)[[0, 5, 39]])  # the edit moved something
