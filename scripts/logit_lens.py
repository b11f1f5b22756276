"""Logit lens: the top predictions of the residual stream at every layer, for every position of a prompt.

The residual stream before each layer and after the last goes through the final LayerNorm
(normalised by its own scale) and the unembedding (analysis.patching.logit_lens); the last row is
the model's own prediction. Reports the top --top tokens with probabilities at every depth and
position, and the probability of the actual next token. Writes results/<model>/logit_lens.json
and figures/<model>/logit_lens.{pdf,png} (top-1 token and its probability; p(next token)).
"""

from __future__ import annotations

from analysis import cli, io, prompts
from analysis.models import load_model
from analysis.patching import logit_lens, next_token_log_probs
from analysis.patterns import check_context
from analysis.plotting import save_figure, use_style

NAME = "logit_lens"


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("--prompt", default=prompts.REPEATED_SENTENCE,
                   help="text prompt, BOS prepended (default: %(default)r)")
    p.add_argument("--top", type=cli.positive_int, default=5,
                   help="predictions kept per depth and position (default: 5)")
    p.at_most("--top", lambda s: s.d_vocab, "tokens in the vocabulary")
    p.prompt("--prompt")
    return p


def lens_figure(top1_labels, top1_prob, next_prob, depth_labels, position_labels):
    """Left: top-1 token (text) and its probability (colour); right: p(actual next token)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    use_style()
    n_depth, n_pos = top1_prob.shape
    fig, axes = plt.subplots(1, 2, figsize=(2 * (0.75 * n_pos + 2.5), 0.45 * n_depth + 2.2))
    sns.heatmap(top1_prob, ax=axes[0], cmap="Blues", vmin=0, vmax=1, annot=top1_labels, fmt="",
                annot_kws={"fontsize": 6}, xticklabels=position_labels, yticklabels=depth_labels,
                cbar_kws={"label": "p(top-1)"})
    axes[0].set(title="top-1 prediction", xlabel="position (input token)", ylabel="residual stream")
    sns.heatmap(next_prob, ax=axes[1], cmap="Greens", vmin=0, vmax=1, xticklabels=position_labels[:-1],
                yticklabels=depth_labels, cbar_kws={"label": "p(next token)"})
    axes[1].set(title="probability of the actual next token", xlabel="position (input token)", ylabel="")
    for ax in axes:
        ax.tick_params(labelsize=7)
        ax.invert_yaxis()  # embeddings at the bottom, output at the top
    fig.tight_layout()
    return fig


def main(args) -> None:
    model = load_model(args.model, args.device, args.processing)
    prompts.require_tokenizer(model, "The logit lens reads a text prompt and prints tokens")
    tokens = model.to_tokens(args.prompt).cpu()
    check_context(model, tokens)
    log_probs, depth_labels = logit_lens(model, tokens)  # (D, 1, T, vocab)
    probs = log_probs[:, 0].exp().cpu()  # (D, T, vocab)
    top_p, top_ids = probs.topk(args.top, dim=-1)  # (D, T, k)
    next_p = next_token_log_probs(log_probs, tokens)[:, 0].exp().cpu()  # (D, T-1)
    positions = model.to_str_tokens(tokens[0])
    text = lambda i: model.to_single_str_token(int(i))  # noqa: E731

    lens = [[{"position": t, "token": positions[t],
              "top": [{"token": text(i), "id": int(i), "p": float(pv)} for i, pv in zip(top_ids[d, t], top_p[d, t])]}
             for t in range(len(positions))] for d in range(len(depth_labels))]
    matches = [text(top_ids[-1, t, 0]) == positions[t + 1] for t in range(len(positions) - 1)]
    results = {"prompt": args.prompt, "tokens": positions, "depths": depth_labels, "lens": lens,
               "p_next_token": next_p, "final_top1_matches_next": matches,
               "final_top1_share": sum(matches) / len(matches)}
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(model.analysis_info, vars(args), args.seed))
    top1_labels = [[repr(text(top_ids[d, t, 0]))[1:-1] for t in range(len(positions))]
                   for d in range(len(depth_labels))]
    fig = lens_figure(top1_labels, top_p[..., 0].numpy(), next_p.numpy(), depth_labels,
                      [repr(s)[1:-1] for s in positions])
    save_figure(fig, args.out, args.model, NAME)

    for t in range(len(positions)):
        guesses = " | ".join(repr(text(top_ids[d, t, 0])) for d in range(len(depth_labels)))
        print(f"{positions[t]!r:>16} -> {guesses}")
    print(f"depths: {', '.join(depth_labels)}; results: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
