"""What the machine does fast: used to pick a default dtype, never to change results silently.

bf16 maths is native on CUDA/ROCm GPUs that support it and on CPUs with AVX512-BF16 or AMX; elsewhere
(e.g. AVX2-only CPUs) PyTorch emulates it, and a bf16 matmul can be 100x slower than fp32. Native is not
always faster, though. With AVX512-BF16 but no AMX it depends on the CPU (576 x 1536 linear, 64 rows,
docs/results.md): 1.5x fp32's time on a 2-core Intel Xeon, 0.4x on a 2-core AMD EPYC (Zen 4). So bf16 is
the default where it is faster: GPUs, AMX CPUs, and AVX512-BF16 CPUs where a bf16 linear times faster
than an fp32 one (measured once per process).
"""

from __future__ import annotations

import functools
import os
import sysconfig
import time

import torch

#: CPU flags (``/proc/cpuinfo``) that mean native bf16 matrix maths (not emulated).
BF16_NATIVE_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
#: CPU flags that make bf16 matrix maths faster than fp32 (AMX's tiles; with AVX512-BF16 alone it is timed).
BF16_FAST_CPU_FLAGS = frozenset({"amx_bf16"})


def _cpuinfo_field(name: str) -> str | None:
    """The value of the first ``name : value`` line of ``/proc/cpuinfo`` (Linux); None where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags on Linux (empty elsewhere: then bf16 is not assumed fast)."""
    return frozenset((_cpuinfo_field("flags") or "").split())


@functools.cache
def cpu_model() -> str | None:
    """The CPU's model name on Linux (``/proc/cpuinfo``), e.g. "AMD EPYC"; None elsewhere. Speed depends
    on the vendor as well as the flags: MKL's fp32 GEMM is several times slower on AMD CPUs."""
    return _cpuinfo_field("model name")


def best_seconds(fn, *, tries: int = 2, repeats: int = 5) -> float:
    """The best of ``tries`` timings of ``repeats`` calls of ``fn``, each after one untimed warm-up call."""
    times = []
    for _ in range(tries):
        fn()  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        times.append(time.perf_counter() - start)
    return min(times)


@functools.cache
def python_headers_available() -> bool:
    """Whether Python's C headers are installed (``Python.h``): inductor's C++ wrapper builds a Python
    extension a compiled graph, which needs them (its kernels alone do not)."""
    include = sysconfig.get_paths().get("include") or ""
    return os.path.exists(os.path.join(include, "Python.h"))


def _bf16_on(device: str | torch.device, cpu_flag_set: frozenset[str]) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_flag_set & cpu_flags())
    return False


def bf16_is_native(device: str | torch.device = "cpu") -> bool:
    """True where ``device`` runs bf16 maths natively (not emulated); it may still be slower than fp32."""
    return _bf16_on(device, BF16_NATIVE_CPU_FLAGS)


def bf16_is_fast(device: str | torch.device = "cpu") -> bool:
    """True where bf16 is the faster choice on ``device``: GPUs with bf16, CPUs with AMX, and CPUs with
    native bf16 where a bf16 linear times faster than fp32 (``bf16_linear_is_faster``)."""
    if _bf16_on(device, BF16_FAST_CPU_FLAGS):
        return True
    return torch.device(device).type == "cpu" and bf16_is_native(device) and bf16_linear_is_faster()


@functools.cache
def bf16_linear_is_faster(rows: int = 64, repeats: int = 10) -> bool:
    """Whether a bf16 linear (576 -> 1536, a small LM's MLP, ``rows`` rows) beats fp32 on this CPU: the best
    of three timings each, once per process (~0.1 s)."""

    def best(dtype: torch.dtype) -> float:
        weight, x = torch.randn(1536, 576, dtype=dtype), torch.randn(rows, 576, dtype=dtype)
        return best_seconds(lambda: torch.nn.functional.linear(x, weight), tries=3, repeats=repeats)

    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        return best(torch.bfloat16) < best(torch.float32)


def fast_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """bf16 where it is faster than fp32 on ``device`` (``bf16_is_fast``), else fp32."""
    return torch.bfloat16 if bf16_is_fast(device) else torch.float32


def slow_dtype_warning(dtype: torch.dtype, device: str | torch.device = "cpu") -> str | None:
    """A one-line warning when ``dtype`` is bf16 but ``device`` only emulates it; None otherwise."""
    if dtype != torch.bfloat16 or bf16_is_native(device):
        return None
    return (f"warning: bf16 is emulated on this {torch.device(device).type} (no native bf16 instructions) and "
            "can be many times slower than fp32; use --dtype fp32 here.")
