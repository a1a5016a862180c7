"""Where a ``generate`` call's time goes: per-phase timers for the engine (``pard_timing=True``).

On CUDA/ROCm each phase is bracketed by CUDA events (read once, at the end of the call: no extra host
sync inside the loop); elsewhere by the host clock. Off by default; when off, phases cost nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch

PHASES = ("prefill", "draft", "verify", "other")


class PhaseTimer:
    """Accumulates seconds per phase on ``device`` (None: disabled)."""

    def __init__(self, device: torch.device | None):
        self.device = device
        self._host: dict[str, float] = defaultdict(float)
        self._events: list[tuple[str, object, object]] = []

    @property
    def enabled(self) -> bool:
        return self.device is not None

    @contextlib.contextmanager
    def phase(self, name: str):
        if not self.enabled:
            yield
            return
        if self.device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            yield
            end.record()
            self._events.append((name, begin, end))
            return
        start = time.perf_counter()
        yield
        self._host[name] += time.perf_counter() - start

    def seconds(self) -> dict[str, float] | None:
        """Total seconds per phase (every phase in ``PHASES`` present), or None when disabled."""
        if not self.enabled:
            return None
        totals = dict.fromkeys(PHASES, 0.0)
        totals.update(self._host)
        if self._events:
            torch.cuda.synchronize(self.device)
            for name, begin, end in self._events:
                totals[name] = totals.get(name, 0.0) + begin.elapsed_time(end) / 1000.0
        return totals
