"""Greedy PARD output is token-identical to stock ``generate`` (fp32), whatever the draft."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transformers_pard.testing import (
    OracleDraft,
    left_padded_batch,
    perturbed_pard_draft,
    reference_by_position,
    tiny_pard_draft,
)

from transformers_pard.testing import ARCHITECTURES

ARCHS = tuple(ARCHITECTURES)

PAD = 0


def stock_greedy(target, ids, mask, max_new_tokens, **kwargs):
    return target.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)


def make_draft(kind, target, reference, mask, seed):
    by_position = reference_by_position(reference, mask, PAD)
    if kind == "right":
        return OracleDraft(target.config, by_position)
    if kind == "wrong":
        return OracleDraft(target.config, by_position, always_wrong=True)
    if kind == "sometimes":
        generator = torch.Generator().manual_seed(seed)
        return OracleDraft(target.config, by_position, wrong_at=torch.rand(by_position.shape, generator=generator) < 0.3)
    if kind == "real":
        return perturbed_pard_draft(target, seed=seed)
    return tiny_pard_draft(target, seed=seed)


@settings(max_examples=200)
@given(
    arch=st.sampled_from(ARCHS),
    k=st.sampled_from([1, 2, 4, 8]),
    lengths=st.sampled_from([1, 3]).flatmap(lambda b: st.lists(st.integers(1, 12), min_size=b, max_size=b)),
    max_new_tokens=st.integers(1, 24),
    kind=st.sampled_from(["right", "wrong", "sometimes", "real", "untrained"]),
    seed=st.integers(0, 2**16),
)
def test_greedy_is_lossless(targets, arch, k, lengths, max_new_tokens, kind, seed):
    target = targets[arch]
    ids, mask = left_padded_batch(lengths, seed)
    expected = stock_greedy(target, ids, mask, max_new_tokens)
    draft = make_draft(kind, target, expected, mask, seed)
    out = stock_greedy(target, ids, mask, max_new_tokens, pard_draft=draft, num_assistant_tokens=k)
    assert torch.equal(out, expected)


def count_forwards(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("batch", [1, 3])
def test_forward_counts_prove_parallel_drafting(targets, k, batch):
    """Always-right: ceil(N/(K+1)) target forwards after prefill; always-wrong: N. One draft forward each."""
    target, n_new = targets["llama"], 21
    for seed in range(k, k + 50):  # prompts whose greedy continuation has no EOS: every row runs N tokens
        ids, mask = left_padded_batch([6, 9, 4][:batch], seed=seed)
        expected = stock_greedy(target, ids, mask, n_new)
        if not (expected[:, ids.shape[1]:] == target.config.eos_token_id).any():
            break
    assert expected.shape[1] == ids.shape[1] + n_new
    for kind, rounds in (("right", math.ceil(n_new / (k + 1))), ("wrong", n_new)):
        draft = make_draft(kind, target, expected, mask, seed=0)
        calls, handle = count_forwards(target)
        try:
            out = stock_greedy(target, ids, mask, n_new, pard_draft=draft, num_assistant_tokens=k,
                               return_dict_in_generate=True, pard_min_tau=None)
        finally:
            handle.remove()
        assert torch.equal(out.sequences, expected)
        assert len(calls) == 1 + rounds  # prefill + one verify per round
        assert draft.forward_calls == 1 + rounds  # prefill + ONE draft forward (K tokens) per round
        assert out.pard_stats.rounds == rounds
        assert out.pard_stats.tau == pytest.approx(n_new / rounds)


def test_rows_accept_different_amounts_and_stay_exact(targets):
    target = targets["qwen2"]
    ids, mask = left_padded_batch([3, 10, 7], seed=5)
    expected = stock_greedy(target, ids, mask, 30)
    by_position = reference_by_position(expected, mask, PAD)
    wrong_at = torch.zeros_like(by_position, dtype=torch.bool)
    wrong_at[1] = True  # row 1 never accepts; row 0 always does; row 2 every other position
    wrong_at[2, ::2] = True
    draft = OracleDraft(target.config, by_position, wrong_at=wrong_at)
    out = stock_greedy(target, ids, mask, 30, pard_draft=draft, num_assistant_tokens=4, return_dict_in_generate=True,
                       pard_min_tau=None)
    assert torch.equal(out.sequences, expected)
    hist = out.pard_stats.accepted_histogram
    assert hist[1] > 0 and hist[5] > 0  # both a full chunk and a bare correction happened


@pytest.mark.parametrize("k", [2, 8])
def test_eos_inside_an_accepted_chunk_cuts_it(targets, k):
    """Rows stop at their own EOS mid-chunk and are padded afterwards, exactly like stock generate."""
    target = targets["llama"]
    ids, mask = left_padded_batch([5, 8, 6], seed=11)
    free_run = stock_greedy(target, ids, mask, 20)
    eos = int(free_run[0, ids.shape[1] + 4])  # row 0 hits it at its 5th new token (others maybe never)
    expected = stock_greedy(target, ids, mask, 20, eos_token_id=eos, pad_token_id=PAD)
    assert expected.shape[1] < free_run.shape[1] or (expected[:, ids.shape[1]:] == PAD).any()
    draft = make_draft("right", target, free_run, mask, seed=0)
    out = stock_greedy(target, ids, mask, 20, pard_draft=draft, num_assistant_tokens=k, eos_token_id=eos, pad_token_id=PAD)
    assert torch.equal(out, expected)


def test_eos_list_and_max_length(targets):
    target = targets["qwen3"]
    ids, mask = left_padded_batch([4, 6], seed=2)
    free_run = stock_greedy(target, ids, mask, 15)
    eos = [int(free_run[1, ids.shape[1] + 2]), 2]
    draft = make_draft("real", target, free_run, mask, seed=1)
    for kwargs in ({"eos_token_id": eos, "max_new_tokens": 15}, {"max_length": ids.shape[1] + 9}):
        expected = target.generate(ids, attention_mask=mask, do_sample=False, **kwargs)
        out = target.generate(ids, attention_mask=mask, do_sample=False, pard_draft=draft, **kwargs)
        assert torch.equal(out, expected)


def test_prefix_dependent_processors_match_stock(targets):
    """Repetition penalty / no-repeat-ngram see each verify slot's own prefix."""
    target = targets["llama"]
    ids, mask = left_padded_batch([5, 9], seed=8)
    settings_ = dict(repetition_penalty=1.8, no_repeat_ngram_size=2, min_new_tokens=3)
    expected = stock_greedy(target, ids, mask, 24, **settings_)
    draft = make_draft("right", target, expected, mask, seed=0)
    out = stock_greedy(target, ids, mask, 24, pard_draft=draft, num_assistant_tokens=4, **settings_)
    assert torch.equal(out, expected)
    unprocessed = stock_greedy(target, ids, mask, 24)
    assert not torch.equal(expected, unprocessed)  # the processors really changed the output


def test_cache_is_reused_across_calls(targets):
    target = targets["llama"]
    ids, mask = left_padded_batch([4], seed=1)
    draft = tiny_pard_draft(target)
    stock_greedy(target, ids, mask, 10, pard_draft=draft)
    manager = target.pard_runtime.caches
    first = manager._caches["target"]
    keys = first.layers[0].keys
    stock_greedy(target, ids, mask, 12, pard_draft=draft)
    assert manager._caches["target"] is first and first.layers[0].keys is keys
