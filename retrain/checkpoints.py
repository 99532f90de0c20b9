"""Run folders: layout, the records written at start, checkpoints, and what a resume may change.

A run folder holds `config.json`, `labels.txt`, `run.json` (what the run decided: image size,
freeze point), `history.csv`, `logs/` (TensorBoard), `ckpt/` (the last N checkpoints),
`best/` (the best by validation loss) and, at the end, `model.keras`. Checkpoints are
`tf.train.Checkpoint`s managed by `tf.train.CheckpointManager`, which makes one visible only
once it is complete (it rewrites the `checkpoint` pointer file atomically).

Phase 1 changes the head only, so its checkpoints hold the head's layers (`head/`) and the
backbone as phase 1 found it is written once, to `frozen/`: an InceptionV3 costs 0.3 s and
87 MB a save, twice an epoch when the epoch is a new best. Other checkpoints hold the whole
model (`model/`). `restore_weights` reads either kind.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from retrain.config import FitConfig
from retrain.errors import CheckpointError

# A resume must build the very same model; these settings decide its shape.
FIXED_ON_RESUME = ("backbone", "alpha", "image_size", "freeze", "augment", "dropout_rate")


def atomic_write(path: Path, text: str) -> None:
    """Write then rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def create_run(path: Path, config: FitConfig, class_names: tuple[str, ...], facts: dict) -> None:
    """Make the run folder and record the config, the labels and the run's decisions."""
    if path.exists() and any(path.iterdir()):
        raise CheckpointError("the run folder already exists", str(path),
                              f"pass --resume {path} to continue it, or another --name")
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / "config.json", config.to_json())
    atomic_write(path / "labels.txt", "".join(f"{n}\n" for n in class_names))
    atomic_write(path / "run.json", json.dumps(facts, indent=2))


def record_facts(path: Path, facts: dict) -> None:
    """Add decisions made during the run (--time-budget's plan) to its run.json."""
    atomic_write(path / "run.json", json.dumps({**json.loads((path / "run.json").read_text()), **facts}, indent=2))


SETTINGS_BEFORE_THEY_EXISTED = {"schedule": "constant", "distribute": "none", "feature_shift": 0}


def read_run(path: Path) -> tuple[FitConfig, tuple[str, ...], dict]:
    """-> (config, labels, decisions) of an existing run folder."""
    if not (path / "config.json").is_file():
        raise CheckpointError("not a run folder (no config.json)", str(path),
                              "pass a folder under checkpoints/ made by `retrain fit`")
    saved = json.loads((path / "config.json").read_text())
    # A setting added after the run was made: what the run did then, not today's default.
    config = FitConfig.from_dict({**SETTINGS_BEFORE_THEY_EXISTED, **saved})
    labels = tuple((path / "labels.txt").read_text().splitlines())
    facts = json.loads((path / "run.json").read_text())
    return config, labels, facts


def check_resume(saved: FitConfig, wanted: FitConfig, saved_labels: tuple[str, ...],
                 labels: tuple[str, ...]) -> None:
    """Refuse a resume that would change the model's shape or its classes, naming the change."""
    changed = [f"{name} {getattr(saved, name)!r} -> {getattr(wanted, name)!r}"
               for name in FIXED_ON_RESUME if getattr(saved, name) != getattr(wanted, name)]
    if saved_labels != labels:
        gone, new = sorted(set(saved_labels) - set(labels)), sorted(set(labels) - set(saved_labels))
        changed.append(f"classes (removed: {', '.join(gone) or '-'}; added: {', '.join(new) or '-'})")
    if changed:
        raise CheckpointError("cannot resume: the run was made with other settings", "; ".join(changed),
                              "resume with the run's settings, or start a new run (--init-from to "
                              "start from its weights)")


HEAD = "head"  # a phase-1 checkpoint's layers
FROZEN = "frozen"  # the run's folder of the backbone those checkpoints leave out


def head_layers(model, backbone) -> dict:
    """The layers outside the backbone that hold variables: what phase 1 trains."""
    return {layer.name: layer for layer in model.layers if layer is not backbone and layer.variables}


def is_head_only(prefix: str) -> bool:
    import tensorflow as tf

    return any(name.startswith(f"{HEAD}/") for name, _ in tf.train.list_variables(prefix))


def save_frozen(run: Path, backbone) -> None:
    """Write the backbone to run/frozen/ (replacing what is there), before phase 1's first
    checkpoint. Readers see it only once whole: the manager's pointer file comes last."""
    import tensorflow as tf

    tf.train.CheckpointManager(tf.train.Checkpoint(backbone=backbone), str(run / FROZEN), max_to_keep=1).save()


def restore_frozen(backbone, prefix: str) -> None:
    """Restore the backbone of the run that wrote the head-only checkpoint `prefix`."""
    import tensorflow as tf

    folder = Path(prefix).parent.parent / FROZEN  # <run>/ckpt/ckpt-N, <run>/best/ckpt-N
    frozen = latest(folder)
    if frozen is None:
        raise CheckpointError("the checkpoint holds the head only, and its run has no frozen backbone",
                              str(folder), "keep a run folder whole: ckpt/ and best/ need frozen/ beside them")
    tf.train.Checkpoint(backbone=backbone).restore(frozen).assert_existing_objects_matched()


def restore_weights(model, backbone, prefix: str):
    """Restore the model's weights from a checkpoint of either kind; -> the restore status
    (the caller asserts what it needs, and expects the rest partial)."""
    import tensorflow as tf

    if is_head_only(prefix):
        restore_frozen(backbone, prefix)
        return tf.train.Checkpoint(**{HEAD: head_layers(model, backbone)}).restore(prefix)
    return tf.train.Checkpoint(model=model).restore(prefix)


def latest(directory: Path) -> str | None:
    import tensorflow as tf

    return tf.train.latest_checkpoint(str(directory)) if directory.is_dir() else None


def read_state(prefix: str) -> dict[str, int | float]:
    """The training state stored in a checkpoint, read without building the model."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE").item()
            for name in ("phase", "epoch", "step", "phase_start", "best_val_loss")}


def truncate_history(path: Path, epochs_done: int) -> None:
    """Drop history rows past the checkpoint being resumed (written before a kill)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < epochs_done]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)
    os.replace(tmp, path)


def init_checkpoint(source: Path) -> str:
    """The checkpoint prefix that `--init-from RUN_OR_CHECKPOINT` names (a run's best, else last)."""
    if source.is_dir():
        prefix = latest(source / "best") or latest(source / "ckpt")
        if prefix is None:
            raise CheckpointError("the run has no checkpoint yet", str(source),
                                  "pass a run that finished at least one epoch")
        return prefix
    if Path(f"{source}.index").is_file():
        return str(source)
    raise CheckpointError("--init-from is neither a run folder nor a checkpoint", str(source),
                          "pass checkpoints/<name> or checkpoints/<name>/ckpt/ckpt-<n>")
