"""The compiled path: fixed shapes, so rounds and later calls never recompile; same tokens."""

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from transformers_pard import enable_pard
from transformers_pard.hardware import python_headers_available
from transformers_pard.runtime import PardOptions
from transformers_pard.testing import left_padded_batch, perturbed_pard_draft, tiny_causal_lm, tiny_pard_draft
from transformers_pard.vocab import attach_vocab_subset


def run_calls(target, draft, calls):
    outputs = []
    for seed, prompt_len, batch, max_new in calls:
        ids = torch.randint(3, 90, (batch, prompt_len), generator=torch.Generator().manual_seed(seed))
        out = target.generate(ids, pard_draft=draft, max_new_tokens=max_new, num_assistant_tokens=4, pard_min_tau=None)
        outputs.append((ids, max_new, out))
    return outputs


def assert_plain_greedy(outputs):
    """Every (ids, max_new, out) of ``run_calls`` equals an uncompiled copy's plain greedy ``generate``."""
    reference = tiny_causal_lm("llama", seed=0)
    for ids, max_new, out in outputs:
        assert torch.equal(out, reference.generate(ids, max_new_tokens=max_new, do_sample=False))


@pytest.mark.parametrize("freeze, cpp_wrapper, expected", [
    (None, None, {"freezing": True, "cpp_wrapper": True}),
    (False, None, {"cpp_wrapper": True}),
    (None, False, {"freezing": True}),
    (False, False, None),
])
def test_cpu_inductor_options_default_on_and_each_can_be_turned_off(freeze, cpp_wrapper, expected, monkeypatch):
    import transformers_pard.runtime as runtime

    monkeypatch.setattr(runtime, "python_headers_available", lambda: True)
    options = PardOptions(compile=True, freeze=freeze, cpp_wrapper=cpp_wrapper)
    assert options.compile_options(torch.device("cpu")) == expected
    assert options.compile_options(torch.device("cuda")) is None  # CUDA graphs there, no CPU settings
    assert PardOptions(compile=True, compile_backend="eager").compile_options(torch.device("cpu")) is None


def test_without_python_headers_the_cpp_wrapper_is_off_by_default_and_refused_when_asked(monkeypatch):
    import transformers_pard.runtime as runtime

    monkeypatch.setattr(runtime, "python_headers_available", lambda: False)
    assert PardOptions(compile=True).compile_options(torch.device("cpu")) == {"freezing": True}
    with pytest.raises(ValueError, match=r"Python.h.*cpp_wrapper=False"):
        PardOptions(compile=True, cpp_wrapper=True).compile_options(torch.device("cpu"))


def test_no_recompiles_after_warm_up():
    torch._dynamo.reset()
    counter = CompileCounter()
    target = enable_pard(tiny_causal_lm("llama", seed=0), compile=True, compile_backend=counter, max_cache_len=96)
    draft = perturbed_pard_draft(target)
    run_calls(target, draft, [(0, 7, 2, 20)])
    assert counter.frame_count == 2  # one graph for the draft forward (width 2K), one for verify (K+1)
    outputs = run_calls(target, draft, [(1, 11, 2, 30), (2, 3, 2, 9)])
    assert counter.frame_count == 2  # other prompt lengths, other lengths: no recompilation
    assert_plain_greedy(outputs)


def test_drafting_switched_off_mid_call_keeps_the_graphs():
    """After auto-disable the plain target steps run through the warm-up's verify graph (padded), not a new one."""
    torch._dynamo.reset()
    counter = CompileCounter()
    target = enable_pard(tiny_causal_lm("llama", seed=0), compile=True, compile_backend=counter, max_cache_len=96)
    draft = tiny_pard_draft(target)  # untrained: low acceptance
    kwargs = dict(pard_draft=draft, num_assistant_tokens=4, pard_min_tau=3.0)
    ids = torch.randint(3, 90, (1, 7), generator=torch.Generator().manual_seed(0))
    target.generate(ids, max_new_tokens=8, pard_draft=draft, num_assistant_tokens=4, pard_min_tau=None)
    assert counter.frame_count == 2
    out = target.generate(ids, max_new_tokens=40, return_dict_in_generate=True, **kwargs)
    assert out.pard_stats.drafting_disabled_at is not None  # plain steps ran
    assert counter.frame_count == 2  # ... through the same two graphs
    reference = tiny_causal_lm("llama", seed=0)
    assert torch.equal(out.sequences, reference.generate(ids, max_new_tokens=40, do_sample=False))


def test_growing_requests_keep_their_graphs_without_max_cache_len():
    """Without a fixed max_cache_len the compiled cache starts at 512 slots: longer prompts reuse the graphs."""
    torch._dynamo.reset()
    counter = CompileCounter()
    target = enable_pard(tiny_causal_lm("llama", seed=0), compile=True, compile_backend=counter)
    draft = perturbed_pard_draft(target)
    run_calls(target, draft, [(0, 5, 1, 10)])
    outputs = run_calls(target, draft, [(1, 60, 1, 40), (2, 120, 1, 70), (3, 9, 1, 5)])
    assert counter.frame_count == 2
    assert_plain_greedy(outputs)


