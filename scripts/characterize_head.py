"""Survey every head for self-suppressing semantic attention, then characterise the target head.

Prompts are the study's category sequences (BOS, then random category, random word, repeated).
The ground-truth mask marks, for each query, the earlier words of its category that are a
different word; a query with none falls back to BOS. Per head:
  S                    mean_q -log(sum_k A[q,k] M[q,k]) in nats (lower is better)
  partner_mass         attention on valid partners, rows that have one
  self_mass            attention on the query itself plus earlier copies of the same word
  bos_mass_no_partner  attention on BOS, rows without a partner
  argmax_accuracy      fraction of rows whose most-attended key is a valid target
each with a percentile-bootstrap 95% CI over prompts. S is exact and uncapped: it is computed from
the pre-softmax scores (log of the masked mass = logsumexp over the marked keys minus logsumexp over
all keys), so a head far from its targets scores its true surprisal.

Against every other head (`comparison`): each metric of the target as a `controls.Sample` over the
report set's prompts against the strongest other head, with a paired bootstrap CI of the difference
(masses on the logit scale); S is a primary statistic of the claim (`analysis.evidence`). The two
properties (`properties`): each head's self-avoidance and category attraction read from its
pre-softmax scores on the report set (`properties.in_context_units`), each with a CI over prompts.

Honest selection: the head is selected (lowest mean S) on one prompt set (--seed) and its values
and CIs are reported on a disjoint one (seed + 1000); both seeds are recorded, and the selection
set's ranking is kept beside the report set's. The prompts use the study's 8 categories by default
(--categories all: the 10-category union). The target head (--layer/--head, default: the selected
head) is drawn on one example prompt beside the ground-truth mask, and its layer is written as a
standalone circuitsvis HTML page.

The study's own design, beside ours (results.study_design): its S = 0.6 for L1H5 came from one prompt of 255
keywords drawn from the keyword list of its figure-era code (`prompts.STUDY_FIGURE_CATEGORIES`: 4 categories),
its last row sent to BOS, and S averaged over every row, the BOS row included, each row's mass clamped at 1e-12.
Every head's S is computed that way on --study-prompts seeded prompts of --study-words words (seed + 2000): the
first prompt's value (what the study read) and the 5-95 % spread over prompts. A model with a shorter context
gets the longest prompt that fits, and keywords its tokenizer lacks are left out; both are recorded.

Writes results/<model>/characterize_head.json and, under figures/<model>/, characterize_head
(S and companions per head), characterize_head_example (pattern beside mask) and
characterize_head_layer<L>.html.
"""

from __future__ import annotations

import math

from analysis import cli, io, prompts, records, scan
from analysis.controls import compare
from analysis.heads import target_head
from analysis.models import load_model
from analysis.patterns import all_patterns_and_scores
from analysis.plotting import attention_heads_html, attention_pattern, head_heatmaps, save_figure
from analysis.scores import PATTERN_MASS_FLOOR, semantic_scores
from analysis.survey import (SURVEY_DIRECTIONS, behaviour_verdicts, design_summary, separation, survey_samples,
                             survey_table)

NAME = "characterize_head"
STUDY_SEED_OFFSET = 2000  # the study-design prompts' seed is --seed + this: a draw apart from the survey's


