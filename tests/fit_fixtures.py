"""Helpers for the `retrain fit` tests: toy image folders, CLI runs in and out of process,
history and model readers, a local TF Hub-style SavedModel.

Imported explicitly (`from fit_fixtures import ...`); nothing here is auto-used.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"cyan": (0, 255, 255), "magenta": (255, 0, 255), "yellow": (255, 255, 0)}
REPO = Path(__file__).resolve().parents[1]
# Real files (ImageNet weights, Quick, Draw! bitmaps) come from the `real_file` fixture (conftest.py).


# --- images and folders ----------------------------------------------------------------------

def noisy_colour(rgb, rng: np.random.Generator, size: int = 32, noise: float = 12.0) -> np.ndarray:
    """A size x size uint8 image of one colour plus a little Gaussian noise."""
    pixels = np.asarray(rgb, dtype=np.float64) + rng.normal(0.0, noise, (size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_colour_split(folder: Path, per_class: int, seed: int, classes=tuple(COLOURS),
                      size: int = 32) -> list[Path]:
    """folder/<colour>/<colour>_<i>.png, `per_class` noisy solid-colour images per class."""
    rng = np.random.default_rng(seed)
    written = []
    for name in classes:
        for i in range(per_class):
            written.append(write_png(folder / name / f"{name}_{i:03d}.png",
                                     noisy_colour(COLOURS[name], rng, size)))
    return written


def make_colour_data(root: Path, train: int = 8, validation: int = 4, seed: int = 0,
                     classes=tuple(COLOURS)) -> Path:
    """root/train/<colour>/ and root/validation/<colour>/ of 32 px noisy solid colours."""
    make_colour_split(root / "train", train, seed, classes)
    make_colour_split(root / "validation", validation, seed + 1, classes)
    return root


def shuffle_labels(root: Path, seed: int) -> None:
    """Reassign every image of each side (train/, validation/) to a random class folder,
    keeping each folder's image count: a permutation of the labels."""
    rng = np.random.default_rng(seed)
    for side in ("train", "validation"):
        files = sorted((root / side).glob("*/*.png"))
        folders = [f.parent for f in files]
        order = rng.permutation(len(files))
        staged = []
        for i, f in enumerate(files):
            tmp = root / side / f".{i}.png"
            f.rename(tmp)
            staged.append(tmp)
        for i, j in enumerate(order):
            staged[j].rename(folders[i] / f"img_{i:04d}.png")


# --- running the CLI -------------------------------------------------------------------------

def fit_args(data: Path, runs: Path, name: str, **flags) -> list[str]:
    """`fit` arguments for a quick tiny_cnn run on 32 px images; keyword flags override
    (underscores become dashes; a value of None drops the flag)."""
    values = {"backbone": "tiny_cnn", "weights": "none", "freeze": "none", "image_size": 32,
              "epochs": 2, "fine_tune_epochs": 2, "batch_size": 8, "learning_rate": 0.05,
              "fine_tune_learning_rate": 0.01, "schedule": "constant",
              # the settings these tests were written for, before issue 9's defaults
              "label_smoothing": 0.0, "validation_split": 0.2, "feature_shift": 0}
    values.update(flags)
    args = ["fit", "--data", str(data), "--runs-dir", str(runs), "--name", name]
    for key, value in values.items():
        if value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def invoke(args: list[str]):
    """Run the CLI in this process; -> typer's Result (stdout, stderr, exit_code, exception)."""
    import tensorflow as tf
    from typer.testing import CliRunner

    from retrain.cli import app

    # TensorFlow's logger keeps the stream it first writes to; make that the real stderr, not
    # the runner's capture (closed after the run, then "--- Logging error ---" on each warning).
    tf.get_logger()
    return CliRunner().invoke(app, args)


def assert_one_error_line(result, code: int, *needles: str) -> str:
    """The command failed with `code`, printing one `error:` line (no traceback) holding
    every needle; -> that line."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert lines[-1] == errors[0], result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_fit(args: list[str], log: Path) -> subprocess.Popen:
    """`python -m retrain <args>` in a new process, stdout and stderr to `log`."""
    out = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "retrain", *args], stdout=out, stderr=subprocess.STDOUT,
                            env=subprocess_env(), cwd=str(REPO))


def run_fit(args: list[str], log: Path, timeout: float = 300) -> str:
    """Run `python -m retrain <args>` to the end; assert success; -> its output."""
    proc = start_fit(args, log)
    code = proc.wait(timeout)
    text = log.read_text(errors="replace")
    assert code == 0, text
    return text


def kill_when(conditions: dict, timeout: float = 300, poll: float = 0.005) -> None:
    """{process: condition}: SIGKILL each process as soon as its `condition()` is true (all
    are polled together); fail if one ends first."""
    deadline = time.monotonic() + timeout
    waiting = dict(conditions)
    while waiting:
        for proc, condition in list(waiting.items()):
            if condition():
                proc.send_signal(signal.SIGKILL)
                assert proc.wait(60) == -signal.SIGKILL
                del waiting[proc]
            else:
                assert proc.poll() is None, f"{proc.args} ended before it could be killed"
        assert time.monotonic() < deadline, "timed out waiting to kill the runs"
        time.sleep(poll)


def history_rows(run: Path) -> int:
    """Rows (epochs) in run/history.csv so far."""
    try:
        return max(len((run / "history.csv").read_text().splitlines()) - 1, 0)
    except FileNotFoundError:
        return 0


def latest_checkpoint_number(run: Path) -> int | None:
    """The number of the checkpoint `run/ckpt/checkpoint` points at (None: none yet)."""
    try:
        text = (run / "ckpt" / "checkpoint").read_text()
    except FileNotFoundError:
        return None
    found = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', text, re.M)
    return int(found.group(1)) if found else None


RESUMED = re.compile(r"resuming .* from ckpt-(\d+): phase (\d), (\d+) epochs and (\d+) steps done")


def resumed_from(output: str) -> tuple[int, int, int, int]:
    """(checkpoint number, phase, epochs done, steps done) from a resumed run's output."""
    found = RESUMED.search(output)
    assert found, output
    return tuple(int(g) for g in found.groups())


# --- reading runs ----------------------------------------------------------------------------

def read_history(run: Path) -> list[dict[str, float]]:
    with open(run / "history.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def column(run: Path, name: str) -> np.ndarray:
    return np.asarray([row[name] for row in read_history(run)])


def load_model(path: Path):
    import keras

    import retrain.model  # noqa: F401 - registers HubFeatureVector for loading

    return keras.saving.load_model(str(path), compile=False)


def model_weights(path: Path) -> list[np.ndarray]:
    return [np.asarray(w) for w in load_model(path).get_weights()]


# --- a TF Hub-style image feature-vector module ----------------------------------------------

HUB_FEATURES = 6


def make_hub_module(path: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Save a tf.Module: images [b, h, w, 3] in [0, 1] -> relu(mean colour @ W + b), [b, 6].
    -> the initial (W, b)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    kernel = rng.normal(0, 1, (3, HUB_FEATURES)).astype(np.float32)
    bias = rng.normal(0, 0.1, (HUB_FEATURES,)).astype(np.float32)

    class Features(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(kernel, name="kernel")
            self.bias = tf.Variable(bias, name="bias")

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images):
            return tf.nn.relu(tf.reduce_mean(images, axis=[1, 2]) @ self.kernel + self.bias)

    tf.saved_model.save(Features(), str(path))
    return kernel, bias


def hub_features(images01: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The module's function in numpy."""
    return np.maximum(images01.mean(axis=(1, 2)) @ kernel + bias, 0)

