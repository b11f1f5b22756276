"""Token communities of a head: Leiden on its top-k score graph, checked against known categories.

Nodes: the --n-tokens most frequent tokens (default 3000; from results/<model>/token_freq.csv
written by token_freq.py, or --frequencies), or the whole vocabulary when that is no larger (the
organism), special tokens left out, plus every category word (--categories: the study's 8 by
default). Each query keeps its --k best keys by the head's score x_q W x_k^T / attn_scale
(W = W_Q W_K^T, no biases; inputs --input, default study: see "Input view" below), without self-loops unless
--keep-self; edge weights are the scores min-max
normalised over the kept edges. Leiden (--method modularity, or rbconfiguration with
--resolution), seeded by --seed. Against the categories: adjusted Rand index and NMI over the
category words.
Beside ours, the study's graph (`clustering.study_partition`, key "study_graph"): BOS among the nodes,
key rows unscaled, the study's row shift, the top k per key row kept if positive, self-loops kept,
Leiden with max_comm_size 512. Controls (keys directions / target / controls): ARI and NMI of both
graphs ("high": a semantic head's graph follows the categories) for the heads of --controls.
Input view (key "default_view_rule"), a rule fixed before any results were read: the default --input is the
study's own construction of the vocabulary-level input ("study", `vocab_input.study_means`), because it is the
like-for-like input of the study's clustering; it is not the view that scored best. Every view of
`token_maps.INPUT_VIEWS` is reported beside it (key "views": per view, ARI/NMI of both graphs for the target and
every control head, ranked with `controls.compare`); the "mean" view averages over prompts of --categories.
Community counts (key "community_count"): Leiden's count grows with the number of nodes, so it compares with the
study's only on a graph of the study's 3,000 frequency-chosen nodes (`clustering.community_count_comparison`);
with fewer (the organism's whole vocabulary) the results say "not comparable" and why.
Positions (key "position_treatment"): with rotary positions both graphs score a token on itself at Δ = 0 and on any
other token at M = E_Δ[R(Δ)] over the survey prompts' query-partner distances (`positions.position_treatment`).
Writes results/<model>/clustering.json (communities with members, sizes, modularity, ARI/NMI),
figures/<model>/clustering.{pdf,png} and figures/<model>/clustering.html (interactive, offline).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from analysis import cli, clustering, controls, io, prompts, records
from analysis.attention import qk_head
from analysis.frequency import check_frequency_csv, frequency_csv_path
from analysis.heads import control_heads, load_target
from analysis.positions import position_treatment
from analysis.plotting import graph_html, save_figure, target_vs_controls, use_style
from analysis.token_maps import INPUT_VIEWS, InputOptions, token_inputs

NAME = "clustering"
STUDY_GRAPH_POSITIONS = "the study's graph (study_graph) reads its key-by-query scores the same way"
DEFAULT_VIEW = "study"
DEFAULT_VIEW_RULE = ("the default input view is the study's own construction ('study'), fixed before results were "
                     "read because it is the study's like-for-like input; every other view is reported beside it "
                     "under 'views'")


def build_parser():
    p = cli.parser(__doc__, target_head=True)
    cli.add_input_argument(p, default=DEFAULT_VIEW)
    cli.add_categories_argument(p)
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


def main(args) -> None:
    model, layer, head = load_target(args)
    categories, chosen = cli.chosen_categories(args)
    table = args.frequencies or frequency_csv_path(args.out, args.model)
    ids = clustering.node_tokens(model, categories, args.n_tokens, table)
    if args.k >= len(ids) + args.keep_self:
        raise cli.UsageError(f"--k {args.k} keys per query needs more than the graph's {len(ids)} tokens. "
                             f"Use --k {len(ids) - 1 + args.keep_self} or less.")
    labels = model.tokenizer.batch_decode(ids[:, None].tolist())
    category_of = prompts.category_index(model.tokenizer, categories, model.cfg.d_vocab)[ids].numpy()
    nodes = torch.cat([torch.tensor([prompts.bos_token_id(model)]), ids])  # the study's nodes: BOS, then ours
    treatment = position_treatment(model, categories, args.seed)  # rotary: self at Δ = 0, other tokens at M
    heads = [(layer, head), *control_heads(model, (layer, head), args.controls, args.seed)]
    settings = clustering.GraphSettings(args.k, args.keep_self, args.method, args.resolution, args.seed)
    views = {}  # every input view: both graphs of every head, their agreement and the ranking against the controls
    for view in (args.input, *(v for v in INPUT_VIEWS if v != args.input)):
        inputs = {l: token_inputs(model, l, view, token_ids=nodes, seed=args.seed, options=InputOptions(categories))
                  for l in dict.fromkeys(h[0] for h in heads)}  # (1 + n, d_model) per layer
        parts = {(l, h): clustering.head_partitions(inputs[l], qk_head(model, l, h, rotation=treatment.rotation),
                                                  settings) for l, h in heads}
        # ARI/NMI as Samples over the category words: a paired bootstrap CI of target minus strongest control
        stats = {hd: clustering.agreement_samples(part, category_of) for hd, part in parts.items()}
        views[view] = (parts, controls.compare((layer, head), stats, clustering.AGREEMENT_DIRECTIONS,
                                               seed=args.seed))
    parts, report = views[args.input]
    n_ordinary = model.cfg.d_vocab - len(set(prompts.special_token_ids(model)))
    mine, theirs = parts[(layer, head)]["ours"], parts[(layer, head)]["study"]
    ours = records.partition_record(mine, labels, category_of, list(categories))
    ours.pop("n_self_loops")
    study = records.partition_record(theirs, ["<BOS>", *labels], np.concatenate([[-1], category_of]),
                                        list(categories))
    results = {"head": {"layer": layer, "head": head}, "input": args.input, "default_view_rule": DEFAULT_VIEW_RULE,
               "position_treatment": treatment.described(STUDY_GRAPH_POSITIONS),
               "views": {view: records.view_record(view_report) for view, (_, view_report) in views.items()},
               "community_count": clustering.community_count_comparison(min(args.n_tokens, n_ordinary)),
               "k": args.k, "keep_self": args.keep_self,
               "categories": chosen,
               "method": args.method, "resolution": args.resolution, **ours,
               "study_graph": {**study, "printed_clusters": study["n_communities"] - 1,
                               "max_comm_size": clustering.STUDY_MAX_COMM_SIZE}, **report}
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(model.analysis_info, vars(args), args.seed))

    source, target, membership, agreement = mine["source"], mine["target"], mine["membership"], ours["agreement"]
    coords = clustering.layout(mine["graph"], args.seed)
    categorised = (category_of, list(categories))
    save_figure(figure(coords, mine, labels, categorised, controls.head_key(layer, head), agreement), args.out,
                args.model, NAME)
    save_figure(target_vs_controls(report, f"{args.model}: L{layer}H{head}'s graph against the categories, "
                                           "ours and the study's"), args.out, args.model, NAME + "_controls")
    html = graph_html(coords, (source.numpy(), target.numpy()), labels, membership,
                      clustering.hover_text(source, target, labels, membership),
                      f"L{layer}H{head} token communities ({args.model}, {args.input} inputs)")
    html_path = io.write_output(io.figures_dir(args.out, args.model) / f"{NAME}.html", html)

    print(f"L{layer}H{head}: {len(ids)} tokens, {len(source)} edges, {ours['n_communities']} communities, "
          f"modularity {ours['modularity']:.3f}; against the categories ({agreement['n_tokens']} words): "
          f"ARI {agreement['ari']:.3f}, NMI {agreement['nmi']:.3f}")
    print(f"the study's graph: {study['n_edges']} edges ({study['n_self_loops']} self-loops), "
          f"{study['n_communities']} communities; ARI {study['agreement']['ari']:.3f}, "
          f"NMI {study['agreement']['nmi']:.3f}")
    print("\n".join(records.comparison_lines(report)))
    for view, (_, view_report) in views.items():
        target = view_report["target"]
        print(f"  {view} inputs: ARI {target['ari']['value']:.2f} (rank {target['ari']['rank']}/"
              f"{target['ari']['n_ranked']}), study's graph ARI {target['study_ari']['value']:.2f} "
              f"(rank {target['study_ari']['rank']}/{target['study_ari']['n_ranked']})")
    print(f"community count: {results['community_count']['reason']}")
    for community in ours["communities"][:12]:
        tag = f" [{community['category']} {community['purity']:.0%}]" if "category" in community else ""
        print(f"  {community['size']:4d}{tag}: {', '.join(map(repr, community['members'][:8]))}")
    print(f"results: {path}\ninteractive view: {html_path}")


def figure(coords, graph, labels, categories, head_name, agreement):
    """The graph's layout coloured by community, and the category words by community (`categories` = (category
    of each node, category names))."""
    use_style()
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns
    from matplotlib.collections import LineCollection

    source, target, membership = graph["source"], graph["target"], graph["membership"]
    category_of, category_names = categories
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 6.5), gridspec_kw={"width_ratios": [1.6, 1]})
    ax1.add_collection(LineCollection(np.stack([coords[source], coords[target]], 1), colors="0.7", linewidths=0.3))
    ax1.scatter(coords[:, 0], coords[:, 1], c=membership, cmap="turbo", s=14, zorder=2)
    labelled = range(len(labels)) if len(labels) <= 300 else np.flatnonzero(category_of >= 0)
    for i in labelled:
        ax1.annotate(labels[i], coords[i], fontsize=5, alpha=0.8)
    ax1.set(title=f"{head_name}: top-k score graph, Leiden communities", xticks=[], yticks=[])
    known = category_of >= 0
    table = pd.crosstab(pd.Series(np.asarray(category_names)[category_of[known]], name="category"),
                        pd.Series(membership[known], name="community"))
    sns.heatmap(table, ax=ax2, annot=True, fmt="d", cmap="Blues", cbar=False, annot_kws={"fontsize": 7})
    ax2.set(title=f"category words by community (ARI {agreement['ari']:.2f}, NMI {agreement['nmi']:.2f})")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    cli.run(main, build_parser())
