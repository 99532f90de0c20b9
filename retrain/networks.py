"""Networks retrain defines itself (Keras has none of them): tiny_cnn, compact CNNs for small
images trained from scratch, and SqueezeNet v1.1 with its old Keras-1 ImageNet weights file.

Each builder returns a headless backbone, `(size, size, channels) -> features`; the classifier
adds pooling (for 4-D outputs), dropout and the softmax layer, as for Keras' applications.
Shapes follow the papers; where a paper leaves room, the choice is written at the builder.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from retrain.errors import BackboneError

layers = keras.layers


def tiny_cnn(size: int, channels: int) -> keras.Model:
    """Three conv-BN-ReLU blocks: for quick experiments and the test suite."""
    inputs = keras.Input((size, size, channels))
    x = inputs
    for i, filters in enumerate((8, 16, 32), 1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        x = layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = layers.ReLU(name=f"block{i}_out")(x)
        if i < 3:
            x = layers.MaxPooling2D(name=f"block{i}_pool")(x)
    return keras.Model(inputs, x, name="tiny_cnn")


def simple_cnn(size: int, channels: int) -> keras.Model:
    """conv 32, pool, conv 64, pool, dense 128 (the Quick, Draw! tutorials' network). 3x3
    valid convolutions and 3x3 pools of stride 3 leave 2x2x64 at 28 px, so with 345 classes
    it has about 96k parameters (2x2 pools would give 268k)."""
    inputs = keras.Input((size, size, channels))
    x = layers.Conv2D(32, 3, activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(3, name="pool1")(x)
    x = layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(3, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="dense")(x)
    return keras.Model(inputs, x, name="simple_cnn")


def k1k3_cnn(size: int, channels: int) -> keras.Model:
    """Blocks of a 1x1 convolution (mixing channels cheaply) then a 3x3 one (space), as in
    Network in Network and SqueezeNet's squeeze/expand; pooled by the head."""
    inputs = keras.Input((size, size, channels))
    x = inputs
    for i, (mix, filters) in enumerate(((16, 32), (32, 64), (48, 96)), 1):
        x = layers.Conv2D(mix, 1, activation="relu", name=f"block{i}_1x1")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"block{i}_3x3")(x)
        if i < 3:
            x = layers.MaxPooling2D(name=f"block{i}_pool")(x)
    return keras.Model(inputs, x, name="k1k3_cnn")


def gap_cnn(size: int, channels: int) -> keras.Model:
    """Network in Network's idea: no dense layers, global average pooling of the last
    feature maps. The head's GAP then softmax layer is the paper's 1x1 convolution to the
    classes followed by GAP (both linear, so they commute): about 36k parameters at 345 classes."""
    inputs = keras.Input((size, size, channels))
    x = inputs
    for i, filters in enumerate((16, 32, 48), 1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        if i < 3:
            x = layers.MaxPooling2D(name=f"pool{i}")(x)
    return keras.Model(inputs, x, name="gap_cnn")


def lenet5(size: int, channels: int) -> keras.Model:
    """LeCun et al. 1998: C1 conv 5x5 6, S2 average pool, C3 conv 5x5 16, S4 average pool,
    C5 120, F6 84, tanh throughout. 28 px inputs are padded in C1 ("same") to keep the
    paper's 32 px geometry; C3 is fully connected to S2 (the paper's sparse table is not used)."""
    inputs = keras.Input((size, size, channels))
    x = layers.Conv2D(6, 5, padding="same", activation="tanh", name="c1")(inputs)
    x = layers.AveragePooling2D(2, name="s2")(x)
    x = layers.Conv2D(16, 5, activation="tanh", name="c3")(x)
    x = layers.AveragePooling2D(2, name="s4")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(120, activation="tanh", name="c5")(x)
    x = layers.Dense(84, activation="tanh", name="f6")(x)
    return keras.Model(inputs, x, name="lenet5")


# --- SqueezeNet v1.1 ---------------------------------------------------------------------------

SQUEEZENET_FIRES = ((2, 16, 64), (3, 16, 64), (4, 32, 128), (5, 32, 128),
                    (6, 48, 192), (7, 48, 192), (8, 64, 256), (9, 64, 256))
SQUEEZENET_FILE = "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5"


def _fire(x, number: int, squeeze: int, expand: int):
    """Fire module: squeeze 1x1, then expand 1x1 and 3x3 side by side, concatenated."""
    name = f"fire{number}"
    x = layers.Conv2D(squeeze, 1, activation="relu", name=f"{name}_squeeze1x1")(x)
    left = layers.Conv2D(expand, 1, activation="relu", name=f"{name}_expand1x1")(x)
    right = layers.Conv2D(expand, 3, padding="same", activation="relu", name=f"{name}_expand3x3")(x)
    return layers.Concatenate(name=f"{name}_concat")([left, right])


def squeezenet(size: int, channels: int) -> keras.Model:
    """SqueezeNet v1.1 (Iandola et al. 2016; the v1.1 changes from the reference repository:
    conv1 3x3/2 with 64 filters, pools after conv1, fire3 and fire5), without its classifier
    (dropout, conv10, GAP), as the widely used Keras weights file has it."""
    inputs = keras.Input((size, size, channels))
    x = layers.Conv2D(64, 3, strides=2, activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for number, squeeze, expand in SQUEEZENET_FIRES:
        x = _fire(x, number, squeeze, expand)
        if number in (3, 5):
            x = layers.MaxPooling2D(3, strides=2, name=f"pool{number}")(x)
    return keras.Model(inputs, x, name="squeezenet")


SQUEEZENET_CONVS = ("conv1", *(f"fire{number}_{part}" for number, _, _ in SQUEEZENET_FIRES
                                for part in ("squeeze1x1", "expand1x1", "expand3x3")))


def _file_tensors(f, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(kernel HWIO, bias) of one layer in the Keras-1 file: its group (`fire2/squeeze1x1` for
    the layer `fire2_squeeze1x1`: Keras 3 names cannot hold "/") holds a 4-D `uniformN` and a
    1-D `<layer>_b`, at some depth."""
    import h5py

    found = {}
    f[layer.replace("_", "/", 1)].visititems(
        lambda _, obj: found.__setitem__(obj.ndim, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return found[4], found[1]


def load_squeezenet_h5(model: keras.Model, path: Path) -> None:
    """Assign every conv layer's kernel and bias from the file, by layer name and shape."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            for name in SQUEEZENET_CONVS:
                model.get_layer(name).set_weights(list(_file_tensors(f, name)))
    except (OSError, KeyError, ValueError) as err:
        raise BackboneError(f"the weights file does not fit squeezenet: {str(err).splitlines()[0][:200]}",
                            path, f"pass the SqueezeNet v1.1 Keras file ({SQUEEZENET_FILE})") from None


def squeezenet_kernels(path: Path) -> dict[str, np.ndarray]:
    """{layer name here: kernel} as the file holds them (to check a load against)."""
    import h5py

    with h5py.File(path, "r") as f:
        return {name: _file_tensors(f, name)[0] for name in SQUEEZENET_CONVS}


BUILDERS = {"tiny_cnn": tiny_cnn, "simple_cnn": simple_cnn, "k1k3_cnn": k1k3_cnn, "gap_cnn": gap_cnn,
            "lenet5": lenet5, "squeezenet": squeezenet}
