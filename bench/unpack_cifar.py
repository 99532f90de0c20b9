"""Benchmark: how long `prepare-cifar` takes to unpack all 60,000 CIFAR-10 images.

It runs `retrain.prepare.prepare_cifar` on a local full-size archive (50,000 train + 10,000 test
images, the official python-version format) into a fresh temporary folder, four times:
png and jpg, each with workers=1 and workers=2. Each run is timed end to end (md5 check,
reading and unpickling the tar.gz, the validation split, writing every image, the manifest);
the fixed part (md5 + read + decode, no writing) is timed once on its own so that the write
rate can be shown as well. It prints wall time, images/s, CPU seconds (this process and its
workers), and the workers=2 / workers=1 speed-up. Pending disk writes are flushed (os.sync)
before each run; with --repeat N each setting runs N times and the fastest run is reported
(a shared machine's noise only ever slows a run down).

    .venv/bin/python bench/unpack_cifar.py [ARCHIVE] [--json ARCHIVE.json] [--tmp DIR]
                                           [--repeat N] [--verify]

ARCHIVE defaults to /tmp/cifar/full/cifar-10-python.tar.gz, built by
`../shared/tools/make_cifar_archive.py JPEG_ROOT OUT.tar.gz 5000 1000`, which also writes
OUT.tar.gz.json holding the md5 (and a sha256 of every image's pixels, which --verify
compares with the png files written by the first run).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from retrain.config import PrepareConfig
from retrain.download import md5sum
from retrain.prepare import ARCHIVES, decode, prepare_cifar, read_archive

DEFAULT_ARCHIVE = "/tmp/cifar/full/cifar-10-python.tar.gz"


def fixed_cost(archive: Path) -> float:
    """Seconds for the work every run does before writing: md5, tar.gz read, unpickle."""
    start = time.perf_counter()
    md5sum(archive)
    decode(read_archive(archive, ARCHIVES["cifar10"]), ARCHIVES["cifar10"], "fine")
    return time.perf_counter() - start


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished worker processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def verify(out: Path, expected: dict) -> None:
    """Each class folder holds exactly the images (by pixel sha256) the archive was built from."""
    for split, sources in (("test", ("test",)), ("train", ("train", "validation"))):
        for label, digests in expected[split].items():
            got = collections.Counter(
                hashlib.sha256(np.asarray(Image.open(p).convert("RGB")).tobytes()).hexdigest()
                for s in sources for p in (out / s / label).iterdir())
            if got != collections.Counter(digests):
                sys.exit(f"verify: {split}/{label} differs from the archive")
    print("verify: every png matches the archive's pixels")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", nargs="?", default=DEFAULT_ARCHIVE)
    parser.add_argument("--json", help="the archive's .json (md5); default: ARCHIVE.json")
    parser.add_argument("--tmp", help="where to write the images; default: the system temp folder")
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting; the fastest is shown")
    parser.add_argument("--verify", action="store_true", help="check the png pixels of the first run")
    args = parser.parse_args()
    archive = Path(args.archive)
    info = json.loads(Path(args.json or f"{archive}.json").read_text())

    fixed = fixed_cost(archive)
    print(f"archive {archive} ({archive.stat().st_size / 1e6:.0f} MB), {os.cpu_count()} CPUs")
    print(f"fixed cost (md5 + read + unpickle, no writing): {fixed:.2f} s\n")
    print(f"{'format':<7}{'workers':>8}{'wall s':>9}{'images/s':>10}{'write img/s':>13}{'CPU s':>8}"
          f"{'MB written':>12}{'all runs, s':>20}")
    results = {}
    for fmt in ("png", "jpg"):
        for workers in (1, 2):
            runs = []
            for attempt in range(args.repeat):
                with tempfile.TemporaryDirectory(dir=args.tmp, prefix="bench-cifar-") as tmp:
                    config = PrepareConfig(source=str(archive), md5=info["md5"], root=tmp,
                                           image_format=fmt, workers=workers)
                    os.sync()
                    cpu0, start = cpu_seconds(), time.perf_counter()
                    manifest = prepare_cifar(config)
                    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
                    out = Path(tmp) / "cifar10"
                    files = [p for p in out.rglob(f"*.{fmt}")]
                    n = sum(sum(c.values()) for c in manifest["counts"].values())
                    if n != len(files) or n != 60_000:
                        sys.exit(f"expected 60,000 images, manifest says {n:,}, disk has {len(files):,}")
                    size = sum(p.stat().st_size for p in files) / 1e6
                    if args.verify and fmt == "png" and workers == 1 and attempt == 0:
                        verify(out, info)
                runs.append((wall, cpu))
            wall, cpu = min(runs)
            results[fmt, workers] = wall
            print(f"{fmt:<7}{workers:>8}{wall:>9.2f}{n / wall:>10,.0f}{n / (wall - fixed):>13,.0f}"
                  f"{cpu:>8.1f}{size:>12,.0f}{' '.join(f'{w:.1f}' for w, _ in runs):>20}", flush=True)
    print()
    for fmt in ("png", "jpg"):
        print(f"{fmt}: workers=2 is {results[fmt, 1] / results[fmt, 2]:.2f}x as fast as workers=1")
    for workers in (1, 2):
        print(f"workers={workers}: jpg is {results['png', workers] / results['jpg', workers]:.2f}x "
              f"as fast as png")


if __name__ == "__main__":
    main()
