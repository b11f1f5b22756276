"""Token frequencies of a text corpus, stored as a CSV that other analyses read.

The table has one row per vocabulary token, most frequent first:

    token, id, count, probability        probability = count / total count

`token` is the decoded string (" red", with GPT-2's leading space). Lines are tokenised one at
a time without their trailing newline, so newline tokens are not counted.

A corpus must be text (`check_corpus`), and at most `MAX_UNKNOWN_SHARE` of its tokens may be the
tokenizer's unknown token (`check_unknown_share`): above that the table would describe the
tokenizer's gaps rather than the corpus (a GPT-2 corpus on the organism's word-level vocabulary).
Tables read back are checked column by column (`read_frequency_csv`).

A corpus is a text file or a split of a text dataset (`DatasetSource`): by default the study's,
WikiText-103's training split (`STUDY_DATASET`), loaded with Hugging Face `datasets` under the hub
probe (`infra.hub.hub_reachable`: an unreachable hub means the local cache only, so an offline machine
fails in seconds with `DatasetUnavailable`), or any local data file or saved dataset with a text
column. Each text is one line, as in WikiText, tokenised the same way (`count_tokens`). A dataset's
counts are cached in the user's cache directory (`vocab_input.default_cache_dir`), keyed by the
tokenizer, the dataset (source and content fingerprint) and the counting code (`counts_cache_path`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import inspect
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from analysis.errors import UsageError
from analysis.infra.atomic import atomic_file
from analysis.infra.hub import datasets_offline, hub_reachable, unavailable_errors
from analysis.io import results_path, write_output
from analysis.vocab_input import default_cache_dir

COLUMNS = ["token", "id", "count", "probability"]
MAX_UNKNOWN_SHARE = 0.05  # default of token_freq.py --max-unknown-share
WRITER = "`python scripts/token_freq.py --model <model> --corpus <text file>`"


def check_corpus(path: Path, sample_bytes: int = 1 << 20) -> None:
    """A `UsageError` unless `path` is a UTF-8 text file (its first `sample_bytes` are checked)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--corpus {path} is not a readable file. Give a text file, e.g. WikiText-103's "
                         "wiki.train.tokens.")
    with open(path, "rb") as handle:
        sample = handle.read(sample_bytes)
    if b"\0" in sample:
        raise UsageError(f"--corpus {path} is a binary file (it holds NUL bytes), not text. Give a text file, "
                         "e.g. WikiText-103's wiki.train.tokens.")
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(sample) - 4:  # a character cut by the end of the sample is fine
            raise UsageError(f"--corpus {path} is not UTF-8 text (byte {err.start} cannot be decoded). Give a "
                             "UTF-8 text file.") from None


def unknown_share(counts: np.ndarray, tokenizer) -> float | None:
    """Share of the tokenizer's unknown token in `counts`, or None for a tokenizer that has none (GPT-2's)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or unk in (tokenizer.bos_token_id, tokenizer.eos_token_id) or not counts.sum():
        return None
    return float(counts[unk] / counts.sum())


def check_unknown_share(counts: np.ndarray, tokenizer, limit: float, source: str) -> None:
    """A `UsageError` when more than `limit` of the corpus's tokens are unknown to the tokenizer."""
    share = unknown_share(counts, tokenizer)
    if share is not None and share > limit:
        raise UsageError(
            f"{share:.1%} of the tokens of the corpus {source} are unknown to this model's tokenizer "
            f"({tokenizer.unk_token!r}), more than the {limit:.0%} allowed (--max-unknown-share), so the table "
            "would count the tokenizer's gaps, not the corpus. Give a corpus in this model's vocabulary (for "
            "the organism, leave --corpus out to sample its own language)."
        )


def uniform_counts(d_vocab: int, n_tokens: int, special_ids: Iterable[int]) -> np.ndarray:
    """`counts: [d_vocab]`: 1 for each of the tokenizer's first `n_tokens` ids, 0 for special tokens and the rest.

    The table of a model without a corpus: every ordinary token equally frequent.
    """
    counts = np.zeros(d_vocab, dtype=np.int64)
    counts[: min(n_tokens, d_vocab)] = 1
    counts[[i for i in special_ids if 0 <= i < d_vocab]] = 0
    return counts


