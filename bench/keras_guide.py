"""The Keras transfer-learning guide's recipe on CIFAR-10: the comparison figure of bench/quality_cifar10.py.

keras.io/guides/transfer_learning, in plain Keras and tf.data (no retrain code), on the data
and weights of bench/quality_cifar10.py: MobileNetV2 alpha 0.35 with the ImageNet weights
file, the CIFAR-10 JPEGs at 96 px, 10% of the training images held out for validation
(image_dataset_from_directory's seeded split), the 10,000 test images read after each phase.
  1. the base frozen and called with training=False (BatchNorm stays in inference mode);
     a new head: GlobalAveragePooling2D, Dropout(0.2), Dense(10); Adam 1e-3, --epochs;
  2. the whole base unfrozen, recompiled, Adam 1e-5, --fine-tune-epochs.
Rescaling to [-1, 1] and RandomFlip("horizontal") are inside the model (raw pixels in);
batch 64, as in the guide. Prints the CPU, the wall time of each phase (training, then the
test evaluation), and validation and test accuracy after each.

usage: python bench/keras_guide.py [--images-per-class N] [--test-per-class N]
           [--epochs 2] [--fine-tune-epochs 4] [--image-size 96] [--jpeg-root DIR]
All of CIFAR-10 takes 15 minutes or more on 2 cores; `--images-per-class 50
--test-per-class 20 --epochs 1 --fine-tune-epochs 1` checks the script in about a minute.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import WEIGHTS, cifar_jpegs, subset

from retrain.machine import cpu_model

REFERENCE = ("measured 2026-11-23, Intel Xeon (AVX-512), all of CIFAR-10, 2 + 4 epochs: "
             "0.711 test frozen, 0.809 fine-tuned, ~12.6 min of training")
BATCH_SIZE = 64  # the guide's
SEED = 1337  # the guide's; fixes the validation split and the shuffling


def datasets(train_dir: Path, test_dir: Path, image_size: int):
    """(train, validation, test, class names): batched tf.data pipelines of raw pixels."""
    import keras
    import tensorflow as tf

    size = (image_size, image_size)
    train, validation = keras.utils.image_dataset_from_directory(
        train_dir, validation_split=0.1, subset="both", seed=SEED, image_size=size, batch_size=BATCH_SIZE)
    names = train.class_names
    test = keras.utils.image_dataset_from_directory(
        test_dir, class_names=names, shuffle=False, image_size=size, batch_size=BATCH_SIZE)
    return (*(ds.prefetch(tf.data.AUTOTUNE) for ds in (train, validation, test)), names)


def build(image_size: int, num_classes: int):
    """(model, base): the guide's model around MobileNetV2 0.35 with the ImageNet weights file."""
    import keras

    base = keras.applications.MobileNetV2(input_shape=(image_size, image_size, 3), alpha=0.35,
                                          include_top=False, weights=None)
    base.load_weights(WEIGHTS)
    base.trainable = False
    inputs = keras.Input(shape=(image_size, image_size, 3))
    x = keras.layers.RandomFlip("horizontal", seed=SEED)(inputs)
    x = keras.layers.Rescaling(scale=1 / 127.5, offset=-1)(x)  # MobileNetV2 takes [-1, 1]
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs), base


def run_phase(name: str, model, learning_rate: float, epochs: int, train, validation, test) -> float:
    """Compile, fit and evaluate; prints the phase's figures and returns its training seconds."""
    import keras

    # Recompiling is what makes a change of `trainable` take effect.
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(train, epochs=epochs, validation_data=validation, verbose=2)
    trained = time.perf_counter() - start
    start = time.perf_counter()
    _, test_accuracy = model.evaluate(test, verbose=0)
    evaluated = time.perf_counter() - start
    val = history.history["val_accuracy"]
    print(f"{name:<10} train {trained:6.1f} s ({trained / 60:.1f} min)  test pass {evaluated:5.1f} s  "
          f"epochs {epochs}  lr {learning_rate:g}  validation {val[-1]:.4f}  test {test_accuracy:.4f}")
    print("    val_accuracy by epoch: " + " ".join(f"{v:.3f}" for v in val))
    return trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=None, help="training images a class (default: all)")
    parser.add_argument("--test-per-class", type=int, default=None, help="test images a class (default: all)")
    parser.add_argument("--epochs", type=int, default=2, help="frozen-base epochs, Adam 1e-3")
    parser.add_argument("--fine-tune-epochs", type=int, default=4, help="whole-network epochs, Adam 1e-5")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--jpeg-root", type=Path, default=None, help="an extracted cifar10/ folder")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = cifar_jpegs(tmp, args.jpeg_root)
        train_dir, test_dir = root / "train", root / "test"
        if args.images_per_class is not None:
            train_dir = subset(root, "train", args.images_per_class, tmp / "train")
        if args.test_per_class is not None:
            test_dir = subset(root, "test", args.test_per_class, tmp / "test")
        print(f"Keras guide recipe, MobileNetV2 0.35, {args.image_size} px, CIFAR-10 "
              f"({args.images_per_class or 'all'} train / {args.test_per_class or 'all'} test images a class); "
              f"{cpu_model()}")
        print(f"reference: {REFERENCE}")
        start = time.perf_counter()
        train, validation, test, names = datasets(train_dir, test_dir, args.image_size)
        model, base = build(args.image_size, len(names))
        print(f"set-up (import, file lists, model, weights) {time.perf_counter() - start:.1f} s")
        frozen = run_phase("frozen", model, 1e-3, args.epochs, train, validation, test)
        base.trainable = True
        tuned = run_phase("fine-tuned", model, 1e-5, args.fine_tune_epochs, train, validation, test)
        total = frozen + tuned
        print(f"training, both phases: {total:.1f} s ({total / 60:.1f} min)")


if __name__ == "__main__":
    main()
