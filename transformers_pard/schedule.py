"""How many tokens to draft next round: constant K, the adaptive heuristic, and auto-disable.

* ``constant``: K every round.
* ``heuristic`` / ``heuristic_transient`` (transformers' ``num_assistant_tokens_schedule`` names):
  grow K by 2 after a round where every row accepted every draft, shrink it by 1 otherwise, within
  [1, K_max]. ``heuristic`` remembers the last K for the model's next call; ``heuristic_transient``
  starts from the requested K every call.
* auto-disable: when the mean accepted length over the last ``window`` rounds stays below
  ``min_tau``, drafting is switched off for the rest of the call (K = 0: plain target steps), so a
  poor draft costs at most ``window`` slow rounds. Output is unchanged either way: only speed moves.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

SCHEDULES = ("constant", "heuristic", "heuristic_transient")


@dataclass(frozen=True)
class ScheduleConfig:
    schedule: str = "constant"
    min_tau: float | None = 1.3
    window: int = 8

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"num_assistant_tokens_schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        if self.min_tau is not None and self.min_tau < 0:
            raise ValueError(f"pard_min_tau must be >= 0 or None, got {self.min_tau}.")
        if self.window < 1:
            raise ValueError(f"pard_tau_window must be >= 1, got {self.window}.")


class DraftSchedule:
    """Holds K for the next round; ``update`` it with each round's outcome."""

    def __init__(self, config: ScheduleConfig, *, k_start: int, k_max: int):
        self.config = config
        self.k = k_start
        self.k_max = k_max
        self.disabled_at: int | None = None
        self._round = 0
        self._recent: deque[tuple[int, int]] = deque(maxlen=config.window)

    def update(self, *, committed: int, rows: int, all_accepted: bool) -> None:
        self._round += 1
        if self.k == 0:
            return
        if self.config.schedule != "constant":
            self.k = min(self.k + 2, self.k_max) if all_accepted else max(self.k - 1, 1)
        self._recent.append((committed, rows))
        if self.config.min_tau is not None and len(self._recent) == self.config.window:
            total, row_rounds = (sum(column) for column in zip(*self._recent))
            if total < self.config.min_tau * row_rounds:
                self.k, self.disabled_at = 0, self._round
