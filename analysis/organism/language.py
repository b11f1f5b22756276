"""The organism's vocabulary, tokenizer and synthetic language.

The vocabulary is word level and spelt like GPT-2's tokens (" red", " Monday", ".", "The"), so
prompts written for GPT-2 tokenise the same way here. The language mixes three kinds of
sequence, each of which rewards one of the planted heads:

* category text: category words among filler words, where after a category word the next word
  is often an earlier, *different* word of the same category (rewards the semantic head). Its
  categories are `LANGUAGE_CATEGORIES`: the ten the planted heads are supervised on and the
  held-out ones (`prompts.HELD_OUT_CATEGORIES`), which only next-token prediction sees;
* repeated random chunks of varied length and offset (rewards previous-token + induction);
* uniformly random tokens (nothing to exploit but the previous token's identity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from analysis.prompts import ALL_CATEGORIES, HELD_OUT_CATEGORIES, merge_categories

BOS = "<|endoftext|>"
UNK = "<unk>"

# Every category of the language: the supervised ones first, then the held-out ones.
LANGUAGE_CATEGORIES: dict[str, list[str]] = merge_categories(ALL_CATEGORIES, HELD_OUT_CATEGORIES)

# Words that are in no category: function words, a few nouns and verbs, names and punctuation,
# enough to tokenise simple sentences ("The cat sat on the mat.") and the IOI prompt.
FILLER_WORDS: list[str] = [
    "The", "When", "It", "In", "A", "He", "She", "They", "There", "This", ".", ",", " .", " ,",
    " The", " the", " a", " an", " and", " or", " but", " of", " to", " in", " on", " at", " by", " for",
    " with", " from", " into", " over", " under", " is", " was", " are", " were", " be", " been",
    " has", " had", " have", " it", " this", " that", " there", " then", " when", " where", " what",
    " who", " not", " no", " all", " some", " one", " two", " three", " new", " old", " good", " big",
    " small", " long", " time", " man", " woman", " house", " car", " book", " door", " road",
    " city", " water", " food", " work", " school", " sat", " mat", " went", " store", " gave",
    " drink", " saw", " said", " made", " took", " came", " ran", " John", " Mary", " Tom", " Anna",
    " table", " chair", " box", " tree", " river", " hill", " game", " song", " paper", " window",
]

# GPT-2's pre-tokenisation pattern: words keep their leading space, digits stay together.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def vocabulary() -> list[str]:
    """Token strings in id order: BOS = 0, UNK = 1, then every category word of the language, then fillers."""
    words = [BOS, UNK]
    for category_words in LANGUAGE_CATEGORIES.values():
        words += category_words
    words += [w for w in FILLER_WORDS if w not in words]
    assert len(set(words)) == len(words), "duplicate token in the organism vocabulary"
    return words


def build_tokenizer(n_ctx: int, directory: Path):
    """A word-level `PreTrainedTokenizerFast` over `vocabulary()`, GPT-2 style pre-splitting.

    It is saved to `directory` and loaded back from there: TransformerLens re-loads a model's
    tokenizer by its `name_or_path`, which only a tokenizer loaded from files has.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(GPT2_SPLIT_PATTERN), behavior="isolated")
    core.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=BOS, pad_token=BOS, unk_token=UNK,
        model_max_length=n_ctx, add_bos_token=False,
    ).save_pretrained(directory)
    return PreTrainedTokenizerFast.from_pretrained(str(directory))


@dataclass(frozen=True)
class LanguageSpec:
    """Ids the generator draws from, derived from the vocabulary."""

    category_ids: tuple[tuple[int, ...], ...]
    filler_ids: tuple[int, ...]
    bos_id: int
    d_vocab: int

    @classmethod
    def from_vocabulary(cls, words: Sequence[str]) -> "LanguageSpec":
        index = {w: i for i, w in enumerate(words)}
        categories = tuple(tuple(index[w] for w in ws) for ws in LANGUAGE_CATEGORIES.values())
        in_category = {i for ids in categories for i in ids}
        fillers = tuple(i for w, i in index.items() if w not in (BOS, UNK) and i not in in_category)
        return cls(categories, fillers, index[BOS], len(words))

    @property
    def content_ids(self) -> np.ndarray:
        """Every id but BOS and UNK: what random sequences draw from."""
        return np.array([i for i in range(self.d_vocab) if i not in (self.bos_id, 1)])


