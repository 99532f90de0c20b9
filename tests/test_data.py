"""Image folders -> checked file lists with a stable split -> tf.data pipelines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fit_fixtures import make_colour_split, write_png
from retrain.data import (Split, class_weights, eval_dataset, in_validation, load_folders,
                          steps_per_epoch, train_dataset)
from retrain.errors import DatasetError


def _labels_match_folders(split: Split, names: tuple[str, ...]) -> bool:
    return all(Path(f).parent.name == names[c] for f, c in zip(split.files, split.labels))


def test_load_folders_train_validation_layout(tmp_path):
    """train/<label>/ + validation/<label>/: sorted class names, each file labelled by its
    folder, validation files only from validation/ (validation_split ignored)."""
    make_colour_split(tmp_path / "train", 4, 0, classes=("yellow", "cyan", "magenta"))
    make_colour_split(tmp_path / "validation", 2, 1, classes=("yellow", "cyan", "magenta"))
    data = load_folders(tmp_path, 0.5)
    assert data.class_names == ("cyan", "magenta", "yellow")
    assert data.num_classes == 3
    assert data.train.counts(3).tolist() == [4, 4, 4]
    assert data.validation.counts(3).tolist() == [2, 2, 2]
    assert all("/train/" in f for f in data.train.files)
    assert all("/validation/" in f for f in data.validation.files)
    assert _labels_match_folders(data.train, data.class_names)
    assert _labels_match_folders(data.validation, data.class_names)
    assert data.skipped == ()


def test_load_folders_single_tree_layout(tmp_path):
    """<label>/ alone: every file lands on exactly one side, chosen by the hash of its path
    relative to the data folder."""
    make_colour_split(tmp_path, 20, 0)
    data = load_folders(tmp_path, 0.3)
    every = sorted(data.train.files + data.validation.files)
    assert every == sorted(str(p) for p in tmp_path.glob("*/*.png"))
    for f in data.validation.files:
        assert in_validation(Path(f).relative_to(tmp_path).as_posix(), 0.3)
    for f in data.train.files:
        assert not in_validation(Path(f).relative_to(tmp_path).as_posix(), 0.3)
    assert 0 < len(data.validation.files) < len(data.train.files)
    assert _labels_match_folders(data.train, data.class_names)


def test_load_folders_ignores_hidden_and_other_files(tmp_path):
    """Hidden files and folders and non-image extensions are not images; subfolders of a
    class folder are part of that class."""
    make_colour_split(tmp_path / "train", 2, 0)
    make_colour_split(tmp_path / "validation", 1, 1)
    (tmp_path / "train" / "cyan" / "notes.txt").write_text("not an image")
    write_png(tmp_path / "train" / "cyan" / ".hidden.png", np.zeros((8, 8, 3), np.uint8))
    write_png(tmp_path / "train" / ".cache" / "x.png", np.zeros((8, 8, 3), np.uint8))
    write_png(tmp_path / "train" / "cyan" / "more" / "deep.png", np.zeros((8, 8, 3), np.uint8))
    data = load_folders(tmp_path, 0.2)
    assert data.class_names == ("cyan", "magenta", "yellow")
    assert data.train.counts(3).tolist() == [3, 2, 2]
    assert any(f.endswith("cyan/more/deep.png") for f in data.train.files)
    assert data.skipped == ()


def test_load_folders_skips_unreadable_files(tmp_path):
    """Garbage, truncated and mislabelled (TIFF named .png) files are left out and listed."""
    make_colour_split(tmp_path / "train", 3, 0)
    make_colour_split(tmp_path / "validation", 2, 1)
    good = tmp_path / "train" / "cyan" / "cyan_000.png"
    (tmp_path / "train" / "cyan" / "garbage.png").write_bytes(b"\x00not a png at all" * 10)
    (tmp_path / "train" / "magenta" / "cut.png").write_bytes(good.read_bytes()[:100])
    Image.new("RGB", (8, 8)).save(tmp_path / "validation" / "yellow" / "tiff.png", format="TIFF")
    data = load_folders(tmp_path, 0.2)
    assert [Path(f).name for f in data.skipped] == ["garbage.png", "cut.png", "tiff.png"]
    assert data.train.counts(3).tolist() == [3, 3, 3]
    assert data.validation.counts(3).tolist() == [2, 2, 2]
    assert not set(data.skipped) & set(data.train.files + data.validation.files)


@pytest.mark.parametrize("mode, fmt, value, expected", [
    ("L", "PNG", 100, (100, 100, 100)),
    ("LA", "PNG", (100, 255), (100, 100, 100)),
    ("RGBA", "PNG", (10, 20, 30, 255), (10, 20, 30)),
    ("P", "GIF", None, (200, 40, 0)),
    ("RGB", "BMP", (30, 60, 90), (30, 60, 90)),
    ("RGB", "JPEG", (30, 60, 90), (30, 60, 90)),
])
def test_eval_dataset_decodes_to_three_channels(tmp_path, mode, fmt, value, expected):
    """Grayscale, grayscale+alpha, RGBA, palette GIF, BMP and JPEG images all decode to
    size x size x 3 floats of their colour (0-255), resized to the requested size."""
    suffix = {"PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "JPEG": ".jpg"}[fmt]
    if mode == "P":
        image = Image.new("RGB", (20, 12), expected).quantize(2)
    else:
        image = Image.new(mode, (20, 12), value)
    for side in ("train", "validation"):
        for name in ("a", "b"):
            (tmp_path / side / name).mkdir(parents=True)
            image.save(tmp_path / side / name / f"img{suffix}", format=fmt)
    data = load_folders(tmp_path, 0.2)
    assert data.skipped == ()
    batches = list(eval_dataset(data.validation, 2, 16, 8).as_numpy_iterator())
    assert len(batches) == 1
    images, labels = batches[0]
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.float32
    np.testing.assert_allclose(images, np.broadcast_to(expected, images.shape),
                               atol=3 if fmt == "JPEG" else 0)
    np.testing.assert_array_equal(labels, np.eye(2))
    # The headers' size is what TensorFlow decodes, so the whole-batch resize serves them alike.
    assert data.validation.shape == (12, 20)
    (fast, fast_labels), = eval_dataset(data.validation, 2, 16, 8, skip_errors=False).as_numpy_iterator()
    np.testing.assert_array_equal(fast, images)
    np.testing.assert_array_equal(fast_labels, labels)


def test_load_folders_records_the_shape_all_files_share(tmp_path):
    """Split.shape: the (height, width) of every file of the split, None once one differs."""
    make_colour_split(tmp_path / "train", 3, 0, classes=("cyan", "magenta"))
    make_colour_split(tmp_path / "validation", 2, 1, classes=("cyan", "magenta"))
    data = load_folders(tmp_path, 0.2)
    assert data.train.shape == data.validation.shape == (32, 32)
    write_png(tmp_path / "validation" / "cyan" / "wide.png", np.zeros((32, 40, 3), np.uint8))
    data = load_folders(tmp_path, 0.2)
    assert data.train.shape == (32, 32) and data.validation.shape is None


def test_whole_batch_resize_gives_the_per_image_result(tmp_path):
    """With Split.shape the strict pipeline resizes whole batches: the very floats and labels
    of the image-by-image pipeline, short last batch included; a file of another shape raises
    tf.errors.InvalidArgumentError (it is not silently resized or dropped)."""
    import tensorflow as tf

    rng = np.random.default_rng(5)
    files = [str(write_png(tmp_path / f"{i}.png", rng.integers(0, 256, (10, 14, 3), np.uint8))) for i in range(5)]
    per_image = Split(tuple(files), np.arange(5) % 2)
    whole = Split(tuple(files), np.arange(5) % 2, (10, 14))
    for size in (8, 24):
        slow = list(eval_dataset(per_image, 2, size, 2, skip_errors=False).as_numpy_iterator())
        fast = list(eval_dataset(whole, 2, size, 2, skip_errors=False).as_numpy_iterator())
        assert [len(x) for x, _ in fast] == [2, 2, 1]
        for (a, la), (b, lb) in zip(slow, fast):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(la, lb)
    wrong = Split(tuple(files), np.arange(5) % 2, (14, 10))
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(eval_dataset(wrong, 2, 8, 2, skip_errors=False))


def test_class_weights_balance_classes():
    """Balanced weights n / (classes * n_c): each class's total weight is the same, n/classes."""
    labels = np.array([0] * 6 + [1] * 2 + [2] * 4)
    weights = class_weights(Split(tuple(map(str, range(12))), labels), 3)
    assert weights == pytest.approx({0: 12 / 18, 1: 2.0, 2: 1.0})
    totals = [weights[c] * n for c, n in enumerate(np.bincount(labels))]
    assert totals == pytest.approx([4.0, 4.0, 4.0])


