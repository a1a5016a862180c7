"""Grouped-query attention inside SDPA on CPU: the engine's forwards never repeat K/V per query head.

transformers' ``sdpa`` attention repeats each K/V head ``num_heads / num_kv_heads`` times before calling
``scaled_dot_product_attention`` whenever a mask is given (CUDA's fused kernels need it that way). On
CPU that repeat is a full copy of every layer's cache per forward: for SmolLM2 (9 query heads, 3 K/V
heads, 513 cache slots) 30 x 2 x 1.2 MB per verify, and SDPA then reads three times the keys. CPU SDPA
computes grouped-query attention itself (``enable_gqa=True``, torch >= 2.5) with the same result bit
for bit (``tests/test_attention.py``): 0.22 ms instead of 0.66 ms per layer for a 9-token verify on a
2-core Xeon.

``gqa_view(model)`` returns a view of the model (same modules, parameters and buffers) whose attention
modules read a copy of their config naming ``ATTENTION`` (registered once in transformers' public
``AttentionInterface``) instead of "sdpa". The user's model and config are not modified; anything the
function does not handle (no grouping, another device, extra arguments such as a position bias or
attention sinks) goes to transformers' own ``sdpa_attention_forward`` unchanged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from .views import module_view

ATTENTION = "pard_gqa_sdpa"
#: Keyword arguments transformers' sdpa path reads that the grouped call below does not implement.
_DELEGATED = ("position_bias", "softcap", "s_aux", "sinks", "output_attentions")


def gqa_available() -> bool:
    return hasattr(torch.nn.functional, "scaled_dot_product_attention") and _torch_at_least(2, 5)


def _torch_at_least(major: int, minor: int) -> bool:
    version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    return version >= (major, minor)


def gqa_sdpa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                       is_causal: bool | None = None, **kwargs):
    """Attention output (B, T, H, D) from query (B, H, T, D) and key / value (B, Hkv, C, D), grouping inside SDPA."""
    grouped = getattr(module, "num_key_value_groups", 1) > 1 and query.device.type == "cpu"
    if not grouped or attention_mask is None or any(kwargs.get(name) for name in _DELEGATED):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )  # (B, H, T, D)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, gqa_sdpa_attention)


def gqa_view(model: nn.Module) -> nn.Module:
    """A view of ``model`` (``views.module_view``) whose grouped-query sdpa attention modules use
    ``ATTENTION``; ``model`` itself when it has none (or torch is older than 2.5)."""
    if not gqa_available():
        return model
    configs: dict = {}  # one copy per original config

    def regroup(module: nn.Module) -> nn.Module:
        config = getattr(module, "config", None)
        if getattr(module, "num_key_value_groups", 1) <= 1 or getattr(config, "_attn_implementation", None) != "sdpa":
            return module
        if id(config) not in configs:
            configs[id(config)] = copy.deepcopy(config)
            configs[id(config)]._attn_implementation = ATTENTION
        view = copy.copy(module)  # shares parameters, buffers, hooks and children; its own config
        view.config = configs[id(config)]
        return view

    return module_view(model, regroup)
