"""Per-head attention statistics over a prompt set: entropy, maximum attention, distance, BOS mass.

For every head, averaged over query rows after BOS and over prompts (analysis.attention_stats):
  entropy         -sum_k A[q,k] ln A[q,k] (nats; low = focused, uniform over q+1 keys = ln(q+1))
  max attention   max_k A[q,k]
  mean distance   sum_k A[q,k] (q - k), in tokens
  BOS mass        A[q, 0]
The prompt set mixes uniform random tokens, repeated random tokens ([BOS] + r + r) and, when the
model has a tokenizer, category-word prompts (--categories: the study's 8 by default); --text FILE uses one
text prompt per line instead.
Every head comes from one batched forward pass per prompt set. Lists the most focused, most
diffuse and longest-range heads. Writes results/<model>/attention_stats.json and
figures/<model>/attention_stats.{pdf,png}.
"""

from __future__ import annotations

from pathlib import Path

import torch

from analysis import cli, io, prompts
from analysis.attention_stats import STATISTICS, attention_statistics
from analysis.errors import UsageError
from analysis.models import load_model
from analysis.patterns import all_patterns, flatten_heads
from analysis.plotting import head_heatmaps, save_figure
from analysis.scan import top_heads
from analysis.scores import scored_rows

NAME = "attention_stats"


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("--n-prompts", type=cli.positive_int, default=16,
                   help="prompts per generated prompt set (default: 16)")
    p.add_argument("--length", type=cli.int_at_least(2), default=48,
                   help="tokens after BOS per generated prompt, at least 2 (the repeated set needs r + r) "
                        "(default: 48)")
    p.add_argument("--text", type=Path, default=None,
                   help="file with one text prompt per line (replaces the generated set)")
    cli.add_categories_argument(p)
    p.add_argument("--top", type=cli.positive_int, default=5, help="heads listed per ranking (default: 5)")
    p.fits_context("--length", lambda n: 1 + n)
    p.memory("--n-prompts or --length", lambda a, s: 0 if a.text else cli.pattern_bytes(s, a.n_prompts, 1 + a.length))
    p.prompt_file("--text")
    return p


def prompt_sets(model, args) -> dict[str, list[torch.Tensor]]:
    """Named lists of `tokens: [batch, pos]`, each tensor one batched pass."""
    if args.text is not None:
        if not args.text.is_file():
            raise UsageError(f"--text {args.text} is not a file. Give a text file with one prompt per line.")
        prompts.require_tokenizer(model, "--text tokenises text prompts")
        lines = [line for line in args.text.read_text().splitlines() if line.strip()]
        if not lines:
            raise UsageError(f"--text {args.text} holds no non-empty line.")
        return {"text": [model.to_tokens(line).cpu() for line in lines]}  # lengths differ: one pass each
    bos, special, d_vocab = prompts.bos_token_id(model), prompts.special_token_ids(model), model.cfg.d_vocab
    sets = {"random": [prompts.random_tokens(args.n_prompts, args.length, d_vocab, bos, args.seed, special)],
            "repeated": [prompts.random_repeated_tokens(args.n_prompts, args.length // 2, d_vocab, bos,
                                                        args.seed + 1, special)]}
    if model.tokenizer is not None:
        sets["category"] = [prompts.category_probe(model, cli.chosen_categories(args)[0], args.n_prompts,
                                                   args.length, args.seed + 2)[0]]
    return sets


def main(args) -> None:
    model = load_model(args.model, args.device, args.processing)
    shape = (model.cfg.n_layers, model.cfg.n_heads)

    per_set = {}
    for name, batches in prompt_sets(model, args).items():
        values = {k: [] for k in STATISTICS}
        for tokens in batches:
            stats = attention_statistics(flatten_heads(all_patterns(model, tokens, progress=True)), scored_rows(tokens))
            for k, v in stats.items():
                values[k].append(v)
        per_set[name] = {k: torch.cat(v).mean(0).reshape(shape) for k, v in values.items()}  # [layer, head]
    overall = {k: torch.stack([s[k] for s in per_set.values()]).mean(0) for k in STATISTICS}

    rankings = {
        "most_focused": top_heads(overall["entropy"], args.top, largest=False),
        "most_diffuse": top_heads(overall["entropy"], args.top),
        "longest_range": top_heads(overall["mean_distance"], args.top),
        "most_bos": top_heads(overall["bos_mass"], args.top),
    }
    results = {
        "overall": overall,
        "per_prompt_set": per_set,
        "rankings": {k: [{"layer": l, "head": h, "value": v} for l, h, v in heads] for k, heads in rankings.items()},
        "categories": None if "category" not in per_set else cli.chosen_categories(args)[1],
        "units": {"entropy": "nats", "max_attention": "probability", "mean_distance": "tokens",
                  "bos_mass": "probability"},
    }
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(model.analysis_info, vars(args), args.seed))
    fig = head_heatmaps([overall[k] for k in STATISTICS],
                        ["entropy (nats)", "max attention", "mean distance (tokens)", "BOS mass"],
                        reverse=[True, False, False, False],
                        suptitle=f"Attention statistics, {args.model} ({', '.join(per_set)} prompts)")
    save_figure(fig, args.out, args.model, NAME)

    for kind, heads in rankings.items():
        print(f"{kind.replace('_', ' '):>14s}: " + ", ".join(f"L{l}H{h} {v:.2f}" for l, h, v in heads))
    print(f"results: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
