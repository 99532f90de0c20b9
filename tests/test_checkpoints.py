"""Run folders: what a resume may change, history truncation, creating and reading runs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
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


# --- what phase 1's checkpoints hold (tiny_cnn runs through the CLI) -------------------------

@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    from fit_fixtures import make_colour_data

    return make_colour_data(tmp_path_factory.mktemp("colours") / "data", train=8, validation=4)


def _names(prefix: str) -> list[str]:
    import tensorflow as tf

    return [name for name, _ in tf.train.list_variables(prefix)]


def _fit(data, runs, name, **flags):
    from fit_fixtures import fit_args, invoke

    result = invoke(fit_args(data, runs, name, **flags))
    assert result.exit_code == 0, (result.output, result.exception)
    return runs / name


def test_phase_1_checkpoints_hold_the_head_and_frozen_holds_the_backbone(colour_data, tmp_path):
    """A --freeze all run: ckpt/ and best/ hold the head's layers, no backbone variable;
    frozen/ holds the backbone once; evaluate's loader rebuilds the whole model from them
    (the last checkpoint predicts as model.keras). After phase 2 the checkpoints are whole."""
    from fit_fixtures import load_model
    from retrain.runs import load_model as load_run

    run = _fit(colour_data, tmp_path, "frozen", freeze="all", epochs=2, fine_tune_epochs=0)
    for folder in ("ckpt", "best"):
        names = _names(latest(run / folder))
        assert any(n.startswith("head/predictions/") for n in names), names
        assert not [n for n in names if n.startswith(("model/", "backbone/")) or "moving_mean" in n], names
    backbone = _names(latest(run / "frozen"))  # tiny_cnn: 3 convolutions, 3 batch norms
    assert sum(n.startswith("backbone/") and "_kernel" in n for n in backbone) == 3
    assert sum("moving_mean" in n for n in backbone) == 3
    assert len(list((run / "frozen").glob("ckpt-*.index"))) == 1
    x = np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 3)).astype("float32")
    rebuilt = load_run(run, "last").model
    np.testing.assert_array_equal(np.asarray(rebuilt(x)), np.asarray(load_model(run / "model.keras")(x)))

    two = _fit(colour_data, tmp_path, "two", epochs=1, fine_tune_epochs=1)
    assert any(n.startswith("model/") for n in _names(latest(two / "ckpt")))


def test_whole_model_phase_1_checkpoints_still_load_and_resume(colour_data, tmp_path, monkeypatch):
    """A run whose phase-1 checkpoint holds the whole model (as runs made before frozen/
    existed): evaluate's loader reads it, and --resume continues it to the same weights as
    an uninterrupted run."""
    from fit_fixtures import fit_args, invoke, model_weights
    from retrain.runs import load_model as load_run
    from retrain.train import _Trainer

    monkeypatch.setattr(_Trainer, "writes_head_only", False)
    old = _fit(colour_data, tmp_path, "old", freeze="all", epochs=1, fine_tune_epochs=0)
    monkeypatch.undo()
    assert any(n.startswith("model/") for n in _names(latest(old / "ckpt")))
    assert not (old / "frozen").exists()
    load_run(old, "best")
    result = invoke(["fit", "--resume", str(old), "--epochs", "3"])
    assert result.exit_code == 0, (result.output, result.exception)
    whole = _fit(colour_data, tmp_path, "whole", freeze="all", epochs=3, fine_tune_epochs=0)
    for a, b in zip(model_weights(old / "model.keras"), model_weights(whole / "model.keras")):
        np.testing.assert_array_equal(a, b)


def test_phase_1_resume_takes_the_backbone_from_frozen(colour_data, tmp_path):
    """--init-from a fine-tuned run gives a backbone no rebuild reproduces; a phase-1 run
    from it, resumed, ends with the same weights as the same run uninterrupted."""
    from fit_fixtures import invoke, model_weights

    tuned = _fit(colour_data, tmp_path, "tuned", epochs=1, fine_tune_epochs=1)
    cut = _fit(colour_data, tmp_path, "cut", freeze="all", epochs=1, fine_tune_epochs=0, init_from=tuned)
    result = invoke(["fit", "--resume", str(cut), "--epochs", "2"])
    assert result.exit_code == 0, (result.output, result.exception)
    whole = _fit(colour_data, tmp_path, "whole", freeze="all", epochs=2, fine_tune_epochs=0, init_from=tuned)
    for a, b in zip(model_weights(cut / "model.keras"), model_weights(whole / "model.keras")):
        np.testing.assert_array_equal(a, b)


def test_resume_before_the_first_checkpoint_applies_init_from(colour_data, tmp_path):
    """A run cut off before its first checkpoint (only its records written), resumed,
    starts from --init-from's weights as the uninterrupted run did."""
    import shutil

    from fit_fixtures import invoke, model_weights

    tuned = _fit(colour_data, tmp_path, "tuned", epochs=1, fine_tune_epochs=1)
    run = _fit(colour_data, tmp_path, "run", freeze="all", epochs=1, fine_tune_epochs=0, init_from=tuned)
    whole = model_weights(run / "model.keras")
    for leftover in ("ckpt", "best", "frozen", "logs", "history.csv", "model.keras"):
        shutil.rmtree(run / leftover) if (run / leftover).is_dir() else (run / leftover).unlink()
    result = invoke(["fit", "--resume", str(run)])
    assert result.exit_code == 0, (result.output, result.exception)
    for a, b in zip(model_weights(run / "model.keras"), whole):
        np.testing.assert_array_equal(a, b)
