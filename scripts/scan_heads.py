"""Scan every attention head for previous-token, induction, duplicate-token and semantic behaviour.

Each probe is one batched forward pass per prompt set with a hook filter on hook_pattern:
  previous-token  mean A[i, i-1] on uniform random tokens (with and without the BOS row)
  induction       mean A[q, q-L+1] on [BOS] + r + r, second-half rows; ceiling 1.0
  duplicate       mean A[q, q-L] on the same prompts (attention to the earlier copy)
  semantic        S = mean_q -log(sum_k A[q,k] M[q,k]) nats on category-word prompts (lower is
                  better), with partner, self and BOS masses

Writes results/<model>/scan_heads.json and figures/<model>/scan_heads.{pdf,png}.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis import cli, io  # noqa: E402
from analysis.models import load_model  # noqa: E402
from analysis.plotting import head_heatmaps  # noqa: E402
from analysis.scan import ScanSettings, scan_heads, top_heads  # noqa: E402

NAME = "scan_heads"


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("--n-prompts", type=int, default=16, help="random and repeated prompts per probe (default: 16)")
    p.add_argument("--repeat-lengths", type=int, nargs="+", default=[50, 20],
                   help="lengths of r in [BOS] + r + r; the first is the headline (default: 50 20)")
    p.add_argument("--category-prompts", type=int, default=64, help="category-word prompts (default: 64)")
    p.add_argument("--category-words", type=int, default=64, help="words per category prompt (default: 64)")
    p.add_argument("--top", type=int, default=5, help="heads listed per kind (default: 5)")
    return p


def main(args) -> None:
    for flag in ("n_prompts", "category_prompts", "category_words", "top"):
        cli.check_positive(f"--{flag.replace('_', '-')}", getattr(args, flag))
    model = load_model(args.model, args.device)
    settings = ScanSettings(n_random=args.n_prompts, n_repeated=args.n_prompts,
                            repeat_lengths=tuple(args.repeat_lengths), n_category=args.category_prompts,
                            category_words=args.category_words)
    scan = scan_heads(model, settings, seed=args.seed, progress=True)
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
        "induction": top_heads(scan.induction[headline], args.top),
        "duplicate": top_heads(scan.duplicate[headline], args.top),
        "semantic": top_heads(semantic["surprisal"], args.top, largest=False),
    }
    results = {
        "maps": maps,
        "top_heads": {kind: [{"layer": l, "head": h, "score": s} for l, h, s in heads] for kind, heads in ranked.items()},
        "induction_ceiling": 1.0,
        "settings": settings.__dict__,
    }
    path = io.save_results(args.out, args.model, NAME, results, model_info=model.analysis_info,
                           arguments=vars(args), seed=args.seed)

    fig = head_heatmaps(
        [scan.previous_token, scan.induction[headline], scan.duplicate[headline], semantic["surprisal"]],
        ["previous-token", f"induction (|r| = {headline})", f"duplicate-token (|r| = {headline})",
         "semantic S (nats, lower = better)"],
        reverse=[False, False, False, True],
        suptitle=f"Head scan, {args.model}",
    )
    io.save_figure(fig, args.out, args.model, NAME)

    units = {"previous_token": "mean A[i,i-1]", "induction": "induction score", "duplicate": "duplicate score",
             "semantic": "S (nats)"}
    for kind, heads in ranked.items():
        listed = ", ".join(f"L{l}H{h} {s:.3f}" for l, h, s in heads)
        print(f"{kind:>15s} ({units[kind]}): {listed}")
    print(f"results: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
