"""The two Keras callbacks Keras lacks for exact resume: per-epoch random state, checkpoints."""

from __future__ import annotations

import time
from typing import Callable

import keras
import numpy as np

from retrain.faultpoints import reached


def seed_value(seed: int, epoch: int, index: int) -> list[int]:
    """The generator state of random layer `index` at the start of `epoch`."""
    return [(seed * 1_000_003 + index * 7_919 + epoch * 104_729) % (2 ** 31), 0]


class EpochSeeds(keras.callbacks.Callback):
    """Sets each random layer's generator (Dropout, augmentations) from (seed, epoch) at every
    epoch start, so an epoch's dropout masks and augmentations do not depend on the process
    that ran the epochs before it."""

    def __init__(self, seed_vars: list, seed: int, skip_first: bool = False):
        super().__init__()
        self.seed_vars, self.seed, self.skip = seed_vars, seed, skip_first

    def on_epoch_begin(self, epoch, logs=None):
        if self.skip:  # a mid-epoch resume restored the generators' state itself
            self.skip = False
            return
        for i, v in enumerate(self.seed_vars):
            v.assign(np.asarray(seed_value(self.seed, epoch, i), dtype=v.dtype))


MAX_LOGS = 8


def partial_logs(logs: dict) -> np.ndarray:
    """The epoch's running training metrics so far, in sorted-name order, padded."""
    values = [float(logs[k]) for k in sorted(logs)][:MAX_LOGS]
    return np.asarray(values + [0.0] * (MAX_LOGS - len(values)))


class CompleteResumedEpoch(keras.callbacks.Callback):
    """After a mid-epoch resume, Keras' epoch metrics cover only the steps run since; this
    folds in the running means saved with the checkpoint, weighted by samples (Keras' own
    weighting), so history.csv gets the whole epoch's figures."""

    def __init__(self, saved: np.ndarray, samples_before: int, samples_after: int):
        super().__init__()
        self.saved, self.before, self.after = saved, samples_before, samples_after

    def on_epoch_end(self, epoch, logs=None):
        train_keys = sorted(k for k in logs if not k.startswith("val_"))
        for key, old in zip(train_keys, self.saved):
            logs[key] = (old * self.before + float(logs[key]) * self.after) / (self.before + self.after)


class CheckpointSaver(keras.callbacks.Callback):
    """Saves after every epoch (and every `every_steps` steps) through the trainer's managers;
    also into `best` when validation loss improves. Checkpoints are numbered by the run's
    step count over both phases (epochs x steps per epoch + steps), not by the optimizer's:
    phase 2's fresh optimizer would count from 0 again and overwrite phase 1's files."""

    def __init__(self, state: dict, manager, best, steps_per_epoch: int, every_steps: int | None,
                 first_step: int = 0, on_epoch_saved: Callable[[int], None] | None = None):
        super().__init__()
        self.state, self.manager, self.best = state, manager, best
        self.steps, self.every = steps_per_epoch, every_steps
        self.offset = first_step  # steps of the current epoch done before this fit call
        self.epoch = 0
        self.on_epoch_saved = on_epoch_saved

    def _number(self, epoch: int, step: int) -> int:
        return epoch * self.steps + step

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        done = self.offset + batch + 1
        reached("step")
        if self.every and done % self.every == 0 and done < self.steps:
            self.state["epoch"].assign(self.epoch)
            self.state["step"].assign(done)
            self.state["partial_logs"].assign(partial_logs(logs or {}))
            self.manager.save(checkpoint_number=self._number(self.epoch, done))
            reached("step-checkpoint-saved")

    def on_epoch_end(self, epoch, logs=None):
        self.offset = 0
        reached("epoch-end")  # history.csv has the epoch's row; no checkpoint holds it yet
        self.state["epoch"].assign(epoch + 1)
        self.state["step"].assign(0)
        val_loss = float((logs or {}).get("val_loss", np.inf))
        if val_loss < self.state["best_val_loss"].numpy():
            self.state["best_val_loss"].assign(val_loss)
            self.best.save(checkpoint_number=self._number(epoch + 1, 0))
            reached("best-saved")  # best/ is ahead of ckpt/
        self.manager.save(checkpoint_number=self._number(epoch + 1, 0))
        reached("epoch-checkpoint-saved")
        if self.on_epoch_saved:
            self.on_epoch_saved(epoch + 1)


class ProgressReport(keras.callbacks.Callback):
    """Calls `report(progress)` after every training call's steps and after every epoch, with
    a dict a caller (a notebook, a service) can show: phase, epoch (from 1, counted over both
    phases) of epochs, step of steps within the epoch, the running loss, the last validation
    accuracy, and eta_s, the seconds left in the current phase at its pace so far."""

    def __init__(self, report: Callable[[dict], None], phase: int, epochs: int, phase_end: int,
                 steps_per_epoch: int, first_step: int = 0):
        super().__init__()
        self.report, self.phase, self.epochs, self.phase_end = report, phase, epochs, phase_end
        self.steps, self.offset = steps_per_epoch, first_step
        self.epoch, self.val_accuracy = 0, None
        self.started, self.first = 0.0, None  # when and at which of the run's steps this call began

    def on_train_begin(self, logs=None):
        self.started = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if self.first is None:
            self.first = epoch * self.steps + self.offset

    def on_train_batch_end(self, batch, logs=None):
        self._send(self.offset + batch + 1, logs or {})

    def on_epoch_end(self, epoch, logs=None):
        self.offset = 0
        logs = logs or {}
        self.val_accuracy = logs.get("val_accuracy", self.val_accuracy)
        self._send(self.steps, logs)

    def _send(self, step: int, logs: dict) -> None:
        ran = self.epoch * self.steps + step - (self.first or 0)
        pace = (time.monotonic() - self.started) / ran if ran > 0 else None
        left = max((self.phase_end - self.epoch) * self.steps - step, 0)
        self.report({"phase": self.phase, "epoch": self.epoch + 1, "epochs": self.epochs, "step": step,
                     "steps": self.steps, "loss": float(logs["loss"]) if "loss" in logs else None,
                     "val_accuracy": None if self.val_accuracy is None else float(self.val_accuracy),
                     "eta_s": None if pace is None else round(left * pace, 1)})
