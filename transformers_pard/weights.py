"""When derived copies of a model's weights (packed, frozen, gathered) must be rebuilt."""

from __future__ import annotations

import torch

PROBE_ELEMENTS = 64  # elements of each parameter read by ``weights_version``


def weights_version(model: torch.nn.Module) -> tuple:
    """A key that changes when a parameter of ``model`` is replaced (``.to()``, a new ``Parameter``) or
    updated in place: forwards holding packed or frozen weight copies are rebuilt when it does, so a
    model trained or edited after a PARD call never runs on stale weights. Autograd's version counter
    catches most in-place writes, but fused optimizers (``AdamW(fused=True)``, the Trainer's default)
    skip it, so a fixed sample of each parameter's elements is compared too (3.8 ms per generate call
    for SmolLM2's 272 parameters on a 2-core Xeon)."""
    pointers, probes = [], []
    with torch.no_grad():
        for p in model.parameters():
            flat = p.detach().reshape(-1)
            step = max(flat.numel() // PROBE_ELEMENTS, 1)
            pointers.append((p.data_ptr(), p._version))
            probes.append(flat[::step][:PROBE_ELEMENTS].float())
    by_device: dict = {}
    for probe in probes:  # one transfer per device, not one per parameter
        by_device.setdefault(probe.device, []).append(probe)
    return tuple(pointers), b"".join(torch.cat(group).cpu().numpy().tobytes() for group in by_device.values())
