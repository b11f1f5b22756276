"""Which inputs build the semantic head's query and which its key: each upstream part removed on one side only.

The target head's input, blocks.L.hook_resid_pre, is split into its upstream parts (analysis.paths.input_parts):
the token embedding, the positional embedding (only where the model adds one to the stream; recorded), every head
of every earlier layer (its result z W_O), the earlier layers' attention output biases together, and every earlier
MLP; they sum to the input (checked, `parts.sum_check`). On category prompts (--categories) each part is then

  ablated (its mean over the prompts at positions >= 1, or zero; BOS keeps its input) on the query side only (the
  head's queries read the edited copy of the stream, its keys the unedited one), on the key side only, and on both
  (the study's design), and
  path-patched: its value on corrupted prompts (the clean prompt with --n-swaps words, seeded, swapped for words of
  another category, positions kept) written into the clean run's query side, key side or both.

Only the part's direct path into the target's q or k is edited; later components that read the part are not
recomputed. Each run measures, per prompt, S (exact, from the pre-softmax scores), the partner mass, the self mass
(itself + earlier copies) and the BOS mass of rows without a partner (with the clean prompts' mask), so every change
has a 95% bootstrap CI over prompts. `strongest` names, per side, the part whose removal most lowers the partner mass
(category attraction), most raises the self mass (self-avoidance) and most lowers the BOS fallback.

Writes results/<model>/query_key_paths.json and figures/<model>/query_key_paths.{pdf,png} (part x side heatmaps of
each change) and query_key_paths_patching.{pdf,png} (path-patching bars).
"""

from __future__ import annotations

from analysis import cli, io, paths, prompts
from analysis import path_records as rec
from analysis.heads import load_target
from analysis.plotting import save_figure, use_style

NAME = "query_key_paths"
SHOWN = ("partner_mass", "self_mass", "bos_mass_no_partner", "surprisal")
MAX_DRAWN = 20  # parts drawn: those with the largest mean-ablation change of any mass on any side


def drawn_parts(sides: dict, names: list[str]) -> list[str]:
    size = {n: max(abs(sides[k][n]["mean"][m]["value"]) for k in rec.SIDE_KEYS.values() for m in SHOWN[:3])
            for n in names}
    kept = set(sorted(names, key=lambda n: -size[n])[:MAX_DRAWN])
    return [n for n in names if n in kept]


def build_parser():
    p = cli.parser(__doc__, target_head=True)
    p.add_argument("--n-prompts", type=cli.positive_int, default=64, help="category prompts (default: 64)")
    p.add_argument("--n-words", type=cli.positive_int, default=48, help="words per prompt after BOS (default: 48)")
    p.add_argument("--n-swaps", type=cli.positive_int, default=16,
                   help="words swapped per corrupted prompt for path patching (default: 16)")
    p.fits_context("--n-words", lambda n: 1 + n)
    p.memory("--n-prompts or --n-words",
             lambda a, s: cli.pattern_bytes(s, a.n_prompts, 1 + a.n_words, heads=1, copies=8))
    cli.add_categories_argument(p)
    return p


