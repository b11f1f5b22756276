"""Results files: provenance recorded, and never left half-written."""

import json
import os

import pytest
import torch

from analysis import io


def test_results_carry_provenance(tmp_path):
    made = io.Provenance({"name": "organism", "weight_processing": {"fold_ln": True}}, {"seed": 3, "out": tmp_path}, 3)
    path = io.save_results(tmp_path, "organism", "demo", {"x": torch.tensor([1.5, 2.5])}, made)
    data = json.loads(path.read_text())
    assert path == tmp_path / "results" / "organism" / "demo.json"
    assert data["results"] == {"x": [1.5, 2.5]}
    prov = data["provenance"]
    assert prov["seed"] == 3 and prov["model"]["weight_processing"] == {"fold_ln": True}
    assert {"torch", "transformer-lens", "python"} <= set(prov["packages"])
    assert prov["git_commit"] and prov["utc_time"].endswith("+00:00")


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "r.json"
    io.write_json_atomic(path, {"ok": 1})
    with pytest.raises(TypeError):
        io.write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_interrupted_write_never_exposes_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "r.json"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        io.write_json_atomic(path, {"big": list(range(10_000))})
    assert list(tmp_path.iterdir()) == []


def test_nan_becomes_null(tmp_path):
    path = io.write_json_atomic(tmp_path / "n.json", {"v": float("nan"), "t": torch.tensor([float("inf"), 1.0])})
    assert json.loads(path.read_text()) == {"v": None, "t": [None, 1.0]}