def category_text(rng: np.random.Generator, spec: LanguageSpec, length: int) -> np.ndarray:
    """BOS, then category words among fillers; after a category word, with probability 0.7 the
    next word is an earlier, different word of its category (when one exists).

    The share of category words and the number of categories in play vary per sequence, so that
    some words have many category-mates before them and some have none.
    """
    p_category = rng.choice([0.25, 0.5, 1.0])
    n_active = rng.integers(1, len(spec.category_ids) + 1)
    active = rng.choice(len(spec.category_ids), size=n_active, replace=False)
    seq = [spec.bos_id]
    seen: dict[int, list[int]] = {}  # category -> distinct words seen so far
    category_of = {i: c for c, ids in enumerate(spec.category_ids) for i in ids}
    while len(seq) < length:
        last = seq[-1]
        c_last = category_of.get(last)
        mates = [w for w in seen.get(c_last, []) if w != last] if c_last is not None else []
        if mates and rng.random() < 0.7:
            word = mates[rng.integers(len(mates))]
        elif rng.random() < p_category:
            c = active[rng.integers(n_active)]
            word = spec.category_ids[c][rng.integers(len(spec.category_ids[c]))]
        else:
            word = spec.filler_ids[rng.integers(len(spec.filler_ids))]
        c_word = category_of.get(word)
        if c_word is not None and word not in seen.setdefault(c_word, []):
            seen[c_word].append(word)
        seq.append(word)
    return np.array(seq, dtype=np.int64)


def repeated_chunks(rng: np.random.Generator, spec: LanguageSpec, length: int) -> np.ndarray:
    """BOS, a random prefix of 0-20 tokens, then a random chunk of 4-60 tokens repeated until full.

    Varying the chunk length and the offset keeps "attend to the token after the earlier copy"
    the only rule that always works, so no head can solve it by position alone.
    """
    content = spec.content_ids
    prefix = rng.choice(content, size=rng.integers(0, 21))
    chunk = rng.choice(content, size=rng.integers(4, 61))
    reps = -(-(length - 1 - len(prefix)) // len(chunk))
    body = np.concatenate([prefix, np.tile(chunk, reps)])[: length - 1]
    return np.concatenate([[spec.bos_id], body]).astype(np.int64)


def random_tokens(rng: np.random.Generator, spec: LanguageSpec, length: int) -> np.ndarray:
    return np.concatenate([[spec.bos_id], rng.choice(spec.content_ids, size=length - 1)]).astype(np.int64)


GENERATORS = {"category_text": category_text, "repeated_chunks": repeated_chunks, "random_tokens": random_tokens}


def sample_batch(rng: np.random.Generator, spec: LanguageSpec, batch: int, length: int,
                 mixture: dict[str, float], progress: bool = False) -> np.ndarray:
    """`tokens: [batch, length]`, each row from a generator drawn with the mixture's weights."""
    names = list(mixture)
    weights = np.array([mixture[n] for n in names], dtype=float)
    kinds = rng.choice(len(names), size=batch, p=weights / weights.sum())
    rows = tqdm(kinds, desc="sampling", unit=" sequences", disable=not progress, leave=False)
    return np.stack([GENERATORS[names[k]](rng, spec, length) for k in rows])


def write_corpus(path: Path, rows: np.ndarray) -> Path:
    """A text corpus of the sequences `rows: [n, length]` (e.g. `sample_batch`'s; BOS, the first column, dropped)
    that tokenises back to the same tokens.

    A token without a leading space ("The", ".") would fuse with the word before it when the
    text is re-tokenised (" catThe" is no token), so such a token starts a new line; counting
    tokens line by line then recovers exactly the sampled sequences.
    """
    vocab = vocabulary()
    lines: list[str] = []
    for row in rows:
        line = ""
        for token in row[1:]:
            word = vocab[token]
            if line and not word.startswith(" "):
                lines.append(line)
                line = ""
            line += word
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return path
