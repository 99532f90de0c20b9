"""How fast is frozen-backbone training, with and without the bottleneck cache? (issue: Fast on a CPU)

Prints, for one backbone and image size, on the same CIFAR-10 JPEGs, all in one run:
  1. raw forward throughput of the backbone on pre-decoded tensors (img/s): the floor;
  2. feature extraction through retrain's real pipeline (files -> features) and its ratio to 1;
  2b. phase 1 and 2's extraction when fine-tuning above --freeze-point: the whole backbone
     plus its bottom over the files, against the bottom over the files plus the layers above
     the freeze point over its cached activations (what fit does);
  3. `retrain fit --freeze all` (phase 1 only, --epochs E) with a cold cache, as a whole
     command, over a "floor process" (import TensorFlow, load the backbone, one forward pass
     over the same files); the same with the cache warm;
  4. the same E epochs with --no-cache (a forward pass every epoch) and its ratio to 3;
  5. peak RSS of 3 and the floor process's (the model's share);
  and the cold run's accuracy on the first --test-per-class test images of each class.

usage: python bench/cache_speed.py [--images-per-class 200] [--image-size 96] [--epochs 10]
           [--backbone mobilenet_v2 --alpha 0.35 --weights PATH|none] [--jpeg-root DIR]
           [--freeze-point block_5_add] [--only-extraction] [--skip-no-cache] [--skip-route]
Defaults use ../shared: the CIFAR-10 JPEGs (extracted to a temporary folder) and the
MobileNetV2 0.35 ImageNet weights. Machines are noisy: compare figures from one run only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import WEIGHTS, cifar_jpegs, folder_accuracy, subset

RAW_SAMPLE = 4096  # images decoded and held for measurement 1 (64 batches of 64)

FLOOR = """
import sys, time, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from retrain.backbones import get_spec
from retrain.data import load_folders, eval_dataset
from retrain.model import build_backbone, preprocessing
import tensorflow as tf, keras
data_dir, backbone, alpha, weights, size, batch = sys.argv[1:7]
alpha = float(alpha) if alpha != "none" else None
spec = get_spec(backbone)
data = load_folders(data_dir, 0.2)
net = build_backbone(spec, int(size), alpha, weights)
pre = preprocessing(spec)
@tf.function
def forward(x):
    return tf.reduce_mean(net(pre(x) if pre else x, training=False), axis=[1, 2])
n = 0
for split in (data.train, data.validation):
    for x, _ in eval_dataset(split, data.num_classes, int(size), int(batch)):
        n += int(forward(x).shape[0])
