"""A trained toy run for the after-fit commands (evaluate, predict, export, plot, runs).

Four noisy solid colours, grey among them so that a grayscale image has a right answer, in
train/, validation/ and test/; tiny_cnn trained 2 head + 2 fine-tuning epochs. The run is
trained once per test session, whichever module asks first (`trained_run`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from fit_fixtures import fit_args, invoke, noisy_colour, write_png

TOY_COLOURS = {"cyan": (0, 255, 255), "grey": (128, 128, 128), "magenta": (255, 0, 255),
               "yellow": (255, 255, 0)}
LABELS = tuple(sorted(TOY_COLOURS))
PER_SPLIT = {"train": 12, "validation": 6, "test": 6}

_trained: dict[str, Path] = {}


def make_toy_split(folder: Path, per_class: int, seed: int, colours=TOY_COLOURS) -> list[Path]:
    rng = np.random.default_rng(seed)
    return [write_png(folder / name / f"{name}_{i:03d}.png", noisy_colour(rgb, rng))
            for name, rgb in colours.items() for i in range(per_class)]


def make_toy_data(root: Path) -> Path:
    for seed, (split, count) in enumerate(PER_SPLIT.items()):
        make_toy_split(root / split, count, seed)
    return root


def trained_run(tmp_path_factory) -> Path:
    """runs/toy, trained on the toy data (once per session); treat it as read-only, or copy it."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _trained:
        base = tmp_path_factory.mktemp("toy")
        data = make_toy_data(base / "data")
        result = invoke(fit_args(data, base / "runs", "toy"))
        assert result.exit_code == 0, (result.output, result.exception)
        _trained[key] = base / "runs" / "toy"
    return _trained[key]


def copy_run(run: Path, to: Path) -> Path:
    """A copy of a run folder (same config, so the same data folder)."""
    shutil.copytree(run, to)
    return to