def count_tokens(tokenizer, lines: Iterable[str], d_vocab: int, batch_lines: int = 1024,
                 progress: bool = False, total: int | None = None) -> np.ndarray:
    """`counts: [d_vocab]`, how often each token occurs in `lines` (tokenised in batches of lines; `total` lines
    expected, for the progress bar)."""
    counts = np.zeros(d_vocab, dtype=np.int64)
    lines = iter(lines)
    bar = tqdm(desc="tokenising", unit=" lines", total=total, disable=not progress, leave=False)
    while chunk := list(islice(lines, batch_lines)):
        batch = [text for text in (line.rstrip("\n") for line in chunk) if text]
        if batch:
            ids = np.concatenate([np.asarray(i, dtype=np.int64)
                                  for i in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]])
            counts += np.bincount(ids, minlength=d_vocab)[:d_vocab]
        bar.update(len(chunk))
    bar.close()
    return counts


# --- a split of a text dataset (the study's WikiText-103 by default) ------------------------------

DATA_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".txt": "text",
                      ".arrow": "arrow"}  # the `datasets` builder of a local data file, by suffix


class DatasetUnavailable(UsageError):
    """A dataset that cannot be had here: not in the local cache with the hub unreachable, or no such dataset."""


@dataclass(frozen=True)
class DatasetSource:
    """A split of a text dataset: a hub id with its config, or a local path (a data file, `DATA_FILE_BUILDERS`; a
    folder written by `Dataset.save_to_disk`; or a folder of data files), and the column that holds the texts."""

    path: str
    config: str | None = None
    split: str = "train"
    column: str = "text"

    @property
    def local(self) -> Path | None:
        """The local file or folder this source names, or None for a hub id."""
        path = Path(self.path).expanduser()
        return path if path.exists() else None


STUDY_DATASET = DatasetSource("Salesforce/wikitext", "wikitext-103-raw-v1", "train")  # the study's (wiki.train.raw)


def load_split(source: DatasetSource, cache_dir: Path | str | None = None):
    """The `datasets.Dataset` of `source`'s split (`cache_dir`: datasets' own cache, default its usual one).

    A hub id loads after one probe of the hub (`hub_reachable`); without an answer it loads offline
    (`datasets_offline`: the local cache only), and what cannot be had is a `DatasetUnavailable` that says what to
    do. A local path never touches the network. A split without `source.column` is a `UsageError`.
    """
    import datasets

    local, cache = source.local, None if cache_dir is None else str(cache_dir)
    online = local is not None or hub_reachable()
    try:
        with contextlib.nullcontext() if online else datasets_offline():
            if local is not None and local.is_dir() and any((local / f).exists() for f in ("state.json",
                                                                                         "dataset_dict.json")):
                loaded = datasets.load_from_disk(str(local))
                loaded = loaded[source.split] if isinstance(loaded, datasets.DatasetDict) else loaded
            elif local is not None and local.is_file():
                builder = DATA_FILE_BUILDERS.get(local.suffix.lower())
                if builder is None:
                    raise UsageError(f"--dataset {local}: a data file must end in one of "
                                     f"{', '.join(DATA_FILE_BUILDERS)}.")
                loaded = datasets.load_dataset(builder, data_files={source.split: str(local)}, split=source.split,
                                               cache_dir=cache)
            else:
                loaded = datasets.load_dataset(str(local or source.path), source.config, split=source.split,
                                               cache_dir=cache)
    except (*unavailable_errors(), ValueError) as err:
        cause = " ".join(str(err).split())[:300]
        where = "a local path" if local is not None else (
            "the hub could be reached" if online else "the hub did not answer a connection attempt (loaded offline)")
        raise DatasetUnavailable(
            f"Could not load the dataset {source.path!r} (config {source.config!r}, split {source.split!r}); "
            f"{where} ({type(err).__name__}: {cause}). Run once on a machine with network access to download it "
            "into the Hugging Face datasets cache, or give --corpus a text file (e.g. WikiText-103's "
            "wiki.train.raw) or --dataset a local data file."
        ) from None
    if source.column not in loaded.column_names:
        raise UsageError(f"The dataset {source.path!r} has no column {source.column!r} (it has "
                         f"{', '.join(loaded.column_names)}); name the text column with --text-column.")
    return loaded


