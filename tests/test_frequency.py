"""Token counts of a corpus, the CSV round trip, and token_freq.py on the organism."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.errors import UsageError
from analysis.frequency import (count_tokens, frequency_csv_path, frequency_table, most_frequent_ids,
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
