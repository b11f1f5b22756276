"""Logit lens and head-level activation patching: exact small cases, and the organism's induction circuit."""

import json

import pytest
import torch

from analysis import patching
from analysis.errors import UsageError
from analysis.scan import ScanSettings, scan_heads, top_heads
from conftest import run_main


def test_logit_difference_and_recovered_fraction_exact():
    logits = torch.zeros(2, 3, 5)
    logits[0, -1, 1], logits[0, -1, 2] = 3.0, 1.0
    logits[1, -1, 4] = -2.0
    assert patching.logit_difference(logits, torch.tensor([1, 4]), torch.tensor([2, 0])).tolist() == [2.0, -2.0]
    assert patching.recovered_fraction(torch.tensor(1.0), clean=3.0, corrupted=-1.0).item() == 0.5
    assert patching.recovered_fraction(torch.tensor(3.0), clean=3.0, corrupted=-1.0).item() == 1.0


def test_next_token_log_probs_exact():
    log_probs = torch.log(torch.tensor([[[[0.1, 0.9], [0.6, 0.4], [0.5, 0.5]]]]))  # (D=1, B=1, T=3, V=2)
    tokens = torch.tensor([[0, 1, 0]])
    assert torch.allclose(patching.next_token_log_probs(log_probs, tokens).exp(), torch.tensor([[[0.9, 0.6]]]))


def test_logit_lens_last_depth_is_the_model_output(organism):
    tokens = organism.to_tokens("The cat sat on the mat. The cat sat on the mat")
    log_probs, labels = patching.logit_lens(organism, tokens)
    assert log_probs.shape == (organism.cfg.n_layers + 1, 1, tokens.shape[1], organism.cfg.d_vocab)
    assert labels[-1] == "final_post" and len(labels) == organism.cfg.n_layers + 1
    assert torch.allclose(log_probs[-1], organism(tokens).log_softmax(-1), atol=1e-4)
    assert not torch.allclose(log_probs[0], log_probs[-1], atol=1e-2)  # the embeddings alone predict otherwise


def test_patching_recovers_the_answer_through_the_induction_heads(organism):
    """The heads whose output restores " box" are the scan's two induction heads (found unaided)."""
    clean = organism.to_tokens("The old man saw a box on the hill. The old man saw a")
    corrupted = organism.to_tokens("The old man saw a tree on the hill. The old man saw a")
    answer, wrong = torch.tensor([organism.to_single_token(" box")]), torch.tensor([organism.to_single_token(" tree")])
    out = patching.head_patching(organism, patching.TokenPair(clean, corrupted, answer, wrong))
    assert out["clean_logit_diff"] > 1 and out["corrupted_logit_diff"] < -1
    scan = scan_heads(organism, ScanSettings(n_random=4, n_repeated=4, repeat_lengths=(50,)), seed=2, categories=None)
    induction = {h[:2] for h in top_heads(scan.induction[50], 2)}
    patched = {h[:2] for h in top_heads(out["recovered"], 2)}
    assert patched == induction
    assert out["recovered"][tuple(zip(*induction))].sum() > 0.8  # together they carry most of the answer


@pytest.mark.parametrize("batch_size", [64, 3])
def test_batched_patching_equals_one_pass_per_head(organism, batch_size):
    """Many heads per pass, each pass from the patched layer on, gives TransformerLens's per-head result."""
    from transformer_lens.patching import get_act_patch_attn_head_out_all_pos

    texts = [("The old man saw a box on the hill. The old man saw a", " box"),
             ("The old man saw a cat on the hill. The old man saw a", " cat")]
    corrupted_texts = [("The old man saw a tree on the hill. The old man saw a", " tree"),
                       ("The old man saw a dog on the hill. The old man saw a", " dog")]
    clean = torch.cat([organism.to_tokens(t) for t, _ in texts])  # (2, pos): a batch of pairs
    corrupted = torch.cat([organism.to_tokens(t) for t, _ in corrupted_texts])
    answer = torch.tensor([organism.to_single_token(a) for _, a in texts])
    wrong = torch.tensor([organism.to_single_token(w) for _, w in corrupted_texts])
    out = patching.head_patching(organism, patching.TokenPair(clean, corrupted, answer, wrong), batch_size=batch_size)

    _, clean_cache = organism.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_z"))
    metric = lambda logits: patching.recovered_fraction(  # noqa: E731
        patching.logit_difference(logits, answer, wrong).mean(), out["clean_logit_diff"], out["corrupted_logit_diff"])
    with torch.no_grad():
        per_head = get_act_patch_attn_head_out_all_pos(organism, corrupted, clean_cache, metric)
    assert out["recovered"].shape == per_head.shape == (organism.cfg.n_layers, organism.cfg.n_heads)
    assert torch.allclose(out["recovered"], per_head.float(), atol=1e-5)
    assert out["recovered"].abs().max() > 0.2  # not a trivial agreement of zeros


