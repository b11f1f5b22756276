"""Gradient steering of a head's W_Q and W_K on an explicit objective, with the closed-form baseline.

For each direction (--directions), Adam (--lr, --steps) on the head's W_Q, W_K minimises, over
minibatches (--batch-size) of category prompts,

    loss = s * self_mass - λ * partner_mass - μ * bos_mass_no_partner    s = +1 "suppress", -1 "restore"

(semantic metrics of the head's in-context pattern; λ = --lam, μ = --mu keeps the BOS fallback, --mu 0
is the objective without it; biases and every other weight fixed). Prompts draw from --categories (the
study's 8 by default). Before and after are measured on held-out prompts: self mass, partner mass, BOS
mass when no partner, S (exact, uncapped: from the pre-softmax scores), and the relative weight change
||ΔW_Q||/||W_Q||, ||ΔW_K||/||W_K||, ||ΔW_QK||/||W_QK|| ("runs").
Baseline: the original study's closed-form step on -trace(W_Q W_K^T), W_K <- W_K + η W_Q, i.e.
W <- W + η W_Q W_Q^T, as a curve over sizes (--trace-relative: ||η W_Q W_Q^T|| / ||W||).
"matched" compares each gradient run with the trace curve interpolated at the run's final self mass.

Controls (--controls): every control head gets the same edits (gradient and trace). Statistics and the
direction a self-suppressing head predicts ("directions"): self_mass_before low, bos_no_partner_before
high, restore_self_gain (self mass after "restore" minus before) high, restore_partner_change (partner
mass after minus before) high, trace_self_gain (at the largest trace size) high.
For one query word (--query, default " Monday") the top keys over the whole vocabulary
(E: --input, default mean; biases included) before and after each edit.
Writes results/<model>/gradient_steering.json and figures/<model>/gradient_steering and
gradient_steering_top_keys.
"""

from __future__ import annotations

from analysis import cli, controls, io, prompts, records, scores, steering
from analysis.heads import control_heads, load_target
from analysis.positions import IN_CONTEXT, recorded_treatment
from analysis.plotting import save_figure, target_vs_controls, use_style
from analysis.token_maps import InputOptions, token_inputs

NAME = "gradient_steering"


def build_parser():
    p = cli.parser(__doc__, target_head=True)
    cli.add_input_argument(p)
    cli.add_categories_argument(p)
    p.add_argument("--directions", nargs="+", choices=sorted(steering.SIGN), default=["suppress", "restore"],
                   help="steer self-attention down (suppress) and/or back up (restore) (default: both)")
    p.add_argument("--lam", type=float, default=1.0, help="λ, weight of the partner-mass term (default: 1.0)")
    p.add_argument("--mu", type=float, default=1.0,
                   help="μ, weight of the BOS-when-no-partner term; 0 drops it (default: 1.0)")
    cli.add_controls_argument(p)
    p.add_argument("--lr", type=cli.positive_float, default=1e-2, help="Adam learning rate (default: 0.01)")
    p.add_argument("--steps", type=cli.positive_int, default=25, help="gradient steps (default: 25)")
    p.add_argument("--batch-size", type=cli.positive_int, default=16, help="prompts per step (default: 16)")
    p.add_argument("--n-prompts", type=cli.positive_int, default=64,
                   help="training prompts, and as many held out (default: 64)")
    p.add_argument("--n-words", type=cli.positive_int, default=64, help="words per category prompt (default: 64)")
    p.fits_context("--n-words", lambda n: 1 + n)
    p.memory("--n-prompts or --n-words", lambda a, s: 2 * cli.pattern_bytes(s, a.n_prompts, 1 + a.n_words, heads=1))
    p.add_argument("--trace-relative", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0],
                   help="sizes of the closed-form step, ||η W_Q W_Q^T|| / ||W_Q W_K^T|| "
                        "(default: 0.05 0.1 0.2 0.3 0.5 0.7 1)")
    p.add_argument("--query", default=" Monday", help="query word for the top-keys table (default: ' Monday')")
    p.add_argument("--top", type=cli.positive_int, default=10, help="keys listed per condition (default: 10)")
    p.at_most("--top", lambda s: s.d_vocab, "tokens in the vocabulary")
    return p


