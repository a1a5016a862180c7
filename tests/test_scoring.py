"""Scorer: generate's processors on PARD's slots; the CPU path that runs the warpers after top-k on its survivors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from transformers_pard.scoring import Scorer


def warpers(temperature, top_k, top_p, min_p=None, typical=None):
    """generate's order: temperature -> top-k -> top-p (-> min-p, typical)."""
    chosen = [TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k), TopPLogitsWarper(top_p)]
    chosen += [MinPLogitsWarper(min_p)] if min_p else []
    chosen += [TypicalLogitsWarper(typical)] if typical else []
    return LogitsProcessorList(chosen)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), temperature=st.floats(0.2, 2.0), top_k=st.integers(1, 80),
       top_p=st.floats(0.05, 1.0), min_p=st.one_of(st.none(), st.floats(0.01, 0.5)),
       typical=st.one_of(st.none(), st.floats(0.2, 0.99)), decimals=st.sampled_from([None, 0, 1]))
def test_warpers_after_top_k_on_its_survivors_equal_the_full_rows(seed, temperature, top_k, top_p, min_p, typical,
                                                                  decimals):
    """The same scores as transformers' warpers on the whole rows. ``decimals`` rounds the logits so that
    values tie: where top-p or min-p cut through equal logits, which of them stay is an accident of
    ``torch.sort``'s tie order (not stable) in transformers too, so there the kept *values* must agree row by
    row (the same number of each logit), not the ids."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(7, 300, generator=generator) * 4
    if decimals is not None:
        logits = logits.round(decimals=decimals)
    processors = warpers(temperature, top_k, top_p, min_p, typical)
    scorer = Scorer(processors)
    assert scorer.top_k_at == 1
    expected = processors(torch.zeros(7, 1, dtype=torch.long), logits.clone())
    got = scorer.scores(None, torch.zeros(1, 0, dtype=torch.long), logits[None])[0]
    if decimals is None:  # no ties
        assert torch.equal(torch.isfinite(got), torch.isfinite(expected))
        torch.testing.assert_close(got, expected)
    for row_got, row_expected in zip(got, expected):
        kept, kept_expected = row_got[torch.isfinite(row_got)], row_expected[torch.isfinite(row_expected)]
        torch.testing.assert_close(kept.sort().values, kept_expected.sort().values)


def test_the_survivor_path_only_where_top_k_is_followed_by_warpers():
    assert Scorer(warpers(0.7, 50, 0.9)).top_k_at == 1
    assert Scorer(LogitsProcessorList([TemperatureLogitsWarper(0.7), TopKLogitsWarper(50)])).top_k_at is None
    assert Scorer(LogitsProcessorList([TopPLogitsWarper(0.9)])).top_k_at is None
    assert Scorer(LogitsProcessorList([TopKLogitsWarper(5, filter_value=-1e4), TopPLogitsWarper(0.9)])).top_k_at is None
    prefixed = Scorer(LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.2), TopKLogitsWarper(5),
                                           TopPLogitsWarper(0.9)]))
    assert not prefixed.prefix_free and prefixed.top_k_at is None


@pytest.mark.parametrize("top_k", [1, 3])
def test_a_row_with_fewer_finite_logits_than_another_keeps_its_own(top_k):
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0], [5.0, float("-inf"), float("-inf"), float("-inf"), 1.0]])
    processors = warpers(1.0, top_k, 0.99)
    expected = processors(torch.zeros(2, 1, dtype=torch.long), logits.clone())
    got = Scorer(processors).scores(None, torch.zeros(1, 0, dtype=torch.long), logits[None])[0]
    assert torch.equal(got, expected)