def test_class_weights_are_one_when_balanced():
    labels = np.repeat(np.arange(4), 5)
    assert set(class_weights(Split(tuple(map(str, range(20))), labels), 4).values()) == {1.0}


@pytest.fixture(scope="module")
def numbered(tmp_path_factory) -> Split:
    """10 gray images whose gray level is 10 x their index; labels index % 2."""
    root = tmp_path_factory.mktemp("numbered")
    files = [write_png(root / f"{i:02d}.png", np.full((8, 8), 10 * i, np.uint8)) for i in range(10)]
    return Split(tuple(map(str, files)), np.arange(10) % 2)


def _order(ds) -> list[int]:
    """The image indices a dataset yields, batch after batch; checks the labels travel along."""
    order = []
    for images, labels in ds.as_numpy_iterator():
        found = [int(round(v / 10)) for v in images[:, 0, 0, 0]]
        assert labels.argmax(axis=1).tolist() == [i % 2 for i in found]
        order += found
    return order


def test_train_dataset_order_per_seed_and_epoch(numbered):
    """The same (seed, epoch) gives the same order; another epoch or seed another; every
    epoch is a permutation of the files."""
    one = _order(train_dataset(numbered, 2, 8, 4, 7, 3, 4))
    assert one == _order(train_dataset(numbered, 2, 8, 4, 7, 3, 4))
    assert sorted(one) == list(range(10))
    assert one != _order(train_dataset(numbered, 2, 8, 4, 7, 4, 5))
    assert one != _order(train_dataset(numbered, 2, 8, 4, 8, 3, 4))


