"""`retrain runs` and `retrain plot`: listing run folders, and the training curves."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from fit_fixtures import assert_one_error_line, invoke, read_history, subprocess_env
from run_fixtures import copy_run, trained_run
from retrain.runs import list_runs


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory)


@pytest.fixture
def runs_dir(run, tmp_path) -> Path:
    """finished (the toy), resumable (its copy without model.keras), empty (records only),
    broken (config.json only) and a folder that is not a run."""
    root = tmp_path / "runs"
    copy_run(run, root / "a-finished")
    (copy_run(run, root / "b-resumable") / "model.keras").unlink()
    empty = root / "c-empty"
    empty.mkdir()
    for name in ("config.json", "labels.txt", "run.json"):
        shutil.copy(run / name, empty / name)
    broken = root / "d-broken"  # killed while its records were being written
    broken.mkdir()
    shutil.copy(run / "config.json", broken / "config.json")
    (root / "not-a-run").mkdir()
    return root


def test_runs_lists_each_run(runs_dir):
    """One line per run: name, backbone, freeze point, epochs done of planned, the validation
    accuracy of the best epoch (lowest validation loss), status; folders without config.json
    are left out."""
    result = invoke(["runs", "--runs-dir", str(runs_dir)])
    assert result.exit_code == 0, (result.output, result.exception)
    header, *lines = result.stdout.splitlines()
    assert header.split()[:2] == ["name", "backbone"]
    assert [line.split()[0] for line in lines] == ["a-finished", "b-resumable", "c-empty", "d-broken"]
    rows = read_history(runs_dir / "a-finished")
    best = min(rows, key=lambda row: row["val_loss"])["val_accuracy"]
    for line, status in zip(lines, ("finished", "resumable", "empty")):
        assert line.split()[-1] == status
        assert "tiny_cnn" in line and "none: 0/12 layers" in line
    assert f"4/4 {best:12.4f}" in lines[0]
    assert lines[2].split()[-3:] == ["0/4", "-", "empty"]
    assert lines[3].split()[-1] == "broken"
    summaries = list_runs(runs_dir)
    assert [(s.epochs_done, s.status) for s in summaries] == [(4, "finished"), (4, "resumable"), (0, "empty"),
                                                              (0, "broken")]


def test_runs_needs_no_tensorflow(runs_dir):
    """Listing reads small files only: TensorFlow is not imported."""
    code = ("import sys; from typer.testing import CliRunner; from retrain.cli import app; "
            f"r = CliRunner().invoke(app, ['runs', '--runs-dir', {str(runs_dir)!r}]); "
            "assert r.exit_code == 0, r.output; print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=subprocess_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_runs_errors(tmp_path):
    assert_one_error_line(invoke(["runs", "--runs-dir", str(tmp_path / "nothing")]), 1,
                          "runs folder does not exist")
    result = invoke(["runs", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0 and result.stdout.strip() == "no runs"


def test_curves_written_by_fit_and_by_plot(run, tmp_path):
    """fit wrote curves.png; `retrain plot` writes it again; the fine-tuning line sits after
    the run's 2 head epochs (read from the last checkpoint)."""
    from retrain.plots import fine_tune_start

    assert (run / "curves.png").is_file()
    copy = copy_run(run, tmp_path / "run")
    (copy / "curves.png").unlink()
    result = invoke(["plot", str(copy)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.strip() == str(copy / "curves.png")
    with Image.open(copy / "curves.png") as image:
        assert image.format == "PNG" and image.size == (1100, 420)
    assert fine_tune_start(copy, 4) == 2
    shutil.rmtree(copy / "ckpt")
    assert fine_tune_start(copy, 4) is None  # no checkpoint: no line rather than a guess
    assert_one_error_line(invoke(["plot", str(tmp_path)]), 1, "not a run folder")
