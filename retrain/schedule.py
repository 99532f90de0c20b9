"""The optimizer and learning-rate policy of each phase: Adam, its rate, the schedule within
the phase, and the loss. Functions of the config and the phase's size only, so a resumed run
gets the very same policy."""

from __future__ import annotations

from retrain.config import HEAD_RATE, HEAD_RATE_STEPS, FitConfig, head_learning_rate


def head_rate(config: FitConfig, steps_per_epoch: int, single_phase: bool) -> tuple[float, str]:
    """Phase 1's learning rate, and how it was chosen when --learning-rate was not given."""
    if config.learning_rate is not None:
        return config.learning_rate, ""
    if single_phase:  # a network from scratch: not a head on fixed features
        return HEAD_RATE, ""
    steps = config.epochs * steps_per_epoch
    return head_learning_rate(steps), (f" (for {steps:,} head step{'s' if steps != 1 else ''}: 1e-3 x "
                                       f"sqrt({HEAD_RATE_STEPS:,} / steps), within [1e-3, 1e-2])")


def learning_rate(config: FitConfig, rate: float, epochs: int, steps_per_epoch: int):
    """A phase's learning rate over its `epochs`: constant, or (cosine) a linear warm-up over
    its first epoch (at most a tenth of its steps) then a cosine decay to 0 at its last step.
    A function of the optimizer's step count, which checkpoints keep: resume stays exact."""
    import keras

    if config.schedule == "constant":
        return rate
    total = epochs * steps_per_epoch
    warmup = min(steps_per_epoch, total // 10)
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else rate, decay_steps=max(1, total - warmup),
        warmup_target=rate if warmup else None, warmup_steps=warmup)


def optimizer(config: FitConfig, rate: float, epochs: int, steps_per_epoch: int):
    import keras

    return keras.optimizers.Adam(learning_rate(config, rate, epochs, steps_per_epoch))


def loss(config: FitConfig):
    import keras

    return keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)


def describe(config: FitConfig, phase: int, trainable: int, rate: float, how: str) -> str:
    return (f"phase {phase}: {trainable:,} trainable parameters, learning rate {rate:.3g}{how}"
            + ("; cosine: warm-up, then decay to 0" if config.schedule == "cosine" else ""))
