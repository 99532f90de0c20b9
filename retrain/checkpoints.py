"""Run folders: layout, the records written at start, checkpoints, and what a resume may change.

A run folder holds `config.json`, `labels.txt`, `run.json` (what the run decided: image size,
freeze point, skipped files; its format and the retrain version that made it), `history.csv`,
`logs/` (TensorBoard), `ckpt/` (the last N checkpoints), `best/` (the epoch of lowest
validation loss: "best" everywhere) and, at the end, `model.keras` (the best epoch's weights).
Checkpoints are `tf.train.Checkpoint`s managed by `tf.train.CheckpointManager`, which makes
one visible only once it is complete (it rewrites the `checkpoint` pointer file atomically);
a checkpoint damaged anyway (a cut copy, a full disk) is skipped for the newest intact one.
The run folder appears whole (made under a temporary name, then renamed), and a process
training into it holds a lock on it (`.lock`), which the kernel releases when it dies.

Phase 1 changes the head only, so its checkpoints hold the head's layers (`head/`) and the
backbone as phase 1 found it is written once, to `frozen/`: an InceptionV3 costs 0.3 s and
87 MB a save, twice an epoch when the epoch is a new best. Other checkpoints hold the whole
model (`model/`). `restore_weights` reads either kind.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from retrain import __version__
from retrain.config import FitConfig
from retrain.errors import CheckpointError, ConfigError
from retrain.files import atomic_write, replacing, try_lock
from retrain.progress import say

# A resume must build the very same model from the very same starting weights; these
# settings decide both (the cached rows are keyed by the starting weights).
FIXED_ON_RESUME = ("backbone", "alpha", "image_size", "freeze", "augment", "dropout_rate", "weights",
                   "init_from")

# run.json's "format". 1: runs made before it was written (no "format" key, up to retrain
# 0.1.0 of 2026-12-02); 2: "format", "retrain_version" and "skipped_files" recorded.
FORMAT = 2


def create_run(path: Path, config: FitConfig, class_names: tuple[str, ...], facts: dict) -> None:
    """Make the run folder with its records (config, labels, the run's decisions), all at once:
    written under a temporary name, then renamed, so no run folder lacks one of them."""
    if path.exists() and any(path.iterdir()):
        raise CheckpointError("the run folder already exists", str(path),
                              f"pass --resume {path} to continue it, or another --name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
    shutil.rmtree(tmp, ignore_errors=True)  # ours: a name only this process uses
    try:
        tmp.mkdir()
        atomic_write(tmp / "config.json", config.to_json())
        atomic_write(tmp / "labels.txt", "".join(f"{n}\n" for n in class_names))
        atomic_write(tmp / "run.json", json.dumps(
            {"format": FORMAT, "retrain_version": __version__, **facts}, indent=2))
        if path.exists():
            path.rmdir()  # empty, as checked above
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def record_facts(path: Path, facts: dict) -> None:
    """Add decisions made during the run (--time-budget's plan) to its run.json."""
    atomic_write(path / "run.json", json.dumps({**_read_json(path / "run.json"), **facts}, indent=2))


def resumed_config(folder: Path, overrides: dict) -> FitConfig:
    """The run's own config with the settings given now (a resume's); train.fit refuses the
    changes a resume cannot make."""
    import dataclasses

    if "runs_dir" in overrides or "name" in overrides:
        raise ConfigError("--resume names the run folder; --runs-dir and --name do not apply",
                          str(folder), "drop --runs-dir and --name")
    saved, _, _ = read_run(folder)
    return dataclasses.replace(saved, runs_dir=str(folder.parent), name=folder.name, **overrides)


# Format 1 runs: a setting added later gets the value the run had before the setting existed.
SETTINGS_BEFORE_THEY_EXISTED = {"schedule": "constant", "distribute": "none", "feature_shift": 0}


def read_run(path: Path) -> tuple[FitConfig, tuple[str, ...], dict]:
    """-> (config, labels, decisions) of an existing run folder of any format, as today's."""
    if not (path / "config.json").is_file():
        raise CheckpointError("not a run folder (no config.json)", str(path),
                              "pass a folder under checkpoints/ made by `retrain fit`")
    saved, facts = upgrade(_read_json(path / "config.json"), _read_json(path / "run.json"))
    try:
        config = FitConfig.from_dict(saved)
    except ConfigError as err:
        raise CheckpointError(f"{path / 'config.json'} holds settings this retrain cannot use", err,
                              "repair or remove the file, or use the retrain version that wrote it") from None
    labels = tuple(_read_text(path / "labels.txt").splitlines())
    if len(labels) < 2:
        raise CheckpointError("the run's labels.txt is damaged (fewer than 2 class names)",
                              str(path / "labels.txt"), "restore it from a copy of the run, or start a new run")
    return config, labels, facts


def upgrade(config: dict, facts: dict) -> tuple[dict, dict]:
    """A run folder's config.json and run.json, in whatever format it was written, as the
    current format: the one place that knows older formats."""
    version = facts.get("format", 1)
    if not isinstance(version, int) or version > FORMAT:
        raise CheckpointError("the run folder was made by a newer retrain",
                              f"format {version}, retrain {facts.get('retrain_version', '?')}",
                              f"upgrade retrain (this is {__version__}, which reads formats up to {FORMAT})")
    if version == 1:
        config = {**SETTINGS_BEFORE_THEY_EXISTED, **config}
        facts = {**facts, "skipped_files": None}  # not recorded then
    return config, {**facts, "format": version}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"the run folder lacks {path.name}", str(path),
                              "restore it from a copy of the run, or start a new run") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"cannot read {path.name}: {err}", str(path),
                              "check the file's permissions and the disk") from None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(_read_text(path))
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise CheckpointError(f"the run's {path.name} is damaged (not a complete JSON object)", str(path),
                              "restore it from a copy of the run, or start a new run")
    return value


