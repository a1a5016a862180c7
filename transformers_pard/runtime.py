"""The one runtime object a PARD-enabled model owns: options, caches, forward functions, schedule memory.

``enable_pard(model, ...)`` stores a ``PardRuntime`` as ``model.pard_runtime``; nothing else is kept on
the user's model. Per call, ``PardRuntime.models(...)`` reserves both caches and hands out the
forward functions, built (and compiled) once per (target, draft, head) and reused across calls.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial

import torch

from .attention import gqa_view
from .cache import PardCacheManager, move_slots
from .drafting import Drafter
from .engine import ForwardFn, LoopInputs, PardModels
from .hardware import python_headers_available
from .prepack import onednn_gemm_is_faster, packed_view, prepack_available
from .weights import weights_version


CPU_GEMMS = (None, "onednn", "mkl")


@dataclass(frozen=True)
class PardOptions:
    """Engine options of a PARD-enabled model (set by ``enable_pard``).

    compile: run the draft and verify forwards through ``torch.compile`` with fixed shapes (draft
        width 2K, verify width K+1, cache capacity fixed: 512 slots, doubled when a request needs
        more), so rounds never recompile after warm-up.
    compile_mode: ``torch.compile`` mode; default "reduce-overhead" (CUDA graphs) on CUDA/ROCm,
        "default" elsewhere.
    compile_backend: ``torch.compile`` backend (default "inductor").
    freeze: CPU only, inductor: fold the weights into the compiled graphs as constants and let the
        compiler pre-pack them for its GEMM kernels (``torch._inductor.config.freezing``, set for these
        compilations only; the model's parameters are not touched). Default: on for CPU with compile.
    cpp_wrapper: CPU only, inductor: the compiled graphs call their kernels from generated C++ instead of
        Python (``torch._inductor.config.cpp_wrapper``): ~6 % off a SmolLM2 verify on a 2-core CPU, about
        twice the first compile. Default: on for CPU with compile where Python's C headers are installed.
    prepack: CPU fp32, eager: the engine's forwards use oneDNN linear kernels with weights packed once
        (``prepack.py``; a view of the model, extra memory = one copy of its linear weights; outputs
        agree to float rounding; each weight shape is packed only where it times faster on this CPU).
        Default: on where available (x86 CPU, fp32, compile off); False keeps the model's own kernels.
    cpu_gemm: CPU fp32, inductor with freeze: whose packed GEMM the compiled graphs' linears call, "onednn"
        or "mkl". Inductor picks MKL's for a forward of static row count and oneDNN's for a dynamic one, so
        "onednn" compiles the draft and verify forwards with their row count dynamic (one graph still; it
        never changes between rounds; a head called on the last K of 2K rows keeps a static row count, and
        MKL's GEMM). Default None: whichever is faster for the model's linear shapes at the forward's row
        count, timed once per process (``prepack.onednn_gemm_is_faster``; oneDNN on an AMD EPYC, where
        MKL's packed fp32 GEMM took 2.3x as long over SmolLM2's linears at 9 rows). No effect off the CPU or in bf16 (oneDNN's either way).
    max_cache_len: fixed cache capacity in tokens (prompt + new tokens + 2K); None grows as needed.
    """

    compile: bool = False
    compile_mode: str | None = None
    compile_backend: object = "inductor"
    freeze: bool | None = None
    cpp_wrapper: bool | None = None
    prepack: bool | None = None
    cpu_gemm: str | None = None
    max_cache_len: int | None = None

    def __post_init__(self):
        if self.cpu_gemm not in CPU_GEMMS:
            raise ValueError(f"cpu_gemm must be one of {CPU_GEMMS}, got {self.cpu_gemm!r}.")
        if self.cpu_gemm is not None and not self.compile:
            raise ValueError("cpu_gemm chooses the GEMM of compiled graphs: pass compile=True with it.")
        if self.cpu_gemm is not None and self.freeze is False:
            raise ValueError("cpu_gemm chooses whose packed GEMM frozen weights use: drop freeze=False or cpu_gemm.")
        if self.max_cache_len is not None and self.max_cache_len < 1:
            raise ValueError(f"max_cache_len must be a positive number of tokens, got {self.max_cache_len}.")
        if self.compile_mode is not None and not self.compile:
            raise ValueError("compile_mode is set but compile=False: pass compile=True to use it.")
        if self.freeze and not self.compile:
            raise ValueError("freeze=True folds weights into compiled graphs: pass compile=True with it.")
        if self.cpp_wrapper and not self.compile:
            raise ValueError("cpp_wrapper=True is a setting of compiled graphs: pass compile=True with it.")

    def use_prepack(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether the engine's forwards get pre-packed weights (eager only: inductor cannot lower the
        packed oneDNN op, and lowers fp32 linears to MKL's own packed GEMM instead)."""
        if self.prepack and self.compile:
            raise ValueError("prepack=True is for eager forwards; with compile=True inductor packs the weights "
                             "itself (freeze). Drop one of them.")
        if self.prepack and not prepack_available(device, dtype):
            raise ValueError(f"prepack=True needs oneDNN packed linear kernels (x86 CPU, fp32); this model is "
                             f"{dtype} on {device.type}. Use prepack=None (automatic) or False.")
        if self.prepack is None:
            return not self.compile and prepack_available(device, dtype)
        return self.prepack

    def resolved_compile_mode(self, device: torch.device) -> str | None:
        if not self.compile:
            return None
        if self.compile_mode is not None:
            return self.compile_mode
        return "reduce-overhead" if device.type == "cuda" else "default"

    def compile_options(self, device: torch.device) -> dict | None:
        """Inductor options for this device: on a CPU, weight freezing and the C++ wrapper unless turned off."""
        if not (self.compile and self.compile_backend == "inductor" and device.type == "cpu"):
            return None
        if self.cpp_wrapper and not python_headers_available():
            raise ValueError("cpp_wrapper=True builds a Python extension per compiled graph and needs Python's C "
                             "headers (Python.h), which this Python lacks: install them (e.g. the python3-dev "
                             "package) or pass cpp_wrapper=False.")
        cpp_wrapper = self.cpp_wrapper if self.cpp_wrapper is not None else python_headers_available()
        wanted = {"freezing": self.freeze, "cpp_wrapper": cpp_wrapper}
        return {key: True for key, flag in wanted.items() if flag is not False} or None

    def dynamic_rows(self, module, device: torch.device, dtype: torch.dtype, rows: int) -> bool:
        """Whether ``module``'s compiled forward of ``rows`` rows gets a dynamic row count, so that inductor's
        frozen fp32 linears call oneDNN's packed GEMM instead of MKL's (see ``cpu_gemm``)."""
        frozen = (self.compile_options(device) or {}).get("freezing", False)
        if not (frozen and dtype == torch.float32 and rows > 1) or self.cpu_gemm == "mkl":
            return False
        return self.cpu_gemm == "onednn" or onednn_gemm_is_faster(module, rows)


def has_user_hooks(model: torch.nn.Module) -> bool:
    """True when ``model`` or a submodule carries forward (pre-)hooks of the user's: tracing them into a
    compiled graph would recompile on every call (hooks often close over mutable Python state).
    transformers' own hooks (e.g. the output-capturing hooks ``output_hidden_states`` installs) are
    written for compile and do not count."""
    return any(
        not getattr(hook, "__module__", "").startswith("transformers.")
        for m in model.modules()
        for hook in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())
    )


class PardRuntime:
    """Caches, forward functions and schedule memory of one PARD-enabled model."""

    def __init__(self, options: PardOptions):
        self.options = options
        self.caches = PardCacheManager(max_cache_len=options.max_cache_len, static=options.compile)
        self.heuristic_k: int | None = None  # the "heuristic" schedule's K, remembered across calls
        self.head_cache: dict = {}  # the draft's subset head (gathered weight rows), built once
        self._forwards: dict = {}
        self._move_slots = None  # compiled cache.move_slots, built on a compiled tree's first call

    def __deepcopy__(self, memo):
        """A copied model gets a fresh runtime with the same options (caches and forwards are per model)."""
        return PardRuntime(self.options)

    def models(self, target, drafter: Drafter | None, inputs: LoopInputs, device: torch.device) -> PardModels:
        """Reserve both caches for this call and fetch (or build once) the forward functions."""
        batch, prompt_len = inputs.input_ids.shape
        needed = prompt_len + inputs.max_new_tokens + max(2 * inputs.k, inputs.verify_width)
        compile_mode = self.options.resolved_compile_mode(device)
        widths = (inputs.verify_width or inputs.k + 1, 2 * inputs.k)
        target_fn, draft_fn = self._forward_functions(target, drafter, compile_mode, device, widths)
        draft = drafter.model if drafter is not None else None
        # On a CPU the attention reads only the slots in use (one host read of the lengths a forward); on
        # a GPU that read would be a sync, and CUDA graphs want one shape.
        cache = partial(self.caches.cache, batch_size=batch, needed=needed, windowed=device.type == "cpu")
        return PardModels(
            target=target_fn,
            draft=draft_fn,
            target_cache=cache("target", target),
            draft_cache=None if draft is None else cache("draft", draft),
            static_shapes=compile_mode is not None,
            move_slots=self._compiled_move_slots() if compile_mode is not None else None,
        )

    def _compiled_move_slots(self):
        """``cache.move_slots`` compiled once per runtime; torch.compile is lazy, and only a token tree's
        accepted path calls it (a chain never moves KV)."""
        if self._move_slots is None:
            self._move_slots = torch.compile(move_slots, backend=self.options.compile_backend, fullgraph=True,
                                             dynamic=False)
        return self._move_slots

    def _forward_functions(self, target, drafter: Drafter | None, compile_mode, device, widths: tuple[int, int]):
        """The target's and the draft's ``ForwardFn`` (the target's shared by every draft and AR+)."""
        build = {"compile_mode": compile_mode, "compile_backend": self.options.compile_backend,
                 "compile_options": self.options.compile_options(device)}
        target_fn = self._forward_function(target, target, None, build, widths[0])
        if drafter is None:
            return target_fn, None
        return target_fn, self._forward_function(drafter.forward_source, drafter, drafter.head, build, widths[1])

    MAX_FORWARDS = 6  # forward functions kept (least recently used dropped): a few drafts per target

    def _forward_function(self, source, owner, head, build: dict, rows: int) -> ForwardFn:
        weight = next(source.parameters())
        prepack = self.options.use_prepack(weight.device, weight.dtype)
        copies_weights = prepack or "freezing" in (build["compile_options"] or {})  # packed or frozen weight copies
        version = weights_version(source) if copies_weights else None
        key = (id(source), id(head), build["compile_mode"], has_user_hooks(source), prepack and rows)
        entry = self._forwards.pop(key, None)
        if entry is None or entry[0] != version:  # new, or its weight copies are stale: replace it
            module = owner if owner is source else owner.forward_module
            module = packed_view(module, rows=rows) if prepack else module
            module = gqa_view(module) if weight.device.type == "cpu" else module
            settings = self._compile_settings(module, build)
            dynamic_rows = settings["compile_mode"] is not None and self.options.dynamic_rows(
                module, weight.device, weight.dtype, rows)
            entry = (version, ForwardFn(module, **settings, dynamic_rows=dynamic_rows))
        self._forwards[key] = entry  # most recently used last
        while len(self._forwards) > self.MAX_FORWARDS:
            self._forwards.pop(next(iter(self._forwards)))
        return entry[1]

    @staticmethod
    def _compile_settings(module, build: dict) -> dict:
        if build["compile_mode"] is not None and has_user_hooks(module):
            warnings.warn(
                f"{type(module).__name__} has forward hooks: compiling it would recompile on every call, so its "
                "PARD forwards run eagerly (hooks honoured, output unchanged, slower). Remove the hooks to compile.",
                stacklevel=4,
            )
            return {**build, "compile_mode": None}
        return build


def runtime_of(model) -> PardRuntime:
    """The model's runtime (created with default options on first use)."""
    runtime = model.__dict__.get("pard_runtime")
    if runtime is None:
        runtime = PardRuntime(PardOptions())
        model.__dict__["pard_runtime"] = runtime
    return runtime
