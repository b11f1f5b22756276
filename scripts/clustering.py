"""Token communities of a head: Leiden on its top-k score graph, checked against known categories.

Nodes: the --n-tokens most frequent tokens (default 3000; from results/<model>/token_freq.csv
written by token_freq.py, or --frequencies), or the whole vocabulary when that is no larger (the
organism), special tokens left out, plus every category word of the study. Each query keeps its
--k best keys by the head's score x_q W x_k^T / attn_scale (W = W_Q W_K^T, no biases; inputs
--input, default context: on the organism the mean-context view ranks keys far less faithfully,
see the README), without self-loops unless --keep-self; edge weights are the scores min-max
normalised over the kept edges. Leiden (--method modularity, or rbconfiguration with
--resolution), seeded by --seed. Against the categories: adjusted Rand index and NMI over the
category words.
Beside ours, the study's graph (`clustering.study_partition`, key "study_graph"): BOS among the nodes,
key rows unscaled, the study's row shift, the top k per key row kept if positive, self-loops kept,
Leiden with max_comm_size 512. Controls (keys directions / target / controls): ARI and NMI of both
graphs ("high": a semantic head's graph follows the categories) for the heads of --controls.
Writes results/<model>/clustering.json (communities with members, sizes, modularity, ARI/NMI),
figures/<model>/clustering.{pdf,png} and figures/<model>/clustering.html (interactive, offline).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from analysis import cli, clustering, controls, io, prompts
from analysis.attention import head_scale, head_weights
from analysis.frequency import check_frequency_csv, frequency_csv_path, ordinary_or_frequent_ids
from analysis.plotting import graph_html, save_figure, target_vs_controls, use_style
from analysis.token_maps import token_inputs

NAME = "clustering"
DIRECTIONS = {"ari": "high", "nmi": "high", "study_ari": "high", "study_nmi": "high"}


def build_parser():
    p = cli.parser(__doc__, target_head=True)
    cli.add_input_argument(p, default="context")
    cli.add_controls_argument(p)
    p.add_argument("--n-tokens", type=cli.positive_int, default=3000,
                   help="most frequent tokens in the graph (default: 3000)")
    p.add_argument("--frequencies", type=Path, default=None,
                   help="token-frequency CSV (default: results/<model>/token_freq.csv under --out)")
    p.input_file("--frequencies", check_frequency_csv)
    p.add_argument("--k", type=cli.positive_int, default=4, help="keys kept per query (default: 4)")
    p.add_argument("--keep-self", action="store_true", help="let a token be one of its own top keys")
    p.add_argument("--method", choices=clustering.METHODS, default="modularity",
                   help="Leiden quality: modularity or rbconfiguration (default: modularity)")
    p.add_argument("--resolution", type=cli.positive_float, default=1.0,
                   help="resolution of rbconfiguration (default: 1.0)")
    return p


def node_tokens(model, n_tokens: int, frequencies: Path | None, out: Path, model_name: str) -> torch.Tensor:
    """The graph's token ids: the n most frequent (or the whole vocabulary), then the category words."""
    ids, _ = ordinary_or_frequent_ids(model.cfg.d_vocab, prompts.special_token_ids(model), n_tokens,
                                      frequencies or frequency_csv_path(out, model_name))
    ids = ids.tolist()
    category_words = [i for words in prompts.ALL_CATEGORIES.values()
                      for i in prompts.single_token_ids(model.tokenizer, list(words))]
    return torch.tensor(ids + [i for i in category_words if i not in set(ids)])


