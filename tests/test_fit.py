"""`retrain fit` end to end through the CLI, on toy solid-colour images and tiny models.

In-process (typer's CliRunner) where nothing is killed; new processes for kill and resume.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from fit_fixtures import (COLOURS, assert_one_error_line, column, fit_args,
                          history_rows, hub_features, invoke, kill_when, latest_checkpoint_number,
                          load_model, make_colour_data, make_colour_split, make_hub_module,
                          model_weights, read_history, resumed_from, shuffle_labels, start_fit,
                          subprocess_env, write_png)
from retrain.config import FitConfig

CLASSES = tuple(sorted(COLOURS))


# --- a trained toy run, shared by several tests -------------------------------------------

@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    """12 training and 6 validation images per colour."""
    return make_colour_data(tmp_path_factory.mktemp("colours") / "data", train=12, validation=6)


@pytest.fixture(scope="module")
def trained(colours, tmp_path_factory):
    """tiny_cnn on the colours: 2 head epochs + 2 fine-tuning epochs, 2 checkpoints kept."""
    runs = tmp_path_factory.mktemp("runs")
    result = invoke(fit_args(colours, runs, "toy", keep_checkpoints=2))
    assert result.exit_code == 0, (result.output, result.exception)
    return runs / "toy", result


def test_colours_are_learned(trained):
    """Solid colours reach at least 90% validation accuracy."""
    run, result = trained
    assert column(run, "val_accuracy").max() >= 0.9
    assert "done: best epoch" in result.stderr


@pytest.mark.slow
def test_shuffled_labels_are_not_learned(colours, tmp_path):
    """The same run with each side's labels permuted at random does not reach 90%: the
    accuracy above comes from the labels, not from a leak or a broken metric."""
    data = tmp_path / "shuffled"
    shutil.copytree(colours, data)
    shuffle_labels(data, seed=1)
    per_class = {c: len(list((data / "validation" / c).glob("*.png"))) for c in CLASSES}
    assert per_class == {c: 6 for c in CLASSES}
    result = invoke(fit_args(data, tmp_path / "runs", "shuffled"))
    assert result.exit_code == 0, (result.output, result.exception)
    assert column(tmp_path / "runs" / "shuffled", "val_accuracy").max() < 0.9


def test_run_folder_contents(trained, colours):
    """The run folder holds config.json (the run's config), labels.txt (sorted class names),
    run.json (the decisions), history.csv (one row per epoch of both phases), TensorBoard
    logs, at most --keep-checkpoints checkpoints, the best checkpoint and model.keras."""
    run, _ = trained
    config = FitConfig.from_json((run / "config.json").read_text())
    assert (config.backbone, config.epochs, config.fine_tune_epochs, config.keep_checkpoints) == (
        "tiny_cnn", 2, 2, 2)
    assert config.data == str(colours)
    assert (run / "labels.txt").read_text() == "cyan\nmagenta\nyellow\n"
    facts = json.loads((run / "run.json").read_text())
    assert facts["image_size"] == 32 and facts["freeze_layers"] == 0
    assert facts["num_classes"] == 3 and facts["backbone_layers"] == 12
    assert (facts["train_images"], facts["validation_images"]) == (36, 18)
    assert facts["deterministic"] is True
    history = read_history(run)
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history[0])
    assert (run / "logs" / "train").is_dir() and (run / "logs" / "validation").is_dir()
    assert list((run / "logs" / "train").glob("events.out.tfevents.*"))
    assert 1 <= len(list((run / "ckpt").glob("ckpt-*.index"))) <= 2
    assert len(list((run / "best").glob("ckpt-*.index"))) == 1
    assert (run / "model.keras").is_file()
    assert not list(run.glob(".*tmp*"))


def test_best_means_the_lowest_validation_loss_everywhere(trained):
    """"Best" is one epoch: the lowest validation loss. The final line names it with its
    accuracy, model.keras holds its weights (as best/ does, which evaluate, predict and
    export read by default), and `retrain runs` shows its accuracy."""
    from retrain.runs import list_runs, load_model as load_run

    run, result = trained
    history = read_history(run)
    best = min(range(len(history)), key=lambda i: (history[i]["val_loss"], i))
    line = f"done: best epoch {best + 1} of 4 (lowest validation loss, {history[best]['val_loss']:.4f}): " \
           f"validation accuracy {history[best]['val_accuracy']:.4f}"
    assert line in result.stderr
    x = np.random.default_rng(1).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(load_model(run / "model.keras")(x)),
                                  np.asarray(load_run(run, "best").model(x)))
    summary = [s for s in list_runs(run.parent) if s.name == run.name][0]
    assert summary.best_val_accuracy == history[best]["val_accuracy"]


def test_phase_parameter_counts(trained):
    """Phase 1 trains the head only (32 x 3 + 3); phase 2 with --freeze none trains all but
    BatchNorm: convolutions 3*3*(3*8 + 8*16 + 16*32) = 5,976 plus the head's 99."""
    _, result = trained
    assert "phase 1: 99 trainable parameters, learning rate 0.05" in result.stderr
    assert re.search(r"phase 2: 6,075 trainable parameters, learning rate 0\.01", result.stderr)
    assert "freeze: 0 of 12 backbone layers (--freeze none" in result.stderr


def test_default_head_rate_follows_phase_1_steps(colours, tmp_path):
    """Without --learning-rate, phase 1 trains at head_learning_rate(its steps): the run
    equals one given that rate (36 images at batch 1, 3 epochs: 108 steps -> 1e-3 x
    sqrt(7,030 / 108) = 0.00807) and differs from one at 1e-3."""
    from retrain.config import head_learning_rate

    rate = head_learning_rate(108)
    assert rate == pytest.approx(8.068e-3, rel=1e-3)
    weights = {}
    for name, value in (("auto", None), ("given", repr(rate)), ("base", "0.001")):
        result = invoke(fit_args(colours, tmp_path, name, learning_rate=value, batch_size=1, epochs=3,
                                 fine_tune_epochs=0, freeze="all"))
        assert result.exit_code == 0, (result.output, result.exception)
        weights[name] = model_weights(tmp_path / name / "model.keras")
        if name == "auto":
            assert "learning rate 0.00807 (for 108 head steps: 1e-3 x sqrt(7,030 / steps)" in result.stderr
    assert all(np.array_equal(a, b) for a, b in zip(weights["auto"], weights["given"]))
    assert not all(np.array_equal(a, b) for a, b in zip(weights["auto"], weights["base"]))


def test_saved_model_predicts_raw_pixels(trained, colours):
    """model.keras loads with keras.saving.load_model and takes 0-255 pixels: it outputs
    probabilities, calls pure colours right, and scores on the validation images what the
    run's last epoch scored."""
    from retrain.data import eval_dataset, load_folders

    run, _ = trained
    model = load_model(run / "model.keras")
    probs = np.asarray(model(np.full((1, 32, 32, 3), 128.0, "float32")))
    assert probs.shape == (1, 3)
    assert probs.sum() == pytest.approx(1.0, abs=1e-5) and (probs >= 0).all()
    pure = np.stack([np.full((32, 32, 3), COLOURS[c], "float32") for c in CLASSES])
    assert np.asarray(model(pure)).argmax(axis=1).tolist() == [0, 1, 2]
    data = load_folders(colours, 0.2)
    correct = total = 0
    for images, labels in eval_dataset(data.validation, 3, 32, 8).as_numpy_iterator():
        correct += int((np.asarray(model(images)).argmax(1) == labels.argmax(1)).sum())
        total += len(labels)
    assert total == 18
    assert correct / total == pytest.approx(column(run, "val_accuracy")[-1], abs=1e-6)


def test_resume_of_a_finished_run(trained, tmp_path):
    """Resuming a finished run trains nothing more: history and weights stay the same."""
    run = tmp_path / "toy"
    shutil.copytree(trained[0], run)
    before = model_weights(run / "model.keras")
    history = (run / "history.csv").read_text()
    result = invoke(["fit", "--resume", str(run)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "phase 2, 4 epochs and 0 steps done" in result.stderr
    assert (run / "history.csv").read_text() == history
    for a, b in zip(before, model_weights(run / "model.keras")):
        np.testing.assert_array_equal(a, b)


# --- single <label>/ tree --------------------------------------------------------------------

def _sides(data) -> dict[str, str]:
    return {**{f: "train" for f in data.train.files}, **{f: "validation" for f in data.validation.files}}


def test_single_tree_split_is_stable(tmp_path):
    """A <label>/ tree split by --validation-split 0.25: the same files each time, and adding
    images moves none of the existing ones across sides."""
    from retrain.data import load_folders

    make_colour_split(tmp_path, 16, 0)
    first = _sides(load_folders(tmp_path, 0.25))
    assert first == _sides(load_folders(tmp_path, 0.25))
    assert 0.1 < list(first.values()).count("validation") / len(first) < 0.4
    rng = np.random.default_rng(5)
    for c in CLASSES:
        for i in range(16, 30):
            write_png(tmp_path / c / f"{c}_{i:03d}.png", np.full((32, 32, 3), COLOURS[c], np.uint8))
        write_png(tmp_path / c / "sub" / "extra.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    grown = _sides(load_folders(tmp_path, 0.25))
    assert len(grown) == len(first) + 3 * 15
    assert {f: grown[f] for f in first} == first


def test_single_tree_trains(tmp_path):
    """fit trains on a single <label>/ tree; run.json counts the hash split's two sides."""
    from retrain.data import load_folders

    make_colour_split(tmp_path / "data", 20, 0)
    result = invoke(fit_args(tmp_path / "data", tmp_path / "runs", "tree", validation_split=0.25,
                             epochs=1, fine_tune_epochs=1))
    assert result.exit_code == 0, (result.output, result.exception)
    facts = json.loads((tmp_path / "runs" / "tree" / "run.json").read_text())
    data = load_folders(tmp_path / "data", 0.25)
    assert (facts["train_images"], facts["validation_images"]) == (len(data.train.files),
                                                                   len(data.validation.files))
    assert len(read_history(tmp_path / "runs" / "tree")) == 2


# --- kill and resume -------------------------------------------------------------------------

# A cosine schedule makes the learning rate depend on the step count: resume must restore it.
KILL_FLAGS = dict(epochs=3, fine_tune_epochs=3, batch_size=2, augment="flip", freeze="block1_out",
                  schedule="cosine")
STEPS = 6  # 12 training images, batch size 2


@pytest.fixture(scope="module")
def kill_runs(tmp_path_factory):
    """An uninterrupted run and three killed-then-resumed copies of it (new processes):
    killed after 2 epochs (phase 1), after 5 (phase 2), and mid-epoch in phase 1 with
    --save-every-steps 2 (at the step-2 checkpoint of an epoch). -> {name: (run, output)}."""
    root = tmp_path_factory.mktemp("kill")
    data = make_colour_data(root / "data", train=4, validation=3)
    runs = root / "runs"

    def args(name, **extra):
        return fit_args(data, runs, name, **KILL_FLAGS, **extra)

    def mid_epoch_in_phase1() -> bool:
        rows = history_rows(runs / "mid")  # read first: phase 2 starts after 3 rows
        number = latest_checkpoint_number(runs / "mid")  # numbered by optimizer step
        return rows < 3 and number is not None and number % STEPS == 2

    ref = start_fit(args("ref"), root / "ref.log")
    procs = {"phase1": start_fit(args("phase1"), root / "phase1.log"),
             "phase2": start_fit(args("phase2"), root / "phase2.log"),
             "mid": start_fit(args("mid", save_every_steps=2), root / "mid.log")}
    resumed = {}
    try:
        kill_when({procs["phase1"]: lambda: history_rows(runs / "phase1") >= 2,
                   procs["phase2"]: lambda: history_rows(runs / "phase2") >= 5,
                   procs["mid"]: mid_epoch_in_phase1})
        resumed = {name: start_fit(["fit", "--resume", str(runs / name)], root / f"{name}.resume.log")
                   for name in procs}
        assert ref.wait(300) == 0, (root / "ref.log").read_text()
        for name, proc in resumed.items():
            assert proc.wait(300) == 0, (root / f"{name}.resume.log").read_text()
    finally:
        for proc in [ref, *procs.values(), *resumed.values()]:
            if proc.poll() is None:
                proc.kill()
    outputs = {name: (root / f"{name}.resume.log").read_text() for name in procs}
    outputs["ref"] = (root / "ref.log").read_text()
    return {name: (runs / name, outputs[name]) for name in outputs}


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = model_weights(a / "model.keras"), model_weights(b / "model.keras")
    assert len(wa) == len(wb) > 0
    for x, y in zip(wa, wb):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name, phase", [("phase1", 1), ("phase2", 2)])
def test_resume_after_kill_equals_uninterrupted(kill_runs, name, phase):
    """SIGKILL after some epochs, then `fit --resume RUN`: the history (loss and val_loss of
    every epoch of both phases) and the final weights equal the uninterrupted run's."""
    run, output = kill_runs[name]
    ref, _ = kill_runs["ref"]
    _, resumed_phase, epochs_done, steps_done = resumed_from(output)
    assert (resumed_phase, steps_done) == (phase, 0)
    assert epochs_done in ((1, 2) if phase == 1 else (4, 5))
    assert column(run, "epoch").tolist() == list(range(6))
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        np.testing.assert_allclose(column(run, key), column(ref, key), rtol=0, atol=1e-6, err_msg=key)
    _assert_same_weights(run, ref)


@pytest.mark.slow
def test_mid_epoch_resume_finishes_with_same_weights(kill_runs):
    """--save-every-steps 2, killed mid-epoch: the resume starts inside the epoch (phase 1,
    steps done), finishes all 6 epochs, and ends with the uninterrupted run's weights and
    validation losses."""
    run, output = kill_runs["mid"]
    ref, _ = kill_runs["ref"]
    _, phase, epochs_done, steps_done = resumed_from(output)
    assert phase == 1 and 0 < steps_done < STEPS
    assert column(run, "epoch").tolist() == list(range(6))
    np.testing.assert_allclose(column(run, "val_loss"), column(ref, "val_loss"), rtol=0, atol=1e-6)
    _assert_same_weights(run, ref)


@pytest.mark.slow
def test_mid_epoch_resume_history_training_loss(kill_runs):
    """After a mid-epoch resume, history.csv's training loss and accuracy of every epoch,
    the interrupted one included, equal the uninterrupted run's (the epoch's mean over all
    its steps, not over the steps run after the resume)."""
    run, output = kill_runs["mid"]
    ref, _ = kill_runs["ref"]
    interrupted = resumed_from(output)[2]
    others = [e for e in range(6) if e != interrupted]
    np.testing.assert_allclose(column(run, "loss")[others], column(ref, "loss")[others], rtol=0, atol=1e-6)
    np.testing.assert_allclose(column(run, "loss"), column(ref, "loss"), rtol=0, atol=1e-6,
                               err_msg=f"epoch {interrupted} was interrupted")
    np.testing.assert_allclose(column(run, "accuracy"), column(ref, "accuracy"), rtol=0, atol=1e-6)


@pytest.fixture
def small(tmp_path):
    """A data folder of its own and a finished 1-epoch run on it: (data, run)."""
    data = make_colour_data(tmp_path / "data", train=4, validation=2)
    result = invoke(fit_args(data, tmp_path / "runs", "small", epochs=1, fine_tune_epochs=0))
    assert result.exit_code == 0, (result.output, result.exception)
    return data, tmp_path / "runs" / "small"


def test_resume_with_no_checkpoint_yet_keeps_one_row_per_epoch(small):
    """Killed after epoch 0's history row was written but before its checkpoint was saved
    (the CSV logger runs first): the resume starts over and history.csv still has exactly
    one row per epoch."""
    _, run = small
    shutil.rmtree(run / "ckpt")
    (run / "model.keras").unlink()
    result = invoke(["fit", "--resume", str(run)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert column(run, "epoch").tolist() == [0]


def test_resume_refuses_another_backbone(small):
    """`--resume RUN --backbone mobilenet_v2`: exit 1, one error line naming the change, and
    the run is left as it was."""
    _, run = small
    history = (run / "history.csv").read_text()
    result = invoke(["fit", "--resume", str(run), "--backbone", "mobilenet_v2"])
    assert_one_error_line(result, 1, "cannot resume", "backbone 'tiny_cnn' -> 'mobilenet_v2'")
    assert (run / "history.csv").read_text() == history


def test_resume_refuses_another_class_list(small):
    """A class folder added to the data since the run: exit 1, one error line naming it."""
    data, run = small
    make_colour_split(data / "train", 4, 7, classes=("cyan",))
    for side in ("train", "validation"):
        shutil.copytree(data / side / "cyan", data / side / "black")
    result = invoke(["fit", "--resume", str(run)])
    assert_one_error_line(result, 1, "cannot resume", "classes (removed: -; added: black)")


def test_resume_refuses_name_and_runs_dir(small, tmp_path):
    """--resume names the run folder; --name is a flag error (exit 2)."""
    _, run = small
    result = invoke(["fit", "--resume", str(run), "--name", "other"])
    assert_one_error_line(result, 2, "--runs-dir and --name do not apply")


def test_resume_of_a_plain_folder(tmp_path):
    """--resume of a folder that is not a run: exit 1, one line."""
    result = invoke(["fit", "--resume", str(tmp_path)])
    assert_one_error_line(result, 1, "not a run folder")


# --- unreadable images -----------------------------------------------------------------------

def test_corrupt_images_are_skipped_and_reported(tmp_path):
    """A .png of garbage bytes and a truncated PNG are left out and named on stderr; the
    run finishes on the rest."""
    data = make_colour_data(tmp_path / "data", train=4, validation=2)
    (data / "train" / "cyan" / "garbage.png").write_bytes(bytes(range(256)) * 4)
    whole = (data / "train" / "magenta" / "magenta_000.png").read_bytes()
    (data / "train" / "magenta" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    result = invoke(fit_args(data, tmp_path / "runs", "corrupt", epochs=1, fine_tune_epochs=1))
    assert result.exit_code == 0, (result.output, result.exception)
    assert "skipped 2 unreadable image(s)" in result.stderr
    assert str(data / "train" / "cyan" / "garbage.png") in result.stderr
    assert str(data / "train" / "magenta" / "truncated.png") in result.stderr
    assert json.loads((tmp_path / "runs" / "corrupt" / "run.json").read_text())["train_images"] == 12
    assert len(read_history(tmp_path / "runs" / "corrupt")) == 2


def test_an_image_that_fails_to_decode_in_training_stops_the_run_in_one_line(tmp_path, monkeypatch):
    """A file the pre-flight check passes but TensorFlow cannot decode (simulated: the check
    says of it what it says of a good 32 x 32 PNG) is not dropped from the epoch, which would shift every
    later batch: the run stops with one line naming it and the --resume command."""
    import retrain.data

    data = make_colour_data(tmp_path / "data", train=4, validation=2)
    bad = data / "train" / "cyan" / "zz.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    real = retrain.data._image_size
    good = real(str(data / "train" / "cyan" / "cyan_000.png"))  # what the check says of a 32 x 32 PNG
    monkeypatch.setattr(retrain.data, "_image_size", lambda path: good if path == str(bad) else real(path))
    result = invoke(fit_args(data, tmp_path / "runs", "bad", epochs=1, fine_tune_epochs=0) + ["--no-cache"])
    assert_one_error_line(result, 1, "passed the pre-flight check but TensorFlow cannot decode them",
                          str(bad), f"retrain fit --resume {tmp_path / 'runs' / 'bad'}")


def test_ctrl_c_names_the_command_that_continues_the_run(tmp_path):
    """Ctrl-C (SIGINT) during fit ends with the exact `retrain fit --resume RUN` line, and
    that command finishes the run."""
    import signal

    data = make_colour_data(tmp_path / "data", train=4, validation=2)
    runs = tmp_path / "runs"
    proc = start_fit(fit_args(data, runs, "cut", epochs=40, fine_tune_epochs=0, batch_size=2), tmp_path / "log")
    start = time.monotonic()
    while history_rows(runs / "cut") < 1 and time.monotonic() - start < 120:
        assert proc.poll() is None, (tmp_path / "log").read_text()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    last = (tmp_path / "log").read_text().strip().splitlines()[-1]
    assert last == f"interrupted; continue with: retrain fit --resume {runs / 'cut'}"
    done = subprocess.run([sys.executable, "-m", "retrain", *last.split("retrain ", 1)[1].split(), "--epochs", "2"],
                          capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "done: best epoch" in done.stderr


# --- pre-flight errors -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """Data folders: good, one class, an empty class, train/validation with other classes."""
    root = tmp_path_factory.mktemp("layouts")
    good = make_colour_data(root / "good", train=2, validation=1)
    one = make_colour_data(root / "one", train=2, validation=1, classes=("cyan",))
    empty = make_colour_data(root / "empty", train=2, validation=1)
    for side in ("train", "validation"):
        (empty / side / "black").mkdir()
    other = make_colour_data(root / "other", train=2, validation=1)
    make_colour_split(other / "validation", 1, 3, classes=("cyan",))
    shutil.copytree(other / "validation" / "cyan", other / "validation" / "black")
    return {"good": good, "one": one, "empty": empty, "other": other,
            "missing": root / "no-such-folder"}


PREFLIGHT = [
    # (id, data layout, flags, exit code, text of the error line)
    ("missing-data", "missing", {}, 1, "the data folder does not exist"),
    ("one-class", "one", {}, 1, "at least 2 class folders"),
    ("empty-class", "empty", {}, 1, "classes with no readable train images (received: black)"),
    ("other-classes", "other", {}, 1, "train/ and validation/ must hold the same classes"),
    ("freeze-name", "good", {"freeze": "conv_pw_1_relu"}, 2, "tiny_cnn has no layer named conv_pw_1_relu"),
    ("freeze-999", "good", {"freeze": "999"}, 2, "--freeze 999 is more than tiny_cnn's 12 layers"),
    ("image-size-4", "good", {"image_size": 4}, 1, "below tiny_cnn's minimum of 8 px"),
    ("unknown-backbone", "good", {"backbone": "resnet9000"}, 1, "unknown backbone"),
    ("missing-weights", "good", {"weights": "/nonexistent/w.h5"}, 1, "the weights file does not exist"),
    ("augment-foo", "good", {"augment": "flip,foo"}, 2, "--augment must be one of"),
    ("nothing-to-train", "good", {"epochs": 0, "fine_tune_epochs": 0}, 2, "nothing to train"),
    ("alpha-on-tiny", "good", {"alpha": 0.5}, 1, "tiny_cnn has no width multiplier"),
]


@pytest.mark.parametrize("layout, flags, code, text", [p[1:] for p in PREFLIGHT],
                         ids=[p[0] for p in PREFLIGHT])
def test_preflight_errors(layouts, tmp_path, layout, flags, code, text):
    """Bad data or flags: one `error:` line, exit 1 (2 for a flag error), no traceback, and
    no run folder made."""
    result = invoke(fit_args(layouts[layout], tmp_path / "runs", "x", **flags))
    assert_one_error_line(result, code, text)
    assert not (tmp_path / "runs" / "x").exists()


def test_negative_epochs_is_a_usage_error(layouts, tmp_path):
    """--epochs -1 is refused by the flag parser: exit 2, naming the flag."""
    result = invoke(fit_args(layouts["good"], tmp_path / "runs", "x", epochs=-1))
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "Invalid value for '--epochs'" in result.output
    assert "greater than or equal to 0" in result.output
    assert not (tmp_path / "runs").exists()


PREFLIGHT_NO_TF = textwrap.dedent("""
    import json, sys, time
    from typer.testing import CliRunner
    from retrain.cli import app
    out = []
    for args in json.loads(sys.argv[1]):
        start = time.monotonic()
        r = CliRunner().invoke(app, args)
        out.append([r.exit_code, r.stderr.strip(), time.monotonic() - start])
    out.append("tensorflow" in sys.modules)
    print(json.dumps(out))
""")


def test_preflight_errors_come_before_tensorflow(layouts, tmp_path):
    """The data, backbone-name, size, weights-path and flag errors are found before
    TensorFlow is even imported, so each takes well under a second."""
    cheap = [p for p in PREFLIGHT if not p[0].startswith("freeze")]
    argv = [fit_args(layouts[p[1]], tmp_path / "runs", "x", **p[2]) for p in cheap]
    done = subprocess.run([sys.executable, "-c", PREFLIGHT_NO_TF, json.dumps(argv)], capture_output=True,
                          text=True, env=subprocess_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    *results, tf_imported = json.loads(done.stdout)
    for (name, _, _, code, text), (exit_code, stderr, seconds) in zip(cheap, results):
        assert exit_code == code and text in stderr, (name, stderr)
        assert seconds < 2, (name, seconds)
    assert tf_imported is False


def test_weights_file_for_another_backbone(layouts, tmp_path, mobilenet_v2_035):
    """A weights file that does not fit the backbone: exit 1, one error line."""
    result = invoke(fit_args(layouts["good"], tmp_path / "runs", "x", backbone="mobilenet",
                             alpha=0.25, weights=str(mobilenet_v2_035)))
    assert_one_error_line(result, 1, "the weights file does not fit mobilenet")


def test_weights_file_for_another_backbone_leaves_no_run(layouts, tmp_path, mobilenet_v2_035):
    """...and leaves no run folder behind, so the same command with the right file (same
    --name) can start."""
    result = invoke(fit_args(layouts["good"], tmp_path / "runs", "x", backbone="mobilenet",
                             alpha=0.25, weights=str(mobilenet_v2_035)))
    assert result.exit_code == 1
    assert not (tmp_path / "runs" / "x").exists(), sorted(p.name for p in (tmp_path / "runs" / "x").iterdir())


def test_init_from_a_run_with_other_classes(trained, tmp_path):
    """--init-from a run whose head has another number of classes: exit 1, one error line
    (not a traceback), and no run folder left behind."""
    data = make_colour_data(tmp_path / "data", train=2, validation=1,
                            classes=("cyan", "magenta"))
    result = invoke(fit_args(data, tmp_path / "runs", "x", init_from=str(trained[0])))
    assert_one_error_line(result, 1, "--init-from holds weights of another model")
    assert not (tmp_path / "runs" / "x").exists()


# --- init-from, hub, backbones ---------------------------------------------------------------

def test_init_from_starts_ahead(trained, colours, tmp_path):
    """--init-from RUN: a new run that starts from RUN's best weights has a lower
    first-epoch loss than the fresh run (the trained run's own first epoch, same settings)."""
    run, _ = trained
    result = invoke(fit_args(colours, tmp_path / "runs", "warm", epochs=1, fine_tune_epochs=0,
                             init_from=str(run)))
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"initialised from {run / 'best'}" in result.stderr
    warm = read_history(tmp_path / "runs" / "warm")[0]["loss"]
    fresh = read_history(run)[0]["loss"]
    assert warm < 0.5 * fresh


@pytest.mark.slow
def test_hub_backbone_fine_tunes(tmp_path):
    """--backbone hub:<local SavedModel> trains end to end; with --freeze none phase 2 also
    trains the module's own variables, and the saved model.keras computes its features with
    the trained values."""
    kernel, bias = make_hub_module(tmp_path / "hub")
    data = make_colour_data(tmp_path / "data", train=6, validation=2)
    result = invoke(fit_args(data, tmp_path / "runs", "hub", backbone=f"hub:{tmp_path / 'hub'}",
                             epochs=1, fine_tune_epochs=2))
    assert result.exit_code == 0, (result.output, result.exception)
    assert "freeze: 0 of 2 backbone layers" in result.stderr
    assert "phase 1: 21 trainable parameters" in result.stderr  # head: 6 x 3 + 3
    assert "phase 2: 45 trainable parameters" in result.stderr  # + module: 3 x 6 + 6
    model = load_model(tmp_path / "runs" / "hub" / "model.keras")
    hub = model.get_layer("hub_backbone").get_layer("hub")
    trained = {w.path.split("/")[-1]: np.asarray(w) for w in hub.weights}
    assert set(trained) == {"kernel", "bias"}
    assert not np.allclose(trained["kernel"], kernel) and not np.allclose(trained["bias"], bias)
    images = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(hub(images)), hub_features(images, trained["kernel"], trained["bias"]),
                               rtol=1e-5, atol=1e-5)
    probs = np.asarray(model(images * 255))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_backbones_lists_the_registry():
    """`retrain backbones` lists every registry name with its native size and freeze points."""
    from retrain.backbones import REGISTRY

    result = invoke(["backbones"])
    assert result.exit_code == 0, (result.output, result.exception)
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["name", "native"]
    for spec in REGISTRY.values():
        row = next(line for line in lines if line.split()[0] == spec.name)
        assert row.split()[1:3] == [str(spec.native_size), str(spec.min_size)]
        assert row.endswith(", ".join(spec.freeze_points))
    assert lines[-1].startswith("hub:<handle-or-path>")


# --- kill -9 at named points (retrain/faultpoints.py; bench/faults.py tries them all) --------

KILL_POINTS = {"extract-batch": "extract-batch:1", "cache-file-written": "cache-file-written",
               "best-saved": "best-saved:2",
               "phase-switch": "phase-switch", "model-written": "model-written"}


@pytest.fixture(scope="module")
def killed_at_points(tmp_path_factory):
    """An uninterrupted cached two-phase run, and one run per kill point, each killed there
    by RETRAIN_KILL_AT (SIGKILL: no cleanup) and then resumed. -> {name: (run, resume log)}."""
    root = tmp_path_factory.mktemp("points")
    data = make_colour_data(root / "data", train=4, validation=3)
    runs = root / "runs"

    def args(name):
        return fit_args(data, runs, name, freeze="block1_out", epochs=2, fine_tune_epochs=2, batch_size=4,
                        cache_dir=root / f"cache-{name}")

    procs = {"ref": start_fit(args("ref"), root / "ref.log")}
    for name, point in KILL_POINTS.items():
        env = dict(subprocess_env(), RETRAIN_KILL_AT=point)
        with open(root / f"{name}.log", "ab") as log:
            procs[name] = subprocess.Popen([sys.executable, "-m", "retrain", *args(name)], stdout=log,
                                           stderr=subprocess.STDOUT, env=env)
    try:
        for name, proc in procs.items():
            assert proc.wait(300) == (0 if name == "ref" else -9), (root / f"{name}.log").read_text()
        resumed = {name: start_fit(["fit", "--resume", str(runs / name)], root / f"{name}.resume.log")
                   for name in KILL_POINTS}
        for name, proc in resumed.items():
            assert proc.wait(300) == 0, (root / f"{name}.resume.log").read_text()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    logs = {name: root / (f"{name}.resume.log" if name in KILL_POINTS else f"{name}.log") for name in procs}
    return {name: (runs / name, log.read_text()) for name, log in logs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(KILL_POINTS))
def test_kill_at_a_named_point_then_resume_equals_uninterrupted(killed_at_points, name):
    """Killed while the cache's rows are being written (a temporary of a dead process),
    after the cache file is renamed into place but before its pointer names it,
    after best/ is saved but before ckpt/, between the phases, and with the whole model in
    its temporary file: the resume ends with the uninterrupted run's history and weights,
    and leaves no temporary file behind."""
    run, log = killed_at_points[name]
    ref, _ = killed_at_points["ref"]
    assert "Traceback" not in log
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        np.testing.assert_allclose(column(run, key), column(ref, key), rtol=0, atol=1e-6, err_msg=key)
    for a, b in zip(model_weights(run / "model.keras"), model_weights(ref / "model.keras")):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    leftovers = [p for folder in (run, run.parent.parent / f"cache-{name}") for p in folder.rglob("*")
                 if ".tmp" in p.name or p.name.endswith(("_temp", ".creating"))]
    assert not leftovers
