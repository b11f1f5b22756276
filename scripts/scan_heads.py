"""Scan every attention head for previous-token, induction, duplicate-token and semantic behaviour.

Each probe is one batched forward pass per prompt set with a hook filter on hook_pattern:
  previous-token  mean A[i, i-1] on uniform random tokens (with and without the BOS row)
  induction       mean A[q, q-L+1] on [BOS] + r + r, second-half rows; ceiling 1.0
  duplicate       mean A[q, q-L] on the same prompts (attention to the earlier copy)
  semantic        S = mean_q -log(sum_k A[q,k] M[q,k]) nats on category-word prompts (lower is
                  better; exact and uncapped, from the pre-softmax scores), with partner, self and
                  BOS masses; the study's 8 categories by default (--categories all: 10)

Cross-check: TransformerLens's head_detector.detect_head on text prompts r + r (r distinct words;
detect_head prepends BOS and averages per prompt), beside our scores on the same prompts. Its
"mul" score divides by all T = 2L + 1 rows, so detect = ours * 2L/(2L+1) for previous-token heads
and ours * L/(2L+1) for induction and duplicate-token heads (ceiling 0.495 at L = 50, not 1).

Writes results/<model>/scan_heads.json and figures/<model>/scan_heads.{pdf,png} (heatmaps),
scan_heads_detect_head.{pdf,png} (the cross-check) and scan_heads_patterns.{pdf,png} (each kind's
best head on a natural sentence and on a repeated one).
"""

from __future__ import annotations

from analysis import cli, io, prompts
from analysis.detector_check import cross_check
from analysis.models import load_model
from analysis.patterns import all_patterns
from analysis.plotting import best_head_patterns, head_heatmaps, save_figure
from analysis.scan import ScanSettings, scan_heads, top_heads

NAME = "scan_heads"


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("--n-prompts", type=cli.positive_int, default=16,
                   help="random and repeated prompts per probe (default: 16)")
    p.add_argument("--repeat-lengths", type=cli.positive_int, nargs="+", default=[50, 20],
                   help="lengths of r in [BOS] + r + r; the first is the headline (default: 50 20)")
    p.add_argument("--category-prompts", type=cli.positive_int, default=64, help="category-word prompts (default: 64)")
    p.add_argument("--category-words", type=cli.positive_int, default=64,
                   help="words per category prompt (default: 64)")
    p.add_argument("--top", type=cli.positive_int, default=5, help="heads listed per kind (default: 5)")
    p.add_argument("--detect-prompts", type=cli.positive_int, default=10,
                   help="text prompts r + r for the detect_head cross-check, |r| = the first repeat length "
                        "(default: 10)")
    p.add_argument("--sentence", default=prompts.IOI_SENTENCE,
                   help="natural sentence on which each kind's best head is drawn (default: %(default)r)")
    p.add_argument("--repeated-sentence", default=prompts.REPEATED_SENTENCE,
                   help="repeated sentence on which each kind's best head is drawn (default: %(default)r)")
    p.fits_context("--repeat-lengths", lambda r: 1 + 2 * r)
    p.fits_context("--category-words", lambda n: 1 + n)
    p.memory("--n-prompts or --repeat-lengths", lambda a, s: cli.pattern_bytes(
        s, a.n_prompts, max(1 + 2 * max(a.repeat_lengths), 1 + ScanSettings.random_length)))
    cli.add_categories_argument(p)
    p.memory("--category-prompts or --category-words",
             lambda a, s: cli.pattern_bytes(s, a.category_prompts, 1 + a.category_words, copies=4))
    p.prompt("--sentence", "--repeated-sentence")
    return p


