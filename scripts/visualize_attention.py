"""Attention of every head on a prompt: an interactive circuitsvis page and static heatmap grids.

For each layer (or only --layer), from one forward pass with a hook filter on hook_pattern:
  figures/<model>/visualize_attention_L<layer>.html     circuitsvis attention_heads, standalone and
                                                        offline (the library's JavaScript is inlined)
  figures/<model>/visualize_attention_L<layer>.{pdf,png} a grid of every head's pattern, for the paper
and results/<model>/visualize_attention.json with the tokens and the patterns.
"""

from __future__ import annotations

import math

from analysis import cli, io, prompts
from analysis.errors import UsageError
from analysis.models import load_model
from analysis.patterns import all_patterns
from analysis.plotting import attention_heads_html, attention_pattern, save_figure, use_style

NAME = "visualize_attention"


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("--prompt", default=prompts.REPEATED_SENTENCE,
                   help="text prompt, BOS prepended (default: %(default)r)")
    p.add_argument("--layer", type=int, default=None, help="only this layer (default: every layer)")
    p.prompt("--prompt")
    return p


def layer_grid(pattern, labels, layer: int):
    """Every head of one layer, `pattern: [head, query, key]`, in a near-square grid."""
    import matplotlib.pyplot as plt

    use_style()
    n = pattern.shape[0]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    size = max(3.5, 0.2 * len(labels))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for h, ax in enumerate(axes.flat):
        if h < n:
            attention_pattern(ax, pattern[h], labels, f"L{layer}H{h}")
        else:
            ax.axis("off")
    fig.tight_layout()
    return fig


def main(args) -> None:
    model = load_model(args.model, args.device, args.processing)
    prompts.require_tokenizer(model, "This script draws a text prompt")
    layers = range(model.cfg.n_layers)
    if args.layer is not None:
        if not 0 <= args.layer < model.cfg.n_layers:
            raise UsageError(f"Layer {args.layer} does not exist: this model has layers 0-{model.cfg.n_layers - 1}. "
                             "Pass --layer within that range, or leave it out for every layer.")
        layers = [args.layer]
    tokens = model.to_tokens(args.prompt).cpu()
    labels = model.to_str_tokens(tokens[0])
    pattern = all_patterns(model, tokens)[0]  # (L, nh, T, T), every head from one pass

    files = {}
    for layer in layers:
        names = [f"L{layer}H{h}" for h in range(model.cfg.n_heads)]
        html = io.figures_dir(args.out, args.model) / f"{NAME}_L{layer}.html"
        io.write_output(html, attention_heads_html(pattern[layer], labels, names,
                                                          f"{args.model} layer {layer}: {args.prompt}"))
        grid = save_figure(layer_grid(pattern[layer], labels, layer), args.out, args.model, f"{NAME}_L{layer}")
        files[layer] = {"html": html, "figures": grid}
    results = {"prompt": args.prompt, "tokens": labels, "layers": list(layers),
               "patterns": {layer: pattern[layer] for layer in layers}, "files": files}
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(model.analysis_info, vars(args), args.seed))
    for layer, f in files.items():
        print(f"layer {layer}: {f['html']} (interactive, offline), {f['figures'][1]}")
    print(f"results: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
