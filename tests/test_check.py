"""`retrain check`: the pre-flight report on its own. No model, no TensorFlow."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fit_fixtures import make_colour_data, make_colour_split
from retrain.check import check
from retrain.config import CheckConfig


@pytest.fixture
def data(tmp_path) -> Path:
    """train/ (8 a class), validation/ (4), test/ (4) of the three colours."""
    root = make_colour_data(tmp_path / "data", train=8, validation=4)
    make_colour_split(root / "test", 4, seed=5)
    return root


def check_cli(runner, *args):
    from retrain.cli import app

    return runner.invoke(app, ["check", *map(str, args)])


def test_clean_folder(runner, data):
    """Counts per class and split, no warnings, exit 0."""
    result = check_cli(runner, data)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "3 classes" in lines[0] and "train/ + validation/ + test/" in lines[0]
    assert lines[1].split() == ["class", "train", "validation", "test"]
    assert lines[2].split() == ["cyan", "8", "4", "4"]
    assert lines[-2].split() == ["total", "24", "12", "12"]
    assert lines[-1] == "ok: fit would accept this folder"


def test_finds_duplicates_and_a_corrupt_file(runner, data):
    """A training image planted in test/, one copied within train/ under another class, and a
    corrupt file: each named, with the exit code still 0 (fit would run), and 1 with --strict."""
    shutil.copy(data / "train" / "cyan" / "cyan_003.png", data / "test" / "cyan" / "leak.png")
    shutil.copy(data / "train" / "yellow" / "yellow_000.png", data / "train" / "magenta" / "again.png")
    (data / "validation" / "magenta" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    report = check(CheckConfig(data=str(data)))
    assert report.refusal is None
    assert report.duplicates_across == [sorted([str(data / "test" / "cyan" / "leak.png"),
                                                str(data / "train" / "cyan" / "cyan_003.png")])]
    again = sorted([str(data / "train" / "magenta" / "again.png"),
                    str(data / "train" / "yellow" / "yellow_000.png")])
    assert report.duplicates_within == [again] and report.conflicting_labels == [again]
    assert report.unreadable == (str(data / "validation" / "magenta" / "corrupt.png"),)
    assert report.counts["validation"]["magenta"] == 4 and report.counts["train"]["magenta"] == 9
    result = check_cli(runner, data)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 4
    assert any("more than one split" in w and "leak.png" in w for w in warnings)
    assert any("unreadable" in w and "corrupt.png" in w for w in warnings)
    assert "(4 warning(s))" in result.stdout
    strict = check_cli(runner, data, "--strict")
    assert strict.exit_code == 1 and "error: 4 warning(s)" in strict.stderr


def test_refusals_exit_1(runner, tmp_path, data):
    """What fit refuses, check refuses with fit's own message: a class with no readable
    validation image, a single class, a missing folder."""
    for f in (data / "validation" / "yellow").iterdir():
        f.write_bytes(b"broken")
    result = check_cli(runner, data)
    assert result.exit_code == 1
    assert "classes with no readable validation images (received: yellow)" in result.stderr
    assert result.stdout.splitlines()[0].endswith("(files found, before any check)")
    one = make_colour_data(tmp_path / "one", classes=("cyan",))
    assert "at least 2 class folders" in check_cli(runner, one).stderr
    missing = check_cli(runner, tmp_path / "nothing")
    assert missing.exit_code == 1 and "does not exist" in missing.stderr and missing.stdout == ""


def test_single_tree_and_imbalance(runner, tmp_path):
    """A single <label>/ tree is split by path hash as fit splits it; a class with 4 times
    the images of another is reported as imbalanced."""
    root = tmp_path / "tree"
    make_colour_split(root, 40, seed=0, classes=("cyan",))
    make_colour_split(root, 10, seed=1, classes=("magenta", "yellow"))
    report = check(CheckConfig(data=str(root), validation_split=0.3))
    assert "split by path hash" in report.layout
    assert sum(report.counts["train"].values()) + sum(report.counts["validation"].values()) == 60
    from retrain.data import load_folders

    expected = load_folders(root, 0.3)
    assert sum(report.counts["validation"].values()) == len(expected.validation.files)
    assert any("train is imbalanced" in w and "cyan" in w for w in report.warnings)
    assert check_cli(runner, root, "--validation-split", "0.3").exit_code == 0
    assert check_cli(runner, root, "--validation-split", "1.5").exit_code == 2
