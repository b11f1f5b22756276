"""Ground-truth masks on hand-built token sequences with known answers."""

import pytest
import torch

from analysis import prompts
from analysis.errors import UsageError

# Category table for hand-built cases: ids 1-3 are colours, 4-5 are animals, 6+ are in no category.
CATEGORY_OF = torch.tensor([-1, 0, 0, 0, 1, 1, -1, -1])


def test_semantic_mask_matches_the_rule_row_by_row():
    #            pos: 0  1  2  3  4  5  6
    tokens = torch.tensor([[0, 1, 4, 1, 2, 6, 5]])  # BOS red dog red blue the cat
    mask = prompts.semantic_mask(tokens, CATEGORY_OF)[0]
    expected = torch.zeros(7, 7)
    expected[0, 0] = 1  # BOS row: no partner -> BOS
    expected[1, 0] = 1  # first colour -> BOS
    expected[2, 0] = 1  # first animal -> BOS
    expected[3, 0] = 1  # red again: only a copy of itself before -> BOS
    expected[4, [1, 3]] = 1  # blue: both earlier reds
    expected[5, 0] = 1  # filler word -> BOS
    expected[6, 2] = 1  # cat: dog
    assert torch.equal(mask, expected)


def test_last_row_follows_the_rule_too():
    tokens = torch.tensor([[0, 4, 1, 1]])  # ... the last word has only a copy of itself before it
    mask = prompts.semantic_mask(tokens, CATEGORY_OF)[0]
    assert mask[3].tolist() == [1, 0, 0, 0]


def test_previous_token_and_induction_masks():
    tokens = torch.tensor([[0, 5, 6, 7, 5, 6]])  # BOS A B C A B
    prev = prompts.previous_token_mask(tokens)[0]
    assert prev[0, 0] == 1 and all(prev[i, i - 1] == 1 for i in range(1, 6)) and prev.sum() == 6
    ind = prompts.induction_mask(tokens)[0]
    assert ind[4].tolist() == [0, 0, 1, 0, 0, 0]  # second A -> the B after the first A
    assert ind[5].tolist() == [0, 0, 0, 1, 0, 0]  # second B -> C
    assert ind[1:4, 0].tolist() == [1, 1, 1]  # first occurrences fall back to BOS


def test_target_distribution_rows_sum_to_one():
    tokens = torch.tensor([[0, 1, 2, 3, 4]])
    target = prompts.target_distribution(prompts.semantic_mask(tokens, CATEGORY_OF))
    assert torch.allclose(target.sum(-1), torch.ones(1, 5))
    assert torch.allclose(target[0, 3], torch.tensor([0, 0.5, 0.5, 0, 0]))


def test_category_sequences_are_seeded_and_start_with_bos():
    words = [[1, 2, 3], [4, 5]]
    a = prompts.category_sequences(words, 4, 10, bos_id=0, seed=7)
    b = prompts.category_sequences(words, 4, 10, bos_id=0, seed=7)
    assert torch.equal(a, b) and a.shape == (4, 11) and (a[:, 0] == 0).all()
    assert set(a[:, 1:].flatten().tolist()) <= {1, 2, 3, 4, 5}
    assert not torch.equal(a, prompts.category_sequences(words, 4, 10, bos_id=0, seed=8))


def test_random_repeated_tokens_repeat_exactly():
    tokens = prompts.random_repeated_tokens(3, 5, d_vocab=50, bos_id=49, seed=0, exclude=[0])
    assert tokens.shape == (3, 11) and (tokens[:, 0] == 49).all()
    assert torch.equal(tokens[:, 1:6], tokens[:, 6:])
    assert not ((tokens[:, 1:] == 0) | (tokens[:, 1:] == 49)).any()


def test_single_token_check_lists_every_offender(organism):
    assert len(prompts.single_token_ids(organism.tokenizer, [" red", " Monday"])) == 2
    with pytest.raises(UsageError, match="' aardvark'.*' Blueberry'"):
        prompts.single_token_ids(organism.tokenizer, [" red", " aardvark", " Blueberry"])


def test_every_study_word_is_one_organism_token(organism):
    for words in prompts.ALL_CATEGORIES.values():
        ids = prompts.single_token_ids(organism.tokenizer, words)
        assert [organism.tokenizer.decode([i]) for i in ids] == list(words)


def test_reference_prompts_are_seeded_category_prompts(organism):
    a = prompts.reference_prompts(organism, seed=4, n_prompts=8, n_words=300)
    assert a.shape == (8, organism.cfg.n_ctx)  # capped to the context
    assert torch.equal(a, prompts.reference_prompts(organism, seed=4, n_prompts=8, n_words=300))
    assert (a[:, 0] == organism.tokenizer.bos_token_id).all()
    category_ids = prompts.category_index(organism.tokenizer, prompts.ALL_CATEGORIES, organism.cfg.d_vocab)
    assert (category_ids[a[:, 1:]] >= 0).all()


