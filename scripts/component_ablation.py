"""Which upstream components the semantic head reads: its score with each one ablated.

On category prompts (the study's distribution; --categories, the study's 8 by default), the target head's
S = mean_q -log(sum_k A[q,k] M[q,k]) (nats, lower is better; exact and uncapped, from the head's
pre-softmax scores, over every row but BOS, as the survey computes it) is measured per prompt with each
of these replaced, at every position after BOS, by its mean over the prompts (mode "mean") or by zero
(mode "zero"):
  token_embedding       hook_embed
  positional_embedding  hook_pos_embed
  attention_0           blocks.0.hook_attn_out
  mlp_0                 blocks.0.hook_mlp_out
plus "mlp_only_residual" (block 0's resid_post replaced by the MLP0 output alone) and the
unablated baseline. A head that reads token identity suffers from losing the embedding (or the
MLP0 path that carries it), not from losing position.

Two conventions, side by side (`ablation.CONVENTIONS`): ours ("ours_bos_kept": means over
positions >= 1, BOS left unablated, so the head's fall-back stays; `--ablate-bos` ablates BOS too)
and the study's ("study_bos_ablated": mean over the batch and all positions, BOS included,
written at every position, BOS included; mean mode only), as in the study's code. The study's convention
is scored twice on our prompts: with our S (`by_convention`) and with the study's own S
(`study_convention_our_prompts`: clamped at 1e-12, the BOS row counted in the mean, `scores.study_surprisal`).
The study's way in full (`study_way`, what its reported medians mean and what the replication table compares
them with) also takes the study's prompts: --study-prompts (128) prompts of --study-words (63) words from the
keyword list of its figure-era code (`prompts.STUDY_FIGURE_CATEGORIES`, 4 categories; keywords the tokenizer
lacks left out and recorded), its mask with the last row sent to BOS (`prompts.study_mask`), medians over prompts.
The same run with our mask (`study_way_without_last_row_quirk`) shows what the last-row quirk alone does.

Writes results/<model>/component_ablation.json (table and per-prompt scores) and
figures/<model>/component_ablation.{pdf,png} (box plots).
"""

from __future__ import annotations

from dataclasses import replace

from analysis import cli, io, prompts, records
from analysis.ablation import (CONVENTIONS, AblationSettings, ablation_study, damage_share, missing_components,
                               summary_table)
from analysis.errors import UsageError
from analysis.heads import target_head
from analysis.models import load_model
from analysis.plotting import save_figure, use_style

NAME = "component_ablation"


def build_parser():
    p = cli.parser(__doc__, target_head=True)
    p.add_argument("--n-prompts", type=cli.positive_int, default=128, help="category prompts (default: 128)")
    p.add_argument("--n-words", type=cli.positive_int, default=64,
                   help="words per prompt, BOS not counted (default: 64)")
    p.fits_context("--n-words", lambda n: 1 + n)
    p.memory("--n-prompts or --n-words",
             lambda a, s: cli.pattern_bytes(s, a.n_prompts, 1 + a.n_words, heads=1, copies=4))
    p.add_argument("--modes", nargs="+", choices=("mean", "zero"), default=["mean", "zero"],
                   help="ablation modes (default: mean zero)")
    cli.add_categories_argument(p)
    p.add_argument("--ablate-bos", action="store_true",
                   help="ablate at BOS too (default: BOS keeps its activations, so its role as fall-back stays)")
    p.add_argument("--study-prompts", type=cli.positive_int, default=128,
                   help="prompts of the study's way, its keyword list and mask (default: 128, the study's)")
    p.add_argument("--study-words", type=cli.positive_int, default=63,
                   help="words per prompt of the study's way, BOS not counted (default: 63, the study's)")
    p.fits_context("--study-words", lambda n: 1 + n)
    p.memory("--study-prompts or --study-words",
             lambda a, s: cli.pattern_bytes(s, a.study_prompts, 1 + a.study_words, heads=1, copies=4))
    return p


def box_plot(study, layer: int, head: int, title: str):
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    use_style()
    long = pd.DataFrame([{"mode": mode, "condition": condition.replace("_", " "), "S": float(v)}
                         for mode, conditions in study.items() for condition, s in conditions.items() for v in s])
    fig, ax = plt.subplots(figsize=(9, 4))
    sns.boxplot(long, x="condition", y="S", hue="mode", ax=ax, fliersize=2)
    ax.set(ylabel=f"L{layer}H{head} S per prompt (nats, lower = better)", xlabel="", title=title)
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig


