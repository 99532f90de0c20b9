"""Run folders: what a resume may change, history truncation, creating and reading runs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from retrain.checkpoints import (check_resume, create_run, init_checkpoint, latest, read_run,
                                 read_state, truncate_history)
from retrain.config import FitConfig
from retrain.errors import CheckpointError

SAVED = FitConfig(data="d", backbone="tiny_cnn", weights="none", image_size=32, freeze="block1_out",
                  augment=("flip",), epochs=3, fine_tune_epochs=3, name="run")
LABELS = ("cyan", "magenta", "yellow")


@pytest.mark.parametrize("change", [
    {"epochs": 10}, {"fine_tune_epochs": 0}, {"learning_rate": 0.5}, {"fine_tune_learning_rate": 1e-5},
    {"batch_size": 3}, {"keep_checkpoints": 9}, {"save_every_steps": 5}, {"weights": "imagenet"},
    {"data": "elsewhere"},
])
def test_check_resume_accepts(change):
    """Epochs, learning rates and other settings that keep the model's shape may change."""
    check_resume(SAVED, dataclasses.replace(SAVED, **change), LABELS, LABELS)


@pytest.mark.parametrize("change, named", [
    ({"backbone": "mobilenet_v2"}, "backbone 'tiny_cnn' -> 'mobilenet_v2'"),
    ({"image_size": 64}, "image_size 32 -> 64"),
    ({"freeze": "block2_out"}, "freeze 'block1_out' -> 'block2_out'"),
    ({"alpha": 0.5}, "alpha None -> 0.5"),
    ({"augment": ("flip", "crop")}, "augment ('flip',) -> ('flip', 'crop')"),
    ({"dropout_rate": 0.5}, "dropout_rate 0.2 -> 0.5"),
])
def test_check_resume_refuses_shape_changes(change, named):
    """A change of the model's shape is refused, naming the setting and both values."""
    with pytest.raises(CheckpointError, match="cannot resume") as caught:
        check_resume(SAVED, dataclasses.replace(SAVED, **change), LABELS, LABELS)
    assert named in str(caught.value)


def test_check_resume_refuses_class_changes():
    """Other classes are refused, naming the removed and the added ones."""
    with pytest.raises(CheckpointError) as caught:
        check_resume(SAVED, SAVED, LABELS, ("black", "cyan", "magenta"))
    assert "classes (removed: yellow; added: black)" in str(caught.value)


def test_check_resume_names_every_change():
    """Several changes are all named in the one message."""
    wanted = dataclasses.replace(SAVED, backbone="mobilenet", image_size=64)
    with pytest.raises(CheckpointError) as caught:
        check_resume(SAVED, wanted, LABELS, LABELS + ("white",))
    message = str(caught.value)
    assert "backbone" in message and "image_size" in message and "added: white" in message


def _history(path, epochs: int) -> None:
    path.write_text("epoch,accuracy,loss\n" + "".join(f"{e},0.5,{1 / (e + 1)}\n" for e in range(epochs)))


@pytest.mark.parametrize("keep", [0, 2, 5, 9])
def test_truncate_history(tmp_path, keep):
    """truncate_history(path, n) keeps the header and the rows of epochs [0, n)."""
    path = tmp_path / "history.csv"
    _history(path, 5)
    truncate_history(path, keep)
    lines = path.read_text().splitlines()
    assert lines[0] == "epoch,accuracy,loss"
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(min(keep, 5)))


def test_truncate_history_missing_or_empty(tmp_path):
    """No history yet (or an empty file) is left as it is."""
    truncate_history(tmp_path / "history.csv", 3)
    assert not (tmp_path / "history.csv").exists()
    (tmp_path / "history.csv").write_text("")
    truncate_history(tmp_path / "history.csv", 3)
    assert (tmp_path / "history.csv").read_text() == ""


