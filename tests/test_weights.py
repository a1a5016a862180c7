"""Forwards holding packed / gathered weight copies follow the model's weights when they change."""

import pytest
import torch

from transformers_pard import enable_pard, prepack
from transformers_pard.prepack import prepack_available
from transformers_pard.testing import perturbed_pard_draft, tiny_causal_lm
from transformers_pard.weights import weights_version

needs_prepack = pytest.mark.skipif(not prepack_available(torch.device("cpu"), torch.float32),
                                   reason="no oneDNN packed linear on this CPU build")


def fused_adamw_step(model) -> None:
    """One optimizer step the way the HF Trainer takes it (fused AdamW skips autograd's version counter)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    ids = torch.randint(3, 90, (2, 10), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def greedy(target, ids, **kwargs):
    return target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False, **kwargs)


def test_version_changes_with_a_fused_step_in_place_edits_and_moves():
    model = tiny_causal_lm("llama", seed=0)
    before = weights_version(model)
    assert weights_version(model) == before
    fused_adamw_step(model)
    after_step = weights_version(model)
    assert after_step != before
    with torch.no_grad():
        model.lm_head.weight[0].add_(1.0)
    assert weights_version(model) != after_step
    moved = weights_version(model.to(torch.float64))
    assert moved[0] != after_step[0]


@pytest.fixture
def always_pack(monkeypatch):
    """Pack every linear, whatever this CPU's timings say (the stale-copy case must exist to be tested)."""
    monkeypatch.setattr(prepack, "packed_is_faster", lambda *shape: True)


@needs_prepack
def test_target_trained_after_a_pard_call_stays_lossless(always_pack):
    target = enable_pard(tiny_causal_lm("llama", seed=0))
    draft = perturbed_pard_draft(target, seed=3)
    ids = torch.randint(3, 90, (1, 6), generator=torch.Generator().manual_seed(1))
    assert torch.equal(greedy(target, ids, pard_draft=draft), greedy(target, ids))
    kept = len(target.pard_runtime._forwards)
    fused_adamw_step(target)  # the packed copies made by the first call are now stale
    target.eval()
    assert torch.equal(greedy(target, ids, pard_draft=draft), greedy(target, ids))
    assert len(target.pard_runtime._forwards) == kept  # the stale forward was replaced, not kept beside


@needs_prepack
def test_draft_trained_after_a_pard_call_drafts_with_its_new_weights(always_pack):
    target = enable_pard(tiny_causal_lm("llama", seed=0))
    draft = perturbed_pard_draft(target, seed=3)
    ids = torch.randint(3, 90, (1, 6), generator=torch.Generator().manual_seed(1))
    greedy(target, ids, pard_draft=draft, return_dict_in_generate=True)
    fused_adamw_step(draft)
    draft.eval()
    reused = greedy(target, ids, pard_draft=draft, return_dict_in_generate=True).pard_stats
    fresh_target = enable_pard(tiny_causal_lm("llama", seed=0))  # a fresh runtime: nothing cached
    fresh = greedy(fresh_target, ids, pard_draft=draft, return_dict_in_generate=True).pard_stats
    assert reused.accepted_histogram == fresh.accepted_histogram