def test_a_forward_hook_runs_that_model_eagerly_instead_of_recompiling():
    torch._dynamo.reset()
    counter = CompileCounter()
    target = enable_pard(tiny_causal_lm("llama", seed=0), compile=True, compile_backend=counter)
    calls = []
    target.register_forward_pre_hook(lambda module, args, kwargs: calls.append(1), with_kwargs=True)
    draft = perturbed_pard_draft(target)
    with pytest.warns(UserWarning, match="forward hooks.*run eagerly"):
        outputs = run_calls(target, draft, [(0, 7, 1, 12), (1, 9, 1, 16)])
    assert counter.frame_count == 1  # the draft's graph only; the hooked target ran eagerly
    assert len(calls) >= 2 * 2  # the hook saw every target forward (prefill + rounds)
    assert_plain_greedy(outputs)


def test_an_fp32_and_a_bf16_draft_share_a_compiled_target():
    """Switching to a draft of another dtype gets that draft its own cache (and its own graph)."""
    torch._dynamo.reset()
    counter = CompileCounter()
    target = enable_pard(tiny_causal_lm("llama", seed=0), compile=True, compile_backend=counter, max_cache_len=96)
    fp32 = perturbed_pard_draft(target)
    outputs = run_calls(target, fp32, [(0, 7, 1, 12)])
    outputs += run_calls(target, perturbed_pard_draft(target).to(torch.bfloat16), [(1, 9, 1, 12)])
    assert counter.frame_count == 3  # verify, fp32 draft, bf16 draft
    assert_plain_greedy(outputs)


def test_two_subset_head_drafts_used_in_turn_keep_one_graph_each():
    """Each draft keeps its subset head (the forward's key) while another is in use, so alternating drafts
    reuses their forward functions. A head rebuilt each call meant a new forward function each call, which
    with inductor's frozen weights was a recompile each call, until dynamo's limit (8) raised."""
    torch._dynamo.reset()
    counter = CompileCounter()
    target = enable_pard(tiny_causal_lm("llama", seed=0), compile=True, compile_backend=counter, max_cache_len=96)
    drafts = []
    for seed, dtype in ((3, torch.float32), (4, torch.bfloat16)):
        draft = perturbed_pard_draft(target, seed=seed).to(dtype)
        attach_vocab_subset(draft, torch.randperm(target.config.vocab_size, generator=torch.Generator().manual_seed(seed))[:40])
        drafts.append(draft)
    outputs = []
    for call in range(10):
        outputs += run_calls(target, drafts[call % 2], [(call, 7, 1, 6)])
    assert counter.frame_count == 3  # verify + one graph per draft
    assert len(target.pard_runtime._forwards) == 3  # the same three forward functions every call
    assert_plain_greedy(outputs)


def test_compiled_ar_plus_has_one_graph():
    torch._dynamo.reset()
    counter = CompileCounter()
    target = enable_pard(tiny_causal_lm("llama", seed=0), compile=True, compile_backend=counter)
    reference = tiny_causal_lm("llama", seed=0)
    for seed, length in ((0, 5), (1, 30)):
        ids = torch.randint(3, 90, (1, length), generator=torch.Generator().manual_seed(seed))
        out = target.generate(ids, ar_plus=True, max_new_tokens=9)
        assert torch.equal(out, reference.generate(ids, max_new_tokens=9, do_sample=False))
    assert counter.frame_count == 1


@pytest.mark.slow
@pytest.mark.parametrize("cpu_gemm, kernel", [("mkl", "mkl::_mkl_linear"), ("onednn", "mkldnn::_linear_pointwise")])
def test_inductor_compiled_engine_is_lossless_and_frozen_on_cpu(cpu_gemm, kernel):
    """Real inductor compile on one tiny fixed-shape case (about a minute on 2 CPU cores). On an x86 CPU
    with MKL, weight freezing must reach the graphs: their linears run a pre-packed GEMM, MKL's or oneDNN's
    as ``cpu_gemm`` says. (Passing ``freezing`` only through ``torch.compile(options=...)`` leaves plain
    ``aten::mm``, re-packing the weights on every call.) Python wrapper: the profiler sees the kernels."""
    torch._dynamo.reset()
    target = enable_pard(tiny_causal_lm("llama", seed=0), compile=True, max_cache_len=64, cpp_wrapper=False,
                         cpu_gemm=cpu_gemm)
    reference = tiny_causal_lm("llama", seed=0)
    draft = perturbed_pard_draft(target)
    (ids, max_new, out), = run_calls(target, draft, [(0, 6, 1, 12)])
    assert torch.equal(out, reference.generate(ids, max_new_tokens=max_new, do_sample=False))
    assert not torch._inductor.config.freezing  # set for the engine's compiled calls only
    if torch._C.has_mkl and torch.backends.mkldnn.is_available():
        with torch.profiler.profile() as profile:
            later = run_calls(target, draft, [(1, 6, 1, 12)])
        ops = {event.key for event in profile.key_averages()}
        assert kernel in ops
        if cpu_gemm == "mkl":  # (with oneDNN the draft's head stays MKL's: its K rows of 2K are a static slice)
            assert "mkldnn::_linear_pointwise" not in ops
        assert_plain_greedy(later)


