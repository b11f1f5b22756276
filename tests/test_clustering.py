"""Token clustering: exact graph pieces, Leiden on known structure, and the organism's categories recovered."""

import json
import re

import numpy as np
import pytest
import torch
from analysis import clustering, records
from analysis.attention import QKHead
from conftest import run_main


def test_top_k_edges_exact():
    # keys = queries = e1..e4, so the scores are M itself (scale 1)
    M = torch.tensor([[9.0, 1.0, 3.0, 2.0],
                      [5.0, 0.0, 4.0, 1.0],
                      [0.0, 2.0, 7.0, 8.0],
                      [1.0, 6.0, 2.0, 3.0]])
    W = QKHead(M, torch.eye(4), 1.0)  # W_Q W_K^T = M
    source, target, score = clustering.top_k_edges(torch.eye(4), W, k=2, chunk_size=3)
    assert source.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert target.tolist() == [2, 3, 0, 2, 3, 1, 1, 2]  # self-loops dropped: row 0 skips its 9
    assert score.tolist() == [3.0, 2.0, 5.0, 4.0, 8.0, 2.0, 6.0, 2.0]
    _, target, _ = clustering.top_k_edges(torch.eye(4), W, k=1, keep_self=True)
    assert target.tolist() == [0, 0, 3, 1]
    with pytest.raises(ValueError):
        clustering.top_k_edges(torch.eye(4), W, k=4)


def test_study_edges_exact():
    # x = e1..e4, W_Q = M, W_K = I: key row i of x_i W_K W_Q^T x_j^T is M[j, i], i.e. M^T
    M = torch.tensor([[9.0, 1.0, 3.0, 2.0],
                      [5.0, 0.0, 4.0, 1.0],
                      [0.0, 2.0, 7.0, 8.0],
                      [1.0, 6.0, 2.0, 3.0]])
    source, target, weight = clustering.study_edges(torch.eye(4), QKHead(M, torch.eye(4), 2.0), k=2)  # unscaled
    # key row i is M[:, i], shifted by min/(max - min); the top 2 (>= the row's linear median) kept, self-loops in
    assert list(zip(source.tolist(), target.tolist())) == [(0, 0), (0, 1), (1, 2), (1, 3), (2, 1), (2, 2),
                                                          (3, 2), (3, 3)]
    assert torch.allclose(weight, torch.tensor([9.0, 5.0, 2.0, 6.0, 3.6, 6.6, 8 - 1 / 7, 3 - 1 / 7]))
    # only positive shifted scores become edges: with every score far below zero, no edges at all
    assert len(clustering.study_edges(torch.eye(4), QKHead(M - 20, torch.eye(4), 1.0), k=2)[0]) == 0


