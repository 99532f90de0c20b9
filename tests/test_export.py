"""`retrain export` end to end: SavedModel on encoded images (a TF Serving REST request) and
on uint8 pixels, TFLite float32 and full-integer int8, each checked against the Keras model
or `retrain predict`."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
    """The SavedModel's `pixels` signature takes uint8 [None, 32, 32, 3] and returns the Keras
    model's probabilities within 1e-4; `serving_default` takes a tf.string batch; labels.txt
    sits beside saved_model.pb; a second export to the same place replaces the first."""
    import tensorflow as tf

    from retrain.runs import load_model

    out = tmp_path / "sm"
    assert export(run, "savedmodel", "--output", str(out)) == out
    assert (out / "saved_model.pb").is_file()
    assert (out / "labels.txt").read_text().splitlines() == list(LABELS)
    saved = tf.saved_model.load(str(out))
    assert sorted(saved.signatures) == ["pixels", "serving_default"]
    spec = saved.signatures["serving_default"].structured_input_signature[1]["image_bytes"]
    assert spec.dtype == tf.string and spec.shape.as_list() == [None]
    serve = saved.signatures["pixels"]
    spec = serve.structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 32, 32, 3]
    pixels = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    probs = serve(images=tf.constant(pixels))["probabilities"].numpy()
    expected = np.asarray(load_model(run, "best").model(pixels.astype(np.float32), training=False))
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    assert export(run, "savedmodel", "--output", str(out)) == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sm"]


@pytest.fixture(scope="module")
def savedmodel(run, tmp_path_factory) -> Path:
    return export(run, "savedmodel", "--output", str(tmp_path_factory.mktemp("export") / "sm"))


@pytest.fixture(scope="module")
def encoded(run, tmp_path_factory) -> dict[str, Path]:
    """One PNG of each class from the run's test/ folder, and the first one's pixels again as
    a JPEG, a GIF, a BMP and a PNG of another size (47 x 29 instead of 32 x 32)."""
    test = Path(json.loads((run / "config.json").read_text())["data"]) / "test"
    files = {f"{label}.png": sorted((test / label).glob("*.png"))[0] for label in LABELS}
    folder = tmp_path_factory.mktemp("encoded")
    first = Image.open(files[f"{LABELS[0]}.png"]).convert("RGB")
    for name, image in ((f"{LABELS[0]}.jpg", first), (f"{LABELS[0]}.gif", first),
                        (f"{LABELS[0]}.bmp", first), (f"{LABELS[0]}-47x29.png", first.resize((47, 29)))):
        files[name] = folder / name
        image.save(files[name])
    return files


def tf_serving_images(body: str) -> list[bytes]:
    """What TF Serving hands a one-input signature for a row-form request: each instance's
    standard base64, `{"b64": ...}` or named `{"image_bytes": {"b64": ...}}`, decoded."""
    instances = json.loads(body)["instances"]
    return [base64.b64decode(i.get("image_bytes", i)["b64"], validate=True) for i in instances]


def predicted_probabilities(run: Path, files: list[Path]) -> np.ndarray:
    """`retrain.predict`'s probabilities of every label, [files, labels] in labels.txt order."""
    import retrain

    rows = np.zeros((len(files), len(LABELS)), np.float32)
    for row, prediction in zip(rows, retrain.predict(run, files, top_k=len(LABELS))):
        assert prediction.error is None, prediction.error
        for label, probability in prediction.top:
            row[LABELS.index(label)] = probability
    return rows


def test_savedmodel_answers_a_tf_serving_b64_request(run, savedmodel, encoded):
    """A TF Serving REST body `{"signature_name": "serving_default", "instances": [{"b64": ...}]}`
    of PNG, JPEG, GIF and BMP files (one not the run's size), decoded as TF Serving decodes it,
    goes straight into `serving_default`: the top label is predict's for every file; the
    probabilities are predict's within 1e-4 for the lossless files (PNG, GIF, BMP; the JPEG is
    decoded by two libraries); `scores` are the top probabilities, sorted; `classes` their labels."""
    import tensorflow as tf

    paths = list(encoded.values())
    body = json.dumps({"signature_name": "serving_default",
                       "instances": [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in paths]})
    batch = tf.constant(tf_serving_images(body), tf.string)
    out = tf.saved_model.load(str(savedmodel)).signatures[json.loads(body)["signature_name"]](image_bytes=batch)
    assert sorted(out) == ["classes", "probabilities", "scores"]
    probs, scores = out["probabilities"].numpy(), out["scores"].numpy()
    classes = out["classes"].numpy().astype(str)
    k = min(5, len(LABELS))
    assert probs.shape == (len(paths), len(LABELS)) and probs.dtype == np.float32
    assert classes.shape == scores.shape == (len(paths), k) and scores.dtype == np.float32
    labels = (savedmodel / "labels.txt").read_text().splitlines()
    assert set(classes.ravel()) <= set(labels)

    expected = predicted_probabilities(run, paths)
    top = [labels[i] for i in expected.argmax(1)]
    assert list(classes[:, 0]) == top
    assert top[:len(LABELS)] == list(LABELS)  # the toy's colours are told apart
    lossless = [i for i, p in enumerate(paths) if p.suffix != ".jpg"]
    np.testing.assert_allclose(probs[lossless], expected[lossless], atol=1e-4)
    assert np.all(np.diff(scores, axis=1) <= 0)
    np.testing.assert_allclose(scores, np.sort(probs, axis=1)[:, ::-1][:, :k], rtol=0, atol=0)
    for row, names, values in zip(probs, classes, scores):
        np.testing.assert_array_equal(row[[labels.index(n) for n in names]], values)


def test_savedmodel_pixels_agrees_with_serving_default(savedmodel, encoded):
    """The `pixels` signature on the 32 x 32 files' uint8 pixels gives what `serving_default`
    gives on their bytes: the same outputs, probabilities within 1e-5."""
    import tensorflow as tf

    paths = [p for p in encoded.values() if p.suffix == ".png" and Image.open(p).size == (32, 32)]
    saved = tf.saved_model.load(str(savedmodel))
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    from_pixels = saved.signatures["pixels"](images=tf.constant(pixels, tf.uint8))
    from_bytes = saved.signatures["serving_default"](image_bytes=tf.constant([p.read_bytes() for p in paths]))
    assert sorted(from_pixels) == sorted(from_bytes) == ["classes", "probabilities", "scores"]
    np.testing.assert_allclose(from_pixels["probabilities"], from_bytes["probabilities"], atol=1e-5)
    np.testing.assert_allclose(from_pixels["scores"], from_bytes["scores"], atol=1e-5)
    np.testing.assert_array_equal(from_pixels["classes"], from_bytes["classes"])


def test_tf_serving_named_b64_form_decodes_to_the_same_bytes(encoded):
    """`{"image_bytes": {"b64": ...}}` (the input named) and `{"b64": ...}` give the same raw
    bytes, the file's own: what the graph receives either way."""
    raw = [p.read_bytes() for p in encoded.values()]
    b64 = [base64.b64encode(r).decode() for r in raw]
    bare = json.dumps({"instances": [{"b64": b} for b in b64]})
    named = json.dumps({"instances": [{"image_bytes": {"b64": b}} for b in b64]})
    assert tf_serving_images(bare) == tf_serving_images(named) == raw


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