print("floor images", n)
"""


def peak_rss_gib(cmd: list[str]) -> tuple[float, float]:
    """Run cmd in a fresh child via a wrapper that reports the child's own peak RSS."""
    wrapper = ("import resource, subprocess, sys, time; t=time.perf_counter(); "
               "r=subprocess.run(sys.argv[1:], capture_output=True); "
               "sys.exit(r.stderr.decode()[-2000:]) if r.returncode else None; "
               "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    wall, kib = out.stdout.split()
    return float(wall), int(kib) / 2 ** 20


def raw_and_pipeline(data_dir: Path, args) -> tuple[float, float, float, float]:
    """In this process: forward img/s on pre-decoded tensors (the first RAW_SAMPLE files,
    decoded once and held), measured before and after one pass of files -> features over
    every file, as fit runs it (one dataset: tf.data's autotuning needs a long run to settle).
    -> (raw img/s, pipeline img/s, raw img/s before, after); raw is the mean of the two, so
    a drift in the machine's speed during the pipeline's pass is shared."""
    import numpy as np
    import tensorflow as tf

    from retrain.backbones import get_spec
    from retrain.bottleneck import extract_fn
    from retrain.data import Split, eval_dataset, load_folders
    from retrain.model import build_backbone, build_classifier, feature_extractor

    spec = get_spec(args.backbone)
    data = load_folders(data_dir, 0.2)
    backbone = build_backbone(spec, args.image_size, args.alpha, args.weights)
    model = build_classifier(spec, backbone, data.num_classes, args.image_size, 0.2, (), 0)
    extractor = feature_extractor(model, backbone, None)
    files = list(data.train.files) + list(data.validation.files)

    @tf.function
    def forward(x):
        return extractor(x, training=False)

    sample = files[:RAW_SAMPLE]
    batches = [x for x, _ in eval_dataset(Split(tuple(sample), np.arange(len(sample))), None,
                                          args.image_size, args.batch_size)]

    def raw_seconds() -> float:
        start = time.perf_counter()
        for x in batches:
            forward(x).numpy()
        return time.perf_counter() - start

    run = extract_fn(extractor, args.image_size, args.batch_size, training=False)
    list(run(files[: args.batch_size]))  # trace
    forward(batches[0]).numpy()
    before = raw_seconds()
    start = time.perf_counter()
    shape = data.train.shape if data.train.shape == data.validation.shape else None  # as fit's
    n = sum(len(rows) for rows, _ in run(files, shape))
    piped = n / (time.perf_counter() - start)
    after = raw_seconds()
    return 2 * len(sample) / (before + after), piped, len(sample) / before, len(sample) / after


def route_seconds(data_dir: Path, args) -> tuple[float, float, float]:
    """In this process: seconds for (the whole backbone over the files, its bottom up to
    --freeze-point over them, the layers above it over those cached float16 activations):
    phase 1 + 2 extraction costs a + b without the route through the freeze point, b + c with it."""
    import numpy as np
    import tensorflow as tf

    from retrain.backbones import get_spec
    from retrain.bottleneck import extract_fn, from_rows_fn
    from retrain.data import load_folders
    from retrain.model import build_backbone, build_classifier, feature_extractor, features_from_boundary

    spec = get_spec(args.backbone)
    data = load_folders(data_dir, 0.2)
    backbone = build_backbone(spec, args.image_size, args.alpha, args.weights)
    model = build_classifier(spec, backbone, data.num_classes, args.image_size, 0.2, (), 0)
    boundary = [layer.name for layer in backbone.layers].index(args.freeze_point) + 1
    files = tuple(data.train.files) + tuple(data.validation.files)
    seconds = []
    for extractor in (feature_extractor(model, backbone, None), feature_extractor(model, backbone, boundary)):
        run = extract_fn(extractor, args.image_size, 128, training=False)
        list(run(list(files[:128])))  # trace
        start = time.perf_counter()
        batches = [batch.astype(np.float16) for batch, _ in run(list(files))]
        seconds.append(time.perf_counter() - start)
    rows = np.concatenate(batches)  # the bottom's activations: the last extractor's
    upper = from_rows_fn(features_from_boundary(model, backbone, boundary), files, rows, 128)
    list(upper(list(files[:128])))  # trace
    start = time.perf_counter()
    sum(len(batch) for batch, _ in upper(list(files)))
    seconds.append(time.perf_counter() - start)
    return tuple(seconds)


def warm_fit_seconds(data_dir: Path, tmp: Path, args) -> float:
    """In this process (TensorFlow already imported): one warm-cache `fit` call, seconds."""
    from retrain.config import FitConfig
    from retrain.train import fit

    config = FitConfig(data=str(data_dir), backbone=args.backbone, alpha=args.alpha, weights=args.weights,
                       image_size=args.image_size, freeze="all", epochs=args.epochs, fine_tune_epochs=0,
                       batch_size=args.batch_size, runs_dir=str(tmp / "runs"), name="warm-in-process",
                       cache_dir=str(tmp / "cache"))
    start = time.perf_counter()
    result = fit(config)
    assert result.features_computed == 0, "the cache should have been warm"
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--weights", default=str(WEIGHTS))
    parser.add_argument("--jpeg-root", type=Path, default=None,
                        help="an extracted cifar10/ folder (train/<class>/*.jpg)")
    parser.add_argument("--skip-no-cache", action="store_true", help="skip measurement 4 (slow)")
    parser.add_argument("--freeze-point", default="block_5_add",
                        help="for 2b: where phase 2's cached activations are taken (fit's --freeze auto on CIFAR-10)")
    parser.add_argument("--only-extraction", action="store_true", help="measurements 1, 2 and 2b only")
    parser.add_argument("--skip-route", action="store_true", help="skip measurement 2b")
    parser.add_argument("--test-per-class", type=int, default=100,
                        help="the cold run's accuracy on the first N test images of each class (0: skip)")
    args = parser.parse_args()
    if args.alpha <= 0:
        args.alpha = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = cifar_jpegs(tmp, args.jpeg_root)
        data = subset(root, "train", args.images_per_class, tmp / "images")
        n = args.images_per_class * 10
        print(f"{args.backbone} alpha {args.alpha} at {args.image_size} px, batch {args.batch_size}, "
              f"{n:,} CIFAR-10 JPEGs, {args.epochs} head epochs, {os.cpu_count()} cores")

        raw, piped, before, after = raw_and_pipeline(data, args)
        print(f"1. raw forward on pre-decoded tensors:   {raw:8.0f} img/s (before 2: {before:.0f}, after: {after:.0f})")
        print(f"2. files -> features through pipeline:   {piped:8.0f} img/s  ratio {piped / raw:.2f} (target >= 0.9)")
        if not args.skip_route:
            full, bottom, upper = route_seconds(data, args)
            print(f"2b. phase 1 + 2 extraction, fine-tuning above {args.freeze_point}: whole backbone over the "
                  f"files {full:.1f} s + bottom over the files {bottom:.1f} s = {full + bottom:.1f} s; through the "
                  f"freeze point: bottom {bottom:.1f} s + layers above on its cached rows {upper:.1f} s = "
                  f"{bottom + upper:.1f} s (ratio {(bottom + upper) / (full + bottom):.2f})")
        if args.only_extraction:
            return

        alpha = "none" if args.alpha is None else str(args.alpha)
        floor_wall, floor_rss = peak_rss_gib([sys.executable, "-c", FLOOR, str(data), args.backbone, alpha,
                                              args.weights, str(args.image_size), str(args.batch_size)])
        fit = [sys.executable, "-m", "retrain", "fit", "--data", str(data), "--backbone", args.backbone,
               "--weights", args.weights, "--image-size", str(args.image_size), "--freeze", "all",
               "--epochs", str(args.epochs), "--fine-tune-epochs", "0", "--batch-size", str(args.batch_size),
               "--runs-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache")]
        if args.alpha is not None:
            fit += ["--alpha", str(args.alpha)]
        cold_wall, cold_rss = peak_rss_gib(fit + ["--name", "cold"])
        warm_wall, _ = peak_rss_gib(fit + ["--name", "warm"])
        print(f"   floor process (import TF, load backbone, one forward pass): {floor_wall:6.1f} s, "
              f"peak RSS {floor_rss:.2f} GiB")
        forward_pass = n / raw
        warm_inside = warm_fit_seconds(data, tmp, args)
        print(f"3. fit, cold cache: {cold_wall:6.1f} s  = {cold_wall / floor_wall:.2f} x floor process (target <= 1.3)")
        print(f"   fit, warm cache: {warm_wall:6.1f} s  = {warm_wall / floor_wall:.2f} x floor process")
        print(f"   warm fit() call inside a process that has TensorFlow loaded: {warm_inside:.1f} s "
              f"= {warm_inside / forward_pass:.2f} x one forward pass ({forward_pass:.1f} s) (target <= 0.1)")
        if not args.skip_no_cache:
            none_wall, _ = peak_rss_gib(fit + ["--name", "nocache", "--no-cache"])
            print(f"4. fit, --no-cache: {none_wall:6.1f} s  = {none_wall / cold_wall:.1f} x cold cache (expect >= 7)")
        print(f"5. peak RSS: fit cold {cold_rss:.2f} GiB, floor process {floor_rss:.2f} GiB, "
              f"difference {cold_rss - floor_rss:.2f} GiB (target < 2)")
        best = [line for line in (tmp / "runs" / "cold" / "history.csv").read_text().splitlines()]
        print(f"   cold run history: {best[-1]}")
        if args.test_per_class:
            test = subset(root, "test", args.test_per_class, tmp / "test")
            accuracy = folder_accuracy(tmp / "runs" / "cold" / "model.keras", test, args.image_size)[1]
            print(f"   cold run's test accuracy, first {args.test_per_class} test images of each class: {accuracy:.4f}")


if __name__ == "__main__":
    main()
