"""The vocabulary-level head input, cross-checked against TransformerLens forward passes."""

from pathlib import Path

import pytest
import torch
from transformer_lens.utilities import get_act_name

from analysis import prompts, vocab_input

NO_CACHE = vocab_input.InputSettings(use_cache=False)


@pytest.fixture(scope="module")
def reference(organism):
    return prompts.reference_prompts(organism, seed=0, n_prompts=16)


def forward_input(model, layer, c_pos, c_attn):
    """LN1 output of `layer` for every token, from a forward pass whose positional embedding and
    earlier attention outputs are overwritten by constants: what head_input computes in closed form."""
    d_vocab = model.cfg.d_vocab
    n = -(-d_vocab // 8) * 8  # rows of 8 (any shape: positions no longer matter), the last one wrapping round
    tokens = (torch.arange(n) % d_vocab).reshape(-1, 8)
    hooks = [(get_act_name("pos_embed"), lambda act, hook: c_pos.expand_as(act).clone())]
    hooks += [(get_act_name("attn_out", l), lambda act, hook, c=c: c.expand_as(act).clone()) for l, c in enumerate(c_attn)]
    stored = {}
    hooks.append((get_act_name("normalized", layer, "ln1"), lambda act, hook: stored.setdefault("x", act)))
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=layer + 1)
    return stored["x"].reshape(n, -1)[:d_vocab]


def test_mean_variant_matches_a_forward_pass(organism, reference):
    c_pos, c_attn = vocab_input.reference_means(organism, 1, reference)
    expected = forward_input(organism, 1, c_pos, c_attn)
    got = vocab_input.head_input(organism, 1, reference, "mean", settings=NO_CACHE)
    assert torch.allclose(got, expected, atol=1e-5)


def test_zero_variant_matches_a_forward_pass_and_differs_from_mean(organism, reference):
    zero = torch.zeros(organism.cfg.d_model)
    expected = forward_input(organism, 1, zero, [zero])
    got = vocab_input.head_input(organism, 1, variant="zero", settings=NO_CACHE)
    assert torch.allclose(got, expected, atol=1e-5)
    mean = vocab_input.head_input(organism, 1, reference, "mean", settings=NO_CACHE)
    assert (got - mean).norm(dim=-1).min() > 1e-3


def test_reference_means_average_positions_after_bos(organism, reference):
    c_pos, _ = vocab_input.reference_means(organism, 1, reference)
    assert torch.allclose(c_pos, organism.W_pos[1:reference.shape[1]].mean(0), atol=1e-6)


def test_chunks_and_token_subsets_do_not_change_the_result(organism, reference):
    full = vocab_input.head_input(organism, 1, reference, settings=NO_CACHE)
    chunked = vocab_input.head_input(organism, 1, reference, settings=vocab_input.InputSettings(7, use_cache=False))
    ids = torch.tensor([5, 3, 100])
    subset = vocab_input.head_input(organism, 1, reference, token_ids=ids, settings=NO_CACHE)
    assert torch.allclose(full, chunked, atol=1e-6) and torch.allclose(full[ids], subset, atol=1e-6)


def test_cache_round_trip(organism, reference, tmp_path, monkeypatch):
    monkeypatch.setattr(vocab_input, "CACHE_DIR", tmp_path)
    first = vocab_input.head_input(organism, 1, reference)
    files = list(tmp_path.rglob("*.pt"))
    assert len(files) == 1
    torch.save(torch.zeros_like(first), files[0])  # a cache hit returns the file, not a recomputation
    assert vocab_input.head_input(organism, 1, reference).abs().sum() == 0
    other_seed = prompts.reference_prompts(organism, seed=1, n_prompts=16)
    assert vocab_input.head_input(organism, 1, other_seed).abs().sum() > 0  # different reference, new entry
    assert len(list(tmp_path.rglob("*.pt"))) == 2