def build_parser():
    p = cli.parser(__doc__, target_head=True)
    p.add_argument("--n-prompts", type=cli.positive_int, default=64,
                   help="category prompts in the survey (default: 64)")
    p.add_argument("--n-words", type=cli.positive_int, default=64,
                   help="words per survey prompt, BOS not counted (default: 64)")
    p.add_argument("--example-words", type=cli.positive_int, default=24,
                   help="words in the example prompt (default: 24)")
    p.add_argument("--n-resamples", type=cli.positive_int, default=2000,
                   help="bootstrap resamples for the CIs (default: 2000)")
    p.add_argument("--top", type=cli.positive_int, default=5, help="heads printed in the summary (default: 5)")
    p.add_argument("--study-prompts", type=cli.positive_int, default=32,
                   help="prompts of the study's design, the first one being the study's single prompt (default: 32)")
    p.add_argument("--study-words", type=cli.positive_int, default=255,
                   help="words per prompt of the study's design, BOS not counted; capped at the context and "
                        "recorded (default: 255, the study's)")
    p.fits_context("--n-words", lambda n: 1 + n)
    p.fits_context("--example-words", lambda n: 1 + n)
    cli.add_categories_argument(p)
    p.memory("--n-prompts or --n-words", lambda a, s: cli.pattern_bytes(s, a.n_prompts, 1 + a.n_words, copies=4))
    p.memory("--n-resamples or --n-prompts", lambda a, s: 16 * a.n_resamples * a.n_prompts * s.n_layers * s.n_heads,
             "bootstrap resamples")
    p.memory("--study-words", lambda a, s: cli.pattern_bytes(s, min(8, a.study_prompts),
                                                             1 + min(a.study_words, s.n_ctx - 1), copies=3),
             "the study design's attention patterns (8 prompts at a time)")
    return p