def test_train_dataset_epochs_back_to_back(numbered):
    """Epochs [a, b) are the single epochs' orders one after another, and no batch straddles
    two epochs (the last batch of each epoch is short)."""
    # Each dataset is iterated once, as fit does (a second pass of the same object reshuffles).
    sizes = [len(b[0]) for b in train_dataset(numbered, 2, 8, 4, 7, 2, 4).as_numpy_iterator()]
    assert sizes == [4, 4, 2, 4, 4, 2]
    assert _order(train_dataset(numbered, 2, 8, 4, 7, 2, 4)) == (
        _order(train_dataset(numbered, 2, 8, 4, 7, 2, 3)) + _order(train_dataset(numbered, 2, 8, 4, 7, 3, 4)))


@pytest.mark.parametrize("skip", [1, 2])
def test_skip_batches_is_the_tail_of_the_epoch(numbered, skip):
    """skip_batches=k yields exactly what the un-skipped epoch yields after its first k
    batches, then the next epochs unchanged."""
    full = list(train_dataset(numbered, 2, 8, 4, 7, 5, 7).as_numpy_iterator())
    tail = list(train_dataset(numbered, 2, 8, 4, 7, 5, 7, skip).as_numpy_iterator())
    assert len(tail) == len(full) - skip
    for (a_images, a_labels), (b_images, b_labels) in zip(full[skip:], tail):
        np.testing.assert_array_equal(a_images, b_images)
        np.testing.assert_array_equal(a_labels, b_labels)


