"""Grouped-query SDPA for the engine's CPU forwards: same outputs, the user's model untouched."""

import pytest
import torch
from transformers import AttentionInterface, GenerationMixin

from transformers_pard import attention, enable_pard
from transformers_pard.attention import ATTENTION, gqa_available, gqa_sdpa_attention, gqa_view
from transformers_pard.testing import tiny_causal_lm, tiny_pard_draft

pytestmark = pytest.mark.skipif(not gqa_available(), reason="grouped-query SDPA needs torch >= 2.5")


def attention_modules(model):
    return [m for m in model.modules() if hasattr(m, "num_key_value_groups")]


def causal_mask(width: int) -> torch.Tensor:
    return torch.ones(width, width, dtype=torch.bool).tril()[None, None]  # (1, 1, T, T)


def test_the_view_gives_the_same_logits_bit_for_bit_and_leaves_the_model_alone():
    model = tiny_causal_lm("llama", seed=0, num_heads=4, num_kv_heads=2)
    view = gqa_view(model)
    assert model.config._attn_implementation == "sdpa"
    assert all(m.config._attn_implementation == "sdpa" for m in attention_modules(model))
    assert all(m.config._attn_implementation == ATTENTION for m in attention_modules(view))
    assert all(a is b for a, b in zip(view.parameters(), model.parameters()))  # shared, not copied
    ids = torch.randint(3, 90, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=causal_mask(11)).logits
        assert torch.equal(view(input_ids=ids, attention_mask=causal_mask(11)).logits, expected)


@pytest.mark.parametrize("kwargs", [{"num_heads": 4, "num_kv_heads": 4}, {"attn_implementation": "eager"}])
def test_models_without_grouped_sdpa_are_returned_as_they_are(kwargs):
    if "attn_implementation" in kwargs:
        model = tiny_causal_lm("llama", seed=0)
        model.set_attn_implementation("eager")
    else:
        model = tiny_causal_lm("llama", seed=0, **kwargs)
    assert gqa_view(model) is model


def test_arguments_it_does_not_implement_go_to_transformers_sdpa():
    module = attention_modules(tiny_causal_lm("llama", seed=0))[0]
    q, kv = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 3, 8)
    with pytest.raises(ValueError, match="softcap"):  # transformers' sdpa refuses softcapping
        gqa_sdpa_attention(module, q, kv, kv, causal_mask(3), softcap=30.0)


def test_pard_generate_on_cpu_runs_through_it_and_stays_identical(monkeypatch):
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return gqa_sdpa_attention(*args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, ATTENTION, counted)
    target = enable_pard(tiny_causal_lm("llama", seed=0, num_heads=4, num_kv_heads=2))
    draft = tiny_pard_draft(target)
    ids = torch.randint(3, 90, (1, 7), generator=torch.Generator().manual_seed(1))
    expected = GenerationMixin.generate(target, ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                        do_sample=False)
    out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                          pard_draft=draft, pard_min_tau=None)
    assert torch.equal(out, expected)
    assert calls  # the engine's forwards used grouped SDPA
    assert all(m.config._attn_implementation == "sdpa" for m in attention_modules(target))


def test_older_torch_keeps_the_model(monkeypatch):
    monkeypatch.setattr(attention, "_torch_at_least", lambda major, minor: False)
    model = tiny_causal_lm("llama", seed=0)
    assert gqa_view(model) is model