def test_create_run_writes_records(tmp_path):
    """create_run writes config.json (round-trips), labels.txt (one per line) and run.json."""
    run = tmp_path / "runs" / "run"
    create_run(run, SAVED, LABELS, {"image_size": 32, "freeze_layers": 4})
    config, labels, facts = read_run(run)
    assert config == SAVED
    assert labels == LABELS
    assert (run / "labels.txt").read_text() == "cyan\nmagenta\nyellow\n"
    assert facts == {"image_size": 32, "freeze_layers": 4}
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "labels.txt", "run.json"]


def test_create_run_refuses_non_empty_folder(tmp_path):
    """An existing folder with something in it is refused (suggesting --resume); nothing in
    it is touched."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="already exists") as caught:
        create_run(run, SAVED, LABELS, {})
    assert f"--resume {run}" in str(caught.value)
    assert [p.name for p in run.iterdir()] == ["notes.txt"]


def test_create_run_accepts_empty_folder(tmp_path):
    """An existing empty folder is used."""
    (tmp_path / "run").mkdir()
    create_run(tmp_path / "run", SAVED, LABELS, {})
    assert (tmp_path / "run" / "config.json").is_file()


def test_read_run_of_a_plain_folder(tmp_path):
    """A folder without config.json is not a run."""
    with pytest.raises(CheckpointError, match="not a run folder"):
        read_run(tmp_path)


def test_init_checkpoint_errors(tmp_path):
    """--init-from needs a run with a checkpoint, or a checkpoint prefix."""
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint yet"):
        init_checkpoint(tmp_path / "run")
    with pytest.raises(CheckpointError, match="neither a run folder nor a checkpoint"):
        init_checkpoint(tmp_path / "missing")


def test_state_round_trip_and_best_first(tmp_path):
    """read_state reads the training state from the newest checkpoint without a model; an
    --init-from run folder names its best checkpoint before its last."""
    import numpy as np
    import tensorflow as tf

    state = {name: tf.Variable(0, dtype=tf.int64) for name in ("phase", "epoch", "step", "phase_start")}
    state["best_val_loss"] = tf.Variable(np.inf, dtype=tf.float64)
    checkpoint = tf.train.Checkpoint(**state)
    run = tmp_path / "run"
    manager = tf.train.CheckpointManager(checkpoint, str(run / "ckpt"), max_to_keep=2)
    best = tf.train.CheckpointManager(checkpoint, str(run / "best"), max_to_keep=1)
    for epoch in (1, 2, 3):
        state["epoch"].assign(epoch)
        state["phase"].assign(1 if epoch < 3 else 2)
        state["best_val_loss"].assign(1.0 / epoch)
        if epoch == 2:
            best.save(checkpoint_number=epoch)
        manager.save(checkpoint_number=epoch)
    assert latest(run / "ckpt").endswith("ckpt-3")
    assert latest(tmp_path / "nothing") is None
    assert read_state(latest(run / "ckpt")) == {"phase": 2, "epoch": 3, "step": 0, "phase_start": 0,
                                                "best_val_loss": pytest.approx(1 / 3)}
    assert init_checkpoint(run).endswith("best/ckpt-2")
    assert init_checkpoint(run / "ckpt" / "ckpt-3") == str(run / "ckpt" / "ckpt-3")
    assert len(list((run / "ckpt").glob("ckpt-*.index"))) == 2
    assert json.loads(json.dumps(read_state(latest(run / "best"))))["epoch"] == 2


def test_a_run_made_before_the_schedule_existed_resumes_constant(tmp_path):
    """config.json without "schedule" (runs made when the learning rate was constant) reads
    back as constant, not as today's default, so a resume does not change its schedule."""
    create_run(tmp_path / "run", SAVED, ("a", "b"), {"image_size": 32})
    path = tmp_path / "run" / "config.json"
    old = json.loads(path.read_text())
    del old["schedule"], old["feature_shift"]
    path.write_text(json.dumps(old))
    assert read_run(tmp_path / "run")[0].schedule == "constant"
    assert read_run(tmp_path / "run")[0].feature_shift == 0  # nor start shifting its activations
    assert FitConfig().schedule == "cosine"
