"""Training for a fixed wall-clock time: a cosine learning rate over the time, not over the steps.

On a machine lent for minutes (a spot GPU, a notebook's session, a CPU job cut after hours) the number
of steps that fit is unknown until training runs. ``TimeBudget`` is a ``TrainerCallback``: after the
warm-up steps it scales the learning rate by ``0.5 * (1 + cos(pi * t / T))``, with t the seconds since the
warm-up ended and T what is left of the budget then, and stops training (with a checkpoint) once the
budget is spent. The Trainer's own schedule must be flat after its warm-up (``constant_with_warmup``, which
``training_arguments`` sets), so the scale is the whole decay.
"""

from __future__ import annotations

import math
import time

from transformers import TrainerCallback

#: The Trainer schedule a time budget needs: warm-up, then flat (the callback supplies the decay).
TIME_BUDGET_SCHEDULER = "constant_with_warmup"


def monotonic_clock():
    """The clock a ``TimeBudget`` reads unless given one (seconds, never going back)."""
    return time.monotonic


def cosine_scale(elapsed: float, span: float) -> float:
    """0.5 * (1 + cos(pi * elapsed / span)), 1 at the start and 0 from ``span`` on."""
    return 0.5 * (1.0 + math.cos(math.pi * min(max(elapsed / span, 0.0), 1.0))) if span > 0 else 0.0


class TimeBudget(TrainerCallback):
    """Stop training after ``seconds`` and decay the learning rate over them (cosine, after ``warmup_steps``).

    ``clock`` is ``monotonic_clock()`` unless given. The seconds count from the first step
    of this call (a resumed run gets a fresh budget and a fresh decay from its current step on).
    """

    def __init__(self, seconds: float, warmup_steps: int = 0, clock=None):
        if not seconds > 0:
            raise ValueError(f"a time budget is a positive number of seconds, got {seconds!r}.")
        self.seconds, self.warmup_steps, self.clock = seconds, warmup_steps, clock or monotonic_clock()
        self.start = self.decay_start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.clock()
        self.decay_start = self.start if state.global_step >= self.warmup_steps else None

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        now = self.clock()
        if self.decay_start is None and state.global_step >= self.warmup_steps:
            self.decay_start = now
        if self.decay_start is not None and optimizer is not None:
            scale = cosine_scale(now - self.decay_start, self.seconds - (self.decay_start - self.start))
            for group in optimizer.param_groups:  # the scheduler has just set the flat rate for the next step
                group["lr"] *= scale
        if now - self.start >= self.seconds:
            control.should_training_stop = True
            control.should_save = True
        return control

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
        """The logged learning rate is the one the next step uses (the scheduler's alone lacks the scale)."""
        if logs is None or "learning_rate" not in logs or optimizer is None:
            return
        rate = optimizer.param_groups[0]["lr"]
        logs["learning_rate"] = rate  # what the printing callbacks show
        if state.log_history and "learning_rate" in state.log_history[-1]:
            state.log_history[-1]["learning_rate"] = rate  # the copy trainer_state.json keeps
