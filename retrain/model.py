"""Backbone + new head as one Keras model that takes raw 0-255 pixels; freezing.

BatchNorm stays in inference mode while frozen and while fine-tuning, as the Keras
transfer-learning guide wants. The guide gets it by calling the backbone with
`training=False`; we do that too, but Keras 3.15 lets the outer `fit`'s training=True
override a nested model's recorded training=False (keras-team/keras#20285), so `set_frozen`
also keeps every BatchNorm layer non-trainable, which in Keras 3 means inference mode.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import keras
import tensorflow as tf

from retrain import networks
from retrain.backbones import BackboneSpec, auto_freeze, check_weights, imagenet_file
from retrain.errors import BackboneError, ConfigError

@keras.saving.register_keras_serializable(package="retrain")
class HubFeatureVector(keras.layers.Layer):
    """A TF Hub image feature-vector module as a Keras 3 layer that tracks its variables.

    `hub.KerasLayer` needs tf_keras; this loads the module with `tensorflow_hub.load` and
    wraps each of its variables (the same objects, not copies) as Keras variables, as Keras'
    own TFSMLayer does, so they train, freeze and save with the model. Input: [0, 1] floats.
    """

    def __init__(self, handle: str, **kwargs):
        super().__init__(**kwargs)
        import tensorflow_hub as hub

        self.handle = handle
        try:
            self._module = hub.load(handle)
        except (OSError, ValueError, tf.errors.OpError) as err:
            raise BackboneError(f"cannot load the TF Hub module: {str(err).splitlines()[0]}", handle,
                                "pass a hub handle reachable from here or a local SavedModel folder") from None
        if not callable(self._module):
            raise BackboneError("the TF Hub module is not callable (not a TF2 feature-vector module)",
                                handle, "pass an image feature-vector module")
        variables, trainable = _module_variables(self._module)
        for v in variables:
            self._track_variable(keras.Variable(v, trainable=id(v) in trainable,
                                                name=v.name.split(":")[0].replace("/", "_")))
        try:
            self._takes_training = "training" in inspect.signature(self._module.__call__).parameters
        except (TypeError, ValueError):
            self._takes_training = False
        self._build_at_init()

    def call(self, images):
        # Always inference mode inside the module, as for Keras backbones (BatchNorm stays put).
        return self._module(images, training=False) if self._takes_training else self._module(images)

    def get_config(self):
        return {**super().get_config(), "handle": self.handle}


def _module_variables(module) -> tuple[list, set[int]]:
    """A hub module's variables and the ids of its trainable ones: its `variables` and
    `trainable_variables` attributes (the TF Hub convention), else those its function uses."""
    if hasattr(module, "variables"):
        variables = list(module.variables)
        return variables, {id(v) for v in getattr(module, "trainable_variables", variables)}
    found, trainable = {}, set()
    for concrete in getattr(module.__call__, "concrete_functions", ()):
        found.update((id(v), v) for v in concrete.variables)
        trainable.update(id(v) for v in concrete.trainable_variables)
    return list(found.values()), trainable


def build_backbone(spec: BackboneSpec, image_size: int, alpha: float | None, weights: str,
                   channels: int = 3) -> keras.Model:
    """The backbone without its top, with `weights` = imagenet, none or a .h5 file path."""
    if spec.is_hub:
        inputs = keras.Input((image_size, image_size, 3))
        return keras.Model(inputs, HubFeatureVector(spec.handle, name="hub")(inputs), name="hub_backbone")
    if spec.builder in networks.BUILDERS:
        model = networks.BUILDERS[spec.builder](image_size, channels)
        if weights == "imagenet":
            check_weights(spec, weights)
            weights = str(imagenet_file(spec))
    else:
        kwargs = {"include_top": False, "input_shape": (image_size, image_size, 3),
                  "weights": "imagenet" if weights == "imagenet" else None}
        if alpha is not None:
            kwargs["alpha"] = alpha
        try:
            model = getattr(keras.applications, spec.builder)(**kwargs)
        except Exception as err:  # noqa: BLE001 - Keras raises plain Exception when a download fails
            if weights != "imagenet":
                raise
            raise BackboneError(f"cannot get {spec.name}'s ImageNet weights: {str(err).splitlines()[0]}",
                                weights, "put Keras' weights file in ~/.keras/models/ or pass "
                                "--weights PATH to a .h5 file") from None
    if weights not in ("imagenet", "none"):
        load_weights_file(model, spec, Path(weights))
    return model


def load_weights_file(model: keras.Model, spec: BackboneSpec, path: Path) -> None:
    if spec.builder == "squeezenet":
        networks.load_squeezenet_h5(model, path)
        return
    try:
        model.load_weights(str(path))
    except (ValueError, OSError, KeyError) as err:
        raise BackboneError(f"the weights file does not fit {spec.name}: {str(err).splitlines()[0][:200]}",
                            path, "pass the weights file made for this backbone and --alpha") from None


@keras.saving.register_keras_serializable(package="retrain")
class CaffePreprocess(keras.layers.Layer):
    """RGB 0-255 -> BGR minus the ImageNet channel means: what Caffe-trained networks such as
    SqueezeNet expect (Keras' `preprocess_input` "caffe" mode, as a layer in the model)."""

    def call(self, images):
        return images[..., ::-1] - keras.ops.convert_to_tensor([103.939, 116.779, 123.68], images.dtype)


def preprocessing(spec: BackboneSpec) -> keras.layers.Layer | None:
    """The backbone's own input scaling, as a layer inside the model (so exports take 0-255)."""
    if spec.preprocessing == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1, name="preprocess")
    if spec.preprocessing == "unit":
        return keras.layers.Rescaling(1 / 255, name="preprocess")
    if spec.preprocessing == "caffe":
        return CaffePreprocess(name="preprocess")
    return None


