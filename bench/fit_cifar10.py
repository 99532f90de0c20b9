"""Real-data figures for `retrain fit`: MobileNetV2 0.35 (shared ImageNet weights) on CIFAR-10.

Extracts ../shared/data/cifar10-jpeg.tar.gz to a temporary folder, fits on the train split
as a single <label>/ tree (--validation-split), once frozen (--freeze all) and once with the
default --freeze auto (fine-tuning), each as a whole `retrain fit` command, and prints wall
time and best validation accuracy; then the test-split accuracy of each final model, once.

usage: python bench/fit_cifar10.py [--per-class 5000] [--image-size 96] [-- extra fit flags]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from common import WEIGHTS, cifar_jpegs, folder_accuracy, run_fit, subset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=5000)
    parser.add_argument("--test-per-class", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--jpeg-root", type=Path, default=None)
    parser.add_argument("--settings", default="all,auto", help="comma list of --freeze values to run")
    parser.add_argument("extra", nargs="*", help="more `retrain fit` flags (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = cifar_jpegs(tmp, args.jpeg_root)
        train = subset(root, "train", args.per_class, tmp / "train")
        test = subset(root, "test", args.test_per_class, tmp / "test")
        rows = []
        for freeze in args.settings.split(","):
            fit = run_fit(["--data", str(train), "--backbone", "mobilenet_v2", "--alpha", "0.35",
                           "--weights", str(WEIGHTS), "--image-size", str(args.image_size), "--freeze", freeze,
                           "--validation-split", "0.1", "--runs-dir", str(tmp / "runs"), "--name", freeze,
                           "--cache-dir", str(tmp / "cache"), *args.extra], tmp / "runs" / freeze)
            rows.append((freeze, fit.wall, len(fit.history), fit.best_val, tmp / "runs" / freeze / "model.keras",
                         fit.said("freeze:", "phase")))
        print(f"MobileNetV2 0.35, {args.image_size} px, CIFAR-10 train {args.per_class}/class "
              f"(10% held out by hash), {os.cpu_count()} cores; extra flags: {' '.join(args.extra) or '-'}")
        for freeze, wall, epochs, best, model, chosen in rows:
            acc = folder_accuracy(model, test, args.image_size)[1]
            print(f"--freeze {freeze:<5} wall {wall:6.1f} s  epochs {epochs}  best val acc {best:.4f}  "
                  f"test acc {acc:.4f} ({args.test_per_class}/class)")
            for line in chosen:
                print(f"    {line}")


if __name__ == "__main__":
    main()