_held: dict[Path, int] = {}


@contextlib.contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder while training into it. The kernel releases
    it when the process ends, however it ends, so a killed run never stays locked; a second
    process that wants the same run is refused."""
    fd = try_lock(path / ".lock")
    if fd is None:
        holder = (path / ".lock").read_text(errors="replace").strip() or "?"
        raise CheckpointError("another retrain process is training this run", f"{path}, process {holder}",
                              "wait for it to finish, or stop it, then resume")
    try:
        yield
    finally:
        os.close(fd)  # releases the lock


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


def restore_weights(model, backbone, prefix: str, backbone_is_frozen: bool = False):
    """Restore the model's weights from a checkpoint of either kind; -> the restore status
    (the caller asserts what it needs, and expects the rest partial). `backbone_is_frozen`:
    the backbone already holds frozen/'s weights (nothing fine-tuned it since), so a
    head-only checkpoint needs its head only (an InceptionV3 backbone is 84 MB to read)."""
    import tensorflow as tf

    if is_head_only(prefix):
        if not backbone_is_frozen:
            restore_frozen(backbone, prefix)
        return tf.train.Checkpoint(**{HEAD: head_layers(model, backbone)}).restore(prefix)
    return tf.train.Checkpoint(model=model).restore(prefix)


def latest(directory: Path, repair: bool = False) -> str | None:
    """The newest checkpoint of a CheckpointManager's folder whose files read whole, or None.
    A damaged one (cut short by a copy, a full disk, a kill outside TensorFlow's care) is
    skipped with a line saying so. `repair` (only under the run's lock: fit): also remove the
    damaged ones' files and rewrite the pointer file to name the one used."""
    if not directory.is_dir():
        return None
    if repair:  # a save cut off (kill, full disk) leaves TensorFlow's own temporary folder
        for leftover in directory.glob("*_temp"):
            shutil.rmtree(leftover, ignore_errors=True)
    listed, pointer_ok = listed_checkpoints(directory)
    for i, prefix in enumerate(listed):
        damage = _damage(prefix)
        if damage is None:
            if repair and (i or not pointer_ok):
                _repoint(directory, listed[i:])
            return prefix
        say(f"skipped the damaged checkpoint {prefix} ({damage})")
        if repair:
            for f in directory.glob(f"{Path(prefix).name}.*"):  # the run's own checkpoint files
                f.unlink()
    return None


def listed_checkpoints(directory: Path) -> tuple[list[str], bool]:
    """The folder's checkpoint prefixes, newest first, from its pointer file; from the index
    files (by time) when the pointer is missing or damaged. -> (prefixes, pointer usable)."""
    pointer = directory / "checkpoint"
    try:
        text = pointer.read_text()
        paths = re.findall(r'^all_model_checkpoint_paths: "(.+)"$', text, re.M)
        newest = re.search(r'^model_checkpoint_path: "(.+)"$', text, re.M)
        if newest:
            ordered = [newest.group(1)] + [p for p in reversed(paths) if p != newest.group(1)]
            return [str(directory / p) for p in ordered], True  # (an absolute p stays as it is)
    except (OSError, UnicodeDecodeError):
        pass
    indexes = sorted(directory.glob("*.index"), key=lambda f: f.stat().st_mtime_ns, reverse=True)
    return [str(f.with_suffix("")) for f in indexes], False


def _damage(prefix: str) -> str | None:
    """What is wrong with a checkpoint's files, or None when every tensor reads whole."""
    import tensorflow as tf

    if not Path(f"{prefix}.index").is_file():
        return "its index file is missing"
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, IndexError) as err:  # IndexError: a data file cut short
        return str(err).strip().splitlines()[0][:160]
    return None


def _repoint(directory: Path, prefixes: list[str]) -> None:
    """Rewrite the pointer file (CheckpointManager's text format) to name `prefixes[0]` as
    the newest, keeping the older ones listed."""
    names = [Path(p).name for p in prefixes]
    atomic_write(directory / "checkpoint", f'model_checkpoint_path: "{names[0]}"\n'
                 + "".join(f'all_model_checkpoint_paths: "{n}"\n' for n in reversed(names)))


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
    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)


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
