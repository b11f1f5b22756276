"""Does the target head prefer similar-but-different tokens over the token itself?

For the N most frequent tokens (default: 8192 from results/<model>/token_freq.csv, written by
token_freq.py; the whole vocabulary when it has at most 8192 ordinary tokens, as the
organism's does) each token's head input x_t (vocab_input.head_input: embedding + mean
positional embedding + mean layer-0 attention output through block 0's MLP and the head's
LayerNorm; --variant zero drops the two means) gives, for every ordered pair q != k,
  d(q, k) = s(q, k) - s(q, q),   s(q, k) = (x_q W_Q + b_Q)(x_k W_K + b_K)^T / attn_scale
(biases included unless --no-bias), and c(q, k) = cos(x_q, x_k). The pairs are summarised by
windowed means of d over cosine windows with 99% CIs (bootstrap over queries), the cosine from
which similar-but-different keys beat self, and the peak. The category words (--categories: the
study's 8 by default) give a direct check: d over category-mates versus words of other categories.
The reference prompts whose means the head input adds are category prompts of --categories. One example query
(--query, default " red") is drawn with its best keys labelled.

Positions (key "position_treatment"): with rotary positions s(q, q) is read at Δ = 0 and s(q, k) for k != q at
M = E_Δ[R(Δ)] over the survey prompts' query-partner distances (`positions.position_treatment`), in the profile, the
category contrast of every head, the example query and the study's curves alike.

Units: attention logits in nats (with the model's 1/attn_scale = 1/sqrt(d_head)); --units
bits-unscaled reports s * attn_scale / ln 2.

Beside ours, the study's curve as its code defines it (`similarity.study_curve`, key "study"): the
same tokens plus BOS, unscaled scores without biases, log-softmax over the keys, the diagonal
subtracted column-wise (y = l(q,k) - l(k,k), which looks like a slip in the study's code but is what its
curve shows; the row-wise reading is under "study_row"), 50 overlapping closed windows of 0.03 with
self pairs included, in bits. The study's curve is also computed on the study's own head input (key
"study_on_study_input": `vocab_input.study_means`, the token ids run in order as one prompt), like for like with
the curve it reported.

Controls: the category contrast per category word (mates_minus_others = mean d over the word's
category-mates minus over other categories' words; word_mates_beat_self = share of its mates with
d > 0; both "high" for a semantic head that prefers similar-but-different tokens) for every head (the
category words only: cheap), compared with `controls.compare` (a paired bootstrap CI over the words of
target minus strongest control; keys directions / target / controls). `category_contrast` keeps the
target's contrast pooled over pairs.

Writes results/<model>/cosine_attention_analysis.json and figures/<model>/cosine_attention_analysis.{pdf,png}.
"""

from __future__ import annotations

from pathlib import Path

import torch

from analysis import cli, controls, io, positions, prompts, records, similarity
from analysis.attention import qk_head
from analysis.errors import UsageError
from analysis.frequency import check_frequency_csv, frequency_csv_path, ordinary_or_frequent_ids
from analysis.heads import load_target
from analysis.plotting import save_figure, similarity_figure, target_vs_controls
from analysis.vocab_input import InputSettings, head_input

NAME = "cosine_attention_analysis"
DEFAULT_TOKENS = 8192
DIRECTIONS = {"mates_minus_others": "high", "word_mates_beat_self": "high"}
STUDY_POSITIONS = "the study's curves (study, study_row) read their scores the same way, BOS a key like any other"


def build_parser():
    p = cli.parser(__doc__, target_head=True)
    cli.add_categories_argument(p)
    p.add_argument("--n-tokens", type=cli.int_at_least(2), default=None,
                   help=f"most frequent tokens to pair up (default: {DEFAULT_TOKENS}, or every ordinary token "
                        "of a smaller vocabulary)")
    p.add_argument("--freq-csv", type=Path, default=None,
                   help="token-frequency table (default: OUT/results/<model>/token_freq.csv from token_freq.py)")
    p.input_file("--freq-csv", check_frequency_csv)
    p.add_argument("--variant", choices=("mean", "zero"), default="mean",
                   help="head input: mean positional and attention-0 outputs added, or set to zero (default: mean)")
    p.add_argument("--no-bias", action="store_true", help="leave b_Q and b_K out of the scores")
    p.add_argument("--units", choices=("nats", "bits-unscaled"), default="nats",
                   help="nats: attention logits as the softmax sees them; bits-unscaled: s * attn_scale / ln 2")
    p.add_argument("--window", type=float, default=0.025, help="width of the cosine windows (default: 0.025)")
    p.add_argument("--query", default=" red", help="example query token (default: ' red')")
    p.add_argument("--n-labels", type=cli.positive_int, default=8,
                   help="best keys labelled for the example query (default: 8)")
    p.add_argument("--n-resamples", type=cli.positive_int, default=1000,
                   help="bootstrap resamples for the CIs (default: 1000)")
    p.add_argument("--chunk-size", type=cli.positive_int, default=1024,
                   help="queries per chunk, bounds memory (default: 1024)")
    return p


