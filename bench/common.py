"""What the benchmarks share: where ../shared is, and CIFAR-10 JPEG subsets from it."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RETRAIN_SHARED_DATA", REPO.parent / "shared" / "data"))
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