def dataset_texts(dataset, column: str, batch_size: int = 1000) -> Iterator[str]:
    """The texts of `dataset[column]`, read `batch_size` rows at a time (never the whole column in memory)."""
    for batch in dataset.iter(batch_size=batch_size):
        yield from (text for text in batch[column] if text is not None)


# The counting code is part of a cached count's key: the cache outlives checkouts and commits.
_COUNT_CODE = hashlib.sha256("".join(inspect.getsource(f) for f in (count_tokens, dataset_texts)).encode()).hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """A hash of everything a tokenizer tokenises with: its class and its whole definition (a fast tokenizer's
    serialised pipeline: normaliser, pre-tokeniser, model, merges, added tokens), else its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{body}".encode()).hexdigest()


def counts_cache_path(tokenizer, source: DatasetSource, fingerprint: str, d_vocab: int) -> Path:
    """Where the counts of `source` (content `fingerprint`, from `datasets`) under `tokenizer` are cached:
    <cache>/token_counts/<dataset>-<hash>.npy, the hash over the tokenizer, the source, the fingerprint, the
    vocabulary size and the counting code."""
    key = json.dumps([tokenizer_digest(tokenizer), asdict(source), fingerprint, d_vocab, _COUNT_CODE])
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(source.path).name)[:40]
    return default_cache_dir() / "token_counts" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"


def count_dataset(tokenizer, source: DatasetSource, d_vocab: int, progress: bool = False,
                  cache_dir: Path | str | None = None) -> tuple[np.ndarray, dict]:
    """(`counts: [d_vocab]`, how they were made) for the texts of `source` (`load_split`, then `count_tokens` over
    `dataset_texts`), read from the counts cache when this tokenizer has counted this dataset before
    (`counts_cache_path`)."""
    dataset = load_split(source, cache_dir)
    fingerprint = str(getattr(dataset, "_fingerprint", ""))
    if (local := source.local) is not None and local.is_file():  # a data file edited in place keeps its name
        stat = local.stat()
        fingerprint += f" {stat.st_size} {stat.st_mtime_ns}"
    path = counts_cache_path(tokenizer, source, fingerprint, d_vocab)
    name = " ".join(part for part in (source.path, source.config, f"[{source.split}]") if part)
    info = {"source": f"dataset {name}", **asdict(source), "texts": dataset.num_rows, "fingerprint": fingerprint,
            "counts_cache": str(path), "newlines": "not counted (each text tokenised without its trailing newline)"}
    if path.exists():
        return np.load(path), {**info, "from_cache": True}
    counts = count_tokens(tokenizer, dataset_texts(dataset, source.column), d_vocab, progress=progress,
                          total=dataset.num_rows)
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, counts)
    return counts, {**info, "from_cache": False}


def frequency_table(counts: np.ndarray, tokenizer) -> pd.DataFrame:
    """Every token with its count and probability, most frequent first (ties by id)."""
    ids = np.arange(len(counts))
    total = counts.sum()
    table = pd.DataFrame({"token": tokenizer.batch_decode(ids[:, None].tolist()), "id": ids, "count": counts,
                          "probability": counts / total if total else np.zeros(len(counts))})
    return table.sort_values(["count", "id"], ascending=[False, True], kind="stable").reset_index(drop=True)


def frequency_csv_path(out: Path | str, model_name: str) -> Path:
    """`out/results/<model>/token_freq.csv`, beside token_freq.json."""
    return results_path(out, model_name, "token_freq").with_suffix(".csv")


def write_frequency_csv(table: pd.DataFrame, path: Path | str) -> Path:
    # Tokens quoted: GPT-2's vocabulary holds "\r" (which unquoted ends a CSV row) and "\0" among its byte tokens.
    return write_output(path, table[COLUMNS].to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC))


def read_frequency_csv(path: Path | str, d_vocab: int | None = None) -> pd.DataFrame:
    """The table written by `write_frequency_csv`, checked; tokens such as "null" or "NaN" stay strings.

    A missing or malformed file (not a CSV, columns missing, ids or counts that are not whole
    numbers, ids repeated or outside `d_vocab`) is a `UsageError` naming the file and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"No token-frequency table at {path}. Write it first with {WRITER}.")

    def bad(problem: str) -> UsageError:
        return UsageError(f"{path} is not a token-frequency table: {problem}. Write a correct one with {WRITER}.")

    with open(path, "rb") as handle:  # a NUL byte makes a binary file, but for the quoted NUL token "\0"
        if b"\0" in handle.read(1 << 20).replace(b'"\0"', b""):
            raise bad("it is a binary file")
    try:
        table = pd.read_csv(path, dtype={"token": str}, keep_default_na=False, na_filter=False, encoding="utf-8")
    except UnicodeDecodeError:
        raise bad("it is not UTF-8 text") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise bad(f"it does not parse as CSV ({' '.join(str(err).split())[:120]})") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise bad(f"it lacks the column(s) {', '.join(missing)} (it has {', '.join(map(str, table.columns))})")
    if table.empty:
        raise bad("it has no rows")
    for column in ("id", "count"):
        if not pd.api.types.is_integer_dtype(table[column]):
            raise bad(f"its {column!r} column holds values that are not whole numbers")
    probability = pd.to_numeric(table["probability"], errors="coerce")
    if probability.isna().any():
        raise bad("its 'probability' column holds values that are not numbers")
    if (table["count"] < 0).any() or (probability < 0).any():
        raise bad("it has negative counts or probabilities")
    if table["id"].duplicated().any():
        raise bad(f"token id {int(table['id'][table['id'].duplicated()].iloc[0])} appears twice")
    if (table["id"] < 0).any() or (d_vocab is not None and (table["id"] >= d_vocab).any()):
        raise bad(f"it has token ids outside this model's vocabulary of {d_vocab} tokens, so it was written "
                  "for another model" if d_vocab is not None else "it has negative token ids")
    table["probability"] = probability
    return table


