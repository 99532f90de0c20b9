"""SqueezeNet v1.1 on a small photo set with flips, crops and brightness: ImageNet weights
(the shared Keras-1 file) against the same network from scratch.

A small photo set: the first --per-class CIFAR-10 training JPEGs of each class (10% held out
by hash), upscaled to --image-size; the test figure is on the first --test-per-class test
images of each class, measured once per run.

usage: python bench/squeezenet_photos.py [--per-class 200] [--image-size 112] [--epochs 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from common import SHARED, cifar_jpegs, folder_accuracy, keep_runs, run_fit, subset

SQUEEZENET = SHARED / "weights" / "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--fine-tune-epochs", type=int, default=5)
    parser.add_argument("--jpeg-root", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="copy the run folders here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = cifar_jpegs(tmp, args.jpeg_root)
        train = subset(root, "train", args.per_class, tmp / "train")
        test = subset(root, "test", args.test_per_class, tmp / "test")
        print(f"SqueezeNet v1.1, CIFAR-10 {args.per_class}/class (10% held out), {args.image_size} px, "
              f"--augment flip,crop,brightness, {os.cpu_count()} cores")
        for name, weights, extra in (
                ("imagenet", str(SQUEEZENET), ["--freeze", "fire7_concat", "--epochs", str(args.epochs),
                                               "--fine-tune-epochs", str(args.fine_tune_epochs)]),
                ("scratch", "none", ["--freeze", "none", "--epochs", "0",
                                     "--fine-tune-epochs", str(args.epochs + args.fine_tune_epochs)])):
            fit = run_fit(["--data", str(train), "--backbone", "squeezenet", "--weights", weights,
                           "--image-size", str(args.image_size), "--validation-split", "0.1",
                           "--augment", "flip,crop,brightness", "--runs-dir", str(tmp / "runs"), "--name", name,
                           *extra], tmp / "runs" / name)
            acc = folder_accuracy(tmp / "runs" / name / "model.keras", test, args.image_size)[1]
            print(f"{name:<9} weights {Path(weights).name:<55} wall {fit.wall:6.1f} s  "
                  f"best val {fit.best_val:.4f}  test {acc:.4f}")
        keep_runs(tmp / "runs", args.keep)


if __name__ == "__main__":
    main()