def main(args) -> None:
    if not 0 < args.window <= 1:
        raise UsageError(f"--window must lie in (0, 1], got {args.window}.")
    model, layer, head = load_target(args)
    (query_id,) = prompts.single_token_ids(model.tokenizer, [args.query])
    ids, chosen = ordinary_or_frequent_ids(model.cfg.d_vocab, prompts.special_token_ids(model), args.n_tokens
                                           or DEFAULT_TOKENS, args.freq_csv or frequency_csv_path(args.out, args.model))

    categories, category_record = cli.chosen_categories(args)
    reference = prompts.reference_prompts(model, args.seed, categories=categories)
    inputs = head_input(model, layer, reference, args.variant, ids, InputSettings(progress=True))  # (N, d_model)
    treatment = positions.position_treatment(model, categories, args.seed)  # rotary: self at Δ = 0, others at M
    qk = qk_head(model, layer, head, bias=not args.no_bias, rotation=treatment.rotation)
    unit = similarity.score_unit(args.units, qk.scale)
    settings = similarity.ProfileSettings(unit=unit, width=args.window, n_resamples=args.n_resamples, seed=args.seed,
                                          chunk_size=args.chunk_size)
    profile = similarity.similarity_profile(inputs, qk, settings, progress=True)

    # Category words (wherever they rank in frequency): mates against other categories, for every head.
    category_of = prompts.category_index(model.tokenizer, categories, model.cfg.d_vocab)
    words = similarity.category_words(category_of)  # (ids, category), each [n]
    stats = similarity.category_contrast_by_head(model, reference, args.variant, words,
                                                 similarity.HeadScores(not args.no_bias, unit, treatment.rotation))
    report = controls.compare((layer, head), {k: v.samples for k, v in stats.items()}, DIRECTIONS, args.n_resamples,
                              args.seed)

    # The study's curve, its definition: BOS among the tokens, unscaled, no biases, log-softmax, bits.
    bos = torch.tensor([prompts.bos_token_id(model)])
    study_inputs = torch.cat([head_input(model, layer, reference, args.variant, bos, InputSettings(use_cache=False)),
                              inputs])  # (1 + N, d_model)
    study = similarity.study_curves(study_inputs, qk, args.chunk_size, True)
    on_study_input = head_input(model, layer, None, "study", torch.cat([bos, ids]), InputSettings(progress=True))
    study["study_on_study_input"] = similarity.study_curves(on_study_input, qk, args.chunk_size, True)["study"]

    # The example query against every key of the set but itself.
    query_input = head_input(model, layer, reference, args.variant, torch.tensor([query_id]),
                             InputSettings(use_cache=False))
    keys = ids != query_id
    labels = model.tokenizer.batch_decode(ids[keys, None].tolist())
    example = similarity.example_query(query_input, int(category_of[query_id]),
                                       similarity.Keys(inputs[keys], labels, category_of[ids[keys]]), qk, unit,
                                       args.n_labels)

    unit_name = "nats" if args.units == "nats" else "bits, unscaled"
    results = {
        "position_treatment": treatment.described(STUDY_POSITIONS),
        **report,  # directions, target (layer, head and each statistic's rank), controls
        "settings": {"variant": args.variant, "biases_included": not args.no_bias, "units": unit_name, "scale": unit,
                     "tokens": chosen, "n_tokens": len(ids), "pairs": profile["pairs"], "window": args.window,
                     "ci": "99% percentile bootstrap over queries",
                     "reference": "prompts.reference_prompts over the categories"},
        **records.profile_record(profile),
        "category_contrast": stats[(layer, head)].pooled, "categories": category_record,
        "example": {"query": args.query, "top_keys": example["top_keys"], "mates": example["mate_keys"]},
        **study,
    }
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(model.analysis_info, vars(args), args.seed))
    title = (f"{args.model}: L{layer}H{head}, {len(ids)} tokens, {args.variant} head input, "
             f"biases {'in' if not args.no_bias else 'out'}")
    save_figure(similarity_figure(profile, example, args.query, unit_name, title, study["study"]), args.out,
                args.model, NAME)
    save_figure(target_vs_controls(report, f"{args.model}: L{layer}H{head}'s category contrast against every head"),
                args.out, args.model, NAME + "_controls")

    print(f"L{layer}H{head}, {len(ids)} tokens ({chosen}), {args.variant} input, {unit_name}")
    print("\n".join(records.similarity_lines(results)))
    print(f"results: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
