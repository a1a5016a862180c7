"""Which dtype the machine runs natively (used for defaults only)."""

import platform
import sys

import pytest
import torch

from transformers_pard import hardware


@pytest.fixture(autouse=True)
def fresh_flags():
    hardware.cpu_flags.cache_clear()
    yield
    hardware.cpu_flags.cache_clear()


@pytest.mark.parametrize(("flags", "timed_faster", "native", "fast"), [
    ({"avx2", "fma"}, True, False, False),  # emulated: never fast, whatever a timing said
    ({"avx512f", "avx512_bf16"}, False, True, False),  # native, slower than fp32 (a 2-core Intel Xeon)
    ({"avx512f", "avx512_bf16"}, True, True, True),  # native and faster (a 2-core AMD EPYC, Zen 4)
    ({"avx512_bf16", "amx_bf16", "amx_tile"}, False, True, True),  # AMX: fast without timing
    (set(), True, False, False),
])
def test_cpu_bf16_follows_the_cpu_flags_and_a_timing(monkeypatch, flags, timed_faster, native, fast):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(hardware, "bf16_linear_is_faster", lambda: timed_faster)
    assert hardware.bf16_is_native("cpu") is native
    assert hardware.bf16_is_fast("cpu") is fast
    assert hardware.fast_dtype("cpu") == (torch.bfloat16 if fast else torch.float32)


def test_the_bf16_timing_runs_once_and_leaves_the_rng_alone():
    hardware.bf16_linear_is_faster.cache_clear()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    first = hardware.bf16_linear_is_faster(rows=4, repeats=1)
    assert torch.equal(torch.rand(3), expected)
    assert hardware.bf16_linear_is_faster(rows=4, repeats=1) is first
    assert hardware.bf16_linear_is_faster.cache_info().hits == 1


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.machine() == "x86_64"), reason="x86 Linux")
def test_cpu_flags_read_this_machine():
    assert "sse2" in hardware.cpu_flags()  # every x86-64 CPU has it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_cpu_model_reads_this_machine():
    hardware.cpu_model.cache_clear()
    with open("/proc/cpuinfo") as f:
        named = any(line.startswith("model name") for line in f)
    model = hardware.cpu_model()
    assert (isinstance(model, str) and model == model.strip() and model) if named else model is None


def test_other_devices_are_not_assumed_fast():
    assert hardware.bf16_is_fast("meta") is False


def test_a_warning_only_for_emulated_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    assert "--dtype fp32" in hardware.slow_dtype_warning(torch.bfloat16, "cpu")
    assert hardware.slow_dtype_warning(torch.float32, "cpu") is None
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert hardware.slow_dtype_warning(torch.bfloat16, "cpu") is None
