"""The resolved draft: input strategies, the vocabulary-subset head, AR+, phase timing, bad input."""

import logging
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transformers_pard import enable_pard
from transformers_pard.draft_io import load_draft, save_compact_draft
from transformers_pard.drafting import PlainInputs, Pard2Inputs, resolve_draft
from transformers_pard.testing import left_padded_batch, perturbed_pard_draft, tiny_causal_lm, tiny_pard2_draft
from transformers_pard.vocab import SubsetHead, attach_vocab_subset, frequent_ids, load_vocab_subset, vocab_subset


@pytest.fixture(scope="module")
def target():
    return enable_pard(tiny_causal_lm("llama", seed=0))


def subset_draft(target, size: int, seed: int):
    draft = perturbed_pard_draft(target, seed=seed)
    ids = torch.randperm(target.config.vocab_size, generator=torch.Generator().manual_seed(seed))[:size]
    attach_vocab_subset(draft, ids)
    return draft


def test_resolver_picks_the_input_strategy_and_head(target):
    plain = resolve_draft(target, perturbed_pard_draft(target))
    assert type(plain.inputs) is PlainInputs and plain.head is None and plain.feature_layers is None
    pard2 = resolve_draft(target, tiny_pard2_draft(target, layers=(-1, 1)))
    assert isinstance(pard2.inputs, Pard2Inputs) and pard2.feature_layers == (-1, 1)
    alone = resolve_draft(target, tiny_pard2_draft(target, layers=(-1, 1)), pard_mode="independent")
    assert type(alone.inputs) is PlainInputs
    subset = resolve_draft(target, subset_draft(target, 10, seed=0))
    assert isinstance(subset.head, SubsetHead) and subset.head.weight.shape == (10, target.config.hidden_size)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 96), lengths=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       max_new=st.integers(1, 20), k=st.sampled_from([1, 3, 8]), seed=st.integers(0, 999),
       tree=st.sampled_from([None, 4, 16]), measured=st.booleans())
def test_greedy_with_a_vocabulary_subset_is_lossless(target, size, lengths, max_new, k, seed, tree, measured):
    """Chains and trees (built on the subset's columns, or on the full view when they cannot hold the tree)."""
    ids, mask = left_padded_batch(lengths, seed)
    expected = target.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False)
    draft = subset_draft(target, size, seed)
    if measured:  # a static tree shape (ranks 1..3)
        draft.config.pard_tree_topk_accuracy = [[0.4, 0.5, 0.55], [0.25, 0.35, 0.4], [0.1, 0.2, 0.25]]
    out = target.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False, pard_draft=draft,
                          num_assistant_tokens=k, pard_min_tau=None, pard_tree=tree)
    assert torch.equal(out, expected)


def test_subset_head_proposes_only_subset_ids(target):
    draft = subset_draft(target, 5, seed=1)
    drafter = resolve_draft(target, draft)
    hidden = torch.randn(2, 3, target.config.hidden_size)
    full = drafter.to_target_vocab(drafter.head(hidden))  # (2, 3, V)
    allowed = torch.zeros(target.config.vocab_size, dtype=torch.bool)
    allowed[vocab_subset(draft)] = True
    assert torch.isinf(full[..., ~allowed]).all() and torch.isfinite(full[..., allowed]).all()
    reference = draft.get_output_embeddings()(hidden)[..., vocab_subset(draft)]
    torch.testing.assert_close(full[..., vocab_subset(draft)], reference)


def test_frequent_ids_ranks_by_count_and_keeps_forced_ids():
    ids = frequent_ids([[5, 5, 7], [7, 7, 3]], 4, vocab_size=10, always=[2])
    assert ids.tolist() == [2, 7, 5, 3]
    assert frequent_ids([[1]], 3, vocab_size=4).tolist() == [1, 0, 2]  # unseen ids fill in id order
    with pytest.raises(ValueError, match="1..4 ids"):
        frequent_ids([[1]], 5, vocab_size=4)


def test_subset_travels_with_a_compact_draft_and_not_with_a_full_export(target, tmp_path):
    from transformers_pard.draft_io import export_full_draft

    draft = subset_draft(target, 12, seed=2)
    draft.config.tie_word_embeddings = True
    draft.tie_weights()
    save_compact_draft(draft, str(tmp_path / "compact"), dtype=torch.float32)
    loaded = load_draft(str(tmp_path / "compact"), target=target)
    assert torch.equal(vocab_subset(loaded), vocab_subset(draft)) and loaded.config.pard_vocab_size == 12
    export_full_draft(draft, str(tmp_path / "full"))
    assert load_vocab_subset(str(tmp_path / "full")) is None
    assert "pard_vocab_size" not in (tmp_path / "full" / "config.json").read_text()
    assert draft.config.pard_vocab_size == 12  # the in-memory draft keeps its subset


