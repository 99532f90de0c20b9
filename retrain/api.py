"""The Python API: one call per command, taking the settings as keywords, as Keras users
expect (`retrain.fit(data=..., epochs=...)`). The CLI and these calls share the same configs
and library code. Importing it is light: TensorFlow loads when a call needs it."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Iterable

from retrain.config import EvaluateConfig, ExportConfig, FitConfig, PredictConfig, default_run_name


def fit(data: str | Path | None = None, *, resume: str | Path | None = None, callbacks: Iterable = (),
        on_progress: Callable[[dict], None] | None = None, **settings):
    """Train a classifier on the image folder `data` (settings as `retrain fit`'s flags, e.g.
    backbone="mobilenet_v2", alpha=0.35, image_size=96, epochs=5); or, with `resume=RUN`,
    continue that run (settings then override the run's own, as --resume does).

    `callbacks`: Keras callbacks, called with ours; `on_progress(dict)`: phase, epoch,
    epochs, step, steps, loss, val_accuracy, eta_s, after every training call and epoch.
    -> train.FitResult: `.run` (the run folder), `.best` (the best epoch), `.model_path`."""
    from retrain.train import Hooks, fit as run_fit

    started = time.monotonic()
    if data is not None:
        settings["data"] = str(data)
    settings = {k: (tuple(v) if isinstance(v, list) else v) for k, v in settings.items()}
    if resume is not None:
        from retrain.checkpoints import resumed_config

        config = resumed_config(Path(resume), settings)
    else:
        config = FitConfig(**settings)
        if config.name is None:
            config = dataclasses.replace(config, name=default_run_name(config.backbone))
    return run_fit(config, resume=resume is not None, started=started,
                   hooks=Hooks(tuple(callbacks), on_progress))


def load(run: str | Path, checkpoint: str = "best"):
    """-> (a Keras model taking float 0-255 pixels [batch, size, size, channels] and giving
    class probabilities, the class labels in the model's order), from the run's best (or
    last) checkpoint."""
    from retrain.runs import load_model

    loaded = load_model(run, checkpoint)
    return loaded.model, loaded.labels


def evaluate(run: str | Path, **settings):
    """Score the run on its test/ folder (split="validation": the images fit held out;
    data=DIR: another folder) and write RUN/eval/<split>/; -> evaluate.Evaluation
    (`.metrics`: accuracy, top-k, per-class figures, confusion matrix)."""
    from retrain.evaluation import evaluate as run_evaluate

    return run_evaluate(EvaluateConfig(run=str(run), **settings))


def predict(run: str | Path, images: Iterable[str | Path], **settings):
    """Classify image files (and folders of them); -> [predict.Prediction]: `.file`, `.top`
    ((label, probability) pairs, most likely first) or `.error`, in the order given."""
    from retrain.prediction import predict as run_predict

    return run_predict(PredictConfig(run=str(run), inputs=tuple(str(i) for i in images), **settings))


def export(run: str | Path, format: str = "savedmodel", **settings) -> Path:
    """Export the run's model (format "savedmodel", "tflite" or "tflite-int8"; output=PATH);
    -> the path written."""
    from retrain.exports import export as run_export

    return run_export(ExportConfig(run=str(run), format=format, **settings))
