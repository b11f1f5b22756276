"""The attention score of a head, and manual attention from raw weights against TransformerLens and Hugging Face."""

import json
import math

import pytest
import torch
from transformer_lens import FactoredMatrix
from transformer_lens.utilities import get_act_name
from transformer_lens.utilities import gelu_new as tl_gelu_new

from analysis import attention, hugging_face, manual_forward, prompts, vocab_input
from analysis.errors import UsageError
from analysis.models import WeightProcessing, load_model
from analysis.patterns import all_patterns
from conftest import run_main

TOL = 1e-5


def test_attention_scores_exact_and_their_variants_agree():
    x_q, x_k = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    W = torch.eye(2)
    plain = attention.QKHead(W, W, 2.0)
    assert torch.allclose(attention.attention_scores(x_q, x_k, plain), torch.tensor([[0.0, 0.5]]))  # (1,0).(1,1) / 2
    b = torch.tensor([0.0, 1.0])
    biased = attention.QKHead(W, W, 2.0, b, b)
    # (x_q + b) . (x_k + b) = [1, 1] . [0, 3] and [1, 1] . [1, 2]
    assert torch.allclose(attention.attention_scores(x_q, x_k, biased), torch.tensor([[3.0, 3.0]]) / 2)
    factored = attention.attention_score_matrix(x_q, x_k, biased)
    assert isinstance(factored, FactoredMatrix) and torch.allclose(factored.AB, torch.tensor([[3.0, 3.0]]) / 2)
    x = torch.cat([x_q, x_k])
    diagonal = attention.attention_scores(x, x, biased).diagonal()
    assert torch.allclose(attention.self_attention_scores(x, biased), diagonal)
    # leading axes broadcast: every head of a layer against a batch of residual streams
    g = torch.Generator().manual_seed(0)
    xs, b_Q = torch.randn(2, 5, 4, generator=g), torch.randn(3, 2, generator=g)
    W_Q, W_K = torch.randn(3, 4, 2, generator=g), torch.randn(3, 4, 2, generator=g)
    every_head = attention.QKHead(W_Q, W_K, 1.5, b_Q)  # W_Q, W_K: (nh, d_model, d_head)
    batched = attention.attention_scores(xs[:, None], xs[:, None], every_head)  # (B, nh, T, T)
    assert batched.shape == (2, 3, 5, 5)
    one_head = attention.QKHead(W_Q[2], W_K[2], 1.5, b_Q[2])
    assert torch.allclose(batched[1, 2], attention.attention_scores(xs[1], xs[1], one_head))


def test_head_scale_follows_the_config(organism):
    assert attention.head_scale(organism.cfg, 1) == math.sqrt(organism.cfg.d_head)
    cfg = organism.cfg.__class__(**{**organism.cfg.to_dict(), "scale_attn_by_inverse_layer_idx": True})
    assert attention.head_scale(cfg, 1) == 2 * math.sqrt(organism.cfg.d_head)


def test_attention_scores_match_the_model(organism):
    # The model's own attention logits on a two-token prompt whose inputs are the head inputs.
    layer, head = 1, 0
    reference = prompts.reference_prompts(organism, 0, n_prompts=16)
    x = vocab_input.head_input(organism, layer, reference, settings=vocab_input.InputSettings(use_cache=False))
    ids = torch.tensor([[7, 9]])
    stored = {}
    with torch.no_grad():
        organism.run_with_hooks(
            ids, stop_at_layer=layer + 1,
            fwd_hooks=[(get_act_name("normalized", layer, "ln1"), lambda act, hook: x[ids]),
                       (get_act_name("attn_scores", layer), lambda act, hook: stored.setdefault("s", act))])
    got = attention.attention_scores(x[ids[0]], x[ids[0]], attention.qk_head(organism, layer, head, bias=True))
    assert torch.allclose(got[1], stored["s"][0, head, 1], atol=1e-4)


def test_layer_norm_exact():
    x = torch.tensor([[1.0, 3.0]])  # mean 2, variance 1
    assert torch.allclose(manual_forward.layer_norm(x, None, None, 0.0), torch.tensor([[-1.0, 1.0]]))
    w, b = torch.tensor([2.0, 3.0]), torch.tensor([0.5, -0.5])
    assert torch.allclose(manual_forward.layer_norm(x, w, b, 0.0), torch.tensor([[-1.5, 2.5]]))