def augmentation(names: tuple[str, ...], seed: int) -> keras.Sequential | None:
    """Random augmentations on 0-255 images, active in training only."""
    layers = {
        "flip": lambda: [keras.layers.RandomFlip("horizontal", seed=seed)],
        # A random crop of 80-100% of the image at a random place, resized back.
        "crop": lambda: [keras.layers.RandomZoom((-0.2, 0.0), seed=seed + 1, fill_mode="reflect"),
                         keras.layers.RandomTranslation(0.1, 0.1, seed=seed + 2, fill_mode="reflect")],
        "rotation": lambda: [keras.layers.RandomRotation(0.05, seed=seed + 3, fill_mode="reflect")],
        "brightness": lambda: [keras.layers.RandomBrightness(0.2, value_range=(0, 255), seed=seed + 4)],
        "contrast": lambda: [keras.layers.RandomContrast(0.2, seed=seed + 5)],
    }
    if not names:
        return None
    return keras.Sequential([layer for name in names for layer in layers[name]()], name="augment")


def build_classifier(spec: BackboneSpec, backbone: keras.Model, num_classes: int, image_size: int,
                     dropout_rate: float, augment: tuple[str, ...], seed: int) -> keras.Model:
    """Raw pixels -> [augment] -> preprocessing -> backbone (inference mode) -> pooled features
    -> dropout -> dense softmax. The input has the backbone's channels (1 for grayscale)."""
    inputs = keras.Input((image_size, image_size, backbone.input.shape[-1]), name="image")
    x = inputs
    for layer in (augmentation(augment, seed), preprocessing(spec)):
        if layer is not None:
            x = layer(x)
    x = backbone(x, training=False)
    # "features": what the head sees, and what the bottleneck cache stores in phase 1.
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    else:
        x = keras.layers.Identity(name="features")(x)
    x = keras.layers.Dropout(dropout_rate, seed=seed, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"retrain_{spec.name.replace(':', '_').replace('/', '_')}"[:60])


