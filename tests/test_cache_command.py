"""Where the cache lives, and `retrain cache ls` / `retrain cache clear`: listing what each
entry is for, clearing the unused, and never deleting anything that is not the cache's own.

The caches here are made by the library (no TensorFlow), except one by a tiny fit.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fit_fixtures import assert_one_error_line, fit_args, invoke, make_colour_data
from retrain.cache import SplitCache, default_cache_dir, key_folder, open_cache_dir
from retrain.cachehome import cache_home
from retrain.cli import app

DAY = 86400


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def make_cache(root: Path, data: Path, boundaries=("features", "layer 4")) -> dict[str, Path]:
    """A dataset's cache folder as fit makes it: the mark, a file index, a key folder per
    boundary with train rows; -> boundary -> key folder."""
    data.mkdir(parents=True, exist_ok=True)
    (open_cache_dir(root, data)).write_text("{}")
    folders = {}
    for boundary in boundaries:
        folders[boundary] = key_folder(root, {"version": 1, "backbone": "tiny_cnn", "alpha": None,
                                              "image_size": 32, "boundary": boundary, "weights": "none",
                                              "seed": 0, "init_from": None, "view": None})
        SplitCache(folders[boundary], "train").ensure(
            ["a", "b"], ["1" * 40, "2" * 40], lambda files: iter([(np.ones((len(files), 8)), np.arange(len(files)))]))
    return folders


def age(folder: Path, days: float) -> None:
    """Make every file directly in `folder` look last used `days` ago."""
    stamp = time.time() - days * DAY
    for f in folder.iterdir():
        if f.is_file():
            os.utime(f, (stamp, stamp))


# --- where the cache lives -------------------------------------------------------------------

def test_default_cache_dir_is_per_dataset_in_the_cache_home(tmp_path, monkeypatch):
    """<home>/<data folder name>-<hash of its resolved path>: the same folder however it is
    written, another folder of the same name elsewhere apart; the home from RETRAIN_CACHE_DIR,
    else XDG_CACHE_HOME/retrain, else ~/.cache/retrain."""
    for sub in ("a/toy", "b/toy"):
        (tmp_path / sub).mkdir(parents=True)
    monkeypatch.setenv("RETRAIN_CACHE_DIR", str(tmp_path / "home"))
    one = default_cache_dir(tmp_path / "a" / "toy")
    assert one.parent == tmp_path / "home" and one.name.startswith("toy-") and len(one.name) == len("toy-") + 8
    assert default_cache_dir(f"{tmp_path}/a/../a/toy/") == one
    assert default_cache_dir(tmp_path / "b" / "toy") != one
    monkeypatch.delenv("RETRAIN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_home() == tmp_path / "xdg" / "retrain"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert cache_home() == tmp_path / "user" / ".cache" / "retrain"


def test_fit_caches_in_the_home_and_refuses_an_unwritable_one(tmp_path, monkeypatch):
    """A cache home that cannot be made: one error line naming it and saying what to do,
    before any work; with a writable home the fit caches there, marked with its data folder."""
    data = make_colour_data(tmp_path / "data", train=2, validation=1)
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("RETRAIN_CACHE_DIR", str(tmp_path / "a-file" / "home"))
    args = fit_args(data, tmp_path / "runs", "one", freeze="all", epochs=1, fine_tune_epochs=0)
    line = assert_one_error_line(invoke(args), 1, str(tmp_path / "a-file" / "home"), "--cache-dir", "--no-cache")
    assert line.startswith("error: the cache folder cannot be made or written"), line
    assert not (tmp_path / "runs").exists()
    monkeypatch.setenv("RETRAIN_CACHE_DIR", str(tmp_path / "home"))
    result = invoke(args)
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "home").iterdir()
    assert folder == default_cache_dir(data)
    assert json.loads((folder / "dataset.json").read_text()) == {"data": [str(data.resolve())]}
    listing = cli("cache", "ls").stdout
    assert str(folder) in listing and f"data {data.resolve()}" in listing and "tiny_cnn, 32 px, features" in listing


# --- ls --------------------------------------------------------------------------------------

def test_ls_lists_each_dataset_and_key_with_size_last_use_and_purpose(tmp_path):
    home = tmp_path / "home"
    keys = make_cache(home / "toy-00000000", tmp_path / "toy")
    make_cache(home / "other-11111111", tmp_path / "other", boundaries=("features",))
    result = cli("cache", "ls", "--cache-dir", str(home))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["size", "last", "used", "what"]
    assert any(str(home / "toy-00000000") in line and f"(data {tmp_path / 'toy'})" in line for line in lines)
    key_line = next(line for line in lines if keys["layer 4"].name in line)
    assert "tiny_cnn, 32 px, layer 4, weights none, seed 0" in key_line and "KiB" in key_line
    assert lines[-1].split()[2:] == ["total:", lines[-1].split()[3], "bytes", "in", "2", "dataset", "folder(s),",
                                     "3", "key", "folder(s)"]
    # the folder given to fit's --cache-dir lists the same way; nothing cached says so
    assert str(keys["features"].name) in cli("cache", "ls", "--cache-dir", str(home / "toy-00000000")).stdout
    assert cli("cache", "ls", "--cache-dir", str(tmp_path / "none")).stdout.strip() == \
        f"nothing cached in {tmp_path / 'none'}"


# --- last use and clear ----------------------------------------------------------------------

def test_reading_rows_counts_as_use(tmp_path):
    """A cache hit touches the split's pointer: old rows read today are not unused."""
    root = tmp_path / "cache"
    folder = make_cache(root, tmp_path / "toy", boundaries=("features",))["features"]
    age(folder, 40)
    before = (folder / "train.json").stat().st_mtime
    SplitCache(folder, "train").ensure(["a", "b"], ["1" * 40, "2" * 40], lambda files: iter(()))
    assert (folder / "train.json").stat().st_mtime > before + 30 * DAY


