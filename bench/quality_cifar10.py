"""Issue 9's figure: `retrain fit` with its defaults on all of CIFAR-10, against the Keras guide.

Extracts ../shared/data/cifar10-jpeg.tar.gz, runs exactly
    retrain fit --data <train, 50,000 JPEGs as one <label>/ tree> --backbone mobilenet_v2
                --alpha 0.35 --weights <shared MobileNetV2 0.35 file> --image-size 96
(the defaults decide the rest: validation split held out by hash, freeze point, epochs,
learning rates, schedule, cache; a cold cache of its own), times the whole command, then evaluates the final model
once on the 10,000 test images. A second run adds --freeze all (the frozen-only target).
Extra `retrain fit` flags after `--` are added to both (for tuning on the validation split).

usage: python bench/quality_cifar10.py [--jpeg-root DIR] [--only default|frozen] [-- flags]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from common import WEIGHTS, cifar_jpegs, folder_accuracy, keep_runs, run_fit

REFERENCE = ("Keras transfer-learning guide, same weights/data/size (bench/keras_guide.py, Intel Xeon AVX-512, 2026-11-23): "
             "0.711 test frozen, 0.809 fine-tuned, ~12.6 min of training")
TARGETS = {"default": (0.85, 13 * 60), "frozen": (0.72, 3 * 60)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jpeg-root", type=Path, default=None, help="an extracted cifar10/ folder")
    parser.add_argument("--only", choices=("default", "frozen"), default=None)
    parser.add_argument("--tune", action="store_true",
                        help="tuning run: validation figures only, the test split is not touched")
    parser.add_argument("--keep", type=Path, default=None, help="copy the run folders here at the end")
    parser.add_argument("extra", nargs="*", help="more `retrain fit` flags (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = cifar_jpegs(tmp, args.jpeg_root)
        print(f"MobileNetV2 0.35, 96 px, all of CIFAR-10 ({os.cpu_count()} cores); extra flags: "
              f"{' '.join(args.extra) or '-'}")
        print(REFERENCE)
        for name, flags in (("default", []), ("frozen", ["--freeze", "all"])):
            if args.only and args.only != name:
                continue
            fit = run_fit(["--data", str(root / "train"), "--backbone", "mobilenet_v2", "--alpha", "0.35",
                           "--weights", str(WEIGHTS), "--image-size", "96", "--runs-dir", str(tmp / "runs"),
                           "--name", name, "--cache-dir", str(tmp / f"cache-{name}"), *flags, *args.extra],
                          tmp / "runs" / name)
            line = (f"{name:<8} wall {fit.wall:6.1f} s ({fit.wall / 60:.1f} min)  epochs {len(fit.history)}  "
                    f"best val {fit.best_val:.4f}")
            if not args.tune:
                test = folder_accuracy(tmp / "runs" / name / "model.keras", root / "test", 96)[1]
                target_acc, target_s = TARGETS[name]
                verdict = "met" if test >= target_acc and fit.wall <= target_s else "NOT met"
                line += f"  test {test:.4f}  target >= {target_acc} in <= {target_s / 60:.0f} min: {verdict}"
            print(line)
            for said in fit.said("freeze:", "phase"):
                print(f"    {said}")
            print("    val_accuracy by epoch: " + " ".join(f"{float(r['val_accuracy']):.3f}" for r in fit.history))
            print("    seconds by epoch (Keras):  " + " ".join(f"{s:g}" for s in fit.epoch_seconds))
        keep_runs(tmp / "runs", args.keep)


if __name__ == "__main__":
    main()