def test_gelu_new_matches_transformer_lens_and_known_values():
    x = torch.linspace(-4, 4, 101)
    assert torch.allclose(manual_forward.gelu_new(x), tl_gelu_new(x), atol=1e-7)
    assert manual_forward.gelu_new(torch.tensor(0.0)).item() == 0.0


def test_causal_softmax_of_equal_scores_is_uniform_over_the_past():
    pattern = manual_forward.causal_softmax(torch.zeros(1, 1, 4, 4))[0, 0]
    expected = torch.ones(4, 4).tril() / torch.arange(1, 5)[:, None]
    assert torch.allclose(pattern, expected)


def test_attention_from_residual_hand_built():
    # one head, d_model = d_head = 1: score(q, k) = x_q * x_k / scale
    x = torch.tensor([[[1.0], [0.0], [2.0]]])  # (B=1, T=3, C=1)
    one, zero = torch.ones(1, 1, 1), torch.zeros(1, 1)
    pattern = manual_forward.attention_from_residual(x, attention.QKHead(one, one, 1.0, zero, zero))[0, 0]
    row2 = torch.tensor([2.0, 0.0, 4.0]).softmax(-1)  # x_2 * (1, 0, 2)
    assert torch.allclose(pattern[2], row2) and torch.allclose(pattern[1], torch.tensor([0.5, 0.5, 0.0]))
    assert pattern[0, 0] == 1.0


@pytest.fixture(scope="module")
def organism_raw():
    return load_model("organism", processing=WeightProcessing.none())


@pytest.fixture(scope="module")
def organism_tokens(organism_raw):
    text = organism_raw.to_tokens("The cat sat on the mat. The cat sat on the mat")
    g = torch.Generator().manual_seed(0)
    random = torch.randint(2, organism_raw.cfg.d_vocab, (3, text.shape[1]), generator=g)
    random[:, 0] = 0
    return torch.cat([text.cpu(), random])


def test_manual_matches_transformer_lens_on_the_organism(organism_raw, organism, organism_tokens):
    manual = manual_forward.manual_patterns(organism_raw, organism_tokens)
    assert manual.shape == (4, 2, 4, 14, 14)
    assert manual_forward.max_abs_difference(manual, all_patterns(organism_raw, organism_tokens)).max() <= TOL
    # TransformerLens's default processing (fold_ln, centring) leaves the patterns as they are,
    # and the manual pass handles folded LayerNorm (LNPre) too.
    assert manual_forward.max_abs_difference(manual, all_patterns(organism, organism_tokens)).max() <= TOL
    assert manual_forward.max_abs_difference(manual_forward.manual_patterns(organism, organism_tokens),
                                        all_patterns(organism, organism_tokens)).max() <= TOL


def test_manual_matches_hugging_face_on_the_organism(organism_raw, organism_tokens):
    hf = hugging_face.hf_gpt2_from_tl(organism_raw)
    manual = manual_forward.manual_patterns(organism_raw, organism_tokens)
    assert manual_forward.max_abs_difference(manual, hugging_face.hf_patterns(hf, organism_tokens)).max() <= TOL
    # the whole network came across, not just attention: logits agree up to TransformerLens's b_U
    logits = organism_raw(organism_tokens) - organism_raw.b_U
    assert torch.allclose(hf(organism_tokens).logits, logits, atol=1e-4)


def test_a_wrong_scale_is_detected(organism_raw, organism_tokens):
    """The comparison can fail: a manual pass without 1/sqrt(d_head) is far off."""
    organism_raw.cfg.attn_scale, scale = 1.0, organism_raw.cfg.attn_scale
    try:
        wrong = manual_forward.manual_patterns(organism_raw, organism_tokens)
    finally:
        organism_raw.cfg.attn_scale = scale
    assert manual_forward.max_abs_difference(wrong, all_patterns(organism_raw, organism_tokens)).max() > 0.1