def test_default_task_is_what_the_model_does(organism):
    """The organism's tokenizer can spell the IOI pair, but the organism does not solve it: induction."""
    task, why = patching.choose_task(organism)
    assert task == "induction" and "solves induction" in why
    clean, corrupted, _, _ = patching.encode_pair(organism, patching.TASKS["ioi"])  # encodable, so it was tried
    assert clean.shape == corrupted.shape


def test_patching_needs_prompts_of_one_length(organism):
    a, b = organism.to_tokens(" red blue"), organism.to_tokens(" red blue green")
    with pytest.raises(UsageError, match="same number of tokens"):
        patching.head_patching(organism, patching.TokenPair(a, b, torch.tensor([2]), torch.tensor([3])))


@pytest.mark.e2e
def test_activation_patching_script(tmp_path, capsys, truth):
    run_main("activation_patching", "--out", str(tmp_path))
    data = json.loads((tmp_path / "results" / "organism" / "activation_patching.json").read_text())["results"]
    assert data["task"] == "induction" and data["task_chosen_by"].startswith("auto: the model solves induction")
    assert truth["planted_heads"]["induction"] in [[h["layer"], h["head"]] for h in data["top_heads"][:2]]
    assert (tmp_path / "figures" / "organism" / "activation_patching.png").stat().st_size > 1000
    assert "recovered by patching one head" in capsys.readouterr().out


@pytest.mark.e2e
def test_activation_patching_custom_pair_needs_all_four(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main("activation_patching", "--out", str(tmp_path), "--clean", "The cat")
    assert exit_info.value.code == 2 and "all four" in capsys.readouterr().err


@pytest.mark.e2e
def test_activation_patching_task_flag_and_custom_pair(tmp_path, capsys):
    run_main("activation_patching", "--out", str(tmp_path), "--task", "ioi")
    data = json.loads((tmp_path / "results" / "organism" / "activation_patching.json").read_text())["results"]
    assert data["task"] == "ioi" and data["task_chosen_by"] == "--task ioi" and data["answer"] == " Mary"
    run_main("activation_patching", "--out", str(tmp_path), "--clean", "The old man saw a box on the hill. "
             "The old man saw a", "--corrupted", "The old man saw a cat on the hill. The old man saw a",
             "--answer", " box", "--wrong", " cat")
    data = json.loads((tmp_path / "results" / "organism" / "activation_patching.json").read_text())["results"]
    assert data["task"] == "custom" and data["wrong"] == " cat" and data["clean_logit_diff"] > 0
    with pytest.raises(SystemExit) as exit_info:
        run_main("activation_patching", "--out", str(tmp_path), "--task", "ioi", "--clean", "The old man saw a box",
                 "--corrupted", "The old man saw a cat", "--answer", " box", "--wrong", " cat")
    assert exit_info.value.code == 2 and "not both" in capsys.readouterr().err


@pytest.mark.e2e
def test_logit_lens_script(tmp_path, capsys):
    run_main("logit_lens", "--out", str(tmp_path), "--top", "3")
    data = json.loads((tmp_path / "results" / "organism" / "logit_lens.json").read_text())["results"]
    assert data["depths"][-1] == "final_post" and len(data["lens"][0]) == len(data["tokens"])
    assert len(data["lens"][-1][0]["top"]) == 3
    assert len(data["p_next_token"][-1]) == len(data["tokens"]) - 1
    # the second " cat" is predictable from the first copy: the final layer gets it, the embeddings do not
    second_the = len(data["tokens"]) - 6  # position of the second " The"
    assert data["p_next_token"][-1][second_the] > data["p_next_token"][0][second_the]
    assert (tmp_path / "figures" / "organism" / "logit_lens.png").stat().st_size > 1000
    assert "->" in capsys.readouterr().out
