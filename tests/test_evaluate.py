"""`retrain evaluate` end to end on a trained toy run, and its metrics by hand."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fit_fixtures import assert_one_error_line, invoke
from run_fixtures import LABELS, PER_SPLIT, TOY_COLOURS, make_toy_split, trained_run
from retrain.evaluation import compute_metrics, top_k_values


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory)


def read_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def keras_accuracy(run: Path, folder: Path) -> tuple[float, int]:
    """Accuracy of the run's best checkpoint on folder/<label>/ images, computed here."""
    from retrain.data import Split, eval_dataset
    from retrain.runs import load_model

    loaded = load_model(run, "best")
    files = sorted(folder.glob("*/*.png"))
    split = Split(tuple(map(str, files)), np.asarray([LABELS.index(f.parent.name) for f in files]))
    correct = 0
    for images, labels in eval_dataset(split, None, 32, 5).as_numpy_iterator():
        correct += int((np.asarray(loaded.model(images)).argmax(1) == labels).sum())
    return correct / len(files), len(files)


def test_evaluate_test_split(run):
    """The default (test split, best checkpoint): a confusion matrix whose counts sum to the
    number of images, an accuracy equal to a recomputation, per-class rows, a readable table,
    the image of the matrix and one misclassified.csv row per mistake."""
    result = invoke(["evaluate", str(run)])
    assert result.exit_code == 0, (result.output, result.exception)
    folder = run / "eval" / "test"
    metrics = read_metrics(folder)
    images = PER_SPLIT["test"] * len(LABELS)
    matrix = np.asarray(metrics["confusion_matrix"])
    assert matrix.shape == (4, 4) and matrix.sum() == images == metrics["images"]
    assert matrix.sum(axis=1).tolist() == [PER_SPLIT["test"]] * 4
    expected, total = keras_accuracy(run, Path(json.loads((run / "config.json").read_text())["data"]) / "test")
    assert total == images
    assert metrics["accuracy"] == pytest.approx(expected) == pytest.approx(np.trace(matrix) / images)
    assert metrics["accuracy"] >= 0.9
    assert set(metrics["top_k_accuracy"]) == {"1", "3"}  # 4 classes: top-5 does not apply
    assert metrics["checkpoint"] == "best" and Path(metrics["checkpoint_path"]).parent == run / "best"
    assert sum(row["support"] for row in metrics["per_class"].values()) == images
    for line in ("accuracy", "precision", "macro avg", "confusion matrix", *LABELS):
        assert line in result.stdout
    with Image.open(folder / "confusion_matrix.png") as image:
        assert image.format == "PNG" and image.size[0] > 200
    with open(folder / "misclassified.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == images - np.trace(matrix)
    assert not list(folder.glob(".*tmp*"))


def test_evaluate_validation_split_last_checkpoint(run):
    """--split validation evaluates the very images fit held out; --checkpoint last restores
    the newest checkpoint."""
    result = invoke(["evaluate", str(run), "--split", "validation", "--checkpoint", "last"])
    assert result.exit_code == 0, (result.output, result.exception)
    metrics = read_metrics(run / "eval" / "validation")
    assert metrics["images"] == PER_SPLIT["validation"] * len(LABELS)
    assert Path(metrics["checkpoint_path"]).parent == run / "ckpt"
    matrix = np.asarray(metrics["confusion_matrix"])
    assert metrics["accuracy"] == pytest.approx(np.trace(matrix) / metrics["images"])


def test_evaluate_data_folder_lists_mistakes(run, tmp_path):
    """--data DIR: magenta images filed under cyan come out in misclassified.csv as true cyan,
    predicted magenta; an unreadable file is skipped and named; a missing class is fine."""
    folder = tmp_path / "mislabelled"
    make_toy_split(folder, 3, seed=7, colours={"cyan": TOY_COLOURS["magenta"], "yellow": TOY_COLOURS["yellow"]})
    (folder / "yellow" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = invoke(["evaluate", str(run), "--data", str(folder)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "skipped 1 unreadable image(s)" in result.stderr and "broken.png" in result.stderr
    out = run / "eval" / "data-mislabelled"
    metrics = read_metrics(out)
    assert metrics["images"] == 6
    assert metrics["per_class"]["grey"]["support"] == 0
    with open(out / "misclassified.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["true_label"], r["predicted_label"]) for r in rows] == [("cyan", "magenta")] * 3
    assert {Path(r["file"]).parent.name for r in rows} == {"cyan"}
    assert all(0.5 < float(r["probability"]) <= 1 for r in rows)
    assert metrics["accuracy"] == pytest.approx(0.5)


def test_evaluate_refuses_bad_input(run, tmp_path):
    """One error line each: --split with --data (a usage error, exit 2), a class the run does
    not know, a folder that is not a run."""
    assert_one_error_line(invoke(["evaluate", str(run), "--split", "test", "--data", str(tmp_path)]), 2,
                          "--split and --data")
    make_toy_split(tmp_path / "other", 1, seed=0, colours={"purple": (128, 0, 128)})
    assert_one_error_line(invoke(["evaluate", str(run), "--data", str(tmp_path / "other")]), 1,
                          "class folders the run was not trained on", "purple")
    assert_one_error_line(invoke(["evaluate", str(tmp_path)]), 1, "not a run folder")


def test_evaluate_without_test_folder(run, tmp_path):
    """A run whose data has no test/ says to pass --split validation or --data."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    data = tmp_path / "data"
    shutil.copytree(config["data"], data, ignore=shutil.ignore_patterns("test"))
    config["data"] = str(data)
    (copy / "config.json").write_text(json.dumps(config))
    assert_one_error_line(invoke(["evaluate", str(copy)]), 1, "no test/ folder", "--split validation")


def test_compute_metrics_by_hand():
    """Six classes: top-1, 3 and 5 accuracy; precision 0 for a class never predicted; F1;
    the confusion matrix with true classes as rows."""
    labels = tuple("abcdef")
    truth = np.array([0, 0, 1, 2, 5])
    probs = np.array([
        [0.5, 0.2, 0.1, 0.1, 0.05, 0.05],  # a -> a
        [0.1, 0.6, 0.1, 0.1, 0.05, 0.05],  # a -> b (a second)
        [0.1, 0.6, 0.1, 0.1, 0.05, 0.05],  # b -> b
        [0.4, 0.3, 0.2, 0.05, 0.03, 0.02],  # c -> a (c third)
        [0.3, 0.25, 0.2, 0.15, 0.06, 0.04],  # f -> a (f sixth)
    ])
    m = compute_metrics(truth, probs, labels)
    assert m["images"] == 5 and m["accuracy"] == pytest.approx(2 / 5)
    assert m["top_k_accuracy"] == pytest.approx({"1": 2 / 5, "3": 4 / 5, "5": 4 / 5})
    matrix = np.zeros((6, 6), int)
    matrix[0, 0] = matrix[0, 1] = matrix[1, 1] = matrix[2, 0] = matrix[5, 0] = 1
    assert m["confusion_matrix"] == matrix.tolist()
    a, b, c = m["per_class"]["a"], m["per_class"]["b"], m["per_class"]["c"]
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(1 / 3), 0.5, 2)
    assert a["f1"] == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    assert (b["precision"], b["recall"]) == (0.5, 1.0)
    assert (c["precision"], c["recall"], c["f1"]) == (0.0, 0.0, 0.0)
    assert m["per_class"]["d"]["support"] == 0
    # The macro average is over the classes present: a, b, c, f.
    assert m["macro_avg"]["recall"] == pytest.approx((0.5 + 1 + 0 + 0) / 4)
    assert top_k_values(3) == [1] and top_k_values(4) == [1, 3] and top_k_values(10) == [1, 3, 5]
