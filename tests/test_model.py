"""Library level: freeze points, freezing, BatchNorm in inference mode, pretrained weights."""

from __future__ import annotations

import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from fit_fixtures import subprocess_env
from retrain.backbones import get_spec
from retrain.errors import BackboneError, ConfigError

import keras  # noqa: E402
from retrain.backbones import AUTO_HEAD_ONLY_BELOW, AUTO_MOST_FROM  # noqa: E402
from retrain.model import build_backbone, build_classifier, resolve_freeze, set_frozen  # noqa: E402

TINY = get_spec("tiny_cnn")


@pytest.fixture(scope="module")
def tiny_names() -> list[str]:
    return [layer.name for layer in build_backbone(TINY, 32, None, "none").layers]


def test_tiny_cnn_layers(tiny_names):
    """tiny_cnn has 12 layers: an input and three conv-BN-ReLU blocks, pooled after the first two."""
    assert len(tiny_names) == 12
    assert tiny_names[1:4] == ["block1_conv", "block1_bn", "block1_out"]
    assert tiny_names[-1] == "block3_out"


@pytest.mark.parametrize("count", [0, 1, 5, 12])
def test_resolve_freeze_count(tiny_names, count):
    """--freeze N freezes exactly N layers, up to all of them."""
    assert resolve_freeze(str(count), TINY, tiny_names, 5)[0] == count


def test_resolve_freeze_count_above_layers(tiny_names):
    """A count above the backbone's layer count is a flag error naming the maximum."""
    with pytest.raises(ConfigError, match="more than tiny_cnn's 12 layers"):
        resolve_freeze("13", TINY, tiny_names, 5)


@pytest.mark.parametrize("name", ["block1_out", "block2_out", "block2_pool"])
def test_resolve_freeze_layer_name(tiny_names, name):
    """--freeze NAME freezes every layer up to and including NAME."""
    count, why = resolve_freeze(name, TINY, tiny_names, 5)
    assert count == tiny_names.index(name) + 1
    assert tiny_names[count - 1] == name
    assert name in why


def test_resolve_freeze_unknown_name(tiny_names):
    """An unknown layer name is a flag error listing the named freeze points."""
    with pytest.raises(ConfigError, match="no layer named block9_out.*block1_out, block2_out"):
        resolve_freeze("block9_out", TINY, tiny_names, 5)


def test_resolve_freeze_all_and_none(tiny_names):
    """all freezes every layer (head only); none freezes nothing."""
    assert resolve_freeze("all", TINY, tiny_names, 5)[0] == len(tiny_names)
    assert resolve_freeze("none", TINY, tiny_names, 5)[0] == 0


@pytest.mark.parametrize("smallest, expected", [
    (0, "all"),
    (AUTO_HEAD_ONLY_BELOW - 1, "all"),
    (AUTO_HEAD_ONLY_BELOW, "block2_out"),  # tiny_cnn's auto points: (medium, large)
    (AUTO_MOST_FROM - 1, "block2_out"),
    (AUTO_MOST_FROM, "block1_out"),
    (10 * AUTO_MOST_FROM, "block1_out"),
])
def test_resolve_freeze_auto_thresholds(tiny_names, smallest, expected):
    """auto: head only below AUTO_HEAD_ONLY_BELOW images in the smallest class, the medium
    point from there, the large point from AUTO_MOST_FROM on; the reason names the count."""
    count, why = resolve_freeze("auto", TINY, tiny_names, smallest)
    assert count == (len(tiny_names) if expected == "all" else tiny_names.index(expected) + 1)
    assert f"{smallest} training images" in why


@pytest.mark.parametrize("smallest", [5, 10 * AUTO_MOST_FROM])
def test_resolve_freeze_auto_without_pretrained_weights_trains_everything(tiny_names, smallest):
    """--weights none: a frozen random backbone would only hide the images from the head."""
    count, why = resolve_freeze("auto", TINY, tiny_names, smallest, weights="none")
    assert count == 0 and "--weights none" in why
    assert resolve_freeze("auto", TINY, tiny_names, smallest, weights="imagenet")[0] > 0


def test_resolve_freeze_auto_on_hub_is_head_only():
    """A hub module has no named blocks: auto trains the head only, whatever the data size."""
    spec = get_spec("hub:/nowhere")
    assert resolve_freeze("auto", spec, ["input", "hub"], 10 * AUTO_MOST_FROM)[0] == 2


