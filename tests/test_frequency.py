"""Token counts of a corpus, the CSV round trip, and token_freq.py on the organism."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.errors import UsageError
from analysis.frequency import (STUDY_DATASET, DatasetSource, DatasetUnavailable, count_dataset, count_tokens,
                                counts_cache_path, frequency_csv_path, frequency_table, load_split, most_frequent_ids,
                                ordinary_or_frequent_ids, read_frequency_csv, write_frequency_csv)
from conftest import run_main, run_script


def test_count_tokens_exact(organism):
    tok = organism.tokenizer
    red, blue, the = (tok.convert_tokens_to_ids(w) for w in (" red", " blue", " the"))
    lines = [" red red blue\n", "\n", " the red\n"] + ["\n"] * 5 + [" blue"]
    counts = count_tokens(tok, lines, organism.cfg.d_vocab, batch_lines=2)  # batches that hold only blank lines
    expected = np.zeros(organism.cfg.d_vocab, dtype=np.int64)
    expected[[red, blue, the]] = [3, 2, 1]
    assert np.array_equal(counts, expected)


def test_frequency_table_order_and_probabilities(organism):
    counts = np.zeros(organism.cfg.d_vocab, dtype=np.int64)
    counts[[5, 7, 9]] = [1, 3, 1]
    table = frequency_table(counts, organism.tokenizer)
    assert table["id"].tolist()[:3] == [7, 5, 9]  # by count, ties by id
    assert table["probability"].tolist()[:3] == [0.6, 0.2, 0.2] and table["probability"].sum() == 1.0
    assert table["token"][0] == organism.tokenizer.decode([7]) and len(table) == organism.cfg.d_vocab


def test_csv_round_trip_keeps_awkward_tokens(tmp_path):
    table = pd.DataFrame({"token": ["null", "NaN", " ,", '"', " a\nb", ""], "id": range(6),
                          "count": [5, 4, 3, 2, 1, 0], "probability": np.array([5, 4, 3, 2, 1, 0]) / 15})
    # GPT-2's byte tokens: "\r" ends a row unless quoted, and "\0" is a token, not a sign of a binary file.
    control = pd.DataFrame({"token": ["\0", "\r", "\t", "\x0b", "a\rb"], "id": range(5), "count": [1] * 5,
                            "probability": [0.2] * 5})
    back = read_frequency_csv(write_frequency_csv(control, tmp_path / "control.csv"))
    assert back["token"].tolist() == control["token"].tolist() and back["id"].tolist() == list(range(5))
    path = write_frequency_csv(table, frequency_csv_path(tmp_path, "gpt2-small"))
    assert path == tmp_path / "results" / "gpt2-small" / "token_freq.csv"
    back = read_frequency_csv(path)
    assert back["token"].tolist() == table["token"].tolist() and back["count"].tolist() == table["count"].tolist()
    assert torch.equal(most_frequent_ids(back, 3, exclude=[1]), torch.tensor([0, 2, 3]))
    with pytest.raises(UsageError, match="only 5 tokens"):
        most_frequent_ids(back, 6)  # the zero-count token never counts as frequent
    with pytest.raises(UsageError, match="token_freq.py"):
        read_frequency_csv(tmp_path / "missing.csv")


@pytest.mark.e2e
def test_token_freq_script_on_the_organism(tmp_path, organism):
    result = run_script("token_freq", "--out", str(tmp_path), "--corpus-sequences", "200")
    assert result.returncode == 0, result.stderr
    table = read_frequency_csv(tmp_path / "results" / "organism" / "token_freq.csv")
    assert len(table) == organism.cfg.d_vocab and abs(table["probability"].sum() - 1) < 1e-9
    data = json.loads((tmp_path / "results" / "organism" / "token_freq.json").read_text())["results"]
    assert data["total_tokens"] == table["count"].sum() > 200 * 100
    category_words = [" red", " Monday", " dog"]  # every category word occurs in the generator's text
    assert (table.set_index("token").loc[category_words, "count"] > 0).all()
    assert (tmp_path / "figures" / "organism" / "token_freq.png").exists()


@pytest.mark.e2e
def test_token_freq_on_a_given_corpus(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" red blue\n red\n")
    run_main("token_freq", "--out", str(tmp_path), "--corpus", str(corpus))
    table = read_frequency_csv(tmp_path / "results" / "organism" / "token_freq.csv")
    assert table["token"].tolist()[:2] == [" red", " blue"] and table["count"].tolist()[:3] == [2, 1, 0]
    with pytest.raises(SystemExit) as exit_:
        run_main("token_freq", "--out", str(tmp_path), "--corpus", str(tmp_path / "nope.txt"))
    assert exit_.value.code == 2 and "not a readable file" in " ".join(capsys.readouterr().err.split())


def test_ordinary_or_frequent_ids(tmp_path):
    ids, how = ordinary_or_frequent_ids(6, [5, 0], 4, tmp_path / "absent.csv")  # covers them all: no table read
    assert ids.tolist() == [1, 2, 3, 4] and how.startswith("every ordinary token")
    table = pd.DataFrame({"token": list("abcdef"), "id": [3, 5, 1, 0, 2, 4], "count": [9, 8, 7, 6, 0, 0],
                          "probability": [0.3, 0.27, 0.23, 0.2, 0.0, 0.0]})
    path = write_frequency_csv(table, tmp_path / "freq.csv")
    ids, how = ordinary_or_frequent_ids(6, [5, 0], 2, path)
    assert ids.tolist() == [3, 1] and how == f"2 most frequent in {path}"  # special 5 and 0 left out
    with pytest.raises(UsageError, match="token_freq.py"):
        ordinary_or_frequent_ids(6, [5, 0], 2, tmp_path / "absent.csv")


# WikiText's layout: one row per line, a title row, blank rows, trailing newlines (here in the organism's words).
WIKITEXT_LIKE = [" red red blue\n", "", " the red\n", "\n", " blue"]


def wikitext_like_dataset():
    import datasets

    return datasets.Dataset.from_dict({"text": WIKITEXT_LIKE, "title": ["a"] * len(WIKITEXT_LIKE)})


def test_dataset_counts_of_a_local_dataset_in_wikitext_format(organism, offline_hub):
    tok, d_vocab = organism.tokenizer, organism.cfg.d_vocab
    red, blue, the = (tok.convert_tokens_to_ids(w) for w in (" red", " blue", " the"))
    expected = np.zeros(d_vocab, dtype=np.int64)
    expected[[red, blue, the]] = [3, 2, 1]
    parquet = offline_hub / "train.parquet"
    wikitext_like_dataset().to_parquet(parquet)
    source = DatasetSource(str(parquet))
    counts, info = count_dataset(tok, source, d_vocab)
    assert np.array_equal(counts, expected)
    assert info["source"] == f"dataset {parquet} [train]" and info["texts"] == 5 and info["from_cache"] is False
    assert info["counts_cache"].startswith(str(offline_hub / "cache" / "token_counts"))  # the user's cache directory
    again, info = count_dataset(tok, source, d_vocab)  # read back from the counts cache
    assert info["from_cache"] is True and np.array_equal(again, expected)
    # the same rows saved with save_to_disk, as a DatasetDict with its split
    import datasets

    datasets.DatasetDict({"train": wikitext_like_dataset()}).save_to_disk(str(offline_hub / "saved"))
    counts, info = count_dataset(tok, DatasetSource(str(offline_hub / "saved")), d_vocab)
    assert np.array_equal(counts, expected) and info["from_cache"] is False
    with pytest.raises(UsageError, match="no column 'body'"):
        load_split(DatasetSource(str(parquet), column="body"))
    # the key follows the tokenizer's dataset and split: another split is another file
    fingerprint = "f"
    assert counts_cache_path(tok, source, fingerprint, d_vocab) != counts_cache_path(
        tok, DatasetSource(str(parquet), split="test"), fingerprint, d_vocab)


def test_the_study_dataset_offline_fails_fast_with_what_to_do(offline_hub):
    import time

    start = time.monotonic()
    with pytest.raises(DatasetUnavailable, match="Run once on a machine with network access") as err:
        load_split(STUDY_DATASET)
    assert time.monotonic() - start < 30 and "loaded offline" in str(err.value)
    assert (STUDY_DATASET.path, STUDY_DATASET.config, STUDY_DATASET.split) == (
        "Salesforce/wikitext", "wikitext-103-raw-v1", "train")  # the study's corpus: WikiText-103's training split


@pytest.mark.e2e
def test_token_freq_on_a_dataset(tmp_path, offline_hub, capsys):
    parquet = tmp_path / "wiki.parquet"
    wikitext_like_dataset().to_parquet(parquet)
    run_main("token_freq", "--out", str(tmp_path), "--dataset", str(parquet))
    table = read_frequency_csv(tmp_path / "results" / "organism" / "token_freq.csv")
    assert table["token"].tolist()[:3] == [" red", " blue", " the"] and table["count"].tolist()[:4] == [3, 2, 1, 0]
    corpus = json.loads((tmp_path / "results" / "organism" / "token_freq.json").read_text())["results"]["corpus"]
    assert corpus["source"].startswith("dataset ") and corpus["path"] == str(parquet) and corpus["texts"] == 5
    with pytest.raises(SystemExit) as exit_:  # a dataset asked for by flag that cannot be had stays an error
        run_main("token_freq", "--out", str(tmp_path / "hub"), "--dataset", "Salesforce/wikitext")
    assert exit_.value.code == 2 and "Could not load the dataset" in " ".join(capsys.readouterr().err.split())