def heatmaps(sides: dict, names: list[str], title: str):
    import matplotlib.pyplot as plt
    import numpy as np

    use_style()
    fig, axes = plt.subplots(len(paths.MODES), len(SHOWN), figsize=(3.2 * len(SHOWN), 0.9 + 0.32 * len(names) * 2),
                             squeeze=False)
    for r, mode in enumerate(paths.MODES):
        for c, metric in enumerate(SHOWN):
            grid = np.array([[sides[side][n][mode][metric]["value"] for side in rec.SIDE_KEYS.values()]
                             for n in names])
            bound = np.nanmax(np.abs(grid)) or 1.0
            ax = axes[r, c]
            image = ax.imshow(grid, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
            ax.set(xticks=range(3), xticklabels=list(paths.SIDES), yticks=range(len(names)),
                   yticklabels=names if c == 0 else [], title=f"{mode}: {metric.replace('_', ' ')}")
            fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def patching_bars(record: dict, names: list[str], title: str):
    import matplotlib.pyplot as plt
    import numpy as np

    use_style()
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.8 + 0.3 * len(names)), sharey=True)
    y = np.arange(len(names))
    for ax, metric in zip(axes, SHOWN[:3]):
        for i, side in enumerate(rec.SIDE_KEYS.values()):
            e = [record[side][n][metric] for n in names]
            v = np.array([x["value"] for x in e])
            err = np.abs(np.array([[x["low"], x["high"]] for x in e]).T - v)
            ax.barh(y + (i - 1) * 0.27, v, 0.27, xerr=err, label=side.replace("_", " "))
        ax.axvline(0, color="k", lw=0.6)
        ax.set(yticks=y, yticklabels=names, title=f"change of {metric.replace('_', ' ')}")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def main(args) -> None:
    model, layer, head = load_target(args)
    categories, category_record = cli.chosen_categories(args)
    probe = prompts.category_probe(model, categories, args.n_prompts, args.n_words, args.seed)
    parts = paths.input_parts(model, probe.tokens[:2], layer)
    ablated = paths.side_ablations(model, probe, (layer, head), progress=True)
    words = paths.category_words(prompts.category_index(model.tokenizer, categories, model.cfg.d_vocab))
    corrupted = paths.swap_words(probe.tokens, words, args.n_swaps, args.seed)
    patched = paths.path_patching(model, probe, corrupted, (layer, head), progress=True)

    names = ablated["names"]
    sides = {key: {n: {} for n in names} for key in rec.SIDE_KEYS.values()}
    for side, key in rec.SIDE_KEYS.items():
        for mode in paths.MODES:
            for n, entry in rec.change_record(paths.changes(ablated[side][mode], ablated["baseline"]), names,
                                              args.seed).items():
                sides[key][n][mode] = entry
    patching = {key: rec.change_record(paths.changes(patched[side], patched["baseline"]), names, args.seed)
                for side, key in rec.SIDE_KEYS.items()}
    results = {
        "target": {"layer": layer, "head": head},
        "parts": {"names": names, "positional_embedding": "in the stream" if "positional_embedding" in names
                  else f"none ({model.cfg.positional_embedding_type}: no positional term in the stream)",
                  "sum_check": float((parts.values.sum(0) - parts.resid_pre).abs().max())},
        "baseline": rec.baseline_record(ablated["baseline"], args.seed),
        **sides,
        "path_patching": {**patching, "baseline": rec.baseline_record(patched["baseline"], args.seed),
                          "corruption": {"n_swaps": args.n_swaps, "swapped_share": float(
                              (corrupted != probe.tokens).float().mean())}},
        "strongest": {"ablation": {key: {mode: rec.strongest({n: sides[key][n][mode] for n in names})
                                         for mode in paths.MODES} for key in rec.SIDE_KEYS.values()},
                      "path_patching": {key: rec.strongest(patching[key]) for key in rec.SIDE_KEYS.values()}},
        "categories": category_record,
        "design": "direct path only: the part is edited in the target's query or key input; components after the "
                  "part are not recomputed; BOS never edited; metrics with the clean prompts' mask",
        "units": "changes of S (nats) and masses, edited minus unedited, mean over prompts with 95% bootstrap CI",
    }
    path = io.save_results(args.out, args.model, NAME, results, io.Provenance(model.analysis_info, vars(args),
                                                                              args.seed))
    label, names = f"{args.model}: L{layer}H{head}", drawn_parts(sides, names)
    save_figure(heatmaps(sides, names, f"{label}, one part ablated on one side"), args.out, args.model, NAME)
    save_figure(patching_bars(patching, names, f"{label}, path patching from each part"), args.out, args.model,
                f"{NAME}_patching")
    for key in rec.SIDE_KEYS.values():
        found = results["strongest"]["ablation"][key]["mean"]
        print(f"{key} (mean ablation): " + ", ".join(f"{prop} <- {s['part']} ({s['metric']} {s['value']:+.3f} "
                                                      f"[{s['low']:+.3f}, {s['high']:+.3f}])"
                                                      for prop, s in found.items()))
    print(f"results: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
