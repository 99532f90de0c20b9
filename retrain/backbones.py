"""The backbone registry: name -> spec (builder, sizes, preprocessing, named freeze points).

Keras applications give the networks and their ImageNet weights; `hub:<handle-or-path>`
gives a TF Hub image feature-vector module wrapped in a Keras 3 layer (no tf_keras).
Specs are plain data, so listing them and checking flags needs no TensorFlow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from retrain.errors import BackboneError

HUB_PREFIX = "hub:"


@dataclass(frozen=True)
class BackboneSpec:
    """What `retrain` needs to know about a backbone before building it."""

    name: str
    builder: str  # keras.applications attribute, a retrain.networks builder, or "" for a hub module
    native_size: int
    min_size: int
    preprocessing: str  # "tf": to [-1, 1]; "unit": to [0, 1]; "caffe": BGR minus means; "none": its own
    alphas: tuple[float, ...] = ()  # width multipliers Keras has weights for; () = no --alpha
    freeze_points: tuple[str, ...] = ()  # block outputs, bottom to top: "--freeze NAME" freezes through NAME
    auto_points: tuple[str, str] | None = None  # (medium data, large data) for --freeze auto
    handle: str = ""  # hub handle or path
    from_scratch: bool = False  # no ImageNet weights: --weights none, the whole network trains at once
    channels_follow_data: bool = False  # 1 input channel for grayscale images (else always RGB)
    weights_file: str = ""  # --weights imagenet: this file name in ~/.keras/models/ (not from Keras)

    @property
    def is_hub(self) -> bool:
        return bool(self.handle)


REGISTRY: dict[str, BackboneSpec] = {spec.name: spec for spec in (
    BackboneSpec("inception_v3", "InceptionV3", 299, 75, "tf",
                 freeze_points=tuple(f"mixed{i}" for i in range(10)),
                 auto_points=("mixed8", "mixed4")),
    BackboneSpec("mobilenet", "MobileNet", 224, 32, "tf", alphas=(0.25, 0.5, 0.75, 1.0),
                 freeze_points=tuple(f"conv_pw_{i}_relu" for i in (1, 3, 5, 7, 9, 11, 12)),
                 auto_points=("conv_pw_11_relu", "conv_pw_5_relu")),
    BackboneSpec("mobilenet_v2", "MobileNetV2", 224, 32, "tf",
                 alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
                 freeze_points=("block_2_add", "block_5_add", "block_9_add", "block_12_add",
                                "block_15_add", "block_16_project_BN"),
                 auto_points=("block_12_add", "block_5_add")),
    BackboneSpec("mobilenet_v3_small", "MobileNetV3Small", 224, 32, "none", alphas=(0.75, 1.0),
                 freeze_points=("expanded_conv_2_add", "expanded_conv_4_add", "expanded_conv_5_add",
                                "expanded_conv_7_add", "expanded_conv_9_add", "expanded_conv_10_add"),
                 auto_points=("expanded_conv_7_add", "expanded_conv_2_add")),
    BackboneSpec("mobilenet_v3_large", "MobileNetV3Large", 224, 32, "none", alphas=(0.75, 1.0),
                 freeze_points=("expanded_conv_2_add", "expanded_conv_5_add", "expanded_conv_9_add",
                                "expanded_conv_11_add", "expanded_conv_13_add", "expanded_conv_14_add"),
                 auto_points=("expanded_conv_11_add", "expanded_conv_5_add")),
    BackboneSpec("efficientnet_b0", "EfficientNetB0", 224, 32, "none",
                 freeze_points=("block2b_add", "block3b_add", "block4c_add", "block5c_add",
                                "block6d_add"),
                 auto_points=("block5c_add", "block3b_add")),
    BackboneSpec("squeezenet", "squeezenet", 224, 32, "caffe",
                 freeze_points=tuple(f"fire{i}_concat" for i in range(2, 10)),
                 auto_points=("fire7_concat", "fire3_concat"),
                 weights_file="squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    # A small conv net (three conv-BN-ReLU blocks): for quick experiments and the test suite,
    # where it stands in for a pretrained backbone (two phases, freeze points).
    BackboneSpec("tiny_cnn", "tiny_cnn", 32, 8, "unit",
                 freeze_points=("block1_out", "block2_out"), auto_points=("block2_out", "block1_out")),
    # Compact networks for small images (Quick, Draw! doodles), trained from scratch.
    *(BackboneSpec(name, name, 28, size, "unit", from_scratch=True, channels_follow_data=True)
      for name, size in (("simple_cnn", 17), ("k1k3_cnn", 4), ("gap_cnn", 4), ("lenet5", 12))),
)}


def get_spec(name: str) -> BackboneSpec:
    """The spec for a registry name or `hub:<handle-or-path>`."""
    if name.startswith(HUB_PREFIX):
        handle = name[len(HUB_PREFIX):]
        if not handle:
            raise BackboneError("--backbone hub: needs a handle or a path", name,
                                "pass for example hub:/path/to/saved_model")
        return BackboneSpec(name, "", 224, 8, "unit", handle=handle)
    if name not in REGISTRY:
        raise BackboneError(f"unknown backbone; known: {', '.join(REGISTRY)}, hub:<handle>", name,
                            "run `retrain backbones` to list them")
    return REGISTRY[name]


def check_alpha(spec: BackboneSpec, alpha: float | None, weights: str) -> float | None:
    """The width multiplier to build with; refuses one the backbone (or its weights) lacks."""
    if alpha is None:
        return None
    if not spec.alphas:
        raise BackboneError(f"{spec.name} has no width multiplier", alpha, "drop --alpha")
    if weights == "imagenet" and alpha not in spec.alphas:
        raise BackboneError(f"{spec.name} has ImageNet weights only for --alpha "
                            f"{', '.join(map(str, spec.alphas))}", alpha,
                            "pick one of those, or pass --weights none")
    return alpha


def check_weights(spec: BackboneSpec, weights: str) -> None:
    """Refuse ImageNet weights a backbone does not have, before anything loads."""
    if weights != "imagenet" or spec.is_hub:
        return
    if spec.from_scratch or spec.builder == "tiny_cnn":
        raise BackboneError(f"{spec.name} has no ImageNet weights", weights,
                            "pass --weights none (it trains from scratch) or --weights PATH")
    if spec.weights_file:
        imagenet_file(spec)


def imagenet_file(spec: BackboneSpec) -> Path:
    """Where `--weights imagenet` finds a file Keras does not ship: Keras' own cache folder."""
    path = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models" / spec.weights_file
    if not path.is_file():
        raise BackboneError(f"{spec.name}'s ImageNet weights are not in Keras' cache folder", path,
                            f"put {spec.weights_file} there or pass --weights PATH to it")
    return path


