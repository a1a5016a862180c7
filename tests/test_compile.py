"""The compiled path: fixed shapes, so rounds and later calls never recompile; same tokens."""

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from transformers_pard import enable_pard
from transformers_pard.testing import perturbed_pard_draft, tiny_causal_lm


def run_calls(target, draft, calls):
    outputs = []
    for seed, prompt_len, batch, max_new in calls:
        ids = torch.randint(3, 90, (batch, prompt_len), generator=torch.Generator().manual_seed(seed))
        out = target.generate(ids, pard_draft=draft, max_new_tokens=max_new, num_assistant_tokens=4, pard_min_tau=None)
        outputs.append((ids, max_new, out))
    return outputs


def test_no_recompiles_after_warm_up():
    torch._dynamo.reset()
    counter = CompileCounter()
    target = enable_pard(tiny_causal_lm("llama", seed=0), compile=True, compile_backend=counter, max_cache_len=96)
    reference = tiny_causal_lm("llama", seed=0)
    draft = perturbed_pard_draft(target)
    run_calls(target, draft, [(0, 7, 2, 20)])
    assert counter.frame_count == 2  # one graph for the draft forward (width 2K), one for verify (K+1)
    outputs = run_calls(target, draft, [(1, 11, 2, 30), (2, 3, 2, 9)])
    assert counter.frame_count == 2  # other prompt lengths, other lengths: no recompilation
    for ids, max_new, out in outputs:
        assert torch.equal(out, reference.generate(ids, max_new_tokens=max_new, do_sample=False))


@pytest.mark.slow
def test_inductor_compiled_engine_is_lossless():
    """Real inductor compile on one tiny fixed-shape case (about a minute on 2 CPU cores)."""
    torch._dynamo.reset()
    target = enable_pard(tiny_causal_lm("llama", seed=0), compile=True, max_cache_len=64)
    reference = tiny_causal_lm("llama", seed=0)
    draft = perturbed_pard_draft(target)
    (ids, max_new, out), = run_calls(target, draft, [(0, 6, 1, 12)])
    assert torch.equal(out, reference.generate(ids, max_new_tokens=max_new, do_sample=False))


@pytest.mark.gpu
def test_cuda_graphs_bf16_compiled_engine():
    torch._dynamo.reset()
    target = enable_pard(tiny_causal_lm("llama", seed=0, dtype=torch.bfloat16).cuda(), compile=True, max_cache_len=128)
    draft = perturbed_pard_draft(target).to("cuda", torch.bfloat16)
    ids = torch.randint(3, 90, (2, 8), device="cuda")
    out = target.generate(ids, pard_draft=draft, max_new_tokens=32, return_dict_in_generate=True)
    plain = target.generate(ids, max_new_tokens=32)
    agreement = (out.sequences == plain).float().mean().item()
    assert out.sequences.shape == plain.shape and agreement > 0.9  # bf16: not bit-exact, report agreement