def test_cache_key_covers_every_weight_the_input_reads(organism, reference, tmp_path, monkeypatch):
    """Layer 0's W_V (attention, not an MLP matrix) and MLP0's bias change the mean input: new cache entries."""
    import copy

    monkeypatch.setattr(vocab_input, "CACHE_DIR", tmp_path)
    cached = vocab_input.head_input(organism, 1, reference)
    calls = []
    original = vocab_input.reference_means
    monkeypatch.setattr(vocab_input, "reference_means", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert torch.equal(vocab_input.head_input(copy.deepcopy(organism), 1, reference), cached)
    assert calls == []  # same weights (another object): a cache hit, nothing recomputed

    edited = copy.deepcopy(organism)
    with torch.no_grad():
        edited.blocks[0].attn.W_V[0] *= 3.0
    fresh = vocab_input.head_input(edited, 1, reference)
    assert calls == [1]  # recomputed, not read back
    assert torch.allclose(fresh, vocab_input.head_input(edited, 1, reference, settings=NO_CACHE), atol=1e-6)
    assert (fresh - cached).norm(dim=-1).max() > 1e-3  # the stale entry would have been wrong
    calls.clear()

    with torch.no_grad():
        edited.blocks[0].mlp.b_in += 0.5
    assert not torch.equal(vocab_input.head_input(edited, 1, reference), fresh) and calls == [1]
    with torch.no_grad():
        edited.blocks[1].attn.W_V[0] *= 3.0  # the target layer's own attention is not an input: still a hit
    vocab_input.head_input(edited, 1, reference)
    assert calls == [1] and len(list(tmp_path.rglob("*.pt"))) == 3
    assert [f.suffix for f in tmp_path.rglob("*") if f.is_file()] == [".pt"] * 3  # no temporary left over


def test_default_cache_directory_is_outside_the_checkout(monkeypatch, tmp_path):
    from analysis.io import REPO_ROOT

    monkeypatch.delenv("ANALYSIS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert vocab_input.default_cache_dir() == tmp_path / vocab_input.PROJECT
    monkeypatch.delenv("XDG_CACHE_HOME")
    default = vocab_input.default_cache_dir()
    assert default.parent == Path.home() / ".cache" and REPO_ROOT not in default.parents
    monkeypatch.setenv("ANALYSIS_CACHE_DIR", str(tmp_path / "mine"))
    assert vocab_input.default_cache_dir() == tmp_path / "mine"


def study_forward_input(model, layer):
    """The study's own hooks (its get_vocab_attn1_input, generalised to `layer`): every token id as one prompt
    without BOS, the positional embedding replaced by its mean over n_ctx positions, each earlier attention's input
    cut to n_ctx positions and its output replaced by its mean over them; LN1 of `layer` read for every token."""
    n_ctx = model.cfg.n_ctx
    stored = {}
    hooks = [(get_act_name("pos_embed"), lambda act, hook: model.W_pos[:n_ctx].mean(0).expand_as(act).clone()),
             (get_act_name("normalized", layer, "ln1"), lambda act, hook: stored.setdefault("x", act))]
    for l in range(layer):
        hooks.append((get_act_name("normalized", l, "ln1"), lambda act, hook: act[:, :n_ctx]))
        hooks.append((get_act_name("attn_out", l), lambda act, hook: act.mean((0, 1)).expand(1, 1, -1)))
    tokens = torch.arange(model.cfg.d_vocab)[None]  # longer than n_ctx: only attention sees a cut sequence
    pos = model.pos_embed.W_pos
    with torch.no_grad():
        padded = torch.cat([pos, pos.new_zeros(model.cfg.d_vocab - n_ctx, pos.shape[1])])
        model.pos_embed.W_pos = torch.nn.Parameter(padded)  # room for every id; the hook replaces it anyway
        try:
            model.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=layer + 1)
        finally:
            model.pos_embed.W_pos = pos
    return stored["x"][0]


def test_study_variant_is_the_studys_construction(organism):
    assert organism.cfg.d_vocab > organism.cfg.n_ctx  # the cut to n_ctx positions matters here, as on GPT-2
    expected = study_forward_input(organism, 1)
    got = vocab_input.head_input(organism, 1, variant="study", settings=NO_CACHE)
    assert torch.allclose(got, expected, atol=1e-5)
    c_pos, (c_attn,) = vocab_input.study_means(organism, 1)
    assert torch.allclose(c_pos, organism.W_pos.mean(0), atol=1e-6)
    reference = prompts.reference_prompts(organism, seed=0, n_prompts=16)
    assert (c_attn - vocab_input.reference_means(organism, 1, reference)[1][0]).norm() > 1e-3  # not our mean view


def test_a_model_without_positional_embeddings_has_no_positional_term():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=12, d_head=4, n_heads=4, d_vocab=20, act_fn="gelu",
                                  positional_embedding_type="rotary", seed=0)
    model = HookedTransformer(cfg)
    reference = prompts.reference_prompts(model, seed=0, n_prompts=4)  # no tokenizer: random tokens
    for means in (vocab_input.reference_means(model, 1, reference), vocab_input.study_means(model, 1)):
        c_pos, c_attn = means
        assert torch.equal(c_pos, torch.zeros(16)) and len(c_attn) == 1 and c_attn[0].abs().sum() > 0
    x = vocab_input.head_input(model, 1, variant="study", settings=NO_CACHE)
    c_attn = vocab_input.study_means(model, 1)[1][0]
    block = model.blocks[0]
    resid = model.W_E + c_attn
    expected = model.blocks[1].ln1((resid + block.mlp(block.ln2(resid[:, None]))[:, 0])[:, None])[:, 0]
    assert torch.allclose(x, expected.detach(), atol=1e-5)