def test_bad_subsets_are_refused(target):
    draft = perturbed_pard_draft(target)
    with pytest.raises(ValueError, match="outside its vocabulary"):
        attach_vocab_subset(draft, torch.tensor([1, 500]))
    with pytest.raises(ValueError, match="distinct"):
        attach_vocab_subset(draft, torch.tensor([1, 1]))


def test_ar_plus_is_plain_decoding(target):
    ids, mask = left_padded_batch([5, 8], seed=3)
    expected = target.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    out = target.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, ar_plus=True,
                          return_dict_in_generate=True)
    assert torch.equal(out.sequences, expected)
    assert out.pard_stats.k == 0 and out.pard_stats.draft_forwards == 0 and out.pard_stats.rounds == 12
    with pytest.raises(ValueError, match="without a draft"):
        target.generate(ids, ar_plus=True, pard_draft=perturbed_pard_draft(target), max_new_tokens=2)


def test_phase_timing_is_reported_only_when_asked(target):
    ids = torch.randint(3, 90, (1, 6))
    draft = perturbed_pard_draft(target)
    plain = target.generate(ids, pard_draft=draft, max_new_tokens=10, return_dict_in_generate=True)
    assert plain.pard_stats.phase_seconds is None
    timed = target.generate(ids, pard_draft=draft, max_new_tokens=10, return_dict_in_generate=True, pard_timing=True)
    phases = timed.pard_stats.phase_seconds
    assert set(phases) == {"prefill", "draft", "verify", "other"} and all(v >= 0 for v in phases.values())
    assert phases["draft"] > 0 and phases["verify"] > 0
    assert sum(phases.values()) <= timed.pard_stats.wall_time_s
    with pytest.raises(ValueError, match="pard_timing=True times PARD rounds"):
        target.generate(ids, max_new_tokens=2, pard_timing=True)


def test_a_pard_generate_emits_no_transformers_deprecation(target, caplog):
    ids = torch.randint(3, 90, (1, 6))
    draft = perturbed_pard_draft(target)
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="transformers"):
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        target.generate(ids, pard_draft=draft, max_new_tokens=6)
        target.generate(ids, pard_draft=subset_draft(target, 20, seed=4), max_new_tokens=6)
        target.generate(ids, ar_plus=True, max_new_tokens=3)
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]


@pytest.mark.parametrize("bad, message", [
    (torch.tensor([[3, 96, 4]]), r"token id 96, outside the target's vocabulary \(0..95\).*target's own tokenizer"),
    (torch.tensor([[3, -1, 4]]), r"token id -1, outside the target's vocabulary"),
    (torch.tensor([[3.0, 4.0]]), r"integer token ids.*torch.float32 tensor.*tokenizer\(text"),
    ([[3, 4]], r"integer token ids.*got list"),
    (torch.tensor([3, 4]), r"shape \(batch, length >= 1\).*ids\[None\]"),
])
def test_bad_input_ids_are_refused_with_the_fix(target, bad, message):
    with pytest.raises(ValueError, match=message):
        target.generate(bad, pard_draft=perturbed_pard_draft(target), max_new_tokens=3)


@pytest.mark.parametrize("special", ["eos_token_id", "bos_token_id", "pad_token_id"])
def test_a_mask_token_equal_to_a_special_token_is_refused(target, special):
    draft = perturbed_pard_draft(target)
    draft.config.pard_token = getattr(target.config, special)
    name = special.removesuffix("_token_id")
    with pytest.raises(ValueError, match=rf"mask token id \d+ \(pard_token\) is also its {name}_token id.*reserved"):
        target.generate(torch.randint(3, 90, (1, 4)), pard_draft=draft, max_new_tokens=3)


def test_draft_logits_keep_a_subset_heads_columns_and_scatter_on_demand(target):
    from transformers_pard.verification import GreedyVerifier
    from transformers_pard.scoring import Scorer

    draft = subset_draft(target, 5, seed=1)
    drafter = resolve_draft(target, draft)
    hidden = torch.randn(2, 3, target.config.hidden_size)
    logits = drafter.draft_logits(drafter.head(hidden))
    assert logits.values.shape[-1] == 5 and torch.equal(logits.ids, vocab_subset(draft))
    torch.testing.assert_close(logits.full(), drafter.to_target_vocab(drafter.head(hidden)))
    tokens, _ = GreedyVerifier(Scorer(None)).propose(None, logits)
    assert torch.equal(tokens, logits.full().argmax(-1))  # the chain's argmax on 5 columns = on V
