"""visualize_attention.py: an offline circuitsvis page and the static grid of a layer's heads."""

import json

import pytest
import torch

from analysis.plotting import attention_heads_html
from conftest import run_main


def test_attention_heads_html_is_standalone_and_offline():
    page = attention_heads_html(torch.ones(2, 3, 3).tril() / 3, ["a", "b", "c"], ["H0", "H1"], title="x < y")
    assert page.startswith("<!DOCTYPE html>") and "<title>x &lt; y</title>" in page
    assert "<script src" not in page and "unpkg.com" not in page  # the library is inlined, not fetched
    assert '"attentionHeadNames": ["H0", "H1"]' in page


@pytest.mark.e2e
def test_visualize_attention_script(tmp_path, capsys):
    run_main("visualize_attention", "--out", str(tmp_path))
    figures = tmp_path / "figures" / "organism"
    data = json.loads((tmp_path / "results" / "organism" / "visualize_attention.json").read_text())["results"]
    assert data["layers"] == [0, 1] and data["tokens"][0] == "<|endoftext|>"
    for layer in (0, 1):
        page = (figures / f"visualize_attention_L{layer}.html").read_text()
        assert "CircuitsVis" in page and "<script src" not in page
        assert (figures / f"visualize_attention_L{layer}.png").stat().st_size > 1000
    assert "offline" in capsys.readouterr().out


@pytest.mark.e2e
def test_visualize_attention_layer_out_of_range(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main("visualize_attention", "--out", str(tmp_path), "--layer", "5")
    assert exit_info.value.code == 2 and "layers 0-1" in capsys.readouterr().err
