"""Token frequencies of a text corpus, stored as a CSV that other analyses read.

The table has one row per vocabulary token, most frequent first:

    token, id, count, probability        probability = count / total count

`token` is the decoded string (" red", with GPT-2's leading space). Lines are tokenised one at
a time without their trailing newline, so newline tokens are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from analysis.errors import UsageError
from analysis.io import results_path, write_text_atomic

COLUMNS = ["token", "id", "count", "probability"]


def count_tokens(tokenizer, lines: Iterable[str], d_vocab: int, batch_lines: int = 1024,
                 progress: bool = False) -> np.ndarray:
    """`counts: [d_vocab]`, how often each token occurs in `lines` (tokenised in batches of lines)."""
    counts = np.zeros(d_vocab, dtype=np.int64)
    lines = iter(lines)
    bar = tqdm(desc="tokenising", unit=" lines", disable=not progress, leave=False)
    while chunk := list(islice(lines, batch_lines)):
        batch = [text for text in (line.rstrip("\n") for line in chunk) if text]
        if batch:
            ids = np.concatenate([np.asarray(i, dtype=np.int64)
                                  for i in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]])
            counts += np.bincount(ids, minlength=d_vocab)[:d_vocab]
        bar.update(len(chunk))
    bar.close()
    return counts


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
    return write_text_atomic(path, table[COLUMNS].to_csv(index=False))


def read_frequency_csv(path: Path | str) -> pd.DataFrame:
    """The table written by `write_frequency_csv`; tokens such as "null" or "NaN" stay strings."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"No token-frequency table at {path}. Write it first with "
                         "`python scripts/token_freq.py --model <model> --corpus <text file>`.")
    return pd.read_csv(path, dtype={"token": str}, keep_default_na=False, na_filter=False)


def most_frequent_ids(table: pd.DataFrame, n: int, exclude: Sequence[int] = ()) -> torch.Tensor:
    """Ids of the `n` most frequent tokens with a non-zero count, leaving out `exclude` (e.g. special tokens)."""
    kept = table[(table["count"] > 0) & ~table["id"].isin(list(exclude))]
    if len(kept) < n:
        raise UsageError(f"The frequency table has only {len(kept)} tokens that occur (special tokens left "
                         f"out), fewer than the {n} asked for. Ask for fewer tokens or count a larger corpus.")
    return torch.tensor(kept["id"].to_numpy()[:n])