@pytest.mark.parametrize("count", [0, 4, 8, 12])
def test_set_frozen_leaves_top_layers_trainable(count):
    """set_frozen(backbone, N): layers [0, N) frozen, [N, end) trainable but BatchNorm (kept
    in inference mode), and only the weights of the trainable layers are trainable."""
    backbone = build_backbone(TINY, 32, None, "none")
    set_frozen(backbone, 6)  # from another state first: set_frozen must reset, not accumulate
    set_frozen(backbone, count)
    assert [layer.trainable for layer in backbone.layers] == [
        i >= count and not layer.name.endswith("_bn") for i, layer in enumerate(backbone.layers)]
    assert any(layer.trainable for layer in backbone.layers) == (count < 12)
    expected = {id(w) for layer in backbone.layers[count:] for w in layer.trainable_weights}
    assert {id(w) for w in backbone.trainable_weights} == expected
    assert bool(backbone.trainable_weights) == (count < 9)  # layers 9+ are block3's conv, BN, ReLU


def _bn_stats_after_training(frozen: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Build a tiny_cnn classifier, freeze `frozen` backbone layers, run a training-mode call
    and one training step; -> (BatchNorm moving statistics before, after)."""
    backbone = build_backbone(TINY, 32, None, "none")
    model = build_classifier(TINY, backbone, 3, 32, 0.2, ("flip",), 0)
    set_frozen(backbone, frozen)
    bns = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 3
    read = lambda: [np.array(v) for bn in bns for v in (bn.moving_mean, bn.moving_variance)]  # noqa: E731
    before = read()
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    labels = np.eye(3, dtype="float32")[np.arange(8) % 3]
    model(images, training=True)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    model.train_on_batch(images, labels)
    return before, read()


def test_batchnorm_inference_mode_when_frozen():
    """Phase 1 (backbone frozen): training leaves the BatchNorm moving statistics alone."""
    before, after = _bn_stats_after_training(12)
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old, new)


def test_batchnorm_inference_mode_when_fine_tuning():
    """Phase 2 (backbone trainable, set_frozen(backbone, 0)): the backbone is called with
    training=False, so its BatchNorm layers stay in inference mode and their moving
    statistics do not change in a training-mode call or a training step (retrain/model.py's
    promise, after the Keras transfer-learning guide)."""
    before, after = _bn_stats_after_training(0)
    changed = [i for i, (old, new) in enumerate(zip(before, after)) if not np.array_equal(old, new)]
    assert changed == [], f"BatchNorm moving statistics changed while fine-tuning: {changed}"


def test_fine_tuning_changes_backbone_weights():
    """With set_frozen(backbone, 0) a training step does change the backbone's kernels."""
    backbone = build_backbone(TINY, 32, None, "none")
    model = build_classifier(TINY, backbone, 3, 32, 0.0, (), 0)
    set_frozen(backbone, 0)
    kernel = np.array(backbone.get_layer("block1_conv").kernel)
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    model.train_on_batch(images, np.eye(3, dtype="float32")[np.arange(8) % 3])
    assert not np.array_equal(kernel, np.array(backbone.get_layer("block1_conv").kernel))


def test_classifier_takes_raw_pixels():
    """The classifier's preprocessing is inside the model: 0-255 in, probabilities out."""
    backbone = build_backbone(TINY, 32, None, "none")
    model = build_classifier(TINY, backbone, 4, 32, 0.2, (), 0)
    assert model.get_layer("preprocess").scale == pytest.approx(1 / 255)
    probs = np.asarray(model(np.full((2, 32, 32, 3), 200.0, "float32")))
    assert probs.shape == (2, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def _h5_layers(path) -> list[tuple[str, list[np.ndarray]]]:
    """The legacy Keras h5 file's layers that hold weights, in order: (name, arrays)."""
    with h5py.File(path, "r") as f:
        found = []
        for name in (n.decode() for n in f.attrs["layer_names"]):
            weight_names = [w.decode() for w in f[name].attrs["weight_names"]]
            if weight_names:
                found.append((name, [np.asarray(f[name][w]) for w in weight_names]))
        return found


def test_weights_file_is_loaded(mobilenet_v2_035):
    """build_backbone with a .h5 path loads that file's tensors: every layer's weights
    equal the file's arrays (the legacy format matches layers by order), at 96 px."""
    backbone = build_backbone(get_spec("mobilenet_v2"), 96, 0.35, str(mobilenet_v2_035))
    layers = [layer for layer in backbone.layers if layer.weights]
    stored = _h5_layers(mobilenet_v2_035)
    assert len(layers) == len(stored) == 104
    assert (layers[0].name, stored[0][0]) == ("Conv1", "Conv1")
    assert (layers[-1].name, stored[-1][0]) == ("Conv_1_bn", "Conv_1_bn")
    for layer, (name, arrays) in zip(layers, stored):
        assert len(layer.weights) == len(arrays), name
        for weight, array in zip(layer.weights, arrays):
            np.testing.assert_array_equal(np.asarray(weight), array, err_msg=f"{layer.name} <- {name}")
    # Not the fresh initialisation: the file's first kernel is what the model holds.
    with h5py.File(mobilenet_v2_035, "r") as f:
        first = np.asarray(f["Conv1"]["Conv1/kernel:0"])
    np.testing.assert_array_equal(np.asarray(backbone.get_layer("Conv1").kernel), first)


def test_weights_file_of_another_backbone(mobilenet_v2_035):
    """A weights file made for another network is a BackboneError naming the backbone."""
    with pytest.raises(BackboneError, match="the weights file does not fit mobilenet"):
        build_backbone(get_spec("mobilenet"), 32, 0.25, str(mobilenet_v2_035))


def test_tiny_cnn_has_no_imagenet_weights():
    """weights=imagenet on tiny_cnn is refused."""
    with pytest.raises(BackboneError, match="tiny_cnn has no ImageNet weights"):
        build_backbone(TINY, 32, None, "imagenet")


@pytest.mark.slow
def test_inception_v3_freeze_points():
    """inception_v3 builds without weights at its minimum 75 px; --freeze mixed8 freezes
    249 layers and --freeze 250 freezes 250."""
    spec = get_spec("inception_v3")
    backbone = build_backbone(spec, spec.min_size, None, "none")
    names = [layer.name for layer in backbone.layers]
    assert backbone.output_shape == (None, 1, 1, 2048)
    assert all(point in names for point in spec.freeze_points)
    assert resolve_freeze("mixed8", spec, names, 0)[0] == 249
    assert names[248] == "mixed8"
    assert resolve_freeze("250", spec, names, 0)[0] == 250


IMAGENET_FROM_CACHE = """
import sys
import numpy as np
from retrain.backbones import get_spec
from retrain.model import build_backbone
spec = get_spec("mobilenet_v2")
cached = build_backbone(spec, 224, 0.35, "imagenet")
from_file = build_backbone(spec, 224, 0.35, sys.argv[1])
fresh = build_backbone(spec, 224, 0.35, "none")
a, b, c = cached.get_weights(), from_file.get_weights(), fresh.get_weights()
assert len(a) == len(b) == 260, len(a)
assert all(np.array_equal(x, y) for x, y in zip(a, b)), "cached weights differ from the file's"
assert not all(np.array_equal(x, z) for x, z in zip(a, c)), "imagenet gave fresh weights"
print("ok")
"""


@pytest.mark.slow
def test_imagenet_weights_from_keras_cache_offline(tmp_path, mobilenet_v2_035):
    """weights=imagenet uses Keras' cache ($KERAS_HOME/models/<Keras' file name>) without
    the network; the weights equal those loaded from the file's path. (KERAS_HOME is read
    when Keras is imported, so this runs in a new process; a dead proxy blocks downloads.)"""
    home = tmp_path / "keras_home"
    (home / "models").mkdir(parents=True)
    shutil.copy(mobilenet_v2_035, home / "models" / mobilenet_v2_035.name)
    env = dict(subprocess_env(), KERAS_HOME=str(home), http_proxy="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9")
    done = subprocess.run([sys.executable, "-c", IMAGENET_FROM_CACHE, str(mobilenet_v2_035)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
    assert sorted(p.name for p in (home / "models").iterdir()) == [mobilenet_v2_035.name]


@pytest.mark.slow
def test_imagenet_weights_missing_from_cache_offline(tmp_path):
    """Without the cached file and without a network, weights=imagenet is one BackboneError
    saying how to get the weights, not a Keras traceback."""
    env = dict(subprocess_env(), KERAS_HOME=str(tmp_path / "empty_home"),
               http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    code = ("from retrain.backbones import get_spec\n"
            "from retrain.errors import BackboneError\n"
            "from retrain.model import build_backbone\n"
            "try:\n"
            "    build_backbone(get_spec('mobilenet_v2'), 96, 0.35, 'imagenet')\n"
            "except BackboneError as err:\n"
            "    print(err)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cannot get mobilenet_v2's ImageNet weights" in done.stdout
    assert "--weights PATH" in done.stdout
