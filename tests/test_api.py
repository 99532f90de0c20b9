"""The Python API (retrain/api.py): the README's example, on tiny solid-colour images."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from fit_fixtures import COLOURS, make_colour_data, noisy_colour, subprocess_env, write_png


def test_import_is_light():
    """`import retrain` offers the calls and configs without importing TensorFlow or Keras."""
    code = ("import sys, json, retrain; print(json.dumps([callable(retrain.fit), retrain.FitConfig().epochs, "
            "[m for m in ('tensorflow', 'keras') if m in sys.modules]]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                          timeout=60)
    assert json.loads(done.stdout) == [True, 10, []], done.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """retrain.fit on the colours with a progress function and a Keras callback."""
    import keras

    import retrain

    root = tmp_path_factory.mktemp("api")
    data = make_colour_data(root / "data", train=8, validation=4)
    progress, epochs_seen = [], []

    class Count(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            epochs_seen.append(epoch)

    result = retrain.fit(data, backbone="tiny_cnn", weights="none", freeze="none", image_size=32, epochs=2,
                         fine_tune_epochs=2, batch_size=8, learning_rate=0.05, fine_tune_learning_rate=0.01,
                         runs_dir=str(root / "runs"), name="api", augment=[], on_progress=progress.append,
                         callbacks=[Count()])
    return root, data, result, progress, epochs_seen


def test_fit_reports_progress_and_calls_keras_callbacks(trained):
    """on_progress gets dicts through both phases, the last at epoch 4 of 4 with eta 0; the
    caller's Keras callback sees every epoch; the result names the run and its best epoch."""
    root, _, result, progress, epochs_seen = trained
    assert result.run == root / "runs" / "api" and result.model_path.is_file()
    assert result.best is not None and 1 <= result.best.epoch <= 4
    assert epochs_seen == [0, 1, 2, 3]
    assert {p["phase"] for p in progress} == {1, 2}
    assert set(progress[0]) == {"phase", "epoch", "epochs", "step", "steps", "loss", "val_accuracy", "eta_s"}
    last = progress[-1]
    assert (last["phase"], last["epoch"], last["epochs"], last["step"], last["steps"], last["eta_s"]) == \
        (2, 4, 4, 3, 3, 0.0)
    assert last["val_accuracy"] is not None and last["loss"] is not None
    assert [p["epoch"] for p in progress] == sorted(p["epoch"] for p in progress)


def test_load_predict_evaluate_export(trained, tmp_path):
    """load gives a Keras model and its labels that classify the colours; predict and
    evaluate agree; export writes a SavedModel."""
    import retrain

    root, data, result, _, _ = trained
    model, labels = retrain.load(result.run)
    assert labels == tuple(sorted(COLOURS))
    rng = np.random.default_rng(7)
    images = np.stack([noisy_colour(COLOURS[name], rng) for name in labels]).astype("float32")
    assert list(np.argmax(np.asarray(model(images)), axis=1)) == [0, 1, 2]
    files = [write_png(tmp_path / f"{name}.png", image.astype("uint8")) for name, image in zip(labels, images)]
    predictions = retrain.predict(result.run, files, top_k=1)
    assert [p.top[0][0] for p in predictions] == list(labels)
    metrics = retrain.evaluate(result.run, split="validation").metrics
    assert metrics["accuracy"] >= 0.9
    path = retrain.export(result.run, output=str(tmp_path / "sm"))
    assert (path / "saved_model.pb").is_file()


def test_resume_through_the_api(trained):
    """fit(resume=RUN, fine_tune_epochs=3) continues the run by one epoch."""
    import retrain

    _, _, result, _, _ = trained
    again = retrain.fit(resume=result.run, fine_tune_epochs=3)
    assert again.run == result.run and again.epochs_done == 5


def test_the_library_reports_through_logging(trained, caplog):
    """Messages go to the `retrain` logger, which a caller can capture or silence."""
    import retrain

    _, _, result, _, _ = trained
    with caplog.at_level(logging.INFO, logger="retrain"):
        retrain.export(result.run, format="tflite")
    assert any(r.name == "retrain" and "exported tflite" in r.getMessage() for r in caplog.records)
