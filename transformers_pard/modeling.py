"""Giving a model PARD generation: ``enable_pard`` and ``PardAutoModelForCausalLM``.

``enable_pard`` swaps the class of *one instance* for a subclass that puts ``PardGenerationMixin``
first in the MRO. The subclass keeps the original name and module, so ``save_pretrained`` (which
records ``architectures``), pipelines and ``isinstance`` checks see the same model. No transformers
class or function is modified.
"""

from __future__ import annotations

import os

from transformers import AutoConfig, AutoModelForCausalLM

from .draft_io import is_compact_draft, load_compact_draft, load_draft_extras
from .generation import PardGenerationMixin
from .runtime import PardOptions, PardRuntime

_PARD_CLASSES: dict[type, type] = {}


def _pard_class(cls: type) -> type:
    if issubclass(cls, PardGenerationMixin):
        return cls
    if cls not in _PARD_CLASSES:
        _PARD_CLASSES[cls] = type(
            cls.__name__,
            (PardGenerationMixin, cls),
            {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__},
        )
    return _PARD_CLASSES[cls]


def enable_pard(
    model,
    *,
    compile: bool = False,
    compile_mode: str | None = None,
    compile_backend="inductor",
    freeze: bool | None = None,
    cpp_wrapper: bool | None = None,
    prepack: bool | None = None,
    cpu_gemm: str | None = None,
    max_cache_len: int | None = None,
):
    """Give an already-loaded causal LM ``generate(..., pard_draft=draft)``; returns the same object.

    Args:
        model: a decoder-only ``PreTrainedModel`` with a generation head.
        compile: run the draft/verify forwards through ``torch.compile`` (fixed shapes; CUDA graphs
            on CUDA/ROCm with the default mode).
        compile_mode: ``torch.compile`` mode (default: "reduce-overhead" on GPU, "default" on CPU).
        compile_backend: ``torch.compile`` backend (default "inductor").
        freeze: CPU + inductor: fold and pre-pack the weights in the compiled graphs (default: on with
            compile on CPU; the model's own parameters are untouched).
        cpp_wrapper: CPU + inductor: the compiled graphs call their kernels from C++, not Python (less
            host time a forward, a slower first compile; default: on with compile on CPU).
        prepack: CPU fp32: pre-packed oneDNN linear weights in the engine's forwards (default: where
            available; False keeps the model's own kernels).
        cpu_gemm: CPU fp32 + compile: "onednn" or "mkl", whose packed GEMM the compiled linears call
            (default: the faster on this CPU, timed at the first compile; see ``PardOptions``).
        max_cache_len: fix the KV cache capacity (tokens); requests that do not fit raise.
    """
    if not hasattr(model, "generate") or not hasattr(model, "config"):
        raise TypeError(f"enable_pard expects a transformers causal LM, got {type(model).__name__}.")
    options = PardOptions(compile=compile, compile_mode=compile_mode, compile_backend=compile_backend, freeze=freeze,
                          cpp_wrapper=cpp_wrapper, prepack=prepack, cpu_gemm=cpu_gemm,
                          max_cache_len=max_cache_len)
    model.__class__ = _pard_class(type(model))
    model.__dict__["pard_runtime"] = PardRuntime(options)  # caches / forwards rebuilt for the new options
    return model


class PardAutoModelForCausalLM:
    """``AutoModelForCausalLM`` whose models come out PARD-enabled (targets and PARD drafts alike)."""

    def __init__(self):
        raise EnvironmentError("Use PardAutoModelForCausalLM.from_pretrained(...) or .from_config(...).")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *args,
        pard_compile: bool = False,
        pard_max_cache_len: int | None = None,
        pard_target=None,
        **kwargs,
    ):
        """Load a target or a PARD draft, PARD-enabled.

        PARD-2 drafts get their ``target_proj`` (from ``pard2_proj.safetensors`` or ``warp_model.bin``).
        Compact drafts (``pard_embedding_from_target``) need ``pard_target=`` to borrow its embedding.
        """
        path = str(pretrained_model_name_or_path)
        config = AutoConfig.from_pretrained(path, **{k: v for k, v in kwargs.items() if k in ("revision", "token")})
        if is_compact_draft(config):
            if pard_target is None:
                raise ValueError(
                    f"{path} is a compact PARD draft: it borrows its token embedding from the target, so load it with "
                    f"the target: `PardAutoModelForCausalLM.from_pretrained({path!r}, pard_target=target)` or "
                    f"`transformers_pard.draft_io.load_draft({path!r}, target=target)`.")
            model = load_compact_draft(path, target=pard_target, dtype=kwargs.get("dtype"))  # + PARD-2 projection
        else:
            model = AutoModelForCausalLM.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
            if getattr(model.config, "pard2", False) or getattr(model.config, "pard_vocab_size", None):
                load_draft_extras(model, path if os.path.isdir(path) else _model_folder(path, kwargs))
        return enable_pard(model, compile=pard_compile, max_cache_len=pard_max_cache_len)

    @classmethod
    def from_config(cls, config, **kwargs):
        return enable_pard(AutoModelForCausalLM.from_config(config, **kwargs))



def _model_folder(repo_id: str, kwargs: dict) -> str:
    """The local folder ``from_pretrained`` just resolved for a Hub id (its cached config.json's folder)."""
    from transformers.utils import cached_file

    return os.path.dirname(cached_file(repo_id, "config.json", revision=kwargs.get("revision")))
