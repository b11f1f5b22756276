"""The shipped organism has the planted heads, and the head scan finds them without being told."""

import json

import pytest

from analysis import ablation, prompts
from analysis.models import load_model
from analysis.organism.files import ORGANISM_DIR, ground_truth, shipped_organisms
from analysis.organism.report import THRESHOLDS, planted_head_report, thresholds_met
from analysis.scan import scan_heads, top_heads
from conftest import run_script


def test_checkpoint_is_small_and_complete():
    files = {p.name for p in ORGANISM_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "ground_truth.json"} <= files
    assert (ORGANISM_DIR / "model.safetensors").stat().st_size < 10 * 2**20


def test_semantic_head_reads_through_mlp0(organism, truth):
    """The planted semantic head reads the words through MLP0, measured on category prompts by the ablations of
    analysis.ablation (per-prompt S, nats). Mean-ablating MLP0's output (its word-dependent part replaced by its
    mean) costs the head far more than mean-ablating any other component before it, on every prompt; and MLP0's
    output alone as block 0's output keeps the head working better, prompt by prompt, than everything else without
    MLP0 (MLP0 zero-ablated). A head that read the words from the embeddings directly would fail both."""
    layer, head = truth["planted_heads"]["semantic"]
    probe = prompts.category_probe(organism, truth["categories"], 16, 32, seed=0)
    study = ablation.ablation_study(organism, probe, layer, head)  # {mode: {condition: S per prompt}}
    mean, zero = study["mean"], study["zero"]
    assert float(mean["baseline"].median()) < 0.1
    worst_other = max(float(mean[c].max()) for c in ablation.COMPONENTS if c != "mlp_0")
    assert float(mean["mlp_0"].min()) > 2 * worst_other
    mlp_only, without_mlp = mean[ablation.MLP_ONLY_RESIDUAL], zero["mlp_0"]
    assert bool((mlp_only < without_mlp).all())
    assert float(without_mlp.median()) > 2 * float(mlp_only.median())  # measured: 1.15 against 0.39


@pytest.mark.parametrize("seed", [11, 12])
def test_planted_heads_meet_every_threshold(organism, truth, seed):
    report = planted_head_report(organism, truth["planted_heads"], seed=seed)
    failed = {k: (report[k], THRESHOLDS[k]) for k, ok in thresholds_met(report).items() if not ok}
    assert not failed, f"thresholds missed: {failed}"


def test_scan_ranks_the_planted_heads_first(organism, truth):
    scan = scan_heads(organism, seed=5)
    planted = {k: tuple(v) for k, v in truth["planted_heads"].items()}
    assert top_heads(scan.previous_token, 1)[0][:2] == planted["previous_token"]
    for length, score in scan.induction.items():
        assert top_heads(score, 1)[0][:2] == planted["induction"], f"induction at |r| = {length}"
    surprisal = scan.semantic["surprisal"].nanmean(0)
    assert top_heads(surprisal, 1, largest=False)[0][:2] == planted["semantic"]


@pytest.mark.parametrize("name", [n for n in shipped_organisms() if n != "organism"])
def test_every_shipped_organism_has_its_planted_heads_where_its_ground_truth_says(name):
    """The other seeds (heads at places drawn from their seeds), the negative control and the other families: the
    scan, told nothing, ranks each planted previous-token and semantic head first of its kind and the planted
    induction head first at one repeat length at least (the NeoX-style organism grew a second induction head,
    L1H1, that scores above the planted one at |r| = 50: 0.87 against 0.85), and each organism meets its planted
    kinds' thresholds."""
    model = load_model(name)
    planted = {k: tuple(v) for k, v in ground_truth(shipped_organisms()[name])["planted_heads"].items()}
    scan = scan_heads(model, seed=5)
    assert top_heads(scan.previous_token, 1)[0][:2] == planted["previous_token"]
    assert planted["induction"] in {top_heads(score, 1)[0][:2] for score in scan.induction.values()}
    if "semantic" in planted:
        assert top_heads(scan.semantic["surprisal"].nanmean(0), 1, largest=False)[0][:2] == planted["semantic"]
    report = planted_head_report(model, {k: list(v) for k, v in planted.items()}, seed=11)
    assert all(thresholds_met(report).values()), report


@pytest.mark.e2e
def test_scan_script_end_to_end(tmp_path, truth):
    result = run_script("scan_heads", "--out", str(tmp_path), "--seed", "3")
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "results" / "organism" / "scan_heads.json").read_text())
    top = {kind: (heads[0]["layer"], heads[0]["head"]) for kind, heads in data["results"]["top_heads"].items()}
    planted = {k: tuple(v) for k, v in truth["planted_heads"].items()}
    assert top["previous_token"] == planted["previous_token"]
    assert top["induction"] == planted["induction"]
    assert top["semantic"] == planted["semantic"]
    assert data["provenance"]["seed"] == 3 and data["provenance"]["arguments"]["model"] == "organism"
    for ext in ("pdf", "png"):
        assert (tmp_path / "figures" / "organism" / f"scan_heads.{ext}").stat().st_size > 1000
    assert "semantic" in result.stdout and "L" in result.stdout
