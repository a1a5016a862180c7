"""CPU weight pre-packing: the engine's forwards use oneDNN linear kernels with weights packed once.

On x86 CPUs an fp32 ``nn.Linear`` re-packs its weight into the GEMM kernel's blocked layout on every
call; for the few-row matrices of decoding (1 token, K+1 verify slots, 2K draft slots) that packing
costs more than the multiply (SmolLM2's 576 x 49,152 head at 9 rows: 31 ms eager, 6.5 ms packed, on a
2-core AVX-512 CPU). ``packed_view(model)`` returns a *view* of the model for the engine's forwards:
the same modules, parameters, buffers and caches, except that every ``nn.Linear`` is replaced by a
``PackedLinear`` holding its weight packed once (extra memory: one packed copy of the linear weights).
The user's model object is not modified. Results agree with the eager kernels to float rounding
(~1e-6), the same scale as the difference between a K+1-token verify and one-token decoding.

Packing does not win everywhere: on a 2-core Xeon with AMX, SmolLM2 took 53.9 ms stock vs 75.6 ms packed
at 1 row, 102 vs 103 ms at 9 rows, 138 vs 106 ms at 16 rows. So each weight shape is timed once per
process at the forward's row count (``packed_is_faster``, 0.6 s per row count for SmolLM2) and packed
only where the packed kernel is faster on this machine.
"""

from __future__ import annotations

import functools
from collections import Counter

import torch
from torch import nn

from .hardware import best_seconds
from .views import module_view


def prepack_available(device: torch.device, dtype: torch.dtype) -> bool:
    """oneDNN packed fp32 linear on this CPU build (else the engine keeps the model's own kernels)."""
    return (device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinear(nn.Module):
    """``nn.Linear`` with its weight packed once for oneDNN (``rows``: the typical number of input rows)."""

    def __init__(self, linear: nn.Linear, rows: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().contiguous(), rows)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # (rows, in)
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")  # (rows, out)
        return out.reshape(*x.shape[:-1], self.out_features)


@functools.lru_cache(maxsize=None)
def packed_is_faster(in_features: int, out_features: int, bias: bool, rows: int) -> bool:
    """Whether the packed kernel beats ``F.linear`` for this weight shape at ``rows`` rows on this CPU
    (timed once per process on random weights; the best of two tries each, so noise rarely flips it)."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):  # the caller's seeded RNG stream is untouched
        linear = nn.Linear(in_features, out_features, bias=bias)
        packed = PackedLinear(linear, rows)
        x = torch.randn(rows, in_features)
        stock = best_seconds(lambda: linear(x))
        fast = best_seconds(lambda: packed(x))
    return fast < stock


def packed_view(model: nn.Module, *, rows: int) -> nn.Module:
    """A view of ``model`` (``views.module_view``) with ``PackedLinear`` in place of each ``nn.Linear``
    whose shape runs faster packed on this CPU (see module docstring); the model itself when none is."""

    def pack(module: nn.Module) -> nn.Module:
        if not isinstance(module, nn.Linear):
            return module
        faster = packed_is_faster(module.in_features, module.out_features, module.bias is not None, rows)
        return PackedLinear(module, rows) if faster else module

    return module_view(model, pack)


def mkl_packed_available() -> bool:
    """MKL's packed fp32 GEMM, which inductor's weight freezing calls for fp32 linears of static row count."""
    return torch._C.has_mkl and hasattr(torch.ops.mkl, "_mkl_linear")


@functools.lru_cache(maxsize=None)
def _packed_linear_seconds(library: str, in_features: int, out_features: int, bias: bool, rows: int) -> float:
    """One packed fp32 linear's time at ``rows`` rows, "onednn" or "mkl" (random weights; best of two tries)."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        weight = torch.randn(out_features, in_features)
        bias_ = torch.randn(out_features) if bias else None
        x = torch.randn(rows, in_features)
        if library == "onednn":
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
            call = lambda: torch.ops.mkldnn._linear_pointwise(x, packed, bias_, "none", [], "")  # noqa: E731
        else:
            packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)
            call = lambda: torch.ops.mkl._mkl_linear(x, packed, weight, bias_, rows)  # noqa: E731
        return best_seconds(call)


def onednn_gemm_is_faster(model: nn.Module, rows: int) -> bool:
    """Whether oneDNN's packed fp32 GEMM beats MKL's over ``model``'s linear layers at ``rows`` rows on this
    CPU (each distinct weight shape timed once per process, summed over the layers that have it).

    Inductor's weight freezing lowers an fp32 linear to MKL's packed GEMM when its row count is static and
    to oneDNN's when it is dynamic. The two differ by CPU: on a 2-core AMD EPYC (Zen 4), SmolLM2's head at
    9 rows took 19 ms through MKL's packed GEMM and 6 ms through oneDNN's (two threads).
    """
    if not (prepack_available(torch.device("cpu"), torch.float32) and mkl_packed_available()):
        return False
    shapes = Counter((m.in_features, m.out_features, m.bias is not None) for m in model.modules()
                     if isinstance(m, nn.Linear))
    total = {library: sum(count * _packed_linear_seconds(library, *shape, rows) for shape, count in shapes.items())
             for library in ("onednn", "mkl")}
    return total["onednn"] < total["mkl"]
