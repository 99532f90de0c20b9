"""`retrain export` end to end: SavedModel on uint8 pixels, TFLite float32 and full-integer
int8, each evaluated beside the Keras model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fit_fixtures import assert_one_error_line, invoke
from run_fixtures import LABELS, PER_SPLIT, trained_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory)


def export(run: Path, fmt: str, *flags: str) -> Path:
    result = invoke(["export", str(run), "--format", fmt, *flags])
    assert result.exit_code == 0, (result.output, result.exception)
    return Path(result.stdout.strip().splitlines()[-1])


def test_savedmodel_takes_uint8_and_matches_keras(run, tmp_path):
    """The SavedModel's serving signature takes uint8 [None, 32, 32, 3] and returns the Keras
    model's probabilities within 1e-4; labels.txt sits beside saved_model.pb; a second export
    to the same place replaces the first."""
    import tensorflow as tf

    from retrain.runs import load_model

    out = tmp_path / "sm"
    assert export(run, "savedmodel", "--output", str(out)) == out
    assert (out / "saved_model.pb").is_file()
    assert (out / "labels.txt").read_text().splitlines() == list(LABELS)
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    spec = serve.structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 32, 32, 3]
    pixels = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    probs = serve(images=tf.constant(pixels))["probabilities"].numpy()
    expected = np.asarray(load_model(run, "best").model(pixels.astype(np.float32), training=False))
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    assert export(run, "savedmodel", "--output", str(out)) == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sm"]


def test_tflite_float_and_int8_against_keras(run):
    """Both TFLite models evaluated beside the Keras model on the toy's test split: float32
    matches it exactly; the int8 model (uint8 raw pixels in with scale 1, uint8 out, no float
    tensor inside) stays within a point of it, as the issue's target asks of CIFAR-10."""
    from retrain.exports import TFLiteClassifier

    float_path = export(run, "tflite")
    int8_path = export(run, "tflite-int8", "--representative-images", "20")
    assert (float_path.name, int8_path.name) == ("model-float32.tflite", "model-int8.tflite")
    assert (run / "export" / "labels.txt").read_text().splitlines() == list(LABELS)
    int8 = TFLiteClassifier(int8_path)
    assert int8.input["dtype"] == np.uint8 and int8.input["quantization"] == (1.0, 0)
    assert int8.output["dtype"] == np.uint8
    assert {t["dtype"] for t in int8.interpreter.get_tensor_details()} <= {np.uint8, np.int8, np.int32}
    assert float_path.stat().st_size > 1.5 * int8_path.stat().st_size
    scores = {}
    for path in (float_path, int8_path):
        result = invoke(["evaluate", str(run), "--model", str(path)])
        assert result.exit_code == 0, (result.output, result.exception)
        assert path.name in result.stdout and "keras" in result.stdout
        scores[path.name] = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    keras_accuracy = scores["model-float32.tflite"]["accuracy"]
    flt, q = scores["model-float32.tflite"]["tflite"], scores["model-int8.tflite"]["tflite"]
    assert flt["images"] == q["images"] == PER_SPLIT["test"] * len(LABELS)
    assert flt["accuracy"] == keras_accuracy and flt["agreement"] == 1.0
    assert abs(q["accuracy"] - keras_accuracy) <= 0.01 and q["agreement"] >= 0.95


def test_export_errors(run, tmp_path):
    """A bad format is a usage error; a TFLite --output without .tflite too; int8 without the
    training data says so before any model loads."""
    result = invoke(["export", str(run), "--format", "onnx"])
    assert result.exit_code == 2
    assert_one_error_line(invoke(["export", str(run), "--format", "tflite", "--output", str(tmp_path / "m")]),
                          2, "must end in .tflite")
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("config.json", "labels.txt", "run.json"):
        (copy / name).write_bytes((run / name).read_bytes())
    config = json.loads((copy / "config.json").read_text())
    config["data"] = str(tmp_path / "gone")
    (copy / "config.json").write_text(json.dumps(config))
    assert_one_error_line(invoke(["export", str(copy), "--format", "tflite-int8"]), 1,
                          "data folder does not exist")
    assert_one_error_line(invoke(["export", str(copy), "--format", "tflite"]), 1, "no best checkpoint")


def test_export_replaces_only_its_own_output(run, tmp_path):
    """--output naming a folder or file retrain did not export is refused in one line and left
    as it was (export once wiped `--output ~/models`); an earlier export is replaced, and its
    marker says so. A TFLite export beside a user's labels.txt is refused too."""
    mine = tmp_path / "models"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    assert_one_error_line(invoke(["export", str(run), "--output", str(mine)]), 2,
                          "existing folder that retrain did not export", str(mine))
    assert [p.name for p in mine.iterdir()] == ["keep.txt"]
    model = tmp_path / "model.tflite"
    model.write_bytes(b"a user's model")
    assert_one_error_line(invoke(["export", str(run), "--format", "tflite", "--output", str(model)]), 2,
                          "existing file")
    assert model.read_bytes() == b"a user's model"
    (tmp_path / "beside").mkdir()
    (tmp_path / "beside" / "labels.txt").write_text("a user's labels")
    assert_one_error_line(invoke(["export", str(run), "--format", "tflite", "--output",
                                  str(tmp_path / "beside" / "m.tflite")]), 2, "labels.txt")
    assert (tmp_path / "beside" / "labels.txt").read_text() == "a user's labels"
    assert not (tmp_path / "beside" / "m.tflite").exists()

    first = export(run, "tflite", "--output", str(tmp_path / "out" / "m.tflite"))
    again = export(run, "tflite", "--output", str(first))
    assert again == first and (tmp_path / "out" / ".m.tflite.retrain-export").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == ["labels.txt", "m.tflite"]
    sm = export(run, "savedmodel", "--output", str(tmp_path / "sm2"))
    assert (sm / ".retrain-export").is_file()
    export(run, "savedmodel", "--output", str(sm))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".old"))]