def test_tokens_of_a_model_with_and_without_a_tokenizer(organism):
    from types import SimpleNamespace

    bare = SimpleNamespace(tokenizer=None, cfg=SimpleNamespace(d_vocab=50257))  # random GPT-2 shapes, no tokenizer
    assert prompts.bos_token_id(bare) == 50256 and prompts.special_token_ids(bare) == [50256]
    assert prompts.bos_token_id(organism) == organism.tokenizer.bos_token_id
    assert set(prompts.special_token_ids(organism)) == set(organism.tokenizer.all_special_ids)
    prompts.require_tokenizer(organism)  # no error
    with pytest.raises(UsageError, match="The probe reads words, so it needs a model with a tokenizer"):
        prompts.require_tokenizer(bare, "The probe reads words")
    with pytest.raises(UsageError, match="semantic probe"):
        prompts.category_probe(bare, prompts.STUDY_CATEGORIES, 2, 8, seed=0)


def test_category_probe_tokens_and_mask(organism):
    tokens, mask = prompts.category_probe(organism, prompts.STUDY_CATEGORIES, 3, 10, seed=2)
    assert tokens.shape == (3, 11) and (tokens[:, 0] == prompts.bos_token_id(organism)).all()
    category_of = prompts.category_index(organism.tokenizer, prompts.STUDY_CATEGORIES, organism.cfg.d_vocab)
    assert torch.equal(mask, prompts.semantic_mask(tokens, category_of))


def test_study_mask_sends_the_last_row_to_bos_and_keeps_every_other_row():
    #            pos: 0  1  2  3  4
    tokens = torch.tensor([[0, 1, 4, 2, 5]])  # BOS red dog blue cat: the last word has a partner (dog)
    ours = prompts.semantic_mask(tokens, CATEGORY_OF)[0]
    theirs = prompts.study_mask(tokens, CATEGORY_OF)[0]
    assert ours[4].tolist() == [0, 0, 1, 0, 0]  # our rule: cat -> dog
    assert theirs[4].tolist() == [1, 0, 0, 0, 0]  # the study's code: the last row falls back to BOS
    assert torch.equal(theirs[:4], ours[:4]) and theirs[3].tolist() == [0, 1, 0, 0, 0]  # blue -> red, as ours


def test_single_token_words_leave_out_what_the_organism_lacks(organism):
    kept, left_out = prompts.single_token_words(organism.tokenizer, prompts.STUDY_FIGURE_CATEGORIES)
    assert left_out == [" 2", " 4"]  # the organism knows " 24" and " 42", not the study's figure-era " 2" and " 4"
    assert kept["numbers"] == [" 69", " 22", " 32", " 50"]
    assert {k: v for k, v in kept.items() if k != "numbers"} == {
        k: v for k, v in prompts.STUDY_FIGURE_CATEGORIES.items() if k != "numbers"}
    kept, left_out = prompts.single_token_words(organism.tokenizer, {"none": [" 2"], "colours": [" red"]})
    assert kept == {"colours": [" red"]} and left_out == [" 2"]  # a category with no word left is dropped


def test_study_design_probe_fits_the_context_and_uses_only_known_words(organism):
    design = prompts.study_design_probe(organism, 3, 255, seed=4)
    assert design.n_words == organism.cfg.n_ctx - 1 == 127  # the longest prompt that fits, not 255
    tokens, mask = design.probe
    assert tokens.shape == (3, 128) and (tokens[:, 0] == prompts.bos_token_id(organism)).all()
    allowed = {i for words in design.categories.values() for i in prompts.single_token_ids(organism.tokenizer, words)}
    assert set(tokens[:, 1:].flatten().tolist()) == allowed  # 127 x 3 draws hit each of the 19 words
    assert design.left_out == [" 2", " 4"] and list(design.categories) == list(prompts.STUDY_FIGURE_CATEGORIES)
    category_of = prompts.category_index(organism.tokenizer, design.categories, organism.cfg.d_vocab)
    assert torch.equal(mask, prompts.study_mask(tokens, category_of))
    assert (mask[:, -1, 0] == 1).all() and (mask[:, -1, 1:] == 0).all()
    assert torch.equal(prompts.study_design_probe(organism, 3, 255, seed=4).probe.tokens, tokens)  # seeded
    with pytest.raises(UsageError, match="None of the study's keywords"):
        prompts.study_design_probe(organism, 1, 8, 0, {"numbers": [" 2", " 4"]})
