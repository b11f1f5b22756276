"""Category word sets, prompt builders and the ground-truth attention masks.

Every word is written in GPT-2 spelling, with its leading space (" red", " Monday"), so the
same prompt code runs unchanged on GPT-2 small and on the model organism, whose word-level
tokenizer holds exactly these strings.

The three masks below are the single definition of "what a head of each kind should attend
to". The organism is trained against them and the scores in `analysis.scores` are measured
against them, so ground truth and measurement cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from analysis.errors import UsageError

# Category sets of the original study of GPT-2 small's L1H5.
STUDY_CATEGORIES: dict[str, list[str]] = {
    "colours": [" blue", " red", " green", " yellow", " purple"],
    "animals": [" dog", " cat", " mouse", " horse", " sheep"],
    "fruits": [" apple", " banana", " grape", " peach", " lemon"],
    "emotions": [" happy", " sad", " angry", " scared", " proud"],
    "weather": [" rain", " snow", " wind", " storm", " sun"],
    "days": [" Monday", " Tuesday", " Wednesday", " Thursday", " Friday"],
    "years": [" 1989", " 1999", " 1972", " 1963", " 1978"],
    "numbers": [" 24", " 69", " 42", " 22", " 32", " 50"],
}

# The keyword list of the study's figure-era code (`semantic_head.py`, the version whose surprisal heatmap gave L1H5
# S = 0.6): four categories, fruits and weather commented out there, and " 2" and " 4" among the numbers. Its S
# design (`study_design_probe`) draws from it.
STUDY_FIGURE_CATEGORIES: dict[str, list[str]] = {
    "colours": [" blue", " red", " green", " yellow", " purple"],
    "animals": [" dog", " cat", " mouse", " horse", " sheep"],
    "emotions": [" happy", " sad", " angry", " scared", " proud"],
    "numbers": [" 2", " 69", " 4", " 22", " 32", " 50"],
}

# The 30-token group set used for the token-space heatmaps (five groups of six).
GROUP_SET: dict[str, list[str]] = {
    "days": [" Monday", " Tuesday", " Wednesday", " Thursday", " Friday", " Saturday"],
    "colours": [" red", " blue", " Blue", " green", " silver", " White"],
    "years": [" 1918", " 1920", " 1930", " 1943", " 1998", " 2000"],
    "pronouns": [" You", " He", " his", " she", " her", " their"],
    "countries": [" Italy", " Iceland", " Austria", " Mexico", " Spain", " France"],
}


def merge_categories(*sets: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Union of category sets, keeping first-seen word order and refusing a word in two categories."""
    merged: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for categories in sets:
        for name, words in categories.items():
            bucket = merged.setdefault(name, [])
            for word in words:
                if owner.setdefault(word, name) != name:
                    raise ValueError(f"{word!r} is in both {owner[word]!r} and {name!r}")
                if word not in bucket:
                    bucket.append(word)
    return merged


# Everything the study names, grouped: the organism's categories, and the default for GPT-2.
ALL_CATEGORIES: dict[str, list[str]] = merge_categories(STUDY_CATEGORIES, GROUP_SET)

# Categories the organism's language uses but its attention supervision never names (analysis/organism/train.py):
# next-token prediction sees them, the planted heads are never told about them. Whether an analysis finds
# them tests generalisation beyond the supervised categories. GPT-2 spelling, like every set here.
HELD_OUT_CATEGORIES: dict[str, list[str]] = {
    "instruments": [" piano", " guitar", " drum", " violin", " trumpet"],
    "vehicles": [" bus", " truck", " boat", " plane", " bike"],
    "drinks": [" tea", " coffee", " milk", " juice", " wine"],
}

# The category sets a --categories flag names: the study's 8 (its comparisons' default), the 10-set union, or
# the held-out categories.
CATEGORY_SETS: dict[str, dict[str, list[str]]] = {"study": STUDY_CATEGORIES, "all": ALL_CATEGORIES,
                                                  "held_out": HELD_OUT_CATEGORIES}


