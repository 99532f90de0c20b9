"""Time per epoch: `retrain fit` in one process vs `retrain launch --workers 2` on the same data.

Extracts ../shared/data/cifar10-jpeg.tar.gz to a temporary folder and trains a compact
network from scratch on a CIFAR-10 subset (a single <label>/ tree, 10% held out by hash),
once as one process (--batch-size B) and once as two local workers (--batch-size B/2 per
replica: the same global batch, so the same steps per epoch). An epoch's time is measured
from outside, between the moments its row appears in history.csv (so it includes the
validation pass and the checkpoint); the first epoch, which also holds the start-up and
the tracing, has no start mark and is left out. The figure is the median of the others. On one machine two workers share its cores: the ratio measures
the cost of distributing (collectives, the sharded pipeline read twice), not a speed-up.

usage: python bench/distribute_overhead.py [--per-class 550] [--epochs 5] [--backbone simple_cnn]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, cifar_jpegs, subset


def timed_run(argv: list[str], history: Path, log: Path) -> tuple[float, list[float]]:
    """Run `python -m retrain <argv>`; -> (wall seconds, seconds between history rows)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "retrain", *argv], stdout=out, stderr=subprocess.STDOUT,
                                env=env)
        stamps, rows = [], 0
        while proc.poll() is None:
            try:
                now = max(len(history.read_text().splitlines()) - 1, 0)
            except FileNotFoundError:
                now = 0
            if now > rows:
                stamps += [time.perf_counter()] * (now - rows)
                rows = now
            time.sleep(0.02)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(log.read_text(errors="replace")[-3000:])
    return wall, [b - a for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=550)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="global; each of 2 workers gets half")
    parser.add_argument("--backbone", default="simple_cnn")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--jpeg-root", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = subset(cifar_jpegs(tmp, args.jpeg_root), "train", args.per_class, tmp / "data")
        common = ["--data", str(data), "--backbone", args.backbone, "--weights", "none",
                  "--image-size", str(args.image_size), "--epochs", str(args.epochs), "--validation-split", "0.1",
                  "--runs-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache")]
        runs = {
            "1 process": ["fit", *common, "--name", "one", "--batch-size", str(args.batch_size)],
            "2 local workers": ["launch", "--workers", "2", "--log-dir", str(tmp / "logs"), "--", "fit", *common,
                                "--name", "two", "--batch-size", str(args.batch_size // 2)],
        }
        results = {}
        for label, argv in runs.items():
            name = argv[argv.index("--name") + 1]
            results[label] = timed_run(argv, tmp / "runs" / name / "history.csv", tmp / f"{name}.log")
        print(f"{args.backbone} from scratch, {args.image_size} px, CIFAR-10 train {args.per_class}/class "
              f"(10% held out), {args.epochs} epochs, global batch {args.batch_size}, {os.cpu_count()} cores")
        for label, (wall, epochs) in results.items():
            print(f"{label:<16} wall {wall:6.1f} s   time per epoch {statistics.median(epochs):5.2f} s "
                  f"(median of epochs 2..{args.epochs}: {', '.join(f'{e:.2f}' for e in epochs)})")
        one, two = (statistics.median(epochs) for _, epochs in results.values())
        print(f"ratio 2 workers / 1 process: {two / one:.2f} (one machine: overhead, not speed-up)")


if __name__ == "__main__":
    main()
