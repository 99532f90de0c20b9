"""Run folders: what a resume may change, history truncation, creating and reading runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

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
    {"batch_size": 3}, {"keep_checkpoints": 9}, {"save_every_steps": 5}, {"data": "elsewhere"},
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
    ({"weights": "imagenet"}, "weights 'none' -> 'imagenet'"),
    ({"init_from": "runs/other"}, "init_from None -> 'runs/other'"),
])
def test_check_resume_refuses_shape_changes(change, named):
    """A change of the model's shape or of its starting weights (which key the cached rows)
    is refused, naming the setting and both values."""
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
    """create_run writes config.json (round-trips), labels.txt (one per line) and run.json
    with the format and the retrain version; nothing else is left in the runs folder."""
    from retrain import __version__
    from retrain.checkpoints import FORMAT

    run = tmp_path / "runs" / "run"
    create_run(run, SAVED, LABELS, {"image_size": 32, "freeze_layers": 4})
    config, labels, facts = read_run(run)
    assert config == SAVED
    assert labels == LABELS
    assert (run / "labels.txt").read_text() == "cyan\nmagenta\nyellow\n"
    assert facts == {"format": FORMAT, "retrain_version": __version__, "image_size": 32, "freeze_layers": 4}
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "labels.txt", "run.json"]
    assert [p.name for p in run.parent.iterdir()] == ["run"]


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
    """A format-1 config.json without "schedule" (runs made when the learning rate was
    constant) reads back as constant, not as today's default, so a resume does not change
    its schedule."""
    create_run(tmp_path / "run", SAVED, ("a", "b"), {"image_size": 32})
    path = tmp_path / "run" / "config.json"
    old = json.loads(path.read_text())
    del old["schedule"], old["feature_shift"]
    path.write_text(json.dumps(old))
    (tmp_path / "run" / "run.json").write_text(json.dumps({"image_size": 32}))  # format 1
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


# --- formats, damage, locks ------------------------------------------------------------------

FORMAT_1 = Path(__file__).parent / "data" / "run-format-1"  # made by retrain 0.1.0 of 2026-12-02


def test_a_format_1_run_folder_is_read_as_today(tmp_path):
    """A run folder of format 1 (no format in run.json; no schedule, distribute or
    feature_shift in config.json... here recorded, as that version did) reads through
    `upgrade`: settings it lacked get the values they had then, and evaluate, predict and
    --resume work on it."""
    import shutil

    from fit_fixtures import invoke
    from run_fixtures import LABELS as TOY, make_toy_data

    run = shutil.copytree(FORMAT_1, tmp_path / "old")
    config, labels, facts = read_run(run)
    assert facts["format"] == 1 and facts["skipped_files"] is None and labels == TOY
    saved = json.loads((run / "config.json").read_text())
    for name in ("schedule", "distribute", "feature_shift"):
        del saved[name]
    (run / "config.json").write_text(json.dumps(saved))
    config, _, _ = read_run(run)
    assert (config.schedule, config.distribute, config.feature_shift) == ("constant", "none", 0)
    data = make_toy_data(tmp_path / "data")
    result = invoke(["evaluate", str(run), "--data", str(data / "test")])
    assert result.exit_code == 0, (result.output, result.exception)
    result = invoke(["predict", str(run), str(data / "test" / "cyan")])
    assert result.exit_code == 0, (result.output, result.exception)
    result = invoke(["fit", "--resume", str(run), "--data", str(data), "--fine-tune-epochs", "2"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "resuming" in result.stderr and "4 epochs" not in result.stderr


def test_a_newer_format_is_refused(tmp_path):
    create_run(tmp_path / "run", SAVED, LABELS, {})
    facts = json.loads((tmp_path / "run" / "run.json").read_text())
    (tmp_path / "run" / "run.json").write_text(json.dumps({**facts, "format": 99}))
    with pytest.raises(CheckpointError, match="made by a newer retrain .*format 99.*upgrade retrain"):
        read_run(tmp_path / "run")


@pytest.mark.parametrize("damage", ["truncated run.json", "truncated config.json", "no labels.txt",
                                    "empty labels.txt", "unknown setting"])
def test_damaged_records_give_one_line(trained_copy, damage):
    """A run folder whose records are cut short or missing: evaluate and --resume each print
    one error line naming the file, no traceback."""
    from fit_fixtures import assert_one_error_line, invoke

    run = trained_copy
    name = damage.split()[-1] if damage != "unknown setting" else "config.json"
    path = run / name
    if damage.startswith("truncated"):
        path.write_text(path.read_text()[:25])
    elif damage == "no labels.txt":
        path.unlink()
    elif damage == "empty labels.txt":
        path.write_text("")
    else:
        path.write_text(json.dumps({**json.loads(path.read_text()), "colour": "blue"}))
    for args in (["evaluate", str(run), "--split", "validation"], ["fit", "--resume", str(run)]):
        assert_one_error_line(invoke(args), 1, name)


@pytest.fixture
def trained_copy(colour_data, tmp_path):
    """A finished run of 3 head epochs (tiny_cnn, frozen), its own folder."""
    return _fit(colour_data, tmp_path / "runs", "run", freeze="all", epochs=3, fine_tune_epochs=0)


def test_resume_skips_a_damaged_checkpoint(colour_data, trained_copy, tmp_path):
    """The newest checkpoint's data file cut short: --resume says it skips it, resumes from
    the newest intact one (removing the damaged files, repointing the folder), and ends with
    the weights of an uninterrupted run."""
    from fit_fixtures import invoke, model_weights

    run = trained_copy
    newest = latest(run / "ckpt")
    data_file = Path(f"{newest}.data-00000-of-00001")
    data_file.write_bytes(data_file.read_bytes()[:100])
    result = invoke(["fit", "--resume", str(run), "--epochs", "4"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"skipped the damaged checkpoint {newest}" in result.stderr
    assert "2 epochs and 0 steps done" in result.stderr
    assert latest(run / "ckpt") is not None and data_file.stat().st_size > 100  # epoch 3 saved again, whole
    whole = _fit(colour_data, tmp_path / "runs", "whole", freeze="all", epochs=4, fine_tune_epochs=0)
    for a, b in zip(model_weights(run / "model.keras"), model_weights(whole / "model.keras")):
        np.testing.assert_array_equal(a, b)


def test_a_damaged_pointer_file_is_rebuilt_from_the_checkpoints(trained_copy):
    """ckpt/checkpoint cut to nothing: the newest intact checkpoint is found by its files."""
    run = trained_copy
    newest = latest(run / "ckpt")
    (run / "ckpt" / "checkpoint").write_text("model_checkpoint_pa")
    assert latest(run / "ckpt", repair=True) == newest
    assert latest(run / "ckpt") == newest and "model_checkpoint_path" in (run / "ckpt" / "checkpoint").read_text()


def test_a_second_process_on_the_same_run_is_refused(trained_copy):
    """While one process trains a run (holds its lock), `fit --resume` of it is refused in
    one line naming the holder; once released, the resume runs."""
    import os

    from fit_fixtures import assert_one_error_line, invoke
    from retrain.checkpoints import run_lock

    run = trained_copy
    with run_lock(run):
        assert_one_error_line(invoke(["fit", "--resume", str(run), "--epochs", "4"]), 1,
                              "another retrain process is training this run", f"process {os.getpid()}")
    result = invoke(["fit", "--resume", str(run), "--epochs", "4"])
    assert result.exit_code == 0, (result.output, result.exception)


def test_the_lock_goes_with_a_killed_process(tmp_path):
    """A process killed while holding the lock (kill -9: no cleanup) leaves it free."""
    import signal
    import subprocess
    import sys

    (tmp_path / "run").mkdir()
    code = ("import sys, time; from pathlib import Path; from retrain.checkpoints import run_lock\n"
            "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        from retrain.checkpoints import run_lock

        with pytest.raises(CheckpointError, match="another retrain process"):
            with run_lock(tmp_path / "run"):
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        with run_lock(tmp_path / "run"):
            pass
    finally:
        proc.kill()


def test_resume_of_an_init_from_run_on_a_cold_cache_computes_the_right_rows(colour_data, tmp_path):
    """A phase-1 run --init-from a fine-tuned run, resumed with its cache cleared (another
    host): the resume restores the run's weights before it extracts, so the rows it caches
    equal the first run's, and the run ends as the uninterrupted one."""
    import shutil

    from fit_fixtures import invoke, model_weights

    tuned = _fit(colour_data, tmp_path / "runs", "tuned", epochs=1, fine_tune_epochs=1)
    cache = tmp_path / "cache"
    cut = _fit(colour_data, tmp_path / "runs", "cut", freeze="all", epochs=1, fine_tune_epochs=0,
               init_from=tuned, cache_dir=cache)
    first = {f.relative_to(cache): np.load(f) for f in cache.rglob("*.npy")}
    assert first
    shutil.rmtree(cache)
    result = invoke(["fit", "--resume", str(cut), "--epochs", "2"])
    assert result.exit_code == 0, (result.output, result.exception)
    again = {f.relative_to(cache): np.load(f) for f in cache.rglob("*.npy")}
    assert again.keys() == first.keys()
    for name, rows in first.items():
        np.testing.assert_array_equal(again[name], rows, err_msg=str(name))
    whole = _fit(colour_data, tmp_path / "runs", "whole", freeze="all", epochs=2, fine_tune_epochs=0,
                 init_from=tuned, cache_dir=tmp_path / "cache2")
    for a, b in zip(model_weights(cut / "model.keras"), model_weights(whole / "model.keras")):
        np.testing.assert_array_equal(a, b)


def test_a_finished_run_without_model_keras_is_resumable_and_gets_it_back(trained_copy):
    """model.keras lost: `retrain runs` calls the run resumable, and --resume writes it again
    (the best epoch's weights, from best/) without training more."""
    from fit_fixtures import invoke, model_weights
    from retrain.runs import status

    run = trained_copy
    before = model_weights(run / "model.keras")
    (run / "model.keras").unlink()
    assert status(run) == "resumable"
    result = invoke(["fit", "--resume", str(run)])
    assert result.exit_code == 0, (result.output, result.exception)
    for a, b in zip(model_weights(run / "model.keras"), before):
        np.testing.assert_array_equal(a, b)
