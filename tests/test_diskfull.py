"""A full disk: every command ends with one `error:` line naming the folder being written (and
the bytes needed, where known), exit 1, no traceback, no partial file a later run would trust;
the same command succeeds once space is freed.

Each test mounts a real small tmpfs (root only; skipped with the reason otherwise) and fills
it with one file, leaving a chosen number of bytes free; removing the file frees the space.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fit_fixtures import assert_one_error_line, fit_args, invoke, make_colour_data
from retrain.cache import SplitCache
from retrain.diskspace import as_disk_full
from retrain.errors import DiskFullError


@pytest.fixture
def disk(tmp_path):
    """-> mount(size) -> a fresh tmpfs of `size` bytes under tmp_path; unmounted at teardown."""
    mounted = []

    def mount(size: int = 2 << 20) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                                  capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("needs root and the mount command to mount a tmpfs: no mount command here")
        if done.returncode != 0:
            said = " ".join(done.stderr.split()) or f"exit {done.returncode}"  # one line
            pytest.skip(f"needs root to mount a tmpfs (mount -t tmpfs): {said}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def fill(point: Path, leave: int = 0) -> Path:
    """A file taking all but `leave` bytes of the disk at `point`; -> its path (delete it to free)."""
    filler = point / "filler"
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(shutil.disk_usage(point).free - leave, 1))
    return filler


def tmp_files(folder: Path) -> list[str]:
    """What a failed write could leave: temporaries of retrain, TensorFlow and Keras."""
    return sorted(str(p) for p in folder.rglob("*") if p.name.endswith((".tmp", ".creating", "_temp"))
                  or ".tmp." in p.name or "tempstate" in p.name)


# --- the library: the cache's memory map, the errors told ----------------------------------

def test_cache_checks_the_room_for_its_memory_map(disk):
    """A cache file that does not fit is refused before the map is made (a full disk under a
    map is a SIGBUS), naming the folder and the bytes needed; nothing is left; after freeing,
    the same call writes the rows."""
    point = disk()
    folder = point / "key"
    folder.mkdir()
    filler = fill(point, leave=64 << 10)
    files, hashes = [f"f{i}" for i in range(8)], [f"{i:040x}" for i in range(8)]

    def extract(wanted):
        yield np.ones((len(wanted), 64, 64, 4), np.float32), np.arange(len(wanted))

    cache = SplitCache(folder, "train")
    with pytest.raises(DiskFullError) as caught:
        cache.ensure(files, hashes, extract)
    message = str(caught.value)
    assert f"no space left on the disk holding {folder}" in message and "bytes needed" in message, message
    assert sorted(p.name for p in folder.iterdir()) == []
    filler.unlink()
    rows = cache.ensure(files, hashes, extract)
    assert rows.shape == (8, 64, 64, 4) and float(rows.min()) == 1.0


def test_disk_full_errors_name_the_folder_being_written(disk):
    """Python's write error (no file name), TensorFlow's (ResourceExhaustedError in TF 2.21)
    and Keras' model save each become one DiskFullError naming the folder."""
    import keras
    import tensorflow as tf

    point = disk(256 << 10)
    (point / "runs").mkdir()
    fill(point)
    with pytest.raises(OSError) as python_error:
        (point / "runs" / "notes.txt").write_text("x" * 100_000)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(1024)])
    with pytest.raises(tf.errors.OpError) as tf_error:
        tf.train.Checkpoint(model=model).save(str(point / "runs" / "ckpt" / "ckpt"))
    assert type(tf_error.value).__name__ == "ResourceExhaustedError"
    with pytest.raises(OSError) as keras_error:
        model.save(str(point / "runs" / "model.keras"))
    for caught, folder in ((python_error, "runs"), (tf_error, "runs/ckpt"), (keras_error, "runs")):
        told = as_disk_full(caught.value)
        assert told is not None and f"no space left on the disk holding {point / folder} " in str(told), str(told)
    assert as_disk_full(ValueError("No space left on device")) is None  # not an OSError, not TensorFlow's


# --- the commands --------------------------------------------------------------------------

def test_fit_whose_cache_does_not_fit(disk, tmp_path):
    """The cache on a full disk: one line naming the key folder and the bytes needed, no
    temporary left; after freeing, --resume finishes the run on a complete cache."""
    point = disk()
    data = make_colour_data(tmp_path / "data", train=4, validation=2)
    filler = fill(point, leave=64 << 10)
    args = fit_args(data, tmp_path / "runs", "full", freeze="block1_out", epochs=1, fine_tune_epochs=1,
                    cache_dir=point / "cache")
    line = assert_one_error_line(invoke(args), 1, f"no space left on the disk holding {point / 'cache'}/",
                                 "bytes needed", "--resume")
    assert not tmp_files(point) and not list(point.rglob("*.npy")), line
    filler.unlink()
    result = invoke(["fit", "--resume", str(tmp_path / "runs" / "full")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "full" / "model.keras").is_file()
    assert len(list(point.rglob("*.npy"))) == 4  # activations and features, train and validation


def test_fit_whose_runs_dir_is_full(disk, tmp_path):
    """No room for the run folder's records: one line naming the runs folder; no run folder or
    temporary is left, so the same command succeeds once the space is freed."""
    point = disk()
    data = make_colour_data(tmp_path / "data", train=4, validation=2)
    filler = fill(point)
    args = fit_args(data, point / "runs", "full", epochs=1, fine_tune_epochs=0)
    assert_one_error_line(invoke(args), 1, f"no space left on the disk holding {point / 'runs'} ")
    assert not (point / "runs" / "full").exists() and not tmp_files(point)
    filler.unlink()
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert (point / "runs" / "full" / "model.keras").is_file()


def test_fit_whose_checkpoints_do_not_fit(disk, tmp_path):
    """Room for the run folder but not its checkpoints: TensorFlow's error becomes one line
    naming a folder of the run; --resume then finishes it."""
    point = disk()
    data = make_colour_data(tmp_path / "data", train=4, validation=2)
    filler = fill(point, leave=24 << 10)
    args = fit_args(data, point / "runs", "full", epochs=1, fine_tune_epochs=0)
    assert_one_error_line(invoke(args), 1, f"no space left on the disk holding {point / 'runs' / 'full'}")
    filler.unlink()
    result = invoke(["fit", "--resume", str(point / "runs" / "full")])
    assert result.exit_code == 0, result.output
    assert (point / "runs" / "full" / "model.keras").is_file()


def test_prepare_cifar_on_a_full_disk(disk, cifar10):
    """prepare-cifar: one line naming the dataset folder; no half-written split or manifest is
    left; the same command then succeeds."""
    point = disk()
    filler = fill(point, leave=48 << 10)
    args = ["prepare-cifar", "--source", str(cifar10.path), "--root", str(point), "--workers", "1"]
    assert_one_error_line(invoke(args), 1, f"no space left on the disk holding {point / 'cifar10'}")
    out = point / "cifar10"
    assert not (out / "manifest.json").exists() and not tmp_files(point), sorted(out.iterdir())
    filler.unlink()
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").is_file()
