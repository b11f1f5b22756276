"""Attention statistics on hand-built patterns with exact answers, and the script on the organism."""

import json
import math

import pytest
import torch

from analysis import attention_stats as stats
from analysis.scores import scored_rows
from conftest import run_main


def hand_built():
    """Two heads on 3 tokens: head 0 attends to the previous token, head 1 uniformly over the past."""
    previous = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    uniform = torch.ones(3, 3).tril() / torch.arange(1, 4)[:, None]
    return torch.stack([previous, uniform])[None], scored_rows(torch.zeros(1, 3))  # rows 1 and 2


def test_entropy_exact():
    pattern, rows = hand_built()
    h = stats.entropy(pattern, rows)[0]
    assert h[0].item() == 0.0
    assert math.isclose(h[1].item(), (math.log(2) + math.log(3)) / 2, rel_tol=1e-6)


def test_max_attention_distance_and_bos_mass_exact():
    pattern, rows = hand_built()
    assert torch.allclose(stats.max_attention(pattern, rows)[0], torch.tensor([1.0, (1 / 2 + 1 / 3) / 2]))
    # previous-token head: 1 token back on both rows; uniform: row 1 (1/2)*1, row 2 (1/3)(2 + 1)
    assert torch.allclose(stats.mean_distance(pattern, rows)[0], torch.tensor([1.0, (0.5 + 1.0) / 2]))
    assert torch.allclose(stats.bos_mass(pattern, rows)[0], torch.tensor([0.5, (1 / 2 + 1 / 3) / 2]))


def test_attention_statistics_holds_every_statistic():
    pattern, rows = hand_built()
    out = stats.attention_statistics(pattern, rows)
    assert set(out) == set(stats.STATISTICS) and all(v.shape == (1, 2) for v in out.values())


@pytest.mark.e2e
def test_attention_stats_script(tmp_path, capsys, truth):
    run_main("attention_stats", "--out", str(tmp_path), "--n-prompts", "4", "--length", "24")
    data = json.loads((tmp_path / "results" / "organism" / "attention_stats.json").read_text())["results"]
    assert set(data["per_prompt_set"]) == {"random", "repeated", "category"}
    focused = data["rankings"]["most_focused"][0]
    assert [focused["layer"], focused["head"]] == truth["planted_heads"]["previous_token"]  # entropy ~ 0
    assert focused["value"] < 0.05
    assert data["rankings"]["most_diffuse"][0]["value"] > 1.0
    assert (tmp_path / "figures" / "organism" / "attention_stats.png").stat().st_size > 1000
    assert "longest range" in capsys.readouterr().out


@pytest.mark.e2e
def test_attention_stats_text_file(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("The cat sat on the mat.\nWhen John and Mary went to the store, John gave a drink to\n")
    run_main("attention_stats", "--out", str(tmp_path), "--text", str(text))
    data = json.loads((tmp_path / "results" / "organism" / "attention_stats.json").read_text())["results"]
    assert list(data["per_prompt_set"]) == ["text"]
