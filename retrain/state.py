"""The training state a checkpoint carries beside the weights and the optimizer: which phase,
how many epochs and steps are done, where phase 2 began, the best validation loss so far, the
running metrics of an epoch cut mid-way, and the random layers' generators. With it a resume
continues exactly where the run stopped (see docs/architecture.md, exact resume)."""

from __future__ import annotations

import numpy as np

from retrain import checkpoints as ckpts


class TrainingState:
    """The state's variables (`variables[name]`), and a checkpoint of them with the weights."""

    def __init__(self, model):
        import tensorflow as tf

        from retrain.callbacks import MAX_LOGS  # a Keras module: imported when training starts

        self.variables = {name: tf.Variable(0, dtype=tf.int64, trainable=False, name=name)
                          for name in ("phase", "epoch", "step", "phase_start")}
        self.variables["best_val_loss"] = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
        self.variables["partial_logs"] = tf.Variable(np.zeros(MAX_LOGS), dtype=tf.float64, trainable=False)
        # Dropout's and the augmentations' random state: not in model.weights, so saved here.
        self.seeds = [v for v in model.variables if "seed_generator_state" in v.path]

    def checkpoint(self, weights: dict, optimizer):
        """A tf.train.Checkpoint of `weights` (name -> layers or model), the optimizer and this state."""
        import tensorflow as tf

        return tf.train.Checkpoint(**weights, optimizer=optimizer,
                                   seeds={f"s{i}": v.value for i, v in enumerate(self.seeds)}, **self.variables)

    @staticmethod
    def saved_in(prefix: str | None) -> dict | None:
        """The state a checkpoint holds (phase, epoch, step, phase_start, best_val_loss), or None."""
        return ckpts.read_state(prefix) if prefix else None
