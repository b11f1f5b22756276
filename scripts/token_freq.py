"""Count how often each token occurs in a text corpus, for picking frequent tokens and token probabilities.

The corpus, by what the model has:
  --corpus FILE      any text file, tokenised line by line with the model's tokenizer (trailing newlines dropped)
  --dataset ID|PATH  a split of a text dataset (--dataset-config, --dataset-split, --text-column), loaded with
                     Hugging Face `datasets`: a hub id, a local data file (.parquet, .json, .jsonl, .csv, .txt,
                     .arrow) or a folder written by `Dataset.save_to_disk`; each text is one line
  (neither)          for a model whose vocabulary is the organism's, a corpus sampled from its training generator
                     (the same mixture of category text, repeated chunks and random tokens), seeded by --seed;
                     for any other model the study's corpus, WikiText-103's training split
                     (Salesforce/wikitext, wikitext-103-raw-v1, as the study counted it)
A dataset's counts are cached in the user's cache directory, keyed by tokenizer and dataset, so a second run
reads them back. The hub is probed once: offline, a dataset not in the local datasets cache cannot be had. The
study's corpus, not asked for by flag, then gives a uniform table (every ordinary token counted once),
recorded as `corpus.source: "uniform"` with `degenerate: true` and the reason, so a full run (`make all`)
still completes; a dataset named with --dataset stays an error.

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
    MAX_UNKNOWN_SHARE, STUDY_DATASET, DatasetSource, DatasetUnavailable, check_corpus, check_unknown_share,
    count_dataset, count_tokens, frequency_csv_path, frequency_table, uniform_counts, unknown_share,
    write_frequency_csv,
)
from analysis.models import load_model
from analysis.organism.files import has_organism_vocabulary
from analysis.organism.language import LanguageSpec, sample_batch, vocabulary, write_corpus
from analysis.organism.train import TrainConfig
from analysis.plotting import save_figure, use_style

NAME = "token_freq"
UNIFORM_REASON = ("the study's corpus (WikiText-103's training split) could not be loaded, so every ordinary token "
                  "is counted once (a uniform table, no real frequencies); run once with network access, or give "
                  "--corpus or --dataset, for frequencies that mean something")


def build_parser():
    p = cli.parser(__doc__)
    corpus = p.add_mutually_exclusive_group()
    corpus.add_argument("--corpus", type=Path, default=None,
                        help="text file to count (default: for the organism's vocabulary a corpus sampled from its "
                             "generator, otherwise the study's dataset, see --dataset)")
    corpus.add_argument("--dataset", default=None,
                        help=f"text dataset to count: a Hugging Face hub id or a local data file or saved dataset "
                             f"(default for a model without the organism's vocabulary: {STUDY_DATASET.path}, "
                             f"config {STUDY_DATASET.config}, the study's WikiText-103)")
    p.add_argument("--dataset-config", default=None,
                   help="the dataset's configuration (default: the study's with its dataset, none with --dataset)")
    p.add_argument("--dataset-split", default="train", help="the dataset's split to count (default: train)")
    p.add_argument("--text-column", default="text", help="the dataset's column of texts (default: text)")
    p.add_argument("--corpus-sequences", type=cli.positive_int, default=2000,
                   help="sequences in the organism's sampled corpus (default: 2000)")
    p.add_argument("--top", type=cli.positive_int, default=20, help="most frequent tokens listed (default: 20)")
    p.add_argument("--max-unknown-share", type=cli.positive_float, default=MAX_UNKNOWN_SHARE,
                   help="refuse a corpus with a larger share of tokens unknown to the tokenizer "
                        f"(default: {MAX_UNKNOWN_SHARE})")
    p.input_file("--corpus", lambda path, shape: check_corpus(path))
    # The sampled corpus: the token array (8 bytes a token) and its text, built whole before it is written.
    p.memory("--corpus-sequences", lambda a, s: 0 if a.corpus or a.dataset else 24 * a.corpus_sequences * s.n_ctx,
             "sampled corpus")
    return p


def organism_corpus(model, n_sequences: int, seed: int, directory: Path) -> tuple[Path, dict]:
    """A corpus sampled from the organism's training generator, and how it was made."""
    mixture = TrainConfig().mixture
    spec = LanguageSpec.from_vocabulary(vocabulary())
    rows = sample_batch(np.random.default_rng(seed), spec, n_sequences, model.cfg.n_ctx, mixture, progress=True)
    path = write_corpus(directory / "organism_corpus.txt", rows)
    return path, {"source": "organism generator", "sequences": n_sequences, "length": model.cfg.n_ctx,
                  "mixture": mixture, "seed": seed}


def dataset_counts(model, args) -> tuple[np.ndarray, dict]:
    """The counts of --dataset (default: the study's) and how they were made; the study's dataset, not asked for,
    that cannot be had here gives the uniform table, recorded as degenerate with the reason."""
    path, config = (STUDY_DATASET.path, args.dataset_config or STUDY_DATASET.config) if args.dataset is None else \
        (args.dataset, args.dataset_config)
    source = DatasetSource(path, config, args.dataset_split, args.text_column)
    try:
        return count_dataset(model.tokenizer, source, model.cfg.d_vocab, progress=True)
    except DatasetUnavailable as err:
        if args.dataset is not None:
            raise
        print(f"warning: {UNIFORM_REASON}\n  {err}")
        counts = uniform_counts(model.cfg.d_vocab, len(model.tokenizer), prompts.special_token_ids(model))
        return counts, {"source": "uniform", "degenerate": True, "reason": UNIFORM_REASON, "cause": str(err),
                        "dataset": source.path, "config": source.config, "split": source.split}


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
        elif args.dataset is None and has_organism_vocabulary(model.tokenizer):
            corpus, corpus_info = organism_corpus(model, args.corpus_sequences, args.seed, Path(scratch))
        else:
            corpus, (counts, corpus_info) = None, dataset_counts(model, args)
        if corpus is not None:
            with open(corpus, encoding="utf-8", errors="replace") as lines:
                counts = count_tokens(model.tokenizer, lines, model.cfg.d_vocab, progress=True)
    table = frequency_table(counts, model.tokenizer)
    total, name = int(counts.sum()), corpus_info.get("path", corpus_info["source"])
    if total == 0:
        raise UsageError(f"The corpus {name} holds no tokens; give a non-empty text file or dataset.")
    check_unknown_share(counts, model.tokenizer, args.max_unknown_share, name)

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