@pytest.mark.slow
def test_dynamic_rows_keep_a_padded_batch_and_a_tree_lossless():
    """cpu_gemm="onednn" (symbolic row count) with what the chain case above does not reach: a left-padded
    batch of two, a token tree (verify rows = its nodes + 1), and a later call of another width of prompt."""
    torch._dynamo.reset()
    target = enable_pard(tiny_causal_lm("llama", seed=0), compile=True, max_cache_len=64, cpu_gemm="onednn")
    reference = tiny_causal_lm("llama", seed=0)
    draft = perturbed_pard_draft(target)
    for seed, lengths in ((0, [3, 7]), (1, [6, 2])):
        ids, mask = left_padded_batch(lengths, seed)
        out = target.generate(ids, attention_mask=mask, pard_draft=draft, max_new_tokens=10, num_assistant_tokens=4,
                              pard_tree=4, pard_min_tau=None)
        assert torch.equal(out, reference.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False))
    assert all(fn.dynamic_rows for _, fn in target.pard_runtime._forwards.values())


@pytest.mark.parametrize("cpu_gemm, timed_faster, rows, dtype, expected", [
    (None, True, 9, torch.float32, True),  # measured: oneDNN faster here
    (None, False, 9, torch.float32, False),
    ("onednn", False, 9, torch.float32, True),  # asked for: no timing
    ("mkl", True, 9, torch.float32, False),
    ("onednn", True, 1, torch.float32, False),  # one row cannot be dynamic (dynamo specializes 0 and 1)
    (None, True, 9, torch.bfloat16, False),  # inductor packs bf16 with oneDNN anyway
])
def test_cpu_gemm_decides_whether_the_rows_are_dynamic(monkeypatch, cpu_gemm, timed_faster, rows, dtype, expected):
    import transformers_pard.runtime as runtime

    monkeypatch.setattr(runtime, "onednn_gemm_is_faster", lambda module, rows: timed_faster)
    options = PardOptions(compile=True, cpu_gemm=cpu_gemm)
    assert options.dynamic_rows(torch.nn.Linear(4, 4), torch.device("cpu"), dtype, rows) is expected
    unfrozen = PardOptions(compile=True, freeze=False)  # aten::mm either way
    assert unfrozen.dynamic_rows(torch.nn.Linear(4, 4), torch.device("cpu"), torch.float32, 9) is False


def test_bad_cpu_gemm_settings_are_refused():
    with pytest.raises(ValueError, match="cpu_gemm must be one of"):
        PardOptions(compile=True, cpu_gemm="blas")
    with pytest.raises(ValueError, match="compile=True"):
        PardOptions(cpu_gemm="onednn")
    with pytest.raises(ValueError, match="freeze=False"):
        PardOptions(compile=True, freeze=False, cpu_gemm="mkl")


@pytest.mark.slow
@pytest.mark.skipif(not python_headers_available(), reason="no Python.h: the C++ wrapper is off by default here")
def test_cpu_graphs_call_their_kernels_from_cpp_by_default():
    """On a CPU the compiled forwards default to inductor's C++ wrapper (no Python between kernels); same tokens."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    target = enable_pard(tiny_causal_lm("llama", seed=0), compile=True, max_cache_len=64)
    draft = perturbed_pard_draft(target)
    [(ids, max_new, out)], codes = run_and_get_code(lambda: run_calls(target, draft, [(2, 6, 1, 12)]))
    assert len(codes) == 2 and all("inductor_entry_impl" in code for code in codes)  # draft and verify graphs
    assert torch.equal(out, tiny_causal_lm("llama", seed=0).generate(ids, max_new_tokens=max_new, do_sample=False))


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


def test_transformers_own_capturing_hooks_do_not_stop_compilation():
    """output_hidden_states=True leaves transformers' (compile-aware) capturing hooks on the layers."""
    from transformers_pard.runtime import has_user_hooks

    model = tiny_causal_lm("llama", seed=0)
    model(torch.randint(3, 90, (1, 4)), output_hidden_states=True)
    assert not has_user_hooks(model)
    model.model.layers[0].register_forward_hook(lambda module, args, output: None)
    assert has_user_hooks(model)
