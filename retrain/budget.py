"""--time-budget: plan phase 2's epochs (fine-tuning, the expensive phase) to end within it.

When phase 2 starts, a few of its own training steps and validation batches are timed, on a
throwaway optimizer, and the model's variables are put back afterwards; the phase then runs
as many of its epochs as fit in what is left of the budget, at most --fine-tune-epochs. The
trainer writes the plan to run.json before phase 2's first epoch, so a resumed run replays
it: the epoch count, not the clock, sets the schedule and so the result.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

WARMUP_STEPS = 2  # untimed: tracing and first-touch allocations
TIMED_STEPS = 10
TIMED_VAL_BATCHES = 2


@dataclass(frozen=True)
class Cost:
    """What one epoch of the phase is estimated to cost, in seconds, and of what."""

    step: float  # one training step, its input included
    validation: float  # one validation pass
    save: float  # one checkpoint write (an epoch writes the last and, on a new best, the best)
    steps: int

    @property
    def epoch(self) -> float:
        return self.steps * self.step + self.validation + 2 * self.save


def plan_epochs(left: float, cost: Cost, at_most: int) -> int:
    """How many epochs fit in `left` seconds, keeping one save's time for the final model."""
    return max(0, min(at_most, math.floor((left - cost.save) / cost.epoch)))


def measure(trainee, model, optimizer, loss, train_ds, val_ds, steps: int, val_rows: int) -> Cost:
    """Time `trainee`'s training steps on `train_ds` and evaluation on `val_ds` with a fresh
    `optimizer`, and a checkpoint of `model` with it; then put the variables back (weights,
    BatchNormalization statistics, Dropout's random state), so training proceeds as if
    nothing had run."""
    import tensorflow as tf

    snapshot = [v.numpy() for v in trainee.variables]
    trainee.compile(optimizer=optimizer, loss=loss)
    try:
        batches = iter(train_ds.repeat())  # a tiny dataset has fewer batches than are timed
        for i in range(WARMUP_STEPS + TIMED_STEPS):
            if i == WARMUP_STEPS:
                start = time.perf_counter()
            x, y = next(batches)
            trainee.train_on_batch(x, y)
        step = (time.perf_counter() - start) / TIMED_STEPS
        batches = iter(val_ds.repeat())
        rows = 0
        for i in range(1 + TIMED_VAL_BATCHES):
            if i == 1:
                start = time.perf_counter()
            x, y = next(batches)
            trainee.test_on_batch(x, y)
            rows += int(x.shape[0]) if i else 0
        validation = (time.perf_counter() - start) / rows * val_rows
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            tf.train.Checkpoint(model=model, optimizer=trainee.optimizer).write(str(Path(tmp) / "probe"))
            save = time.perf_counter() - start
    finally:
        for variable, value in zip(trainee.variables, snapshot):
            variable.assign(value)
    return Cost(step, validation, save, steps)


def describe(budget: str, left: float, cost: Cost, epochs: int, at_most: int) -> str:
    """The plan as one line (said, and kept in run.json)."""
    timed = (f"an epoch ~{cost.epoch:.1f} s ({cost.steps:,} steps of {cost.step * 1000:.1f} ms, "
             f"validation {cost.validation:.1f} s, 2 saves of {cost.save:.2f} s)")
    if epochs == 0:
        return (f"skipped: --time-budget {budget} has {max(left, 0):.0f} s left, under one fine-tuning "
                f"epoch: {timed}; the model is phase 1's")
    return f"--time-budget {budget}: {left:.0f} s left, {timed}: {epochs} of {at_most} fine-tuning epochs"