def feature_extractor(model: keras.Model, backbone: keras.Model, boundary: int | None) -> keras.Model:
    """Raw pixels -> what the frozen part outputs: the pooled features (boundary None), or the
    activations after backbone layer `boundary - 1`. Augmentation layers stay in, so a
    training-mode call makes augmented views."""
    if boundary is None:
        return keras.Model(model.input, model.get_layer("features").output, name="extract_features")
    bottom = keras.Model(backbone.input, backbone.layers[boundary - 1].output, name="backbone_bottom")
    inputs = keras.Input(model.input.shape[1:])
    x = inputs
    for name in ("augment", "preprocess"):
        if any(layer.name == name for layer in model.layers):
            x = model.get_layer(name)(x)
    return keras.Model(inputs, bottom(x, training=False), name=f"extract_{backbone.layers[boundary - 1].name}")


def trainable_top(model: keras.Model, backbone: keras.Model, boundary: int | None) -> keras.Model:
    """Cached activations -> probabilities, sharing its layers (and so its weights) with `model`.

    Raises ValueError when the network branches around the boundary (a skip connection
    crosses it), so no single tensor there determines the output.
    """
    if boundary is None:
        inputs = keras.Input(model.get_layer("features").output.shape[1:], name="features_in")
        x = inputs
    else:
        inputs, x = _features_above(model, backbone, boundary)
    x = model.get_layer("dropout")(x)
    return keras.Model(inputs, model.get_layer("predictions")(x), name="trainable_top")


def features_from_boundary(model: keras.Model, backbone: keras.Model, boundary: int) -> keras.Model:
    """Activations after backbone layer `boundary - 1` -> the pooled features, through the
    backbone's layers above it in inference mode (ValueError as for `trainable_top`)."""
    inputs, x = _features_above(model, backbone, boundary)
    return keras.Model(inputs, x, name="features_from_boundary")


def _features_above(model: keras.Model, backbone: keras.Model, boundary: int):
    upper = keras.Model(backbone.layers[boundary - 1].output, backbone.output, name="backbone_top")
    inputs = keras.Input(backbone.layers[boundary - 1].output.shape[1:], name="boundary_in")
    return inputs, model.get_layer("features")(upper(inputs, training=False))


def resolve_freeze(freeze: str, spec: BackboneSpec, layer_names: list[str],
                   min_per_class: int, weights: str = "imagenet") -> tuple[int, str]:
    """-> (how many backbone layers, in Keras order, stay frozen; why)."""
    why = ""
    if freeze == "auto":
        freeze, why = auto_freeze(spec, min_per_class, weights)
    total = len(layer_names)
    if freeze == "all":
        return total, why or "--freeze all: the head trains on frozen features"
    if freeze == "none":
        return 0, why or "--freeze none: the whole network trains"
    if freeze.isdigit():
        count = int(freeze)
        if count > total:
            raise ConfigError(f"--freeze {count} is more than {spec.name}'s {total} layers", count,
                              f"pass a count up to {total}, a layer name, all or none")
        return count, f"--freeze {count}: layers [0, {count}) frozen, training from {layer_names[count] if count < total else 'the head'}"
    if freeze in layer_names:
        count = layer_names.index(freeze) + 1
        return count, f"{why or '--freeze ' + freeze}: frozen through {freeze} (layers [0, {count}))"
    points = ", ".join(spec.freeze_points) or "none (use all, none or a count)"
    raise ConfigError(f"{spec.name} has no layer named {freeze}; its named freeze points: {points}",
                      freeze, "pass one of those, a layer count, all, none or auto")


def set_frozen(backbone: keras.Model, count: int) -> None:
    """Freeze backbone layers [0, count); the rest train. Recompile afterwards."""
    backbone.trainable = True  # resets every sub-layer; then freeze the bottom ones
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= count and not isinstance(layer, keras.layers.BatchNormalization)
    if count >= len(backbone.layers):
        backbone.trainable = False