def test_minmax_exact():
    assert clustering.minmax(torch.tensor([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert clustering.minmax(torch.tensor([5.0, 5.0])).tolist() == [1.0, 1.0]


def test_leiden_splits_two_cliques_and_scores_agreement():
    # two directed 3-cliques joined by one weak edge
    pairs = [(a, b) for group in ((0, 1, 2), (3, 4, 5)) for a in group for b in group if a != b] + [(2, 3)]
    source, target = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    weight = torch.ones(len(pairs))
    weight[-1] = 0.1
    graph = clustering.score_graph(6, source, target, weight)
    membership = clustering.leiden(graph, seed=0)
    assert len(set(membership[:3])) == 1 and len(set(membership[3:])) == 1 and membership[0] != membership[3]
    assert clustering.modularity(graph, membership) > 0.4
    assert len(set(clustering.leiden(graph, "rbconfiguration", resolution=100.0, seed=0))) == 6
    labels = np.array([0, 0, 0, 1, 1, -1])  # the last token has no category: not scored
    assert clustering.agreement(labels, membership) == {"ari": 1.0, "nmi": 1.0, "n_tokens": 5}
    found = clustering.communities(membership, list("abcdef"), labels, ["x", "y"])
    assert [c["size"] for c in found] == [3, 3]
    assert {c["category"]: c["purity"] for c in found} == {"x": 1.0, "y": 1.0}
    assert found[1]["n_category_words"] == 2


def test_layout_is_seeded():
    graph = clustering.score_graph(4, torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3]), torch.ones(3))
    assert np.allclose(clustering.layout(graph, seed=3), clustering.layout(graph, seed=3))


@pytest.mark.e2e
def test_clustering_recovers_the_organism_categories(tmp_path, truth):
    run_main("clustering", "--out", str(tmp_path))
    data = json.loads((tmp_path / "results" / "organism" / "clustering.json").read_text())["results"]
    assert [data["head"]["layer"], data["head"]["head"]] == truth["planted_heads"]["semantic"]
    assert data["agreement"]["n_tokens"] == 41  # the study's 8 categories
    # the default view is the study's construction, by the stated rule; every view ranks the controls
    assert data["input"] == "study" and "study's own construction" in data["default_view_rule"]
    assert set(data["views"]) == {"mean", "zero", "context", "study"}
    assert data["views"]["study"]["target"]["ari"]["value"] == data["agreement"]["ari"]
    assert data["views"]["context"]["target"]["ari"]["value"] >= 0.9  # the real inputs recover the categories
    for view in data["views"].values():
        assert len(view["agreement"]) == 1 + len(data["controls"])
        assert view["target"]["ari"]["rank"] == 1  # the semantic head leads the controls on every view
    assert data["community_count"] == {"comparable": False, "n_nodes": 181, "study_n_nodes": 3000,
                                       "reason": "not comparable: 181 nodes against 3000"}  # 183 tokens, 2 special
    assert data["categories"]["set"] == "study" and len(data["categories"]["names"]) == 8
    assert data["n_edges"] == 4 * data["n_nodes"] and data["n_nodes"] == 181  # whole vocabulary, specials out
    assert sum(c["size"] for c in data["communities"]) == data["n_nodes"]
    html = (tmp_path / "figures" / "organism" / "clustering.html").read_text()
    assert re.search(r"<script[^>]*\ssrc=", html) is None  # nothing fetched: plotly's JavaScript is inline
    assert "Plotly.newPlot" in html and " Monday" in html
    assert (tmp_path / "figures" / "organism" / "clustering.png").stat().st_size > 1000
    study = data["study_graph"]  # the study's graph beside ours: BOS in, self-loops kept, communities capped
    assert study["n_nodes"] == 182 and study["max_comm_size"] == 512 and study["agreement"]["n_tokens"] == 41
    assert study["printed_clusters"] == study["n_communities"] - 1
    assert sum(c["size"] for c in study["communities"]) == study["n_nodes"]
    # controls: ARI/NMI of both graphs for the target's layer and the scan's top heads, target ranked
    assert set(data["directions"]) == {"ari", "nmi", "study_ari", "study_nmi"}
    assert data["target"]["ari"]["value"] == data["agreement"]["ari"]
    assert data["target"]["ari"]["rank"] == 1
    layer = truth["planted_heads"]["semantic"][0]
    assert {(c["layer"], c["head"]) for c in data["controls"] if c["layer"] == layer} == \
        {(layer, h) for h in range(4)} - {tuple(truth["planted_heads"]["semantic"])}


@pytest.mark.e2e
def test_clustering_without_a_frequency_table_says_what_to_do(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main("clustering", "--out", str(tmp_path), "--n-tokens", "50", "--layer", "1", "--head", "3")
    assert exit_info.value.code == 2
    assert "token_freq.py" in capsys.readouterr().err


def test_head_partitions_agreement_and_record_on_two_groups():
    # BOS, then two groups of three tokens along two directions: W_Q = W_K = I, so every token's best keys are its
    # own group's, and both graphs split the tokens by group
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.zeros(1, 2), torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)]) + 0.01 * torch.randn(
        7, 2, generator=g)
    parts = clustering.head_partitions(x, QKHead(torch.eye(2), torch.eye(2), 1.0), clustering.GraphSettings(k=2))
    assert len(parts["ours"]["membership"]) == 6 and len(parts["study"]["membership"]) == 7
    category_of = np.array([0, 0, 0, 1, 1, -1])  # the last token has no category
    stats = {name: sample.value for name, sample in clustering.agreement_samples(parts, category_of).items()}
    assert stats["ari"] == pytest.approx(1.0) and stats["nmi"] == pytest.approx(1.0)
    assert set(stats) == set(clustering.AGREEMENT_DIRECTIONS)
    record = records.partition_record(parts["ours"], list("abcdef"), category_of, ["A", "B"])
    assert record["n_nodes"] == 6 and record["n_edges"] == 12 and record["n_self_loops"] == 0
    assert record["agreement"]["n_tokens"] == 5 and sum(c["size"] for c in record["communities"]) == 6
    hover = clustering.hover_text(parts["ours"]["source"], parts["ours"]["target"], list("abcdef"),
                                  parts["ours"]["membership"])
    assert len(hover) == 6 and hover[0].startswith("'a' · community") and "'b'" in hover[0] and "'c'" in hover[0]


