"""retrain/files.py: atomic writes, and the temporaries of dead processes."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from retrain.files import atomic_write, remove_stale, replacing, tmp_path


def test_atomic_write_replaces_whole_and_leaves_nothing(tmp_path):
    path = tmp_path / "a.json"
    atomic_write(path, "one")
    atomic_write(path, b"two")
    assert path.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    """An error while writing (a full disk, a bug) leaves the old content and no temporary."""
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with replacing(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("cut off")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_remove_stale_takes_only_dead_processes_temporaries(tmp_path):
    """A temporary named for a process of this host that is gone is removed; one of a live
    process, one of another host and a user's own dot-file stay."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    gone = tmp_path / f".rows.npy.{socket.gethostname()}.{dead}.tmp"
    live = tmp_path / tmp_path_name(tmp_path / "model.keras")
    other = tmp_path / ".rows.npy.elsewhere.1.tmp"
    mine = tmp_path / ".notes.tmp"
    for f in (gone, live, other, mine):
        f.write_text("x")
    assert remove_stale(tmp_path) == [gone]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in (live, other, mine))


def tmp_path_name(path):
    return tmp_path(path, ".keras").name