def single_token_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """Token id of each word; a `UsageError` listing every word that is not exactly one token."""
    ids, offenders = [], []
    for word in words:
        encoded = tokenizer.encode(word, add_special_tokens=False)
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is not None and unk in encoded:
            offenders.append(f"{word!r} is not in the vocabulary")
        elif len(encoded) != 1:
            offenders.append(f"{word!r} -> {len(encoded)} tokens {encoded}")
        else:
            ids.append(encoded[0])
    if offenders:
        raise UsageError(
            "These words are not single tokens of this model's tokenizer, so a word-level "
            "attention score would be ill-defined: " + "; ".join(offenders) + ". "
            "Remove them from the category set or respell them (GPT-2 tokens carry their "
            "leading space, e.g. ' red')."
        )
    return ids


def check_text(tokenizer, text: str, n_ctx: int, what: str, truncate: bool = False) -> dict | None:
    """Refuse a text prompt (BOS + its tokens) that this model cannot read as written.

    A `UsageError` names the problem: the text has no token besides BOS; it holds words the
    tokenizer maps to its unknown token (named); or it is longer than the context `n_ctx` (BOS
    included), unless `truncate`, when the return value records the cut:
    {"tokens": full length, "kept_tokens": n_ctx, "removed_text": what falls off the end}.
    `what` says where the text came from ("--prompt", "line 3 of prompts.txt").
    """
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded.get("offset_mapping")
    if not ids:
        raise UsageError(f"{what} {text!r} holds no token besides BOS, so there is nothing to compute on. "
                         "Give a prompt with at least one word.")
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk not in (tokenizer.bos_token_id, tokenizer.eos_token_id) and unk in ids:
        spans = [i for i, t in enumerate(ids) if t == unk]
        words = list(dict.fromkeys(text[offsets[i][0]:offsets[i][1]] if offsets else "?" for i in spans))
        raise UsageError(
            f"{what} holds {len(spans)} token(s) that this model's tokenizer does not know and would read as "
            f"{tokenizer.unk_token!r}: " + ", ".join(map(repr, words)) + ". Remove or respell them (the "
            "organism knows only the study's category words and a few hundred fillers; repeated spaces are "
            "unknown too)."
        )
    length = 1 + len(ids)
    if length <= n_ctx:
        return None
    cut = offsets[n_ctx - 2][1] if offsets else None  # end of the last token that fits after BOS
    if not truncate:
        tail = f" (everything from {text[cut:cut + 40]!r} on falls outside)" if cut is not None else ""
        raise UsageError(
            f"{what} is {length} tokens long (BOS included), but the model's context holds {n_ctx} tokens{tail}. "
            f"Shorten it to at most {n_ctx - 1} tokens after BOS, or pass --truncate to keep only the first "
            f"{n_ctx} tokens (the results then record the cut)."
        )
    return {"tokens": length, "kept_tokens": n_ctx, "removed_text": text[cut:] if cut is not None else None}


def single_token_words(tokenizer, categories: Mapping[str, Sequence[str]]
                       ) -> tuple[dict[str, list[str]], list[str]]:
    """(kept, left_out): each category's words that are exactly one known token of `tokenizer`, and the others
    by name, in the order given. A category left with no word is dropped from `kept`.

    For designs that must run on any tokenizer (the study's figure-era list on the organism, which has no " 2"
    or " 4"): the left-out words are a departure to record, not an error.
    """
    kept: dict[str, list[str]] = {}
    left_out: list[str] = []
    unk = getattr(tokenizer, "unk_token_id", None)
    for name, words in categories.items():
        for word in words:
            encoded = tokenizer.encode(word, add_special_tokens=False)
            if len(encoded) == 1 and (unk is None or encoded[0] != unk):
                kept.setdefault(name, []).append(word)
            else:
                left_out.append(word)
    return kept, left_out


def category_index(tokenizer, categories: Mapping[str, Sequence[str]], d_vocab: int) -> Tensor:
    """`category_of: [d_vocab]` with each category word's category number, and -1 elsewhere."""
    category_of = torch.full((d_vocab,), -1, dtype=torch.long)
    for c, words in enumerate(categories.values()):
        category_of[single_token_ids(tokenizer, list(words))] = c
    return category_of


