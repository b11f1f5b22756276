"""Our head scores against TransformerLens's detect_head: the exact relation between the two, on the organism."""

import pytest
import torch

from analysis import detector_check
from analysis.errors import UsageError


def test_expected_ratios():
    assert detector_check.expected_ratio("previous_token", 50) == pytest.approx(100 / 101)
    assert detector_check.expected_ratio("induction", 50) == pytest.approx(50 / 101)  # detect_head's ceiling
    assert detector_check.expected_ratio("duplicate", 2) == pytest.approx(2 / 5)


def test_repeated_word_prompts_tokenise_back_exactly(organism):
    texts, tokens = detector_check.repeated_word_prompts(organism, 3, 20, seed=0)
    assert tokens.shape == (3, 41) and (tokens[:, 0] == organism.tokenizer.bos_token_id).all()
    assert torch.equal(tokens[:, 1:21], tokens[:, 21:])
    assert all(len(set(row[1:21].tolist())) == 20 for row in tokens)  # r has no repeated token
    assert torch.equal(organism.to_tokens(texts[1]).cpu()[0], tokens[1])


def test_detect_head_equals_our_scores_times_the_expected_ratio(organism, truth):
    check = detector_check.cross_check(organism, n_prompts=3, half_length=20, seed=1)
    for kind, c in check.items():
        assert c["max_deviation"] < 1e-5, kind
        assert torch.allclose(c["detect_head"], c["ours"] * c["expected_ratio"], atol=1e-5)
    planted = truth["planted_heads"]
    for kind, truth_kind in (("previous_token", "previous_token"), ("induction", "induction")):
        best = check[kind]["detect_head"].flatten().argmax().item()
        assert list(divmod(best, organism.cfg.n_heads)) == planted[truth_kind]
    # the planted induction head reaches about 0.9 of our ceiling of 1, hence about 0.9 * 20/41 on detect_head
    assert check["induction"]["detect_head"].max() < detector_check.expected_ratio("induction", 20)


def test_too_long_a_repeat_is_a_clear_error(organism):
    with pytest.raises(UsageError, match="shorter"):
        detector_check.repeated_word_prompts(organism, 1, 64, seed=0)  # 129 tokens > the 128-token context
