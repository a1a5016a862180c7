"""Whole SmolLM2 forward (no cache), stock linears vs every linear packed, at 1 / 9 / 16 rows.

    python benchmarks/prepack_forward.py

Prints ms per forward (10 calls after 3 warm-up calls). The figures in docs/results.md ("2-core Xeon with
AVX-512 + AMX") come from this script.
"""

import time

import torch

from transformers_pard import prepack
from transformers_pard.apps.embedded import load_smollm2


def ms_per_forward(model, ids: torch.Tensor, calls: int = 10) -> float:
    with torch.no_grad():
        for _ in range(3):
            model(input_ids=ids, use_cache=False)
        start = time.perf_counter()
        for _ in range(calls):
            model(input_ids=ids, use_cache=False)
    return (time.perf_counter() - start) / calls * 1000


def main() -> None:
    torch.manual_seed(0)
    model, _ = load_smollm2(dtype=torch.float32)
    model.eval()
    prepack.packed_is_faster = lambda *shape: True  # pack every linear: the comparison this script makes
    for rows in (1, 9, 16):
        ids = torch.randint(0, model.config.vocab_size, (1, rows))
        packed = prepack.packed_view(model, rows=rows)
        print(f"{rows:2d} rows: stock {ms_per_forward(model, ids):.1f} ms, packed {ms_per_forward(packed, ids):.1f} ms")


if __name__ == "__main__":
    main()
