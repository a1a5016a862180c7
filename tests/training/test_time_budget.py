"""Training for a fixed wall-clock time: the cosine over the seconds, the stop, and a real run."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transformers import TrainerCallback, TrainerControl

from transformers_pard.training import TimeBudget, train_draft, time_budget
from transformers_pard.training.config import training_arguments
from transformers_pard.training.time_budget import cosine_scale

from .helpers import train_config


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def optimizer_at(lr: float):
    return SimpleNamespace(param_groups=[{"lr": lr}, {"lr": lr / 2}])


@given(elapsed=st.floats(-5, 50), span=st.floats(0.1, 40))
def test_cosine_scale_falls_from_one_to_zero(elapsed, span):
    scale = cosine_scale(elapsed, span)
    assert 0.0 <= scale <= 1.0
    assert scale == pytest.approx(0.5 * (1 + math.cos(math.pi * min(max(elapsed, 0) / span, 1))))
    assert cosine_scale(elapsed + 1, span) <= scale + 1e-12  # never rises


def test_the_rate_decays_over_the_seconds_after_warm_up_and_training_stops_at_the_end():
    clock = Clock()
    budget = TimeBudget(10.0, warmup_steps=2, clock=clock)
    state, control = SimpleNamespace(global_step=0), TrainerControl()
    budget.on_train_begin(None, state, control)
    scales = []
    for step, now in enumerate([1.0, 2.0, 4.0, 6.0, 8.0, 10.0], start=1):  # seconds since the start
        clock.now, state.global_step = 100.0 + now, step
        optimizer = optimizer_at(1e-3)  # what the flat scheduler set for the next step
        control = budget.on_step_end(None, state, TrainerControl(), optimizer=optimizer)
        scales.append(optimizer.param_groups[0]["lr"] / 1e-3)
        assert optimizer.param_groups[1]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"] / 2)  # every group
        assert control.should_training_stop == (now >= 10.0)
    # warm-up ends at step 2 (t = 2 s): untouched before, then a cosine over the 8 s left
    assert scales[0] == 1.0 and scales[1] == 1.0
    assert scales[2:] == pytest.approx([cosine_scale(t, 8.0) for t in (2.0, 4.0, 6.0, 8.0)])
    assert scales[-1] == pytest.approx(0.0) and control.should_save


def test_a_resumed_run_past_its_warm_up_decays_from_its_first_step():
    clock = Clock()
    budget = TimeBudget(4.0, warmup_steps=5, clock=clock)
    budget.on_train_begin(None, SimpleNamespace(global_step=50), TrainerControl())
    clock.now += 1.0
    optimizer = optimizer_at(1.0)
    budget.on_step_end(None, SimpleNamespace(global_step=51), TrainerControl(), optimizer=optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cosine_scale(1.0, 4.0))


def test_bad_budgets_and_a_second_schedule_are_refused(tmp_path):
    with pytest.raises(ValueError, match="positive number of seconds"):
        TimeBudget(0)
    with pytest.raises(ValueError, match="positive number of seconds"):
        train_config(tmp_path, time_budget=-1.0)
    with pytest.raises(ValueError, match="drop one of them"):
        train_config(tmp_path, time_budget=60.0, extra_args={"lr_scheduler_type": "cosine"})
    args = training_arguments(train_config(tmp_path, time_budget=60.0))
    assert args.lr_scheduler_type.value == "constant_with_warmup"
    assert training_arguments(train_config(tmp_path)).lr_scheduler_type.value == "linear"


class Ticker(TrainerCallback):
    """Every step 'takes' one second of ``clock``; records the learning rate each step uses."""

    def __init__(self, clock: Clock):
        self.clock, self.rates = clock, []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.clock.now += 1.0
        self.rates.append(optimizer.param_groups[0]["lr"])


def test_a_real_run_stops_at_its_budget_with_a_checkpoint_and_the_final_draft(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(time_budget, "monotonic_clock", lambda: clock)  # the run's own TimeBudget reads it
    ticker = Ticker(clock)
    cfg = train_config(tmp_path, max_steps=50, save_steps=100, warmup_steps=1, time_budget=4.5, learning_rate=1e-3)
    output = train_draft(cfg, callbacks=[ticker])
    checkpoints = list(output.glob("checkpoint-*"))
    state = json.loads((checkpoints[0] / "trainer_state.json").read_text())
    assert len(checkpoints) == 1 and state["global_step"] == 5  # 1 s a step: the step reaching 4.5 s ends the run
    assert (output / "model.safetensors").exists()
    assert ticker.rates[0] < ticker.rates[1] == pytest.approx(1e-3)  # warm-up, then the peak
    assert ticker.rates[1] > ticker.rates[2] > ticker.rates[3] > ticker.rates[4] > 0  # decaying over the seconds
    logged = [entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry]
    assert logged and logged[-1] < 1e-3  # the log shows the decayed rate, not the flat scheduler's
