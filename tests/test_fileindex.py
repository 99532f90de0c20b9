"""The file index: facts about image files remembered by (size, mtime, ctime), as git does."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from retrain import fileindex
from retrain.data import load_folders
from retrain.fileindex import FileIndex, file_digest


@pytest.fixture
def not_racy(monkeypatch):
    """Files in tests are seconds old; let the index remember them anyway."""
    monkeypatch.setattr(fileindex, "RACY_SECONDS", 0.0)


def _images(root, per_class=4):
    for c, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (colour[0], i * 10, colour[2])).save(root / c / f"{i}.png")
    return root


def test_second_scan_learns_nothing_and_agrees(tmp_path, not_racy):
    data = _images(tmp_path / "data")
    first = FileIndex(tmp_path / "files.json")
    folders = load_folders(data, 0.25, first)
    files = list(folders.train.files)
    hashes = first.hashes(files)
    assert first.learned == 8 + len(files)
    again = FileIndex(tmp_path / "files.json")
    second = load_folders(data, 0.25, again)
    assert (second.train.files, second.validation.files) == (folders.train.files, folders.validation.files)
    assert again.hashes(files) == hashes == [file_digest(f) for f in files]
    assert again.learned == 0


def test_a_changed_file_is_learned_again(tmp_path, not_racy):
    data = _images(tmp_path / "data")
    files = sorted(str(p) for p in data.rglob("*.png"))
    FileIndex(tmp_path / "files.json").hashes(files)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(files[0])  # new bytes, new stamp
    again = FileIndex(tmp_path / "files.json")
    hashes = again.hashes(files)
    assert again.learned == 1
    assert hashes[0] == file_digest(files[0])


def test_a_repaired_file_becomes_readable(tmp_path, not_racy):
    data = _images(tmp_path / "data")
    broken = data / "red" / "0.png"
    broken.write_bytes(b"not a png")
    assert str(broken) in load_folders(data, 0.25, FileIndex(tmp_path / "files.json")).skipped
    Image.new("RGB", (8, 8)).save(broken)
    again = FileIndex(tmp_path / "files.json")
    assert load_folders(data, 0.25, again).skipped == ()
    assert again.learned == 1


def test_fresh_files_are_not_remembered(tmp_path):
    """Written this second: a later change within the same timestamp tick could go unseen."""
    data = _images(tmp_path / "data")
    files = sorted(str(p) for p in data.rglob("*.png"))
    FileIndex(tmp_path / "files.json").hashes(files)
    again = FileIndex(tmp_path / "files.json")
    again.hashes(files)
    assert again.learned == len(files)


def test_a_damaged_index_is_ignored(tmp_path, not_racy):
    data = _images(tmp_path / "data")
    (tmp_path / "files.json").write_text("{not json")
    index = FileIndex(tmp_path / "files.json")
    assert len(load_folders(data, 0.25, index).train.files) > 0
    assert len(json.loads((tmp_path / "files.json").read_text())) == 8
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_without_a_path_nothing_is_written(tmp_path, not_racy):
    data = _images(tmp_path / "data")
    index = FileIndex(None)
    load_folders(data, 0.25, index)
    load_folders(data, 0.25, index)
    assert index.learned == 8  # remembered in memory only
    assert sorted(os.listdir(tmp_path)) == ["data"]