def main(args) -> None:
    model, layer, head = load_target(args)
    query_id = prompts.single_token_ids(model.tokenizer, [args.query])[0]
    categories, chosen = cli.chosen_categories(args)
    train = prompts.category_probe(model, categories, args.n_prompts, args.n_words, args.seed + 1)
    test = prompts.category_probe(model, categories, args.n_prompts, args.n_words, args.seed + 2)

    heads = [(layer, head)] + control_heads(model, (layer, head), args.controls, args.seed)
    gradient = steering.SteeringSettings(args.lam, args.mu, args.lr, args.steps, args.batch_size, args.seed)
    plan = steering.SteeringPlan(args.directions, args.trace_relative, gradient)
    per_head = steering.steer_heads(model, heads, train, test, plan, progress=True)
    edits = per_head[(layer, head)]
    report = controls.compare((layer, head), {hd: steering.head_statistics(e) for hd, e in per_head.items()},
                              steering.statistic_directions(args.directions))

    E = token_inputs(model, layer, args.input, seed=args.seed,
                     options=InputOptions(categories, True))  # (d_vocab, d_model)
    labels = model.tokenizer.batch_decode([[i] for i in range(model.cfg.d_vocab)])
    top_keys = steering.query_top_keys(E, query_id, edits.conditions, labels, args.top)
    results = {"head": {"layer": layer, "head": head}, "input": args.input, "mu": args.mu, "lam": args.lam,
               "position_treatment": recorded_treatment(model, IN_CONTEXT),
               "categories": chosen,
               "objective": steering.OBJECTIVE, "closed_form": steering.CLOSED_FORM, "query": args.query,
               "top_keys": top_keys, **records.edits_record(edits, args.directions), **report,
               "control_edits": records.control_edits(per_head, (layer, head), args.directions)}
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(model.analysis_info, vars(args), args.seed))
    save_figure(figure(edits.metrics, edits.runs, layer, head), args.out, args.model, NAME)
    save_figure(top_keys_figure(top_keys, args.query, layer, head), args.out, args.model, f"{NAME}_top_keys")
    save_figure(target_vs_controls(report, f"L{layer}H{head} against {len(heads) - 1} control heads: same edits"),
                args.out, args.model, f"{NAME}_controls")
    print("\n".join(records.steering_lines(edits.metrics, top_keys, results["matched"], args.query)))
    print("\n".join(records.comparison_lines(report, prefix="")))
    print(f"results: {path}")


def figure(metrics, runs, layer, head):
    use_style()
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (name, run) in enumerate((n, r) for n, r in runs.items() if "history" in r):
        steps = [h["step"] for h in run["history"]]
        ax1.plot(steps, [h["self_mass"] for h in run["history"]], color=f"C{i}", label=f"{name}: self mass")
        ax1.plot(steps, [h["partner_mass"] for h in run["history"]], "--", color=f"C{i}", label=f"{name}: partner mass")
    ax1.set(title="Training batches", xlabel="step", ylabel="attention mass", ylim=(-0.02, 1.02))
    ax1.legend(fontsize=7)
    names = list(metrics)
    x = np.arange(len(names))
    for j, key in enumerate(scores.MASSES):
        ax2.bar(x + (j - 1) * 0.27, [metrics[n][key] for n in names], width=0.27, label=key.replace("_", " "))
    ax2.set_xticks(x, names, rotation=30, ha="right")
    ax2.set(title=f"L{layer}H{head} on held-out prompts", ylabel="attention mass")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig


def top_keys_figure(top_keys, query, layer, head):
    use_style()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(top_keys), figsize=(2.6 * len(top_keys), 3.6), squeeze=False)
    for ax, (name, table) in zip(axes[0], top_keys.items()):
        keys, values = table["keys"][::-1], [float(v) for v in table["scores"]][::-1]
        ax.barh(range(len(keys)), values, color=["C3" if k == query else "C0" for k in keys])
        ax.set_yticks(range(len(keys)), [repr(k) for k in keys], fontsize=7)
        ax.set(title=f"{name} (self rank {table['query_self_rank']})", xlabel="score")
    fig.suptitle(f"L{layer}H{head}: top keys for the query {query!r} (query itself in red)")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    cli.run(main, build_parser())
