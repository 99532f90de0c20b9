"""The networks retrain defines: compact CNNs for doodles (grayscale, from scratch) and
SqueezeNet v1.1 with the real Keras-1 weights file (the `real_file` fixture)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from fit_fixtures import assert_one_error_line, column, fit_args, invoke, write_png

from retrain.backbones import get_spec
from retrain.model import build_backbone, build_classifier

SQUEEZENET_NAME = "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5"
SQUEEZENET_MD5 = "80b66c92d79d4310e07fb60a297bf0d1"


@pytest.fixture
def squeezenet_file(real_file):
    """The real SqueezeNet v1.1 no-top file (Keras 1 layout)."""
    return real_file(f"weights/{SQUEEZENET_NAME}")


def _full_params(name: str, classes: int = 345) -> int:
    spec = get_spec(name)
    backbone = build_backbone(spec, 28, None, "none", channels=1)
    return build_classifier(spec, backbone, classes, 28, 0.2, (), 0).count_params()


@pytest.mark.parametrize("name,expected", [("simple_cnn", 96_217), ("gap_cnn", 35_577),
                                           ("k1k3_cnn", 102_377), ("lenet5", 90_181)])
def test_compact_networks_at_28px_grayscale_with_345_classes(name, expected):
    """The shapes the README states: simple_cnn about 0.1M, gap_cnn about 36k parameters."""
    assert _full_params(name) == expected


def test_squeezenet_loads_the_keras1_file_by_layer_name(squeezenet_file):
    """Every conv kernel and bias of the model equals the file's tensor of the same layer."""
    import h5py

    path = squeezenet_file
    assert hashlib.md5(path.read_bytes()).hexdigest() == SQUEEZENET_MD5
    model = build_backbone(get_spec("squeezenet"), 64, None, str(path))
    assert model.count_params() == 722_496
    checked = 0
    with h5py.File(path, "r") as f:
        for layer in model.layers:
            if not layer.weights:
                continue
            group = f[layer.name.replace("_", "/", 1)]
            tensors = {}
            group.visititems(lambda n, o: tensors.__setitem__(len(o.shape), o[()]) if hasattr(o, "shape") else None)
            kernel, bias = (w.numpy() for w in layer.weights)
            np.testing.assert_array_equal(kernel, tensors[4])
            np.testing.assert_array_equal(bias, tensors[1])
            checked += 1
    assert checked == 1 + 8 * 3  # conv1 and three convolutions in each of 8 Fire modules


def test_squeezenet_refuses_another_networks_file(tmp_path, mobilenet_v2_035):
    from retrain.errors import BackboneError

    with pytest.raises(BackboneError, match="does not fit squeezenet"):
        build_backbone(get_spec("squeezenet"), 64, None, str(mobilenet_v2_035))


def test_caffe_preprocessing_matches_keras():
    import keras

    from retrain.model import preprocessing

    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    ours = np.asarray(preprocessing(get_spec("squeezenet"))(images))
    theirs = keras.applications.imagenet_utils.preprocess_input(images.copy(), mode="caffe")
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_squeezenet_imagenet_weights_come_from_keras_cache(tmp_path, monkeypatch, squeezenet_file):
    """--weights imagenet finds the file in Keras' cache folder, or says where to put it."""
    data = tmp_path / "data"
    for side, n in (("train", 4), ("validation", 2)):
        for c, value in (("dark", 30), ("light", 220)):
            for i in range(n):
                write_png(data / side / c / f"{i}.png", np.full((40, 40, 3), value + i, np.uint8))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    args = fit_args(data, tmp_path / "runs", "sq", backbone="squeezenet", weights="imagenet", image_size=40,
                    freeze="all", epochs=1, fine_tune_epochs=0)
    assert_one_error_line(invoke(args), 1, SQUEEZENET_NAME,
                          str(tmp_path / "keras" / "models"))
    (tmp_path / "keras" / "models").mkdir(parents=True)
    (tmp_path / "keras" / "models" / SQUEEZENET_NAME).symlink_to(squeezenet_file)
    result = invoke(args)
    assert result.exit_code == 0, result.output


def _doodles(root, per_class: dict[str, int], seed: int = 0):
    """28 px grayscale (mode L) images: a bright bar, horizontal or vertical, on black."""
    rng = np.random.default_rng(seed)
    for side, n in per_class.items():
        for label in ("horizontal", "vertical"):
            for i in range(n):
                pixels = rng.integers(0, 40, (28, 28)).astype(np.uint8)
                at = rng.integers(6, 20)
                if label == "horizontal":
                    pixels[at:at + 4, 4:24] = 255
                else:
                    pixels[4:24, at:at + 4] = 255
                write_png(root / side / label / f"{i}.png", pixels)
    return root


