"""Token communities of a head: a top-k score graph over tokens, Leiden, agreement with categories.

Graph. Each token q (a query) keeps its k highest-scoring keys j among the N tokens, by the
head's score s(q, j) = x_q W x_j^T / attn_scale (its `QKHead`; a rotary head's rotation M: x_q W_Q M W_K^T x_j^T
/ attn_scale for j != q, the self-score at Δ = 0, `qk_decomposition.word_score_blocks`); self-loops are dropped
unless asked for. The
graph is directed (q -> j: "q would attend to j"); an edge's weight is its score min-max
normalised over all kept edges, w = (s - min s) / (max s - min s), so weights lie in [0, 1] as
modularity needs. Scores are read in query chunks: N x N is never resident.

Communities. Leiden (`leidenalg` on `igraph`, seeded) maximising modularity, or the
RB-configuration quality with a resolution parameter (larger: more, smaller communities).
Agreement with known categories: adjusted Rand index and normalised mutual information
(scikit-learn), over the tokens that have a category. The interactive view of a graph is
`analysis.plotting.graph_html`.

The study's graph (its code, `Mamiglia/deep-dive-L1H5`, `clustering.py`), beside ours
(`study_edges`): rows are *keys*, a[i, j] = x_i W_K W_Q^T x_j^T (no scale, no biases); each row is
shifted by the constant min_i / (max_i - min_i) (the study's min-max, as its operator precedence
makes it); a row keeps the entries at or above its 1 - k/N quantile (the top k), and of those only
the positive ones; self-loops stay; edges run key -> query, weighted by the shifted score; Leiden
maximises modularity with `max_comm_size` 512 (`STUDY_MAX_COMM_SIZE`; we seed it, the study did not).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from analysis import prompts
from analysis.frequency import ordinary_or_frequent_ids
from analysis.attention import QKHead
from analysis.controls import Sample
from analysis.qk_decomposition import word_score_blocks

METHODS = ("modularity", "rbconfiguration")
STUDY_MAX_COMM_SIZE = 512


@torch.no_grad()
def top_k_edges(x: Tensor, qk: QKHead, k: int = 4, keep_self: bool = False, chunk_size: int = 1024
                ) -> tuple[Tensor, Tensor, Tensor]:
    """(`source: [n k]`, `target: [n k]`, `score: [n k]`): each row of `x: [n, d]`'s k best keys among the rows of x.

    Scores are the head's, x_q W x_j^T / scale (`qk_decomposition.word_score_blocks`; with biases if `qk` has them;
    with its rotation M, other keys at M and a token's own key at Δ = 0).
    """
    if not 0 < k < len(x) + keep_self:
        raise ValueError(f"k must be between 1 and {len(x) - 1 + keep_self} for {len(x)} tokens, got {k}")
    sources, targets, scores = [], [], []
    for start, block in word_score_blocks(x, qk, chunk_size):  # block: (C, n)
        rows = torch.arange(start, start + len(block))
        if not keep_self:
            block[torch.arange(len(block)), rows] = -torch.inf
        top = block.topk(k, dim=-1)
        sources.append(rows.repeat_interleave(k))
        targets.append(top.indices.flatten())
        scores.append(top.values.flatten())
    return torch.cat(sources), torch.cat(targets), torch.cat(scores)


@torch.no_grad()
def study_edges(x: Tensor, qk: QKHead, k: int = 4, chunk_size: int = 1024) -> tuple[Tensor, Tensor, Tensor]:
    """(`source: [e]`, `target: [e]`, `weight: [e]`): the study's graph of the head `qk` over the rows of `x: [n, d]`.

    a[i, j] = x_i W_K W_Q^T x_j^T (key i, query j; unscaled, no biases); a'[i] = a[i] - min_i / (max_i - min_i)
    (the study's shift); edge i -> j where a'[i, j] >= quantile(a'[i], 1 - k/n) and a'[i, j] > 0, self-loops
    included; weight a'[i, j]. With the head's rotation M (rotary), a[i, j] for j != i is query j's score on key i
    at M, x_i W_K M^T W_Q^T x_j^T, and a[i, i] is at Δ = 0.
    """
    if not 0 < k <= len(x):
        raise ValueError(f"k must be between 1 and {len(x)} for {len(x)} tokens, got {k}")
    turned = None if qk.rotation is None else qk.rotation.transpose(-2, -1)  # q M k^T = k M^T q^T
    W_keys = QKHead(qk.W_K, qk.W_Q, 1.0, rotation=turned)  # rows are keys: x_i W_K (x_j W_Q)^T, unscaled, no biases
    sources, targets, weights = [], [], []
    for start, block in word_score_blocks(x, W_keys, chunk_size):  # block: (C, n), row = key
        low, high = block.min(-1, keepdim=True).values, block.max(-1, keepdim=True).values
        shifted = block - low / (high - low)
        cut = torch.quantile(shifted, 1 - k / len(x), dim=-1, keepdim=True)
        row, col = torch.nonzero((shifted >= cut) & (shifted > 0), as_tuple=True)
        sources.append(row + start)
        targets.append(col)
        weights.append(shifted[row, col])
    return torch.cat(sources), torch.cat(targets), torch.cat(weights)


def minmax(values: Tensor) -> Tensor:
    """(v - min v) / (max v - min v), in [0, 1]; all ones when every value is the same."""
    span = values.max() - values.min()
    return torch.ones_like(values) if span == 0 else (values - values.min()) / span


def score_graph(n: int, source: Tensor, target: Tensor, weight: Tensor):
    """A directed `igraph.Graph` on n vertices with a "weight" attribute per edge."""
    import igraph as ig

    graph = ig.Graph(n=n, edges=torch.stack([source, target], 1).tolist(), directed=True)
    graph.es["weight"] = weight.tolist()
    return graph


def leiden(graph, method: str = "modularity", resolution: float = 1.0, seed: int = 0,
           max_comm_size: int = 0) -> np.ndarray:
    """`membership: [n]`, community of each vertex, from Leiden on the weighted graph (seeded);
    `max_comm_size` caps a community's size (0: no cap; the study's graph uses 512)."""
    import leidenalg

    if method == "modularity":
        partition = leidenalg.find_partition(graph, leidenalg.ModularityVertexPartition, weights="weight", seed=seed,
                                             max_comm_size=max_comm_size)
    elif method == "rbconfiguration":
        partition = leidenalg.find_partition(graph, leidenalg.RBConfigurationVertexPartition, weights="weight",
                                             resolution_parameter=resolution, seed=seed, max_comm_size=max_comm_size)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return np.asarray(partition.membership)


@dataclass(frozen=True)
class GraphSettings:
    """A head's token graph and its communities (`ours_partition`, `head_partitions`): `k` keys kept per query,
    self-loops with `keep_self`, Leiden's quality `method` ("modularity" or "rbconfiguration", with `resolution`)
    seeded by `seed` (the study's graph takes `k` and `seed` only)."""

    k: int = 4
    keep_self: bool = False
    method: str = "modularity"
    resolution: float = 1.0
    seed: int = 0


def ours_partition(x: Tensor, qk: QKHead, settings: GraphSettings = GraphSettings()) -> dict:
    """Our graph of the head `qk` over the rows of `x: [n, d]` (`top_k_edges`, query rows, min-max weights) and its
    Leiden partition: {"source", "target": [e], "graph", "membership": [n]}."""
    source, target, score = top_k_edges(x, qk, settings.k, settings.keep_self)
    graph = score_graph(len(x), source, target, minmax(score))
    return {"source": source, "target": target, "graph": graph,
            "membership": leiden(graph, settings.method, settings.resolution, settings.seed)}


def study_partition(x: Tensor, qk: QKHead, k: int = 4, seed: int = 0) -> dict:
    """The study's graph of the head `qk` over the rows of `x` (`study_edges`) and its Leiden partition (modularity,
    `max_comm_size` STUDY_MAX_COMM_SIZE, seeded): {"source", "target", "graph", "membership"}."""
    source, target, weight = study_edges(x, qk, k)
    graph = score_graph(len(x), source, target, weight)
    return {"source": source, "target": target, "graph": graph,
            "membership": leiden(graph, "modularity", seed=seed, max_comm_size=STUDY_MAX_COMM_SIZE)}


def modularity(graph, membership: np.ndarray) -> float:
    """Directed, weighted modularity Q of a partition (resolution 1), whatever quality Leiden optimised."""
    return float(graph.modularity(membership.tolist(), weights="weight", directed=True))


def agreement_metric(metric: str):
    """scikit-learn's score for "ari" (adjusted Rand index) or "nmi" (normalised mutual information), f(labels_true,
    labels_pred)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {"ari": adjusted_rand_score, "nmi": normalized_mutual_info_score}[metric]


def agreement(categories: np.ndarray, membership: np.ndarray) -> dict[str, float]:
    """ARI and NMI between known `categories` and `membership`, over the entries whose category is >= 0."""
    known = categories >= 0
    scores = {metric: float(agreement_metric(metric)(categories[known], membership[known]))
              for metric in ("ari", "nmi")}
    return {**scores, "n_tokens": int(known.sum())}


def communities(membership: np.ndarray, labels: Sequence[str], categories: np.ndarray | None = None,
                category_names: Sequence[str] = ()) -> list[dict]:
    """Communities largest first: {"id", "size", "members"}, and with `categories` (`[n]`, -1 = none)
    the dominant category of each community's category words and its purity (share of those words)."""
    ids, sizes = np.unique(membership, return_counts=True)
    found = []
    for community in ids[np.argsort(-sizes, kind="stable")]:
        members = np.flatnonzero(membership == community)
        entry = {"id": int(community), "size": len(members), "members": [labels[i] for i in members]}
        known = categories[members][categories[members] >= 0] if categories is not None else []
        if len(known):
            top = np.bincount(known).argmax()
            entry.update(category=category_names[top], purity=float((known == top).mean()),
                         n_category_words=len(known))
        found.append(entry)
    return found


def layout(graph, seed: int = 0) -> np.ndarray:
    """`[n, 2]` Fruchterman-Reingold positions, from a seeded random start (deterministic for a seed)."""
    import random

    import igraph as ig

    start = np.random.default_rng(seed).uniform(-1, 1, size=(graph.vcount(), 2))
    ig.set_random_number_generator(random.Random(seed))  # FR also draws from igraph's generator
    try:
        return np.asarray(graph.layout_fruchterman_reingold(seed=start.tolist()).coords)  # unweighted: FR needs w > 0
    finally:
        ig.set_random_number_generator(random)  # igraph's default


# --- a head's two graphs, ours and the study's, against the categories ----------------------


def node_tokens(model, categories: Mapping[str, Sequence[str]], n_tokens: int, table_path: Path | str) -> Tensor:
    """`ids: [n]`, the graph's token ids: the `n_tokens` most frequent ordinary tokens (the frequency table at
    `table_path`), or every ordinary token when that is no more (`frequency.ordinary_or_frequent_ids`), then
    each category word not already among them."""
    ids, _ = ordinary_or_frequent_ids(model.cfg.d_vocab, prompts.special_token_ids(model), n_tokens, table_path)
    ids = ids.tolist()
    frequent = set(ids)
    words = [i for w in categories.values() for i in prompts.single_token_ids(model.tokenizer, list(w))]
    return torch.tensor(ids + [i for i in words if i not in frequent])


AGREEMENT_DIRECTIONS = {"ari": "high", "nmi": "high", "study_ari": "high", "study_nmi": "high"}

STUDY_N_NODES = 3000  # the study's graph: its 3,000 most frequent tokens (a design choice of the study, not a result)


def community_count_comparison(n_frequent: int, study_n_nodes: int = STUDY_N_NODES) -> dict:
    """Whether a community count compares with the study's: Leiden's count grows with the graph, so only a graph of
    the study's number of frequency-chosen nodes (`n_frequent`, category words not counted) is matched.

    {"comparable": n_frequent == study_n_nodes, "n_nodes": n_frequent, "study_n_nodes", "reason"}.
    """
    comparable = n_frequent == study_n_nodes
    reason = (f"matched: {n_frequent} nodes as the study's {study_n_nodes}" if comparable
              else f"not comparable: {n_frequent} nodes against {study_n_nodes}")
    return {"comparable": comparable, "n_nodes": n_frequent, "study_n_nodes": study_n_nodes, "reason": reason}


def head_partitions(x: Tensor, qk: QKHead, settings: GraphSettings = GraphSettings()) -> dict[str, dict]:
    """Both graphs of the head `qk` over `x: [1 + n, d]`, whose first row is BOS: {"ours": `ours_partition` of the
    n token rows, "study": `study_partition` of all 1 + n rows (the study keeps BOS among its nodes)}."""
    return {"ours": ours_partition(x[1:], qk, settings), "study": study_partition(x, qk, settings.k, settings.seed)}


def _agreement_of(metric: str):
    """The reduction of a `controls.Sample` of (category, community) pairs `[resamples, n, 2]` to `metric` ("ari" or
    "nmi") of each resample's pairs, `[resamples]`."""
    score = agreement_metric(metric)

    def reduce(pairs: Tensor) -> Tensor:
        return torch.tensor([float(score(p[:, 0].numpy(), p[:, 1].numpy())) for p in pairs.long()],
                            dtype=torch.float64)
    return reduce


def agreement_samples(parts: Mapping[str, Mapping], category_of: np.ndarray) -> dict[str, Sample]:
    """ARI and NMI of both graphs against `category_of: [n]` (-1 = no category), "ari", "nmi" of ours and
    "study_ari", "study_nmi" of the study's graph (whose BOS node, first, has no category), as `controls.Sample`s
    over the category words (units: (category, community) pairs of the tokens with a category, in node order, so
    every head of one node list is paired), each reduced to the ARI or NMI of the resampled pairs: a bootstrap over
    the words of how well the communities recover the categories."""
    study_of = np.concatenate([[-1], category_of])
    out = {}
    for prefix, part, known_of in (("", parts["ours"], category_of), ("study_", parts["study"], study_of)):
        known = known_of >= 0
        pairs = torch.tensor(np.stack([known_of[known], np.asarray(part["membership"])[known]], axis=1))
        for metric in ("ari", "nmi"):
            out[prefix + metric] = Sample(pairs, "category word", reduce=_agreement_of(metric))
    return out


def hover_text(source: Tensor, target: Tensor, labels: Sequence[str], membership: np.ndarray) -> list[str]:
    """One line per node for the interactive view: its label, community and top keys (its out-edges)."""
    keys_of: dict[int, list[str]] = {i: [] for i in range(len(labels))}
    for s, t in zip(source.tolist(), target.tolist()):
        keys_of[s].append(labels[t])
    return [f"{labels[i]!r} · community {membership[i]} · top keys: {', '.join(map(repr, keys_of[i]))}"
            for i in range(len(labels))]