def check_frequency_csv(path: Path, shape) -> None:
    """`read_frequency_csv` as an input-file check of `cli.Parser.input_file`."""
    read_frequency_csv(path, shape.d_vocab if shape is not None else None)


def most_frequent_ids(table: pd.DataFrame, n: int, exclude: Sequence[int] = ()) -> torch.Tensor:
    """Ids of the `n` most frequent tokens with a non-zero count, leaving out `exclude` (e.g. special tokens)."""
    kept = table[(table["count"] > 0) & ~table["id"].isin(list(exclude))]
    if len(kept) < n:
        raise UsageError(f"The frequency table has only {len(kept)} tokens that occur (special tokens left "
                         f"out), fewer than the {n} asked for. Ask for fewer tokens or count a larger corpus.")
    return torch.tensor(kept["id"].to_numpy()[:n])


def ordinary_or_frequent_ids(d_vocab: int, special: Sequence[int], n: int, table_path: Path | str
                             ) -> tuple[torch.Tensor, str]:
    """Ids of `n` tokens that are not special, and how they were chosen: every such token (in id order, no
    table read) when n covers them all, else the n most frequent in the frequency table at `table_path`."""
    excluded = set(special)
    ordinary = [i for i in range(d_vocab) if i not in excluded]
    if n >= len(ordinary):
        return torch.tensor(ordinary), "every ordinary token (special tokens left out)"
    return most_frequent_ids(read_frequency_csv(table_path), n, exclude=special), f"{n} most frequent in {table_path}"