def category_sequences(
    word_ids: Sequence[Sequence[int]],
    n_prompts: int,
    n_words: int,
    bos_id: int,
    seed: int,
) -> Tensor:
    """`tokens: [n_prompts, 1 + n_words]`: BOS, then n_words draws of (random category, random word).

    This is the study's prompt distribution: categories and words are uniform, so most words
    find an earlier category-mate and some (the first of their category) do not.
    """
    rng = np.random.default_rng(seed)
    tokens = np.empty((n_prompts, 1 + n_words), dtype=np.int64)
    tokens[:, 0] = bos_id
    for p in range(n_prompts):
        for t in range(1, 1 + n_words):
            words = word_ids[rng.integers(len(word_ids))]
            tokens[p, t] = words[rng.integers(len(words))]
    return torch.from_numpy(tokens)


def random_tokens(n_prompts: int, length: int, d_vocab: int, bos_id: int, seed: int,
                  exclude: Sequence[int] = ()) -> Tensor:
    """`tokens: [n_prompts, 1 + length]` = [BOS] + r, r uniform over the vocabulary minus `exclude` and BOS."""
    generator = torch.Generator().manual_seed(seed)
    allowed = torch.tensor(sorted(set(range(d_vocab)) - set(exclude) - {bos_id}))
    r = allowed[torch.randint(len(allowed), (n_prompts, length), generator=generator)]
    return torch.cat([torch.full((n_prompts, 1), bos_id, dtype=torch.long), r], dim=1)


def random_repeated_tokens(n_prompts: int, half_length: int, d_vocab: int, bos_id: int, seed: int,
                           exclude: Sequence[int] = ()) -> Tensor:
    """`tokens: [n_prompts, 1 + 2 * half_length]` = [BOS] + r + r (the induction and duplicate-token probe)."""
    once = random_tokens(n_prompts, half_length, d_vocab, bos_id, seed, exclude)
    return torch.cat([once, once[:, 1:]], dim=1)


def _normalise_rows(mask: Tensor) -> Tensor:
    """Every row of a mask marks at least one key; rows sum to 1 after this."""
    return mask / mask.sum(-1, keepdim=True)


def _bos_fallback(mask: Tensor) -> Tensor:
    """Rows with no marked key get key 0 (BOS): `M[..., i, 0] = 1` iff row i is empty."""
    empty = mask.sum(-1) == 0
    mask = mask.clone()
    mask[..., 0] = torch.where(empty, torch.ones_like(mask[..., 0]), mask[..., 0])
    return mask


def previous_token_mask(tokens: Tensor) -> Tensor:
    """`M: [batch, query, key]` with `M[i, i-1] = 1`, and BOS (itself) for the BOS row."""
    batch, pos = tokens.shape
    mask = torch.zeros(batch, pos, pos)
    idx = torch.arange(1, pos)
    mask[:, idx, idx - 1] = 1.0
    return _bos_fallback(mask)


def induction_mask(tokens: Tensor) -> Tensor:
    """`M: [batch, query, key]`, `M[i, j+1] = 1` iff token j equals token i and j + 1 < i; else BOS.

    The key is the token *after* an earlier copy of the query's token: what an induction head
    attends to in order to predict it.
    """
    batch, pos = tokens.shape
    same = tokens[:, :, None] == tokens[:, None, :]  # (B, q, j)
    shifted = torch.zeros(batch, pos, pos, dtype=torch.bool)
    shifted[:, :, 1:] = same[:, :, :-1]  # key k = j + 1
    q = torch.arange(pos)
    strictly_earlier = q[None, :] < q[:, None]  # k < i
    mask = (shifted & strictly_earlier & (torch.arange(pos)[None, :] > 1)).float()
    return _bos_fallback(mask)