def test_clear_older_than_removes_only_the_unused(tmp_path):
    """--older-than 30d: a key folder unused for 40 days goes; a recently used one stays, and
    so does its dataset folder; a dataset folder unused for 40 days goes whole."""
    home = tmp_path / "home"
    keys = make_cache(home / "toy-00000000", tmp_path / "toy")
    old = make_cache(home / "old-22222222", tmp_path / "old")
    age(keys["layer 4"], 40)
    for folder in (home / "old-22222222", *old.values()):
        age(folder, 40)
    result = cli("cache", "clear", "--older-than", "30d", "--cache-dir", str(home))
    assert result.exit_code == 0, result.output
    assert sorted(line.split()[1] for line in result.stdout.splitlines()[:-1]) == \
        sorted([str(keys["layer 4"]), str(home / "old-22222222")])
    assert result.stdout.splitlines()[-1].startswith("freed ")
    assert not keys["layer 4"].exists() and not (home / "old-22222222").exists()
    assert (keys["features"] / "train.json").is_file() and (home / "toy-00000000" / "files.json").is_file()
    assert cli("cache", "clear", "--older-than", "30d", "--cache-dir", str(home)).stdout.strip() == \
        f"nothing unused for 30d to remove in {home}"


def test_clear_never_deletes_what_is_not_the_caches(tmp_path):
    """Clearing everything leaves the user's files wherever they are: beside the dataset
    folders, in a folder of their own, inside a dataset or key folder (which then stay), and
    behind a symlink (never followed), even one to a folder that looks like a cache."""
    home = tmp_path / "home"
    keys = make_cache(home / "toy-00000000", tmp_path / "toy")
    outside = make_cache(tmp_path / "elsewhere", tmp_path / "else", boundaries=("features",))
    mine = {home / "notes.txt": "mine", home / "mine" / "train.json": '{"file": "x", "hashes": []}',
            home / "mine" / "train-0123456789ab.npy": "mine", home / "toy-00000000" / "notes.txt": "mine",
            keys["features"] / "results.json": "{}", keys["features"] / "plot.png": "mine"}
    for path, text in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (home / "link").symlink_to(tmp_path / "elsewhere")
    before_outside = sorted(p.relative_to(tmp_path) for p in (tmp_path / "elsewhere").rglob("*"))
    result = cli("cache", "clear", "--cache-dir", str(home))
    assert result.exit_code == 0, result.output
    assert all(path.read_text() == text for path, text in mine.items())
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "elsewhere").rglob("*")) == before_outside
    assert outside["features"].is_dir()
    assert sorted(p.name for p in keys["features"].iterdir()) == ["plot.png", "results.json"]
    assert sorted(p.name for p in (home / "toy-00000000").iterdir()) == [keys["features"].name, "notes.txt"]
    assert f"removed {home / 'toy-00000000'} (" in result.stdout and "the folder stays" in result.stdout
    assert not keys["layer 4"].exists()


def test_clear_refuses_a_bad_age(tmp_path):
    result = cli("cache", "clear", "--older-than", "soon", "--cache-dir", str(tmp_path))
    assert_one_error_line(result, 2, "--older-than", "(received: soon)")
