"""What the benchmarks share: where ../shared is, CIFAR-10 JPEG subsets from it, timed
`retrain fit` commands and the accuracy of their models."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RETRAIN_TEST_DATA") or os.environ.get("RETRAIN_SHARED_DATA") or REPO.parent / "shared" / "data")
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def cifar_jpegs(tmp: Path, root: Path | None) -> Path:
    """An extracted cifar10/ folder: `root` if given, else the shared archive extracted into tmp."""
    if root is not None:
        return root
    with tarfile.open(SHARED / "cifar10-jpeg.tar.gz") as tar:
        tar.extractall(tmp, filter="data")
    return tmp / "cifar10"


def subset(root: Path, split: str, per_class: int, out: Path) -> Path:
    """out/<class>/*.jpg: hard links to the first `per_class` images of each class of a split."""
    for cls in sorted(p.name for p in (root / split).iterdir()):
        (out / cls).mkdir(parents=True, exist_ok=True)
        for f in sorted((root / split / cls).iterdir())[:per_class]:
            os.link(f, out / cls / f.name)
    return out


def folder_accuracy(model_path: Path, test_dir: Path, image_size: int, top: tuple[int, ...] = (1,)) -> dict[int, float]:
    """Top-k accuracies of a saved model on a <label>/ folder (labels in sorted order, as in
    the run); the model's input channels say how images are decoded."""
    import keras
    import numpy as np

    import retrain.model  # noqa: F401  registers the custom layers
    from retrain.data import Split, class_files, eval_dataset

    files = class_files(test_dir)
    names = sorted(files)
    split = Split(tuple(path for n in names for path in files[n]),
                  np.asarray([i for i, n in enumerate(names) for _ in files[n]]))
    model = keras.saving.load_model(model_path)
    hits, total = dict.fromkeys(top, 0), 0
    for x, y in eval_dataset(split, len(names), image_size, 256, int(model.input.shape[-1])):
        ranked = np.argsort(-model.predict_on_batch(x), axis=1)
        truth = y.numpy().argmax(1)[:, None]
        for k in top:
            hits[k] += int((ranked[:, :k] == truth).any(axis=1).sum())
        total += len(truth)
    return {k: n / total for k, n in hits.items()}


@dataclass(frozen=True)
class FitRun:
    """One `retrain fit` command, timed whole, and what it left."""

    wall: float  # seconds
    history: list[dict[str, str]]  # history.csv rows
    stdout: str  # Keras' per-epoch lines
    stderr: str  # retrain's own lines

    @property
    def best_val(self) -> float:
        return max(float(r["val_accuracy"]) for r in self.history)

    @property
    def epoch_seconds(self) -> list[float]:
        """Keras' own per-epoch figures (`625/625 - 41s - ...`)."""
        return [float(s) for s in re.findall(r"^\d+/\d+ - (\d+(?:\.\d+)?)s - ", self.stdout, re.M)]

    def said(self, *prefixes: str) -> list[str]:
        """retrain's lines that start with one of the prefixes (what it chose, and why)."""
        return [line for line in self.stderr.splitlines() if line.startswith(prefixes)]


def run_fit(args: list[str], run: Path) -> FitRun:
    """`python -m retrain fit ARGS` writing the run folder `run`; exits with its stderr if it fails."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "retrain", "fit", *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    with open(run / "history.csv", newline="") as f:
        return FitRun(wall, list(csv.DictReader(f)), done.stdout, done.stderr)


def keep_runs(runs: Path, to: Path | None) -> None:
    """Copy the run folders out of the temporary folder (--keep)."""
    if to is not None:
        shutil.copytree(runs, to, dirs_exist_ok=True)