def main(args) -> None:
    model, layer, head = cli.load_target(args)
    ids = node_tokens(model, args.n_tokens, args.frequencies, args.out, args.model)
    if args.k >= len(ids) + args.keep_self:
        raise cli.UsageError(f"--k {args.k} keys per query needs more than the graph's {len(ids)} tokens. "
                             f"Use --k {len(ids) - 1 + args.keep_self} or less.")
    labels = model.tokenizer.batch_decode(ids[:, None].tolist())
    category_of = prompts.category_index(model.tokenizer, prompts.ALL_CATEGORIES, model.cfg.d_vocab)[ids].numpy()
    category_names = list(prompts.ALL_CATEGORIES)
    bos = torch.tensor([prompts.bos_token_id(model)])
    study_of = np.concatenate([[-1], category_of])  # the study's nodes: BOS, then ours

    def partitions(l: int, h: int, inputs: dict) -> dict:
        if l not in inputs:  # the head inputs of a layer, ours and the study's (BOS first)
            inputs[l] = token_inputs(model, l, args.input, token_ids=torch.cat([bos, ids]), seed=args.seed)
        W_Q, W_K, _, _ = head_weights(model, l, h)
        return {"ours": clustering.ours_partition(inputs[l][1:], W_Q, W_K, head_scale(model.cfg, l), args.k,
                                                  args.keep_self, args.method, args.resolution, args.seed),
                "study": clustering.study_partition(inputs[l], W_Q, W_K, args.k, args.seed)}

    inputs: dict = {}
    stats = {}
    for l, h in [(layer, head), *cli.control_heads(model, (layer, head), args.controls, args.seed)]:
        both = partitions(l, h, inputs)
        if (l, h) == (layer, head):
            target_parts = both
        ours, study = (clustering.agreement(c, both[w]["membership"]) for c, w in ((category_of, "ours"),
                                                                                   (study_of, "study")))
        stats[(l, h)] = {"ari": ours["ari"], "nmi": ours["nmi"], "study_ari": study["ari"], "study_nmi": study["nmi"]}
    report = controls.compare((layer, head), stats, DIRECTIONS)
    mine, theirs = target_parts["ours"], target_parts["study"]
    source, target, graph, membership = (mine[k] for k in ("source", "target", "graph", "membership"))
    agreement = clustering.agreement(category_of, membership)
    found = clustering.communities(membership, labels, category_of, category_names)
    study_found = clustering.communities(theirs["membership"], ["<BOS>", *labels], study_of, category_names)
    results = {"head": {"layer": layer, "head": head}, "input": args.input, "n_nodes": len(ids),
               "n_edges": len(source), "k": args.k, "keep_self": args.keep_self, "method": args.method,
               "resolution": args.resolution, "n_communities": len(found),
               "modularity": clustering.modularity(graph, membership), "agreement": agreement,
               "communities": found,
               "study_graph": {"n_nodes": len(ids) + 1, "n_edges": len(theirs["source"]),
                               "n_self_loops": int((theirs["source"] == theirs["target"]).sum()),
                               "n_communities": len(study_found), "printed_clusters": len(study_found) - 1,
                               "max_comm_size": clustering.STUDY_MAX_COMM_SIZE,
                               "modularity": clustering.modularity(theirs["graph"], theirs["membership"]),
                               "agreement": clustering.agreement(study_of, theirs["membership"]),
                               "communities": study_found},
               **report}
    path = io.save_results(args.out, args.model, NAME, results, model_info=model.analysis_info,
                           arguments=vars(args), seed=args.seed)

    coords = clustering.layout(graph, args.seed)
    save_figure(figure(coords, source, target, labels, membership, category_of, category_names, layer, head,
                          agreement), args.out, args.model, NAME)
    save_figure(target_vs_controls(report, f"{args.model}: L{layer}H{head}'s graph against the categories, "
                                           "ours and the study's"), args.out, args.model, NAME + "_controls")
    keys_of = {i: [] for i in range(len(ids))}
    for s, t in zip(source.tolist(), target.tolist()):
        keys_of[s].append(labels[t])
    hover = [f"{labels[i]!r} · community {membership[i]} · top keys: {', '.join(map(repr, keys_of[i]))}"
             for i in range(len(ids))]
    html = graph_html(coords, source.numpy(), target.numpy(), labels, membership, hover,
                                 f"L{layer}H{head} token communities ({args.model}, {args.input} inputs)")
    html_path = io.write_output(io.figures_dir(args.out, args.model) / f"{NAME}.html", html)

    print(f"L{layer}H{head}: {len(ids)} tokens, {len(source)} edges, {len(found)} communities, "
          f"modularity {results['modularity']:.3f}; against the categories ({agreement['n_tokens']} words): "
          f"ARI {agreement['ari']:.3f}, NMI {agreement['nmi']:.3f}")
    sg = results["study_graph"]
    print(f"the study's graph: {sg['n_edges']} edges ({sg['n_self_loops']} self-loops), {sg['n_communities']} "
          f"communities; ARI {sg['agreement']['ari']:.3f}, NMI {sg['agreement']['nmi']:.3f}")
    print("\n".join(controls.summary_lines(report)))
    for community in found[:12]:
        tag = f" [{community['category']} {community['purity']:.0%}]" if "category" in community else ""
        print(f"  {community['size']:4d}{tag}: {', '.join(map(repr, community['members'][:8]))}")
    print(f"results: {path}\ninteractive view: {html_path}")


def figure(coords, source, target, labels, membership, category_of, category_names, layer, head, agreement):
    use_style()
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns
    from matplotlib.collections import LineCollection

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 6.5), gridspec_kw={"width_ratios": [1.6, 1]})
    ax1.add_collection(LineCollection(np.stack([coords[source], coords[target]], 1), colors="0.7", linewidths=0.3))
    ax1.scatter(coords[:, 0], coords[:, 1], c=membership, cmap="turbo", s=14, zorder=2)
    labelled = range(len(labels)) if len(labels) <= 300 else np.flatnonzero(category_of >= 0)
    for i in labelled:
        ax1.annotate(labels[i], coords[i], fontsize=5, alpha=0.8)
    ax1.set(title=f"L{layer}H{head}: top-k score graph, Leiden communities", xticks=[], yticks=[])
    known = category_of >= 0
    table = pd.crosstab(pd.Series(np.asarray(category_names)[category_of[known]], name="category"),
                        pd.Series(membership[known], name="community"))
    sns.heatmap(table, ax=ax2, annot=True, fmt="d", cmap="Blues", cbar=False, annot_kws={"fontsize": 7})
    ax2.set(title=f"category words by community (ARI {agreement['ari']:.2f}, NMI {agreement['nmi']:.2f})")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    cli.run(main, build_parser())