def example_figure(pattern, mask, labels, layer: int, head: int, title: str):
    """The head's attention beside the ground-truth mask, on the same token axes."""
    import matplotlib.pyplot as plt

    size = max(5.0, 0.22 * len(labels))
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    attention_pattern(axes[0], pattern, labels, f"L{layer}H{head} attention")
    attention_pattern(axes[1], prompts.target_distribution(mask), labels, "ground truth (uniform over targets)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def main(args) -> None:
    model = load_model(args.model, args.device, args.processing)

    chosen = None if args.layer is None and args.head is None else target_head(model, args.layer, args.head)

    categories, category_record = cli.chosen_categories(args)
    held_out = scan.held_out_survey(model, args.n_prompts, args.n_words, args.seed, categories)
    selection = survey_table(held_out["selection"], n_resamples=args.n_resamples, seed=args.seed)
    survey = held_out["report"]  # every reported value and CI comes from the prompts that did not select the head
    table = survey_table(survey, n_resamples=args.n_resamples, seed=args.seed)
    layer, head = chosen or (int(selection["layer"][0]), int(selection["head"][0]))
    target_row = table[(table["layer"] == layer) & (table["head"] == head)].iloc[0]
    selected_row = selection[(selection["layer"] == layer) & (selection["head"] == head)].iloc[0]

    # One fresh example prompt (another seed than the survey's), every head from one pass.
    tokens, mask = prompts.category_probe(model, categories, 1, args.example_words, args.seed + 1)
    pattern, attn_scores = all_patterns_and_scores(model, tokens)
    pattern, attn_scores = pattern[0], attn_scores[0]  # (layer, head, q, k)
    example = {k: float(v[0, head])
               for k, v in semantic_scores(pattern[layer][None], tokens, mask, attn_scores[layer][None]).items()}
    labels = model.to_str_tokens(tokens[0])
    comparison = compare((layer, head), survey_samples(survey), SURVEY_DIRECTIONS, args.n_resamples, args.seed)
    verdicts = behaviour_verdicts(survey, args.n_resamples, args.seed)

    # The study's own design: its keyword list, one long prompt (the first), the last-row quirk, its S.
    design = prompts.study_design_probe(model, args.study_prompts, args.study_words, args.seed + STUDY_SEED_OFFSET)
    study_design = records.study_design_record(
        design, design_summary(scan.study_design_survey(model, design.probe), (layer, head)),
        args.study_words, model.cfg.n_ctx)

    results = {
        "survey": table.to_dict("records"),  # the report set, ranked by its own S
        "separation": separation(table, layer, head),  # the target against the best other head, report set
        "comparison": comparison,  # every metric against the strongest other head, paired CI over prompts
        "properties": records.property_record(verdicts, "pre-softmax scores on the report prompts", "prompt"),
        "target": {"layer": layer, "head": head, "chosen_by": "--layer/--head" if chosen else "survey",
                   **{k: float(v) for k, v in target_row.items() if k not in ("layer", "head", "rank")},
                   "rank": int(target_row["rank"]), "selection_rank": int(selected_row["rank"]),
                   "selection_surprisal": float(selected_row["surprisal"])},
        "selection": {"seed": held_out["seeds"]["selection"], "survey": selection.to_dict("records"),
                      "separation": separation(selection)},
        "seeds": {**held_out["seeds"], "example": args.seed + 1, "study_design": args.seed + STUDY_SEED_OFFSET},
        # the study's design beside ours: one prompt of its keywords, BOS row in the mean, last row to BOS
        "study_design": study_design,
        # the report set's worst head: uncapped S, beside the cap -log(max(mass, PATTERN_MASS_FLOOR)) would put on a row
        "worst_head": {"layer": int(table["layer"].iloc[-1]), "head": int(table["head"].iloc[-1]),
                       "surprisal": float(table["surprisal"].iloc[-1]), "clamped_row_cap": -math.log(PATTERN_MASS_FLOOR)},
        "shared_prompts": held_out["shared_prompts"],
        "categories": category_record,
        "example": {"tokens": labels, "scores": example},
        "units": {"surprisal": "nats, lower is better, exact (from the attention scores, no cap)",
                  "ci": "95% percentile bootstrap over the report set's prompts",
                  "study_design": "the study's S: mean over every row, BOS included, of -ln(max(mass, 1e-12)), "
                                  "with its mask (last row to BOS); one_prompt: the first prompt; p05, median, "
                                  "p95: quantiles over the prompts"},
    }
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(model.analysis_info, vars(args), args.seed))

    mean = {k: survey[k].nanmean(0) for k in ("surprisal", "partner_mass", "self_mass")}
    fig = head_heatmaps([mean["surprisal"], mean["partner_mass"], mean["self_mass"]],
                        ["S (nats, lower = better)", "partner mass", "self + copies mass"],
                        reverse=[True, False, True], suptitle=f"Semantic-head survey, {args.model}")
    save_figure(fig, args.out, args.model, NAME)
    fig = example_figure(pattern[layer, head], mask[0], labels, layer, head,
                         f"{args.model}: example prompt, S = {example['surprisal']:.2f} nats")
    save_figure(fig, args.out, args.model, f"{NAME}_example")
    names = [f"L{layer}H{h}" for h in range(model.cfg.n_heads)]
    html = io.write_output(io.figures_dir(args.out, args.model) / f"{NAME}_layer{layer}.html",
                           attention_heads_html(pattern[layer], labels, names, f"{args.model}: layer {layer}"))

    print(f"{'head':>6s} {'S (95% CI)':>22s} {'partner':>8s} {'self':>6s} {'BOS|none':>8s} {'argmax':>7s}")
    for row in table.head(args.top).itertuples():
        print(f"  L{row.layer}H{row.head} {row.surprisal:7.3f} [{row.surprisal_low:.3f}, {row.surprisal_high:.3f}]"
              f" {row.partner_mass:8.3f} {row.self_mass:6.3f} {row.bos_mass_no_partner:8.3f}"
              f" {row.argmax_accuracy:7.3f}")
    sep = results["separation"]
    print(f"target L{layer}H{head}: rank {results['target']['selection_rank']} on the selection set "
          f"(seed {held_out['seeds']['selection']}), rank {results['target']['rank']} on the report set "
          f"(seed {held_out['seeds']['report']}); vs the best other head: margin {sep['margin']:.3f} nats, "
          f"CIs {'disjoint' if sep['separated'] else 'overlap'}")
    print("\n".join(records.comparison_lines(comparison)))
    print("\n".join(records.property_lines(results["properties"])))
    ours_design = study_design["target"]
    print(f"the study's design ({design.n_words} words, {len(design.categories)} categories, "
          f"departures: {study_design['departures_text']}): L{layer}H{head} S {ours_design['one_prompt']:.3f} on one "
          f"prompt (rank {ours_design['rank']}), median {ours_design['median']:.3f} "
          f"[{ours_design['p05']:.3f}, {ours_design['p95']:.3f}] over {args.study_prompts}; runner-up "
          f"L{study_design['runner_up']['layer']}H{study_design['runner_up']['head']} "
          f"{study_design['runner_up']['one_prompt']:.3f}")
    print(f"results: {path}\nlayer view: {html}")


if __name__ == "__main__":
    cli.run(main, build_parser())
