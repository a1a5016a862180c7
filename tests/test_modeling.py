"""enable_pard / PardAutoModelForCausalLM / the assistant_model route, without patching transformers."""

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from transformers_pard import PardAutoModelForCausalLM, PardGenerationMixin, enable_pard
from transformers_pard.testing import OracleDraft, reference_by_position, tiny_causal_lm, tiny_pard_draft


def test_enable_pard_swaps_only_this_instance():
    model, untouched = tiny_causal_lm("llama", seed=0), tiny_causal_lm("llama", seed=0)
    stock_generate = LlamaForCausalLM.generate
    enable_pard(model)
    assert isinstance(model, PardGenerationMixin) and isinstance(model, LlamaForCausalLM)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not isinstance(untouched, PardGenerationMixin)
    assert LlamaForCausalLM.generate is stock_generate
    assert transformers.GenerationMixin.generate is stock_generate


def test_without_a_draft_generate_is_stock(tmp_path):
    model, stock = enable_pard(tiny_causal_lm("qwen2", seed=3)), tiny_causal_lm("qwen2", seed=3)
    ids = torch.randint(3, 90, (2, 5))
    assert torch.equal(model.generate(ids, max_new_tokens=12), stock.generate(ids, max_new_tokens=12))


def test_save_and_reload_keep_the_architecture(tmp_path):
    model = enable_pard(tiny_causal_lm("qwen3", seed=1))
    draft = tiny_pard_draft(model)
    model.save_pretrained(tmp_path / "target")
    draft.save_pretrained(tmp_path / "draft")
    assert model.config.architectures == ["Qwen3ForCausalLM"]
    target2 = PardAutoModelForCausalLM.from_pretrained(tmp_path / "target")
    draft2 = PardAutoModelForCausalLM.from_pretrained(tmp_path / "draft")
    assert draft2.config.pard_token == 95 and draft2.config.spd_type == "pard"
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "target")
    assert not isinstance(plain, PardGenerationMixin)
    ids = torch.randint(3, 90, (1, 6))
    assert torch.equal(target2.generate(ids, pard_draft=draft2, max_new_tokens=10), plain.generate(ids, max_new_tokens=10))


def test_assistant_model_with_a_pard_draft_uses_the_engine():
    target = enable_pard(tiny_causal_lm("llama", seed=0))
    ids = torch.randint(3, 90, (1, 6))
    expected = target.generate(ids, max_new_tokens=18)
    draft = OracleDraft(target.config, reference_by_position(expected, torch.ones_like(ids), 0))
    out = target.generate(ids, assistant_model=draft, max_new_tokens=18, num_assistant_tokens=5,
                          return_dict_in_generate=True)
    assert torch.equal(out.sequences, expected)
    assert draft.forward_calls == 1 + 3  # prefill + ceil(18 / 6) parallel draft forwards
    assert out.pard_stats.rounds == 3


def test_k_from_generation_config():
    target = enable_pard(tiny_causal_lm("llama", seed=0))
    ids = torch.randint(3, 90, (1, 6))
    expected = target.generate(ids, max_new_tokens=12)
    target.generation_config.num_assistant_tokens = 2
    draft = OracleDraft(target.config, reference_by_position(expected, torch.ones_like(ids), 0))
    out = target.generate(ids, pard_draft=draft, max_new_tokens=12, return_dict_in_generate=True)
    assert out.pard_stats.k == 2 and out.pard_stats.rounds == 4


def test_default_k_is_eight():
    target = enable_pard(tiny_causal_lm("llama", seed=0))
    ids = torch.randint(3, 90, (1, 6))
    out = target.generate(ids, pard_draft=tiny_pard_draft(target), max_new_tokens=4, return_dict_in_generate=True)
    assert out.pard_stats.k == 8


def test_non_pard_assistant_goes_to_stock_assisted_generation():
    target = enable_pard(tiny_causal_lm("llama", seed=0))
    assistant = tiny_causal_lm("llama", seed=9, num_layers=1)
    ids = torch.randint(3, 90, (1, 6))
    out = target.generate(ids, assistant_model=assistant, max_new_tokens=10, return_dict_in_generate=True)
    assert torch.equal(out.sequences, target.generate(ids, max_new_tokens=10))
    assert not hasattr(out, "pard_stats")  # transformers' own assisted generation ran
    assert target.pard_runtime.caches._caches == {}  # the PARD engine never ran


def test_eager_attention_is_lossless_too():
    target = enable_pard(tiny_causal_lm("llama", seed=2))
    target.config._attn_implementation = "eager"
    ids = torch.randint(3, 90, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    expected = target.generate(ids, attention_mask=mask, max_new_tokens=15)
    out = target.generate(ids, attention_mask=mask, pard_draft=tiny_pard_draft(target), max_new_tokens=15)
    assert torch.equal(out, expected)


def test_stock_target_with_an_enabled_pard_draft_drafts_in_parallel():
    """transformers' own assisted loop + PardAutoModel-style draft: one draft forward per round."""
    stock_target = tiny_causal_lm("llama", seed=0)  # not enabled
    ids = torch.randint(3, 90, (1, 6), generator=torch.Generator().manual_seed(3))
    expected = stock_target.generate(ids, max_new_tokens=24)
    draft = enable_pard(OracleDraft(stock_target.config, reference_by_position(expected, torch.ones_like(ids), 0)))
    out = stock_target.generate(ids, assistant_model=draft, max_new_tokens=24)
    assert torch.equal(out, expected)
    # Autoregressive drafting would need >= 23 draft forwards for 24 always-accepted tokens.
    assert draft.forward_calls <= 5


def test_stock_target_with_a_real_enabled_draft_greedy_and_sampling():
    stock_target = tiny_causal_lm("qwen2", seed=2)
    draft = enable_pard(tiny_pard_draft(stock_target))
    ids = torch.randint(3, 90, (1, 5))
    expected = stock_target.generate(ids, max_new_tokens=15)
    assert torch.equal(stock_target.generate(ids, assistant_model=draft, max_new_tokens=15), expected)
    sampled = stock_target.generate(ids, assistant_model=draft, max_new_tokens=15, do_sample=True, top_k=10)
    assert sampled.shape[1] <= 20 and torch.equal(sampled[:, :5], ids)