def check_image_size(spec: BackboneSpec, image_size: int | None) -> int:
    """The image size to use: the native one by default, never below the minimum."""
    size = image_size or spec.native_size
    if size < spec.min_size:
        raise BackboneError(f"--image-size is below {spec.name}'s minimum of {spec.min_size} px",
                            size, f"pass --image-size {spec.min_size} or more")
    return size


# --freeze auto: the thresholds on the smallest class's training images.
AUTO_HEAD_ONLY_BELOW = 100  # fewer: fine-tuning would overfit; train the head on frozen features
AUTO_MOST_FROM = 1000  # this many or more: fine-tune most of the network


def auto_freeze(spec: BackboneSpec, min_per_class: int, weights: str = "imagenet") -> tuple[str, str]:
    """--freeze auto: from the smallest class's training images to a freeze point, and why.

    Few images: only the head trains on frozen features (fine-tuning would overfit them).
    More: the top block(s) fine-tune too. Many: most of the network fine-tunes, the stem
    and early blocks (generic edges and textures) stay frozen. Without pretrained weights
    nothing is worth freezing: a frozen random backbone only hides the images from the head.
    """
    if spec.from_scratch:
        return "none", f"{spec.name} trains from scratch: every layer trains from the first epoch"
    if weights == "none":
        return "none", "--weights none: no layer is pretrained, so every layer trains"
    if spec.auto_points is None:
        return "all", f"{spec.name} has no named blocks; the head trains on frozen features"
    medium, large = spec.auto_points
    if min_per_class < AUTO_HEAD_ONLY_BELOW:
        return "all", (f"smallest class has {min_per_class} training images (< {AUTO_HEAD_ONLY_BELOW}): "
                       "train the head only on frozen features")
    if min_per_class < AUTO_MOST_FROM:
        return medium, (f"smallest class has {min_per_class} training images "
                        f"({AUTO_HEAD_ONLY_BELOW}-{AUTO_MOST_FROM - 1}): fine-tune the top blocks, after {medium}")
    return large, (f"smallest class has {min_per_class} training images (>= {AUTO_MOST_FROM}): "
                   f"fine-tune most of the network, after {large}")
