"""The compact networks on Quick, Draw! doodles: test accuracy, top-3, parameters, epoch time.

Prepares ../shared/data/quickdraw (6 classes x 3,000 drawings -> 80/10/10 train/validation/
test, 28x28 grayscale PNGs) with `retrain prepare-quickdraw --source DIR`, then for each
network runs `retrain fit --backbone NET --weights none --epochs E` as a whole command and
evaluates the final model once on the test split. Epoch time is Keras' own per-epoch figure
(its log line), averaged over the epochs after the first (the first includes tracing).

usage: python bench/quickdraw_compact.py [--epochs 10] [--networks simple_cnn,k1k3_cnn,gap_cnn,lenet5]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import SHARED, folder_accuracy, run_fit

CLASSES = "apple,bicycle,cat,diamond,eye,fish"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--networks", default="simple_cnn,k1k3_cnn,gap_cnn,lenet5")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "retrain", "prepare-quickdraw", "--classes", CLASSES,
                        "--source", str(SHARED / "quickdraw"), "--root", str(tmp)], check=True,
                       capture_output=True)
        print(f"prepare-quickdraw, 6 classes x 3,000: {time.perf_counter() - start:.1f} s")
        data = tmp / "quickdraw"
        print(f"{args.epochs} epochs, batch {args.batch_size}, Adam 1e-3, {os.cpu_count()} cores")
        print(f"{'network':<12}{'params':>9}{'s/epoch':>9}{'wall s':>8}{'best val':>9}{'test':>7}{'top-3':>7}")
        for net in args.networks.split(","):
            fit = run_fit(["--data", str(data), "--backbone", net, "--weights", "none", "--epochs", str(args.epochs),
                           "--schedule", "constant", "--batch-size", str(args.batch_size),
                           "--runs-dir", str(tmp / "runs"), "--name", net], tmp / "runs" / net)
            params = re.search(r"phase 1: ([\d,]+) trainable parameters", fit.stderr).group(1)
            acc = folder_accuracy(tmp / "runs" / net / "model.keras", data / "test", 28, (1, 3))
            later = fit.epoch_seconds[1:] or fit.epoch_seconds
            print(f"{net:<12}{params:>9}{sum(later) / len(later):>9.1f}{fit.wall:>8.1f}{fit.best_val:>9.4f}"
                  f"{acc[1]:>7.4f}{acc[3]:>7.4f}")


if __name__ == "__main__":
    main()