def main(args) -> None:
    model = load_model(args.model, args.device, args.processing)
    settings = ScanSettings(n_random=args.n_prompts, n_repeated=args.n_prompts,
                            repeat_lengths=tuple(args.repeat_lengths), n_category=args.category_prompts,
                            category_words=args.category_words)
    categories, _ = cli.chosen_categories(args)
    scan = scan_heads(model, settings, seed=args.seed, categories=categories, progress=True)
    headline = args.repeat_lengths[0]
    semantic = {k: v.nanmean(0) for k, v in scan.semantic.items()}  # [layer, head]

    maps = {
        "previous_token": scan.previous_token,
        "previous_token_no_bos": scan.previous_token_no_bos,
        **{f"induction_{length}": s for length, s in scan.induction.items()},
        **{f"duplicate_{length}": s for length, s in scan.duplicate.items()},
        **{f"semantic_{k}": v for k, v in semantic.items()},
    }
    ranked = {
        "previous_token": top_heads(scan.previous_token, args.top),
        "previous_token_no_bos": top_heads(scan.previous_token_no_bos, args.top),
        "induction": top_heads(scan.induction[headline], args.top),
        "duplicate": top_heads(scan.duplicate[headline], args.top),
        "semantic": top_heads(semantic["surprisal"], args.top, largest=False),
    }
    check = cross_check(model, args.detect_prompts, headline, args.seed + 200)
    sentences = [args.sentence, args.repeated_sentence]
    tokens = [model.to_tokens(s).cpu() for s in sentences]
    patterns = [all_patterns(model, t)[0] for t in tokens]  # one pass per sentence: (L, nh, T, T)
    drawn = {kind: {"layer": heads[0][0], "head": heads[0][1], "patterns": [p[heads[0][:2]] for p in patterns]}
             for kind, heads in ranked.items() if kind != "previous_token_no_bos"}  # each kind's best head
    fig_patterns = best_head_patterns(drawn, [model.to_str_tokens(t[0]) for t in tokens])
    results = {
        "maps": maps,
        "top_heads": {kind: [{"layer": l, "head": h, "score": s} for l, h, s in heads]
                      for kind, heads in ranked.items()},
        # every map read at each kind's best head, e.g. best_head_scores.induction.induction_20
        "best_head_scores": {kind: {name: float(m[heads[0][0], heads[0][1]]) for name, m in maps.items()}
                             for kind, heads in ranked.items()},
        "induction_ceiling": 1.0,
        "settings": {**settings.__dict__, "categories": args.categories},
        "detect_head": {
            "prompts": f"{args.detect_prompts} texts r + r, |r| = {headline} distinct words, BOS prepended",
            "induction_ceiling": check["induction"]["expected_ratio"],
            "max_deviation": max(c["max_deviation"] for c in check.values()),  # over every kind
            **{kind: {**c, "top_heads": [{"layer": l, "head": h, "score": v}
                                         for l, h, v in top_heads(c["detect_head"], args.top)]}
               for kind, c in check.items()},
        },
        "best_head_patterns": {"sentences": sentences, **drawn},
    }
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(model.analysis_info, vars(args), args.seed))

    fig = head_heatmaps(
        [scan.previous_token, scan.induction[headline], scan.duplicate[headline], semantic["surprisal"]],
        ["previous-token", f"induction (|r| = {headline})", f"duplicate-token (|r| = {headline})",
         "semantic S (nats, lower = better)"],
        reverse=[False, False, False, True],
        suptitle=f"Head scan, {args.model}",
    )
    save_figure(fig, args.out, args.model, NAME)
    save_figure(fig_patterns, args.out, args.model, f"{NAME}_patterns")
    fig = head_heatmaps([m for c in check.values() for m in (c["detect_head"], c["ours"])],
                        [f"{kind.replace('_', ' ')}: {who}" for kind in check for who in ("detect_head", "ours")],
                        suptitle=f"detect_head (mul) vs ours on the same {args.detect_prompts} prompts, "
                                 f"|r| = {headline}")
    save_figure(fig, args.out, args.model, f"{NAME}_detect_head")

    units = {"previous_token": "mean A[i,i-1]", "previous_token_no_bos": "same, BOS row left out",
             "induction": "induction score", "duplicate": "duplicate score", "semantic": "S (nats)"}
    for kind, heads in ranked.items():
        listed = ", ".join(f"L{l}H{h} {s:.3f}" for l, h, s in heads)
        print(f"{kind:>21s} ({units[kind]}): {listed}")
    for kind, c in check.items():
        listed = ", ".join(f"L{l}H{h} {v:.3f}" for l, h, v in top_heads(c["detect_head"], args.top))
        print(f"{'detect_head ' + kind:>21s}: {listed}  (= ours x {c['expected_ratio']:.3f}, "
              f"max deviation {c['max_deviation']:.1e})")
    print(f"results: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