@pytest.mark.parametrize("backbone", ["simple_cnn", "gap_cnn", "k1k3_cnn", "lenet5"])
def test_compact_network_trains_from_scratch_on_grayscale(tmp_path, backbone):
    """One input channel (the doodles stay grayscale), freeze auto = none, one phase of
    --epochs over the whole network, and the bars are told apart."""
    data = _doodles(tmp_path / "data", {"train": 24, "validation": 8})
    run = tmp_path / "runs" / backbone
    result = invoke(fit_args(data, tmp_path / "runs", backbone, backbone=backbone, image_size=None,
                             freeze="auto", epochs=8, fine_tune_epochs=3, batch_size=8, learning_rate=0.003))
    assert result.exit_code == 0, result.output
    facts = json.loads((run / "run.json").read_text())
    assert (facts["channels"], facts["freeze_layers"], facts["image_size"]) == (1, 0, 28)
    assert "trains from scratch" in facts["freeze_reason"]
    assert len(column(run, "val_accuracy")) == 8  # no second phase
    assert column(run, "val_accuracy").max() >= 0.9
    from fit_fixtures import load_model

    assert tuple(load_model(run / "model.keras").input.shape) == (None, 28, 28, 1)


def test_compact_network_refuses_imagenet_weights(tmp_path):
    data = _doodles(tmp_path / "data", {"train": 2, "validation": 1})
    result = invoke(fit_args(data, tmp_path / "runs", "x", backbone="simple_cnn", weights="imagenet",
                             image_size=None))
    assert_one_error_line(result, 1, "simple_cnn has no ImageNet weights", "--weights none")
    assert not (tmp_path / "runs" / "x").exists()


def test_squeezenet_fine_tunes_with_photo_augmentations(tmp_path, squeezenet_file):
    """From the real ImageNet file, flips, crops and brightness, freeze at a Fire module:
    both phases run, the frozen Fire modules keep the file's weights."""
    from fit_fixtures import load_model, make_colour_data

    from retrain.networks import squeezenet_kernels

    data = make_colour_data(tmp_path / "data", train=6, validation=3)
    run = tmp_path / "runs" / "sq"
    result = invoke(fit_args(data, tmp_path / "runs", "sq", backbone="squeezenet",
                             weights=str(squeezenet_file), image_size=48,
                             freeze="fire8_concat", augment="flip,crop,brightness", epochs=1,
                             fine_tune_epochs=1, learning_rate=0.001, fine_tune_learning_rate=0.0001))
    assert result.exit_code == 0, result.output
    assert len(column(run, "val_accuracy")) == 2
    backbone = load_model(run / "model.keras").get_layer("squeezenet")
    kernels = squeezenet_kernels(squeezenet_file)
    np.testing.assert_array_equal(backbone.get_layer("fire8_expand3x3").kernel.numpy(), kernels["fire8_expand3x3"])
    assert not np.array_equal(backbone.get_layer("fire9_expand3x3").kernel.numpy(), kernels["fire9_expand3x3"])


def test_grayscale_run_evaluates_predicts_and_exports(tmp_path):
    """A one-channel run through the after-fit commands: evaluate on its test split, predict
    on an RGB image (made grayscale as in training), SavedModel and int8 TFLite exports that
    take one channel."""
    import tensorflow as tf
    from PIL import Image

    data = _doodles(tmp_path / "data", {"train": 24, "validation": 8, "test": 8})
    run = tmp_path / "runs" / "g"
    result = invoke(fit_args(data, tmp_path / "runs", "g", backbone="gap_cnn", image_size=None, freeze="auto",
                             epochs=8, batch_size=8, learning_rate=0.003))
    assert result.exit_code == 0, result.output
    result = invoke(["evaluate", str(run)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9
    rgb = tmp_path / "bar.png"
    Image.open(data / "test" / "vertical" / "0.png").convert("RGB").save(rgb)
    result = invoke(["predict", str(run), str(rgb), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["predictions"][0]["label"] == "vertical"
    assert invoke(["export", str(run), "--format", "savedmodel", "--output", str(tmp_path / "sm")]).exit_code == 0
    served = tf.saved_model.load(str(tmp_path / "sm")).signatures["pixels"]
    assert served.structured_input_signature[1]["images"].shape.as_list() == [None, 28, 28, 1]
    result = invoke(["export", str(run), "--format", "tflite-int8", "--output", str(tmp_path / "m.tflite")])
    assert result.exit_code == 0, result.output
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tmp_path / "m.tflite"))
    assert list(interpreter.get_input_details()[0]["shape"]) == [1, 28, 28, 1]