def main(args) -> None:
    model = load_model(args.model, args.device, args.processing)
    if missing := missing_components(model):
        raise UsageError(
            f"{args.model} has no {', '.join(c.replace('_', ' ') for c in missing)} to ablate (its positions are "
            "rotary, applied inside attention), and this script compares exactly the study's components. "
            "scripts/query_key_paths.py splits the head's input into the parts this model has, on the query and "
            "key sides.")
    layer, head = target_head(model, args.layer, args.head, args.seed)
    categories, category_record = cli.chosen_categories(args)
    probe = prompts.category_probe(model, categories, args.n_prompts, args.n_words, args.seed)
    ours = AblationSettings(tuple(args.modes), keep_bos=not args.ablate_bos)
    study = ablation_study(model, probe, layer, head, ours, progress=True)
    table = summary_table(study, seed=args.seed)  # {mode: {condition: summary}}
    theirs = AblationSettings(("mean",), **CONVENTIONS["study_bos_ablated"])  # the study's convention
    study_way = ablation_study(model, probe, layer, head, theirs, progress=True)["mean"]  # {condition: S}
    study_table = summary_table({"mean": study_way}, seed=args.seed)["mean"]
    study_scored = ablation_study(model, probe, layer, head, replace(theirs, score="study"))["mean"]  # and its own S
    study_scored_table = summary_table({"mean": study_scored}, seed=args.seed)["mean"]
    # the study's way in full: its prompts (figure-era keywords, last row to BOS), its convention, its S
    design = prompts.study_design_probe(model, args.study_prompts, args.study_words, args.seed)
    full = ablation_study(model, design.probe, layer, head, replace(theirs, score="study"))["mean"]
    full_table = summary_table({"mean": full}, seed=args.seed)["mean"]
    # the same prompts with our mask (the last row keeps its partners): what the last-row quirk alone does
    tokens = design.probe.tokens
    unquirked = prompts.Probe(tokens, prompts.semantic_mask(tokens, prompts.category_index(
        model.tokenizer, design.categories, model.cfg.d_vocab)))
    no_quirk = ablation_study(model, unquirked, layer, head, replace(theirs, score="study"))["mean"]
    no_quirk_table = summary_table({"mean": no_quirk}, seed=args.seed)["mean"]

    median = {mode: {condition: row["median"] for condition, row in rows.items()} for mode, rows in table.items()}
    token_vs_position = {mode: median[mode]["token_embedding"] - median[mode]["positional_embedding"]
                         for mode in args.modes}
    position_share = {mode: damage_share(median[mode]["baseline"], median[mode]["positional_embedding"],
                                         median[mode]["token_embedding"]) for mode in args.modes}
    results = {
        "target": {"layer": layer, "head": head},
        "table": table,
        "token_minus_positional_median": token_vs_position,
        "positional_share_of_token_damage": position_share,  # (positional - baseline) / (token - baseline)
        "per_prompt": study,
        "keep_bos": not args.ablate_bos,
        # the study's convention beside ours: {convention: {condition: summary}}, mean mode
        "by_convention": {("ours_bos_ablated" if args.ablate_bos else "ours_bos_kept"): table.get("mean"),
                          "study_bos_ablated": study_table},
        "study_per_prompt": study_way,
        # the study's convention scored with the study's S (clamp 1e-12, BOS row in the mean), on our prompts
        "study_convention_our_prompts": study_scored_table,
        # the study's way in full: its prompts and mask (last row to BOS), convention and S: like for like
        "study_way": full_table,
        "study_way_per_prompt": full,
        # the study's way with our mask: its last row keeps its partners instead of falling back to BOS
        "study_way_without_last_row_quirk": no_quirk_table,
        "study_design": {**records.design_record(design, args.study_words, model.cfg.n_ctx), "seed": args.seed},
        "categories": category_record,
        "score": {"ours": "S exact and uncapped from pre-softmax scores, rows >= 1 (scores.semantic_surprisal)",
                  "study_way": "the study's S: mean over all rows of -ln(max(mass, 1e-12)) (scores.study_surprisal)"},
        "conventions": {"ours": "means over positions >= 1; BOS " + ("ablated" if args.ablate_bos else "kept"),
                        "study": "mean over batch and all positions (BOS included), written at every position "
                                 "(BOS included), mean mode only (the study's code, src/ablation.py)"},
        "units": "S in nats, lower is better; CI: 95% bootstrap of the mean over prompts",
    }
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(model.analysis_info, vars(args), args.seed))
    fig = box_plot(study, layer, head, f"{args.model}: L{layer}H{head} under component ablations "
                                       f"({args.n_prompts} prompts)")
    save_figure(fig, args.out, args.model, NAME)

    print(f"L{layer}H{head}: median S (nats) per condition")
    print(f"{'':>22s}" + "".join(f"{mode:>8s}" for mode in args.modes))
    for condition in study[args.modes[0]]:
        print(f"{condition:>22s}" + "".join(f"{median[mode][condition]:8.3f}" for mode in args.modes))
    print("study's convention (BOS ablated, mean mode): "
          + ", ".join(f"{c} {row['median']:.3f}" for c, row in study_table.items()))
    print("the same with the study's S (clamp 1e-12, BOS row counted): "
          + ", ".join(f"{c} {row['median']:.3f}" for c, row in study_scored_table.items()))
    print(f"the study's way in full ({args.study_prompts} prompts of {design.n_words} words, its keyword list, "
          "last row to BOS): " + ", ".join(f"{c} {row['median']:.3f}" for c, row in full_table.items()))
    print("the same without the last-row quirk: "
          + ", ".join(f"{c} {row['median']:.3f}" for c, row in no_quirk_table.items()))
    print("token embedding minus positional embedding (median): "
          + ", ".join(f"{mode} {d:+.3f}" for mode, d in token_vs_position.items()))
    print(f"results: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