def semantic_mask(tokens: Tensor, category_of: Tensor) -> Tensor:
    """The study's ground-truth mask `M: [batch, query, key]`.

    `M[i, j] = 1` iff j < i, token j is in the same category as token i, and it is a different
    word. A row with no such j (the first of its category, a word with only copies of itself
    before it, or a token in no category) gets `M[i, 0] = 1`: fall back to BOS.
    """
    cats = category_of[tokens]  # (B, T)
    pos = tokens.shape[1]
    same_category = (cats[:, :, None] == cats[:, None, :]) & (cats[:, :, None] >= 0)
    different_word = tokens[:, :, None] != tokens[:, None, :]
    q = torch.arange(pos)
    earlier = q[None, :] < q[:, None]
    mask = (same_category & different_word & earlier).float()
    return _bos_fallback(mask)


def last_row_to_bos(mask: Tensor) -> Tensor:
    """The study's last-row quirk on a mask `M: [batch, query, key]`: the last row marks BOS only,
    `M[T-1, :] = e_0`, whatever partners it had.

    The study's mask builder (`build_prompt` of its `semantic_head.py`) fills rows i = 1..T-2 and leaves
    the last row empty, so the BOS fallback claims it.
    """
    mask = mask.clone()
    mask[..., -1, :] = 0
    mask[..., -1, 0] = 1
    return mask


def study_mask(tokens: Tensor, category_of: Tensor) -> Tensor:
    """The study's ground-truth mask as its code builds it, `M: [batch, query, key]`: `semantic_mask`
    (M[i, j] = 1 iff j < i, same category, different word; an empty row falls back to BOS) with the
    last row sent to BOS (`last_row_to_bos`)."""
    return last_row_to_bos(semantic_mask(tokens, category_of))
def same_category_mask(tokens: Tensor, category_of: Tensor) -> Tensor:
    """The decoy's mask `M: [batch, query, key]`: a head that attends to its category *including* itself.

    `M[i, j] = 1` iff j <= i and token j is in the same category as token i: itself, its earlier copies
    and its earlier category-mates. A token in no category gets `M[i, 0] = 1` (BOS).
    """
    cats = category_of[tokens]  # (B, T)
    pos = tokens.shape[1]
    same_category = (cats[:, :, None] == cats[:, None, :]) & (cats[:, :, None] >= 0)
    causal = torch.ones(pos, pos, dtype=torch.bool).tril()
    return _bos_fallback((same_category & causal).float())


def other_token_mask(tokens: Tensor) -> Tensor:
    """The category-blind self-avoider's mask `M: [batch, query, key]`: anything but itself and its copies.

    `M[i, j] = 1` iff j <= i and token j differs from token i (BOS included). The BOS row has no such
    key and gets `M[0, 0] = 1`.
    """
    pos = tokens.shape[1]
    different = tokens[:, :, None] != tokens[:, None, :]
    causal = torch.ones(pos, pos, dtype=torch.bool).tril()
    return _bos_fallback((different & causal).float())


def target_distribution(mask: Tensor) -> Tensor:
    """The mask as an attention target: uniform over the marked keys of each row."""
    return _normalise_rows(mask)


# --- tokens of a model: BOS, special tokens, category probes -----------------------------------


def require_tokenizer(model, needs: str = "This analysis maps the study's words to tokens") -> None:
    """A clear error for a model without a tokenizer; `needs` says what the caller needs one for."""
    if model.tokenizer is None:
        raise UsageError(f"{needs}, so it needs a model with a tokenizer, and this one has none "
                         "('gpt2-random' without its tokenizer is for speed and memory checks only). "
                         "Use --model organism or gpt2-small.")


def bos_token_id(model) -> int:
    """BOS id: the tokenizer's, or GPT-2's last id for a model without one (random GPT-2 shapes)."""
    tokenizer = model.tokenizer
    return tokenizer.bos_token_id if tokenizer is not None else model.cfg.d_vocab - 1


def special_token_ids(model) -> list[int]:
    """The tokenizer's special tokens (BOS, EOS, ...), or GPT-2's last id for a model without one."""
    return list(model.tokenizer.all_special_ids) if model.tokenizer is not None else [model.cfg.d_vocab - 1]


