"""Hostile files (tests/hostile_files.py) through check, fit, evaluate and predict: never a
traceback, never a hang, the documented exit code, and each file either used (decoded in
training as predict decodes it, EXIF orientation included) or skipped and named.

The commands run as subprocesses with a timeout: a FIFO named .png blocks a naive open()
forever, in a thread of the pre-flight's pool where nothing in-process could stop it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fit_fixtures import REPO, fit_args, subprocess_env
from hostile_files import GOOD_TRAIN, GOOD_VALIDATION, NOT_UTF8, write_corpus, write_good

# The hostile files fit trains on (or validates on); every other one is skipped and named,
# except the hidden file, which is no candidate at all (hidden files never are).
USED = {f"train/cyan/{name}" for name in (
    "cmyk.jpg", "progressive.jpg", "16-bit.png", "palette-transparent.png", "animated.gif",
    *(f"exif-orientation-{o}.jpg" for o in range(2, 9)), "x.jpg", NOT_UTF8,
    "trailing-garbage.jpg", "corrupt-exif.jpg", "one-pixel.png", "very-wide.png", "png-named.jpg",
    "UPPER.JPG", "bitmap.bmp", "rgba.png", "grayscale.png")} | {"validation/cyan/exif-orientation-6.jpg",
                                                                "validation/cyan/cmyk.jpg"}
# Mode 000 keeps a file from anyone but root, who reads it as any other.
USED |= {"train/cyan/mode-000.png"} if os.geteuid() == 0 else set()
IGNORED = {"train/cyan/.hidden.png"}
# Pillow reads these (predict classifies them); TensorFlow does not, so fit skips them.
PILLOW_ONLY = {"train/cyan/webp-named.jpg", "train/cyan/tiff-named.jpg"}
TIMEOUT = 120


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("hostile") / "data"
    return root, write_corpus(root)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> tuple[Path, str]:
    """A tiny run fitted on the corpus; -> (run folder, fit's output). One epoch on images
    (--no-cache): the training and the validation pipelines both decode every file."""
    root, _ = corpus
    runs = tmp_path_factory.mktemp("runs")
    done = retrain(fit_args(root, runs, "hostile", epochs=1, fine_tune_epochs=0) + ["--no-cache"])
    assert done.returncode == 0, done.stderr
    return runs / "hostile", done.stdout + done.stderr


@pytest.fixture(scope="module")
def used_run(corpus, trained) -> list[subprocess.CompletedProcess]:
    """evaluate (on train/, where most hostile files are) and predict (on the whole corpus)."""
    root, _ = corpus
    run, _ = trained
    return [retrain(["evaluate", str(run), "--data", str(root / "train")]),
            retrain(["predict", str(run), str(root), "--json"])]


def retrain(args: list[str]) -> subprocess.CompletedProcess:
    """`python -m retrain ARGS` with a timeout (a hang fails the test); no traceback allowed.
    Output decoded as the file names in it are: bytes that are not UTF-8 as surrogates."""
    done = subprocess.run([sys.executable, "-m", "retrain", *args], capture_output=True, text=True,
                          errors="surrogateescape", env=subprocess_env(), cwd=str(REPO), timeout=TIMEOUT)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done


def skipped(made: dict[str, str]) -> set[str]:
    return set(made) - USED - IGNORED


def shown(root: Path, relative: str) -> str:
    """A corpus path as the commands print it."""
    return os.fsencode(str(root / relative)).decode("utf-8", "backslashreplace")


def test_the_corpus_is_hostile_enough(corpus):
    _, made = corpus
    assert len(skipped(made)) >= 15 and len(made) >= 25


def test_check_names_every_skipped_file_with_what_is_wrong(corpus):
    root, made = corpus
    done = retrain(["check", str(root)])
    assert done.returncode == 0, done.stderr
    named = {line.split(": ")[0].strip() for line in done.stdout.splitlines() if line.startswith("  ")}
    assert named == {shown(root, f) for f in skipped(made)}
    assert f"warning: {len(skipped(made))} unreadable file(s), skipped by fit: " in done.stdout
    bomb = next(line for line in done.stdout.splitlines() if line.startswith("  ") and "cyan/bomb.png" in line)
    assert "decompression bomb" in bomb
    counts = re.search(r"^cyan +(\d+) +(\d+)$", done.stdout, re.M).groups()
    assert counts == (str(GOOD_TRAIN + sum(f.startswith("train/cyan/") for f in USED)),
                      str(GOOD_VALIDATION + sum(f.startswith("validation/cyan/") for f in USED)))


def test_check_of_a_single_tree_with_a_name_that_is_not_utf8(corpus):
    """train/ alone as a <label>/ tree: the split hashes every path, the odd one included."""
    root, _ = corpus
    done = retrain(["check", str(root / "train"), "--validation-split", "0.5"])
    assert done.returncode == 0, done.stderr


def test_fit_trains_on_the_usable_files_and_names_the_others(corpus, trained):
    root, made = corpus
    run, output = trained
    assert f"skipped {len(skipped(made))} unreadable image(s): " in output
    named = output.split("skipped ", 1)[1].split(": ", 1)[1].splitlines()[0].split(" and ")[0].split(", ")
    assert {n.replace("\\udc", "\\x") for n in named} <= {shown(root, f) for f in skipped(made)}
    facts = json.loads((run / "run.json").read_text())
    classes = 3
    assert facts["train_images"] == classes * GOOD_TRAIN + sum(f.startswith("train/") for f in USED)
    assert facts["validation_images"] == classes * GOOD_VALIDATION + sum(f.startswith("validation/") for f in USED)
    assert (run / "model.keras").is_file()


def test_evaluate_skips_and_names_the_unreadable(corpus, trained, used_run):
    """As fit: the count of skipped files, the first few named (retrain.data.describe_skipped).
    misclassified.csv takes a name that is not UTF-8 as its bytes."""
    root, made = corpus
    run, _ = trained
    done = used_run[0]
    assert done.returncode == 0, done.stderr
    train_skipped = {f for f in skipped(made) if f.startswith("train/")}
    assert f"skipped {len(train_skipped)} unreadable image(s): " in done.stderr
    named = done.stderr.split("unreadable image(s): ", 1)[1].splitlines()[0].split(" and ")[0].split(", ")
    assert {n.replace("\\udc", "\\x") for n in named} <= {shown(root, f) for f in train_skipped}
    images = 3 * GOOD_TRAIN + sum(f.startswith("train/") for f in USED)
    assert f"{images} images from" in done.stdout
    assert (run / "eval" / "data-train" / "misclassified.csv").is_file()


def test_predict_classifies_what_pillow_reads_and_names_the_rest(corpus, used_run):
    """Exit 1 (some image could not be read), one error line per such file, a row for each other."""
    root, made = corpus
    done = used_run[1]
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    unreadable = skipped(made) - PILLOW_ONLY
    assert len(errors) == len(unreadable)
    for relative in unreadable:
        assert sum(f"(received: {shown(root, relative)})" in line for line in errors) == 1, relative
    rows = {row["file"]: row for row in json.loads(done.stdout)}
    for relative in (USED - {"train/cyan/x.jpg"}) | PILLOW_ONLY | {"train/cyan/x.jpg/inside.png"}:
        assert "predictions" in rows[str(root / relative)], relative


def test_training_decodes_each_used_file_as_predict_does(corpus):
    """The TF pipeline (fit, evaluate, extraction) and predict's Pillow loader agree on every
    used file; for the EXIF-oriented JPEGs, on the image as shown, not as stored."""
    from PIL import Image

    from retrain.data import Split, eval_dataset, load_folders
    from retrain.prediction import load_image, to_rgb

    root, _ = corpus
    data = load_folders(root, 0.2)
    files = data.train.files + data.validation.files
    piped = {}
    for images, positions in eval_dataset(Split(files, np.arange(len(files))), None, 32, 64):
        piped.update((files[i], image) for i, image in zip(positions.numpy(), images.numpy()))
    assert len(piped) == len(files)
    for relative in USED - {"train/cyan/x.jpg"}:
        path = str(root / relative)
        assert np.abs(piped[path] - load_image(Path(path), 32)).mean() < 3, relative  # JPEG decoders differ a little
        if "exif-orientation" in relative:
            import tensorflow as tf

            with Image.open(path) as image:
                stored = tf.image.resize(np.asarray(to_rgb(image)), (32, 32)).numpy()
            assert np.abs(piped[path] - stored).mean() > 20, relative


def test_an_empty_class_folder_is_refused_in_one_line(tmp_path):
    write_good(tmp_path / "data")
    for side in ("train", "validation"):
        (tmp_path / "data" / side / "empty").mkdir()
    done = retrain(["check", str(tmp_path / "data")])
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0 and "empty" in done.stderr
    done = retrain(fit_args(tmp_path / "data", tmp_path / "runs", "refused"))
    assert done.returncode == 1 and "empty" in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error: ")] == \
        [done.stderr.strip().splitlines()[-1]]