@pytest.fixture(scope="module")
def random_gpt2_pair():
    """A Hugging Face GPT-2 with GPT-2 small's widths and vocabulary (2 layers), random weights, in both libraries."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    # initializer_range 0.05 gives sharp, far-from-uniform patterns; random LayerNorm weights test w and b.
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, initializer_range=0.05, attn_implementation="eager")).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if ".ln_" in name:
                p.add_(0.2 * torch.randn_like(p))
    return hf, hugging_face.tl_from_hf_gpt2(hf)


def test_manual_matches_both_libraries_on_a_random_gpt2_shaped_model(random_gpt2_pair):
    hf, tl = random_gpt2_pair
    assert (tl.cfg.d_model, tl.cfg.n_heads, tl.cfg.d_vocab) == (768, 12, 50257)
    tokens = torch.randint(0, 50257, (2, 40), generator=torch.Generator().manual_seed(1))
    manual = manual_forward.manual_patterns(tl, tokens)
    assert manual[..., 5:, :].amax(-1).mean() > 0.2  # not near-uniform, so the check has teeth
    assert manual_forward.max_abs_difference(manual, all_patterns(tl, tokens)).max() <= TOL
    assert manual_forward.max_abs_difference(manual, hugging_face.hf_patterns(hf, tokens)).max() <= TOL


def test_unsupported_architectures_are_clear_errors(organism):
    with pytest.raises(hugging_face.GPT2Incompatible, match="LayerNorm is 'LNPre'"):
        hugging_face.hf_gpt2_from_tl(organism)  # processed: LN weights folded away
    adjacent = load_model("organism-llama", processing=WeightProcessing.none())
    adjacent.cfg.rotary_adjacent_pairs = True  # GPT-J's pairs: not implemented, named
    with pytest.raises(UsageError, match="adjacent rotary pairs"):
        manual_forward.manual_patterns(adjacent, torch.zeros(1, 3, dtype=torch.long))
    alibi = load_model("organism", processing=WeightProcessing.none())
    alibi.cfg.positional_embedding_type = "alibi"
    with pytest.raises(UsageError, match="positional embeddings 'alibi'"):
        manual_forward.check_manual_support(alibi)


ROTARY_ORGANISMS = ("organism-llama", "organism-neox")


@pytest.fixture(scope="module", params=ROTARY_ORGANISMS)
def rotary_pair(request):
    """(raw, processed, tokens) of a rotary organism: unprocessed weights, TransformerLens's default processing,
    and prompts of random tokens after BOS, long enough that the rotary angles spread."""
    raw = load_model(request.param, processing=WeightProcessing.none())
    tokens = torch.randint(2, raw.cfg.d_vocab, (3, 40), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = prompts.bos_token_id(raw)
    return raw, load_model(request.param), tokens


def test_manual_matches_transformer_lens_on_the_rotary_organisms(rotary_pair):
    raw, processed, tokens = rotary_pair
    assert raw.cfg.positional_embedding_type == "rotary"
    manual = manual_forward.manual_patterns(raw, tokens)
    assert manual[..., 5:, :].amax(-1).mean() > 0.2  # not near-uniform
    assert manual_forward.max_abs_difference(manual, all_patterns(raw, tokens)).max() <= TOL
    assert manual_forward.max_abs_difference(manual, all_patterns(processed, tokens)).max() <= TOL
    assert manual_forward.max_abs_difference(manual_forward.manual_patterns(processed, tokens),
                                             all_patterns(processed, tokens)).max() <= TOL


def test_every_architecture_feature_matters(rotary_pair):
    """The check can fail: dropping rotary, the key/value grouping or the block order each moves the patterns."""
    raw, _, tokens = rotary_pair
    reference = all_patterns(raw, tokens)
    cfg = raw.cfg
    wrong = {"positional_embedding_type": "none"}
    if cfg.rotary_dim < cfg.d_head:
        wrong["rotary_dim"] = cfg.d_head  # partial rotary read as full
    if cfg.parallel_attn_mlp:
        wrong["parallel_attn_mlp"] = False
    if cfg.normalization_type == "RMS":
        wrong["normalization_type"] = "LN"
    for field, value in wrong.items():
        kept = getattr(cfg, field)
        setattr(cfg, field, value)
        try:
            if field == "positional_embedding_type":
                cfg.positional_embedding_type = "shortformer"  # refused: never silently absolute
                with pytest.raises(UsageError):
                    manual_forward.manual_patterns(raw, tokens)
                continue
            off = manual_forward.manual_patterns(raw, tokens)
        finally:
            setattr(cfg, field, kept)
        assert manual_forward.max_abs_difference(off, reference).max() > 1e-3, field


def test_grouped_query_heads_share_their_key_head():
    raw = load_model("organism-llama", processing=WeightProcessing.none())
    n_kv = raw.cfg.n_key_value_heads
    assert n_kv is not None and n_kv < raw.cfg.n_heads
    state = {k: v.detach().float() for k, v in raw.state_dict().items()}
    W_K = manual_forward.kv_weight(state, "blocks.0.attn", "W_K", raw.cfg.n_heads)
    group = raw.cfg.n_heads // n_kv
    for head in range(raw.cfg.n_heads):  # query head h reads key head h // group, as TransformerLens repeats it
        assert torch.equal(W_K[head], state["blocks.0.attn._W_K"][head // group])
        assert torch.equal(W_K[head], raw.W_K[0, head].float())


def test_rms_norm_exact():
    x = torch.tensor([[3.0, 4.0]])  # mean square 12.5
    assert torch.allclose(manual_forward.rms_norm(x, None, 0.0), x / 12.5 ** 0.5)
    assert torch.allclose(manual_forward.rms_norm(x, torch.tensor([2.0, 0.0]), 0.0),
                          torch.tensor([[6.0 / 12.5 ** 0.5, 0.0]]))


@pytest.mark.parametrize("name, implementation", [("organism-llama", "LlamaForCausalLM"),
                                                  ("organism-neox", "GPTNeoXForCausalLM")])
def test_manual_matches_hugging_face_on_the_rotary_organisms(name, implementation):
    raw = load_model(name, processing=WeightProcessing.none())
    tokens = torch.randint(2, raw.cfg.d_vocab, (3, 40), generator=torch.Generator().manual_seed(2))
    tokens[:, 0] = prompts.bos_token_id(raw)
    family, hf = hugging_face.hugging_face_model(raw)
    assert type(hf).__name__ == implementation
    manual = manual_forward.manual_patterns(raw, tokens)
    assert manual_forward.max_abs_difference(manual, hugging_face.hf_patterns(hf, tokens)).max() <= TOL
    # the whole network came across: logits agree up to TransformerLens's b_U
    assert torch.allclose(hf(tokens).logits, raw(tokens) - raw.b_U, atol=1e-4)
    with pytest.raises(hugging_face.HFIncompatible, match="load it unprocessed"):
        hugging_face.hugging_face_model(load_model(name))  # processed: norm weights folded away


def test_a_gated_bias_after_the_product_has_no_hugging_face_llama():
    raw = load_model("organism-llama", processing=WeightProcessing.none())
    with torch.no_grad():
        raw.blocks[0].mlp.b_in.fill_(0.5)
    assert any("inside the product" in r for r in hugging_face.llama_reasons(raw))
    with pytest.raises(hugging_face.HFIncompatible, match="inside the product"):
        hugging_face.hf_llama_from_tl(raw)


@pytest.mark.e2e
def test_manual_attention_script(tmp_path, capsys, truth):
    run_main("manual_attention", "--out", str(tmp_path), "--n-random", "2", "--length", "16")
    data = json.loads((tmp_path / "results" / "organism" / "manual_attention.json").read_text())["results"]
    assert set(data["within_tolerance"]) == {"vs_transformer_lens", "vs_hugging_face", "vs_processed_transformer_lens"}
    assert all(data["within_tolerance"].values())
    assert max(data["overall_max"].values()) <= TOL
    assert math.isfinite(data["overall_max"]["vs_hugging_face"])
    assert data["hugging_face"] == {"compared": True, "implementation": "GPT2LMHeadModel", "family": "GPT-2"}
    for name in ("manual_attention", "manual_attention_diff"):
        assert (tmp_path / "figures" / "organism" / f"{name}.png").stat().st_size > 1000
    assert "max |diff|" in capsys.readouterr().out
    layer, head = truth["planted_heads"]["previous_token"]
    assert data["plotted_head"] == {"layer": layer, "head": head}  # the sharpest head on the repeated sentence


@pytest.mark.e2e
@pytest.mark.parametrize("name, implementation", [("organism-llama", "LlamaForCausalLM"),
                                                  ("organism-neox", "GPTNeoXForCausalLM")])
def test_manual_attention_script_on_rotary_organisms(tmp_path, name, implementation):
    run_main("manual_attention", "--model", name, "--out", str(tmp_path), "--n-random", "2", "--length", "24")
    data = json.loads((tmp_path / "results" / name / "manual_attention.json").read_text())["results"]
    assert data["hugging_face"]["implementation"] == implementation and data["hugging_face_skipped"] is None
    assert data["all_within_tolerance"] and max(data["overall_max"].values()) <= TOL