def test_steps_per_epoch_rounds_up(numbered):
    assert [steps_per_epoch(numbered, b) for b in (1, 3, 4, 5, 10, 64)] == [10, 4, 3, 2, 1, 1]


@pytest.mark.parametrize("layout", ["train-validation", "tree"])
def test_load_folders_errors(tmp_path, layout):
    """One class, an empty class and a missing folder are DatasetErrors naming the problem."""
    with pytest.raises(DatasetError, match="does not exist"):
        load_folders(tmp_path / "missing", 0.2)
    base = tmp_path / "train" if layout == "train-validation" else tmp_path
    make_colour_split(base, 3, 0, classes=("cyan",))
    if layout == "train-validation":
        make_colour_split(tmp_path / "validation", 3, 0, classes=("cyan",))
    with pytest.raises(DatasetError, match="at least 2 class folders"):
        load_folders(tmp_path, 0.5)
    (base / "magenta").mkdir()
    if layout == "train-validation":
        (tmp_path / "validation" / "magenta").mkdir()
    with pytest.raises(DatasetError, match="no readable train images.*magenta"):
        load_folders(tmp_path, 0.5)


@pytest.mark.parametrize("name", ["val", "valid", "validation"])
def test_load_folders_reads_val_and_valid_as_the_validation_split(tmp_path, name):
    """train/ + val/ (torchvision's ImageFolder sets, Imagenette) or valid/ (fastai) is the
    validation split, as validation/ is; nothing is split off train/ then."""
    make_colour_split(tmp_path / "train", 3, seed=0)
    make_colour_split(tmp_path / name, 2, seed=1)
    folders = load_folders(tmp_path, validation_split=0.5)
    assert len(folders.train.files) == 9 and len(folders.validation.files) == 6
    assert all(f"/{name}/" in f for f in folders.validation.files)
    assert folders.ignored == ()


def test_load_folders_refuses_two_validation_folders(tmp_path):
    make_colour_split(tmp_path / "train", 2, seed=0)
    make_colour_split(tmp_path / "val", 1, seed=1)
    make_colour_split(tmp_path / "validation", 1, seed=2)
    with pytest.raises(DatasetError, match=r"more than one validation folder \(received: validation/, val/\)"):
        load_folders(tmp_path, validation_split=0.5)


def test_load_folders_names_sibling_folders_it_does_not_read(tmp_path, runner):
    """A folder beside train/ that is no split fit or evaluate reads is named (fit says it,
    check warns), never silently ignored; test/ is evaluate's and not named."""
    from retrain.cli import app

    make_colour_split(tmp_path / "train", 3, seed=0)
    make_colour_split(tmp_path / "val", 2, seed=1)
    make_colour_split(tmp_path / "test", 1, seed=2)
    make_colour_split(tmp_path / "extra", 1, seed=3)
    folders = load_folders(tmp_path, validation_split=0.5)
    assert folders.ignored == (tmp_path / "extra",)
    result = runner.invoke(app, ["check", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "train/ + val/ + test/" in result.stdout
    assert "warning: ignoring extra/ beside train/" in result.stdout


def test_load_folders_keeps_out_what_it_is_told(tmp_path):
    """keep_out (a resumed run's files skipped when it began) leaves those files out, as if
    unreadable, though they read now."""
    make_colour_split(tmp_path / "train", 3, seed=0)
    make_colour_split(tmp_path / "validation", 2, seed=1)
    folders = load_folders(tmp_path, 0.5, keep_out=["train/cyan/cyan_001.png"])
    assert str(tmp_path / "train" / "cyan" / "cyan_001.png") not in folders.train.files
    assert folders.skipped == (str(tmp_path / "train" / "cyan" / "cyan_001.png"),)
    assert len(folders.train.files) == 8
