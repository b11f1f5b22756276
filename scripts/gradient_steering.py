"""Gradient steering of a head's W_Q and W_K on an explicit objective, with the closed-form baseline.

For each direction (--directions), Adam (--lr, --steps) on the head's W_Q, W_K minimises, over
minibatches (--batch-size) of category prompts,

    loss = s * self_mass - λ * partner_mass       s = +1 "suppress", -1 "restore"; λ = --lam

(part-1 metrics of the head's in-context pattern; biases and every other weight fixed). Before and
after are measured on held-out prompts: self mass, partner mass, BOS mass when no partner, S.
Baseline: the original study's closed-form step on -trace(W_Q W_K^T), W_K <- W_K + η W_Q, i.e.
W <- W + η W_Q W_Q^T, with η set so that the step's norm is --trace-relative times ||W||.
For one query word (--query, default " Monday") the top keys over the whole vocabulary
(E: --input, default mean; biases included) before and after each edit.
Writes results/<model>/gradient_steering.json and figures/<model>/gradient_steering and
gradient_steering_top_keys.
"""

from __future__ import annotations

from analysis import cli, io, prompts
from analysis import qk_decomposition as qk
from analysis import steering
from analysis.attention import attention_scores, head_scale, head_weights
from analysis.plotting import save_figure, use_style
from analysis.token_maps import token_inputs

NAME = "gradient_steering"
METRICS = ("self_mass", "partner_mass", "bos_mass_no_partner")


def build_parser():
    p = cli.parser(__doc__, target_head=True)
    cli.add_input_argument(p)
    p.add_argument("--directions", nargs="+", choices=sorted(steering.SIGN), default=["suppress", "restore"],
                   help="steer self-attention down (suppress) and/or back up (restore) (default: both)")
    p.add_argument("--lam", type=float, default=1.0, help="λ, weight of the partner-mass term (default: 1.0)")
    p.add_argument("--lr", type=cli.positive_float, default=1e-2, help="Adam learning rate (default: 0.01)")
    p.add_argument("--steps", type=cli.positive_int, default=25, help="gradient steps (default: 25)")
    p.add_argument("--batch-size", type=cli.positive_int, default=16, help="prompts per step (default: 16)")
    p.add_argument("--n-prompts", type=cli.positive_int, default=64,
                   help="training prompts, and as many held out (default: 64)")
    p.add_argument("--n-words", type=cli.positive_int, default=64, help="words per category prompt (default: 64)")
    p.fits_context("--n-words", lambda n: 1 + n)
    p.memory("--n-prompts or --n-words", lambda a, s: 2 * cli.pattern_bytes(s, a.n_prompts, 1 + a.n_words, heads=1))
    p.add_argument("--trace-relative", type=float, nargs="+", default=[0.1, 0.3, 1.0],
                   help="sizes of the closed-form step, ||η W_Q W_Q^T|| / ||W_Q W_K^T|| (default: 0.1 0.3 1)")
    p.add_argument("--query", default=" Monday", help="query word for the top-keys table (default: ' Monday')")
    p.add_argument("--top", type=cli.positive_int, default=10, help="keys listed per condition (default: 10)")
    p.at_most("--top", lambda s: s.d_vocab, "tokens in the vocabulary")
    return p


def main(args) -> None:
    model, layer, head = cli.load_target(args)
    query_id = prompts.single_token_ids(model.tokenizer, [args.query])[0]
    W_Q, W_K, b_Q, b_K = head_weights(model, layer, head, include_bias=True)
    scale = head_scale(model.cfg, layer)
    categories = prompts.ALL_CATEGORIES
    train, train_mask = prompts.category_probe(model, categories, args.n_prompts, args.n_words, args.seed + 1)
    test, test_mask = prompts.category_probe(model, categories, args.n_prompts, args.n_words, args.seed + 2)

    def evaluate(Wq, Wk):
        hooks = qk.qk_override_hooks(model, layer, head, Wq, Wk, b_Q, b_K)
        return qk.in_context_scores(model, test, test_mask, layer, head, hooks)

    conditions = {"before": (W_Q, W_K)}
    runs = {}
    for direction in args.directions:
        run = steering.gradient_steer(model, train, train_mask, layer, head, direction, args.lam, args.lr, args.steps,
                                      args.batch_size, args.seed, progress=True)
        conditions[direction] = (run.W_Q, run.W_K)
        runs[direction] = {"history": run.history,
                           "relative_change": {"W_Q": float((run.W_Q - W_Q).norm() / W_Q.norm()),
                                               "W_K": float((run.W_K - W_K).norm() / W_K.norm())}}
    for relative in args.trace_relative:
        eta = steering.trace_eta(W_Q, W_K, relative)
        conditions[f"trace {relative:g}"] = steering.trace_step(W_Q, W_K, eta)
        runs[f"trace {relative:g}"] = {"eta": eta}

    E = token_inputs(model, layer, args.input, seed=args.seed, progress=True)  # (d_vocab, d_model)
    labels = model.tokenizer.batch_decode([[i] for i in range(model.cfg.d_vocab)])
    metrics, top_keys = {}, {}
    for name, (Wq, Wk) in conditions.items():
        metrics[name] = evaluate(Wq, Wk)
        row = attention_scores(E[[query_id]], E, Wq, Wk, scale, b_Q, b_K)[0]  # (d_vocab,)
        values, keys = row.topk(args.top)
        top_keys[name] = {"keys": [labels[k] for k in keys], "scores": values,
                          "query_self_rank": int((row > row[query_id]).sum()) + 1}
    before = metrics["before"]
    for name, m in metrics.items():
        m["partner_mass_change"] = m["partner_mass"] / before["partner_mass"] - 1
    results = {"head": {"layer": layer, "head": head}, "input": args.input,
               "objective": "loss = s * self_mass - lam * partner_mass (s = +1 suppress, -1 restore)",
               "closed_form": "W_K <- W_K + eta W_Q, i.e. W <- W + eta W_Q W_Q^T (one step on -trace(W_Q W_K^T))",
               "query": args.query, "metrics": metrics, "runs": runs, "top_keys": top_keys,
               "largest_trace_step": steering.largest_trace_step(runs, metrics)}
    path = io.save_results(args.out, args.model, NAME, results, model_info=model.analysis_info,
                           arguments=vars(args), seed=args.seed)
    save_figure(figure(metrics, runs, layer, head), args.out, args.model, NAME)
    save_figure(top_keys_figure(top_keys, args.query, layer, head), args.out, args.model, f"{NAME}_top_keys")

    for name, m in metrics.items():
        print(f"{name:>12s}: self {m['self_mass']:.4f}, partner {m['partner_mass']:.3f} "
              f"({m['partner_mass_change']:+.1%}), BOS (no partner) {m['bos_mass_no_partner']:.3f}; "
              f"top keys of {args.query!r}: {', '.join(repr(k) for k in top_keys[name]['keys'][:4])}")
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
    for j, key in enumerate(METRICS):
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