def test_node_tokens_add_the_category_words(organism):
    from analysis import prompts

    ids = clustering.node_tokens(organism, prompts.STUDY_CATEGORIES, 10**6, "unused.csv")  # whole vocabulary
    special = set(prompts.special_token_ids(organism))
    assert len(ids) == organism.cfg.d_vocab - len(special) and not special & set(ids.tolist())
    words = prompts.single_token_ids(organism.tokenizer, prompts.STUDY_CATEGORIES["colours"])
    assert set(words) <= set(ids.tolist())


def test_community_counts_compare_only_at_the_studys_number_of_nodes():
    assert clustering.community_count_comparison(3000)["comparable"]
    small = clustering.community_count_comparison(166)
    assert not small["comparable"] and small["reason"] == "not comparable: 166 nodes against 3000"
    assert not clustering.community_count_comparison(5000)["comparable"]  # a larger graph is no match either


def test_view_record_keys_every_heads_agreement_by_head():
    from analysis import controls

    stats = {(1, 0): {"ari": 0.9, "nmi": 0.8, "study_ari": 0.7, "study_nmi": 0.6},
             (1, 2): {"ari": 0.1, "nmi": 0.2, "study_ari": 0.3, "study_nmi": 0.4}}
    record = records.view_record(controls.compare((1, 0), stats, clustering.AGREEMENT_DIRECTIONS))
    assert record["agreement"] == {controls.head_key(*h): v for h, v in stats.items()}
    assert record["target"]["ari"]["rank"] == 1 and record["target"]["ari"]["strongest_control"]["head"] == 2


def test_agreement_samples_resample_the_category_words_and_pair_the_heads():
    from analysis.controls import compare

    category_of = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, -1])  # the last token has no category
    exact = {"ours": {"membership": [5, 5, 5, 7, 7, 7, 9, 9, 9, 1]}, "study": {"membership": [0] + [5] * 3 + [7] * 3
                                                                                + [9] * 3 + [1]}}
    blind = {"ours": {"membership": [1, 2, 3, 1, 2, 3, 1, 2, 3, 0]}, "study": {"membership": [0] * 11}}
    samples = {(0, 0): clustering.agreement_samples(exact, category_of),
               (0, 1): clustering.agreement_samples(blind, category_of)}
    assert samples[(0, 0)]["ari"].value == 1.0 and samples[(0, 0)]["study_nmi"].value == pytest.approx(1.0)
    assert samples[(0, 0)]["ari"].per_unit.shape == (9, 2)  # the 9 category words, BOS and uncategorised left out
    assert samples[(0, 1)]["ari"].value < 0
    report = compare((0, 0), samples, clustering.AGREEMENT_DIRECTIONS, n_resamples=200)
    assert report["target"]["ari"]["separates"] and report["target"]["ari"]["difference"]["low"] > 0
