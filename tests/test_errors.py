"""Bad input gets a ValueError that names the problem and the fix, before any decoding."""

import pytest
import torch

from transformers_pard import enable_pard
from transformers_pard.testing import mark_as_pard_draft, tiny_causal_lm, tiny_pard_draft


@pytest.fixture(scope="module")
def target():
    return enable_pard(tiny_causal_lm("llama", seed=0))


@pytest.fixture(scope="module")
def draft(target):
    return tiny_pard_draft(target)


@pytest.fixture
def ids():
    return torch.randint(3, 90, (2, 6), generator=torch.Generator().manual_seed(0))


def generate(target, ids, draft, **kwargs):
    kwargs.setdefault("max_new_tokens", 5)
    return target.generate(ids, pard_draft=draft, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_beams": 2}, r"Beam search .*num_beams=1"),
        ({"num_return_sequences": 2}, r"num_return_sequences"),
        ({"num_assistant_tokens": 0}, r"num_assistant_tokens .* >= 1"),
        ({"max_new_tokens": 300}, r"exceeds the target's max_position_embeddings \(256\)"),
        ({"output_attentions": True}, r"output_attentions=True is not supported"),
        ({"negative_prompt_ids": torch.ones(1, 2, dtype=torch.long)}, r"classifier-free guidance"),
        ({"not_an_argument": 3}, r"not used by PARD generation: \['not_an_argument'\]"),
    ],
)
def test_refused_generation_settings(target, draft, ids, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(target, ids, draft, **kwargs)


def test_right_padding_is_refused(target, draft, ids):
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    with pytest.raises(ValueError, match=r"right-padded.*padding_side = 'left'"):
        generate(target, ids, draft, attention_mask=mask)


def test_draft_vocabulary_must_match(target, ids):
    other = mark_as_pard_draft(tiny_causal_lm("llama", vocab_size=200), mask_token_id=199)
    with pytest.raises(ValueError, match=r"vocabulary \(200 tokens\) does not match the target's \(96\)"):
        generate(target, ids, other)


def test_draft_special_tokens_must_match(target, ids):
    other = mark_as_pard_draft(tiny_causal_lm("llama", eos_token_id=7), mask_token_id=95)
    with pytest.raises(ValueError, match=r"eos_token_id \[7\] differs from the target's \[2\]"):
        generate(target, ids, other)


def test_draft_without_mask_token(target, ids):
    plain = tiny_causal_lm("llama", seed=4)
    with pytest.raises(ValueError, match=r"no mask token id.*prepare_draft"):
        generate(target, ids, plain)


def test_mask_token_outside_draft_vocabulary(target, ids):
    bad = mark_as_pard_draft(tiny_causal_lm("llama", seed=4), mask_token_id=96)
    with pytest.raises(ValueError, match=r"mask token id 96 is outside its vocabulary \(size 96\)"):
        generate(target, ids, bad)


def test_cache_too_small():
    small = enable_pard(tiny_causal_lm("llama", seed=0), max_cache_len=16)
    with pytest.raises(ValueError, match=r"cache is too small.*needs 27 slots.*max_cache_len=16"):
        generate(small, torch.randint(3, 90, (1, 6)), tiny_pard_draft(small), num_assistant_tokens=8)


def test_unsupported_attention_implementation(ids):
    model = enable_pard(tiny_causal_lm("llama", seed=0))
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match=r"attn_implementation in \('sdpa', 'eager'\).*attn_implementation='sdpa'"):
        generate(model, ids, tiny_pard_draft(model))


def test_draft_given_twice(target, draft, ids):
    with pytest.raises(ValueError, match="either pard_draft=... or assistant_model"):
        target.generate(ids, pard_draft=draft, assistant_model=draft, max_new_tokens=3)


def test_compile_mode_without_compile():
    with pytest.raises(ValueError, match="compile=True"):
        enable_pard(tiny_causal_lm("llama"), compile_mode="max-autotune")


@pytest.mark.parametrize("setting", ["freeze", "cpp_wrapper"])
def test_compiled_graph_settings_without_compile(setting):
    with pytest.raises(ValueError, match=f"{setting}=True.*pass compile=True"):
        enable_pard(tiny_causal_lm("llama"), **{setting: True})
