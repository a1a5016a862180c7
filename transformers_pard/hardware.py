"""What the machine does fast: used to pick a default dtype, never to change results silently.

bf16 maths is native on CUDA/ROCm GPUs that support it and on CPUs with AVX512-BF16 or AMX; elsewhere
(e.g. AVX2-only CPUs) PyTorch emulates it, and a bf16 matmul can be 100x slower than fp32. Native is not
faster, though: on a CPU with AVX512-BF16 but no AMX, a bf16 matmul took 1.2x fp32's time at 1 row and
1.5-1.7x at 64-512 rows (one thread, 576 x 1536, docs/results.md), so bf16 is the default only where it is
faster: GPUs and AMX CPUs.
"""

from __future__ import annotations

import functools
import os
import sysconfig

import torch

#: CPU flags (``/proc/cpuinfo``) that mean native bf16 matrix maths (not emulated).
BF16_NATIVE_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
#: CPU flags that make bf16 matrix maths faster than fp32 (AMX's tiles; AVX512-BF16 alone is slower).
BF16_FAST_CPU_FLAGS = frozenset({"amx_bf16"})


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags on Linux (empty elsewhere: then bf16 is not assumed fast)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


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
    """True where bf16 is the faster choice on ``device``: GPUs with bf16, CPUs with AMX."""
    return _bf16_on(device, BF16_FAST_CPU_FLAGS)


def fast_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """bf16 where it is faster than fp32 on ``device`` (``bf16_is_fast``), else fp32."""
    return torch.bfloat16 if bf16_is_fast(device) else torch.float32


def slow_dtype_warning(dtype: torch.dtype, device: str | torch.device = "cpu") -> str | None:
    """A one-line warning when ``dtype`` is bf16 but ``device`` only emulates it; None otherwise."""
    if dtype != torch.bfloat16 or bf16_is_native(device):
        return None
    return (f"warning: bf16 is emulated on this {torch.device(device).type} (no native bf16 instructions) and "
            "can be many times slower than fp32; use --dtype fp32 here.")
