"""Finished and unfinished runs: listing them, and rebuilding a run's model from a checkpoint.

Listing reads only the run folders' small files (no TensorFlow), so `retrain runs` is quick.
A run's model is rebuilt as `train.fit` builds it (the backbone without weights, the head,
from config.json and run.json) and its weights restored from the best or the last checkpoint.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from retrain.checkpoints import latest, listed_checkpoints, read_run, restore_weights
from retrain.config import FitConfig
from retrain.errors import CheckpointError, RetrainError


@dataclass(frozen=True)
class RunSummary:
    """One line of `retrain runs`; its accuracy is the best epoch's (lowest validation loss)."""

    name: str
    backbone: str
    freeze: str  # e.g. "auto: 12/12 layers"
    epochs_done: int  # rows in history.csv
    epochs_planned: int
    best_val_accuracy: float | None  # of the best epoch: the lowest validation loss
    status: str  # finished | resumable | empty | broken (config.json without the other records)


def list_runs(runs_dir: str | Path) -> list[RunSummary]:
    """Every run folder (one with config.json) under `runs_dir`, by name."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise CheckpointError("the runs folder does not exist", str(root),
                              "pass --runs-dir with the folder `retrain fit` wrote runs to")
    return [summarize(folder) for folder in sorted(root.iterdir())
            if folder.is_dir() and (folder / "config.json").is_file()]


def summarize(run: Path) -> RunSummary:
    try:
        config, _, facts = read_run(run)
    except (OSError, ValueError, RetrainError):  # killed while being created, or hand-edited
        return RunSummary(run.name, "?", "?", len(history(run)), 0, None, "broken")
    rows = history(run)
    best = best_epoch(rows)
    frozen, layers = facts.get("freeze_layers"), facts.get("backbone_layers")
    fine_tunes = frozen is not None and layers is not None and frozen < layers
    return RunSummary(run.name, config.backbone, f"{config.freeze}: {frozen}/{layers} layers",
                      len(rows), config.epochs + (config.fine_tune_epochs if fine_tunes else 0),
                      best.val_accuracy if best else None, status(run))


@dataclass(frozen=True)
class BestEpoch:
    """The epoch "best" means everywhere: the lowest validation loss. best/ holds its weights,
    model.keras too, and evaluate, predict and export use them unless told otherwise."""

    epoch: int  # counted from 1
    epochs: int  # logged in all
    val_loss: float
    val_accuracy: float


def best_epoch(rows: list[dict[str, str]]) -> BestEpoch | None:
    """The row of lowest val_loss (the first of equal ones, as best/ keeps it), or None."""
    scored = [(float(r["val_loss"]), i, r) for i, r in enumerate(rows) if r.get("val_loss")]
    if not scored:
        return None
    loss, i, row = min(scored, key=lambda t: (t[0], t[1]))
    return BestEpoch(i + 1, len(rows), loss, float(row.get("val_accuracy") or "nan"))


def describe_best(best: BestEpoch | None) -> str:
    if best is None:
        return "no epoch was validated"
    return (f"best epoch {best.epoch} of {best.epochs} (lowest validation loss, {best.val_loss:.4f}): "
            f"validation accuracy {best.val_accuracy:.4f}")


def status(run: Path) -> str:
    """finished: model.keras is there; resumable: a checkpoint but no model.keras; else empty."""
    if (run / "model.keras").is_file():
        return "finished"
    return "resumable" if checkpoint_prefix(run / "ckpt") else "empty"


def history(run: Path) -> list[dict[str, str]]:
    """history.csv's rows (one per epoch, both phases); [] before the first epoch ends."""
    path = run / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def checkpoint_prefix(directory: Path) -> str | None:
    """The checkpoint a CheckpointManager's pointer file names, if its files are there;
    read as text (what tf.train.latest_checkpoint does), so listing needs no TensorFlow."""
    listed, from_pointer = listed_checkpoints(directory)
    return listed[0] if from_pointer and Path(f"{listed[0]}.index").is_file() else None


def format_runs(runs: list[RunSummary]) -> str:
    if not runs:
        return "no runs"
    width = max(len("name"), *(len(r.name) for r in runs))
    lines = [f"{'name':<{width}}  {'backbone':<20} {'freeze':<24} {'epochs':>7} {'val acc':>12}  status"]
    for r in runs:
        best = f"{r.best_val_accuracy:.4f}" if r.best_val_accuracy is not None else "-"
        lines.append(f"{r.name:<{width}}  {r.backbone:<20} {r.freeze:<24} "
                     f"{f'{r.epochs_done}/{r.epochs_planned}':>7} {best:>12}  {r.status}")
    return "\n".join(lines)


# --- a run's model -------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadedRun:
    """A run's trained classifier and what describes it."""

    path: Path
    config: FitConfig
    labels: tuple[str, ...]
    image_size: int
    channels: int  # 3, or 1 for a network that follows grayscale data
    checkpoint: str  # the restored checkpoint's prefix
    model: object  # keras.Model: 0-255 float pixels -> probabilities


def load_model(run: str | Path, which: str = "best") -> LoadedRun:
    """Rebuild the run's classifier as fit built it and restore the `best` or `last` checkpoint."""
    run = Path(run)
    config, labels, facts = read_run(run)
    folder = run / ("best" if which == "best" else "ckpt")
    prefix = latest(folder)
    if prefix is None:
        raise CheckpointError(f"the run has no {which} checkpoint", str(folder),
                              "pass a run that finished at least one epoch, or --checkpoint "
                              f"{'last' if which == 'best' else 'best'}")
    from retrain.backbones import get_spec
    from retrain.model import build_backbone, build_classifier

    spec = get_spec(config.backbone)
    image_size = int(facts["image_size"])
    # The weights come from the checkpoint; the backbone only needs its shape.
    channels = int(facts.get("channels", 3))
    backbone = build_backbone(spec, image_size, config.alpha, "none", channels)
    model = build_classifier(spec, backbone, len(labels), image_size, config.dropout_rate,
                             config.augment, config.seed)
    try:
        status = restore_weights(model, backbone, prefix)
        status.assert_existing_objects_matched()
    except AssertionError as err:
        raise CheckpointError("the checkpoint does not fit the model its run describes", prefix,
                              "check that config.json and run.json belong to this run") from err
    status.expect_partial()  # the optimizer and training state are not wanted
    return LoadedRun(run, config, labels, image_size, channels, prefix, model)
