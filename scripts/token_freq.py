"""Count how often each token occurs in a text corpus, for picking frequent tokens and token probabilities.

--corpus is any text file, tokenised line by line with the model's tokenizer (trailing newlines
dropped). The study of GPT-2 small used WikiText-103's training split (wiki.train.tokens). For
a model whose vocabulary is the organism's the default corpus is sampled from its training generator
(the same mixture of category text, repeated chunks and random tokens), seeded by --seed. Any
other model without --corpus gets a uniform table (every ordinary token counted once), recorded
as `corpus.source: "uniform"` with `degenerate: true`, so a full run (`make all`) still completes.

Writes results/<model>/token_freq.csv (token, id, count, probability; most frequent first),
results/<model>/token_freq.json (corpus, totals, top tokens) and figures/<model>/token_freq
(rank-frequency plot).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from analysis import cli, io, prompts
from analysis.errors import UsageError
from analysis.frequency import (
    MAX_UNKNOWN_SHARE, check_corpus, check_unknown_share, count_tokens, frequency_csv_path, frequency_table,
    uniform_counts, unknown_share, write_frequency_csv,
)
from analysis.models import load_model
from analysis.organism.files import has_organism_vocabulary
from analysis.organism.language import LanguageSpec, sample_batch, vocabulary, write_corpus
from analysis.organism.train import TrainConfig
from analysis.plotting import save_figure, use_style

NAME = "token_freq"
UNIFORM_REASON = ("no --corpus given and the model's vocabulary is not the organism's, so every ordinary token is "
                  "counted once (a uniform table, no real frequencies); give --corpus (the study of GPT-2 used "
                  "WikiText-103's training split) for frequencies that mean something")


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("--corpus", type=Path, default=None,
                   help="text file to count (default: for the organism's vocabulary a corpus sampled from its generator, "
                        "otherwise a uniform table of every ordinary token, recorded as degenerate)")
    p.add_argument("--corpus-sequences", type=cli.positive_int, default=2000,
                   help="sequences in the organism's sampled corpus (default: 2000)")
    p.add_argument("--top", type=cli.positive_int, default=20, help="most frequent tokens listed (default: 20)")
    p.add_argument("--max-unknown-share", type=cli.positive_float, default=MAX_UNKNOWN_SHARE,
                   help="refuse a corpus with a larger share of tokens unknown to the tokenizer "
                        f"(default: {MAX_UNKNOWN_SHARE})")
    p.input_file("--corpus", lambda path, shape: check_corpus(path))
    # The sampled corpus: the token array (8 bytes a token) and its text, built whole before it is written.
    p.memory("--corpus-sequences", lambda a, s: 0 if a.corpus else 24 * a.corpus_sequences * s.n_ctx, "sampled corpus")
    return p


def organism_corpus(model, n_sequences: int, seed: int, directory: Path) -> tuple[Path, dict]:
    """A corpus sampled from the organism's training generator, and how it was made."""
    mixture = TrainConfig().mixture
    spec = LanguageSpec.from_vocabulary(vocabulary())
    rows = sample_batch(np.random.default_rng(seed), spec, n_sequences, model.cfg.n_ctx, mixture, progress=True)
    path = write_corpus(directory / "organism_corpus.txt", rows)
    return path, {"source": "organism generator", "sequences": n_sequences, "length": model.cfg.n_ctx,
                  "mixture": mixture, "seed": seed}


def rank_plot(table, title: str):
    import matplotlib.pyplot as plt

    use_style()
    counts = table["count"].to_numpy()
    counts = counts[counts > 0]
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.loglog(range(1, len(counts) + 1), counts, marker=".", linestyle="none", markersize=3)
    ax.set(xlabel="rank", ylabel="count", title=title)
    fig.tight_layout()
    return fig


def main(args) -> None:
    model = load_model(args.model, args.device, args.processing)
    prompts.require_tokenizer(model, "Counting a corpus's tokens tokenises it")

    with tempfile.TemporaryDirectory() as scratch:
        if args.corpus is not None:
            corpus, corpus_info = args.corpus, {"source": str(args.corpus.resolve())}
        elif has_organism_vocabulary(model.tokenizer):
            corpus, corpus_info = organism_corpus(model, args.corpus_sequences, args.seed, Path(scratch))
        else:
            corpus, corpus_info = None, {"source": "uniform", "degenerate": True, "reason": UNIFORM_REASON}
            print(f"warning: {UNIFORM_REASON}")
        if corpus is None:
            counts = uniform_counts(model.cfg.d_vocab, len(model.tokenizer), prompts.special_token_ids(model))
        else:
            with open(corpus, encoding="utf-8", errors="replace") as lines:
                counts = count_tokens(model.tokenizer, lines, model.cfg.d_vocab, progress=True)
    table = frequency_table(counts, model.tokenizer)
    total = int(counts.sum())
    if total == 0:
        raise UsageError(f"The corpus {corpus_info['source']} holds no tokens; give a non-empty text file.")
    check_unknown_share(counts, model.tokenizer, args.max_unknown_share, corpus_info["source"])

    csv = write_frequency_csv(table, frequency_csv_path(args.out, args.model))
    results = {
        "corpus": corpus_info, "csv": str(csv), "total_tokens": total,
        "distinct_tokens": int((counts > 0).sum()), "d_vocab": model.cfg.d_vocab,
        "unknown_share": unknown_share(counts, model.tokenizer),
        "top": table.head(args.top).to_dict("records"),
    }
    path = io.save_results(args.out, args.model, NAME, results,
                           io.Provenance(model.analysis_info, vars(args), args.seed))
    save_figure(rank_plot(table, f"{args.model}: token frequencies"), args.out, args.model, NAME)

    print(f"{total} tokens, {results['distinct_tokens']} of {model.cfg.d_vocab} vocabulary tokens occur")
    print("most frequent: " + ", ".join(f"{r['token']!r} {r['probability']:.4f}" for r in results["top"][:10]))
    print(f"table: {csv}\nresults: {path}")


if __name__ == "__main__":
    cli.run(main, build_parser())