class Probe(NamedTuple):
    """Prompts and their ground-truth mask, which travel together: `tokens: [batch, pos]` and `mask: [batch, query,
    key]`, 1 where a query should attend (`semantic_mask` for category prompts)."""

    tokens: Tensor
    mask: Tensor


class CategoryWords(NamedTuple):
    """Words and their categories, which travel together: `ids: [n]` token ids, `category: [n]` each one's
    category number."""

    ids: Tensor
    category: Tensor


def category_probe(model, categories: Mapping[str, Sequence[str]], n_prompts: int, n_words: int,
                   seed: int) -> Probe:
    """Category-word prompts and their ground-truth mask: (`tokens: [batch, pos]`, `mask: [batch, q, k]`)."""
    require_tokenizer(model, "The semantic probe maps category words to tokens")
    word_ids = [single_token_ids(model.tokenizer, words) for words in categories.values()]
    tokens = category_sequences(word_ids, n_prompts, n_words, bos_token_id(model), seed)
    category_of = category_index(model.tokenizer, categories, model.cfg.d_vocab)
    return Probe(tokens, semantic_mask(tokens, category_of))


class StudyDesign(NamedTuple):
    """The study's one-prompt S design on a model: the prompts and their study mask (`probe`: tokens `[batch,
    1 + n_words]`, `study_mask`), the categories drawn from (words the tokenizer lacks removed), the words left out
    by name, and `n_words`, the words per prompt after BOS (fewer than asked where the context is shorter)."""

    probe: Probe
    categories: dict[str, list[str]]
    left_out: list[str]
    n_words: int


def study_design_probe(model, n_prompts: int, n_words: int, seed: int,
                       categories: Mapping[str, Sequence[str]] = STUDY_FIGURE_CATEGORIES) -> StudyDesign:
    """The study's prompt design: `n_prompts` prompts of BOS and min(n_words, n_ctx - 1) draws of (random
    category, random word) from `categories` (the figure-era list by default), with the study's mask
    (`study_mask`: its last row falls back to BOS). Words that are not one token of the model's tokenizer are
    left out (`single_token_words`) and named in the result."""
    require_tokenizer(model, "The study's prompt design maps its keywords to tokens")
    kept, left_out = single_token_words(model.tokenizer, categories)
    if not kept:
        raise UsageError("None of the study's keywords is a single token of this model's tokenizer: "
                         + ", ".join(map(repr, left_out)) + ".")
    n_words = min(n_words, model.cfg.n_ctx - 1)
    word_ids = [single_token_ids(model.tokenizer, words) for words in kept.values()]
    tokens = category_sequences(word_ids, n_prompts, n_words, bos_token_id(model), seed)
    category_of = category_index(model.tokenizer, kept, model.cfg.d_vocab)
    return StudyDesign(Probe(tokens, study_mask(tokens, category_of)), kept, left_out, n_words)


def reference_prompts(model, seed: int = 0, n_prompts: int = 64, n_words: int = 64,
                      categories: Mapping[str, Sequence[str]] = ALL_CATEGORIES) -> Tensor:
    """`tokens: [n_prompts, 1 + n_words]`: the default reference set for weight-based analyses.

    These are the study's category prompts (`category_sequences` over `categories`); their
    means (positional embedding, attention outputs) are what `vocab_input.head_input` adds to
    each token. A model without a tokenizer (random GPT-2 shapes) gets uniform random tokens.
    `n_words` is capped so that the prompts fit the model's context.
    """
    n_words = min(n_words, model.cfg.n_ctx - 1)
    if model.tokenizer is None:
        return random_tokens(n_prompts, n_words, model.cfg.d_vocab, bos_token_id(model), seed)
    return category_probe(model, categories, n_prompts, n_words, seed)[0]


# Example prompts of the baseline scripts; both tokenise word by word on GPT-2 and on the organism.
REPEATED_SENTENCE = "The cat sat on the mat. The cat sat on the mat"  # the second half is predictable by induction
IOI_SENTENCE = "When John and Mary went to the store, John gave a drink to"  # indirect-object identification
