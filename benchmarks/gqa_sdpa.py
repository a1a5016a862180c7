"""CPU SDPA for one SmolLM2-shaped verify (9 query heads, 3 K/V heads, 9 queries over a 513-slot cache, the
engine's bool mask): K/V repeated per query head (what transformers' sdpa does with a mask) vs grouped inside
SDPA (``enable_gqa=True``, what ``transformers_pard.attention`` uses) vs queries folded per K/V head.
Prints microseconds per call and the largest difference to the repeated version.

    python benchmarks/gqa_sdpa.py
"""
import time

import torch
import torch.nn.functional as F

torch.manual_seed(0)
B, H, HKV, T, C, D = 1, 9, 3, 9, 513, 64
q, k, v = torch.randn(B, H, T, D), torch.randn(B, HKV, C, D), torch.randn(B, HKV, C, D)
slots = torch.arange(100, 100 + T)
mask = (torch.arange(C) <= slots[:, None])[None, None]  # (1, 1, T, C)
G = H // HKV


def repeat(x):  # (B, HKV, C, D) -> (B, H, C, D)
    return x[:, :, None].expand(B, HKV, G, C, D).reshape(B, H, C, D)


def repeated():
    return F.scaled_dot_product_attention(q, repeat(k), repeat(v), attn_mask=mask)


def grouped():
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def folded():
    folded_mask = mask.expand(B, 1, T, C)[:, :, None].expand(B, 1, G, T, C).reshape(B, 1, G * T, C)
    out = F.scaled_dot_product_attention(q.reshape(B, HKV, G * T, D), k, v, attn_mask=folded_mask)
    return out.reshape(B, H, T, D)


def microseconds(fn, n=200):
    for _ in range(10):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


reference = repeated()
print("threads", torch.get_num_threads(), "torch", torch.__version__)
for name, fn in (("repeated K/V", repeated), ("enable_gqa", grouped), ("folded queries", folded)):
    print(f"{name:15s} {microseconds(fn):6.0f} us  max diff {(fn() - reference).abs().max().item():.1e}  "
          f"bit-identical {torch.equal(fn(), reference)}")
