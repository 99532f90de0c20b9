"""Cached bottleneck features: the frozen part's output, computed once per image and reused.

Where: in the cache home ($RETRAIN_CACHE_DIR, else $XDG_CACHE_HOME/retrain, else
~/.cache/retrain), one folder per dataset (`<data folder name>-<hash of its resolved path>`,
so that two datasets never share a file index), or the folder --cache-dir names. It holds
`dataset.json` (the data folders it serves: the mark that the folder is the cache's, written
at each fit, so its mtime is the last use) and `files.json` (retrain/fileindex.py).

Layout: `<cache_dir>/<key>/` per model key (backbone, alpha, weights file hash, image size,
boundary layer, view); in it, per split, `<split>.json` (the pointer: which `.npy` file holds
the rows and the content hash of the image in each row) and `<split>-<digest>.npy` (float16
rows, read memory-mapped). A write goes to a temporary file, is renamed into place, and only
then does the pointer (itself written then renamed) name it, so a half-written cache is never
read. Rows are looked up by each image's content hash: a changed image recomputes its row only.
Reading a split's rows touches its pointer, so the pointer's mtime is the split's last use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from retrain.cachehome import DATASET_MARK, KEY_MARK, cache_home
from retrain.diskspace import FULL_ERRNOS, check_room, disk_full, reserve
from retrain.errors import CacheError, DatasetError
from retrain.faultpoints import reached
from retrain.fileindex import file_digest
from retrain.files import atomic_write, remove_stale, replacing
from retrain.progress import bar


def weights_digest(weights: str) -> str:
    """What identifies the starting weights: a file's content hash, or the word."""
    return file_digest(weights) if weights not in ("imagenet", "none") else weights


def default_cache_dir(data_dir: str | Path) -> Path:
    """The dataset's folder in the cache home: data/cifar10 -> <home>/cifar10-<8 hex>, the hex
    from its resolved path, so two folders both named cifar10 do not share one file index."""
    data = Path(data_dir).resolve()
    digest = hashlib.sha1(str(data).encode()).hexdigest()[:8]
    return cache_home() / f"{data.name or 'data'}-{digest}"


def open_cache_dir(root: Path, data_dir: str | Path) -> Path:
    """Make the cache folder `root`, and mark it as serving `data_dir` (its last use: now) by
    writing its mark, which also proves it writable; -> the path of its file index. A
    CacheError when it cannot be made or written, so fit fails before any work, in one line."""
    mark, data = root / DATASET_MARK, str(Path(data_dir).resolve())
    if not Path(data).is_dir():  # no such dataset: its check says so, and no folder is made for it
        return root / "files.json"
    try:
        root.mkdir(parents=True, exist_ok=True)
        served = _read_json(mark).get("data", []) if mark.is_file() else []
        atomic_write(mark, json.dumps({"data": [*served, data] if data not in served else served}, indent=2))
    except OSError as err:
        if err.errno in FULL_ERRNOS:
            raise disk_full(root, cause=err.strerror) from None
        raise CacheError("the cache folder cannot be made or written", f"{root}: {err.strerror or err}",
                         "pass --cache-dir with a writable folder, or --no-cache") from None
    return root / "files.json"


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except ValueError:  # a damaged mark: rewritten
        return {}
    return value if isinstance(value, dict) else {}


def key_folder(root: Path, key: dict) -> Path:
    """The folder for one model key; `key.json` inside says what it is."""
    text = json.dumps(key, sort_keys=True)
    folder = root / hashlib.sha1(text.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / KEY_MARK).exists():
        atomic_write(folder / KEY_MARK, json.dumps(key, indent=2, sort_keys=True))
    return folder


class SplitCache:
    """The cached rows of one split under one model key."""

    def __init__(self, folder: Path, split: str):
        self.folder, self.split = folder, split
        self.pointer = folder / f"{split}.json"
        self.computed = 0  # rows computed by the last `ensure` (tests count them)

    def _read(self) -> tuple[np.ndarray | None, list[str]]:
        # Another writer (a second worker) may repoint and delete the file between our reading
        # the pointer and opening the file: then read the new pointer.
        for _ in range(3):
            if not self.pointer.exists():
                return None, []
            meta = json.loads(self.pointer.read_text())
            try:
                return np.load(self.folder / meta["file"], mmap_mode="r"), meta["hashes"]
            except FileNotFoundError:
                continue
        return None, []

    def ensure(self, files: list[str], hashes: list[str],
               extract: Callable[[list[str]], Iterable[tuple[np.ndarray, np.ndarray]]],
               dtype=np.float16) -> np.ndarray:
        """The rows for `files` (in that order), memory-mapped; computes only missing ones.

        `extract(files)` yields (rows, positions in `files`) batch by batch; a file it cannot
        decode yields no row, and then nothing is saved and a DatasetError names it.
        """
        old, old_hashes = self._read()
        if old is not None and old_hashes == hashes:
            self.computed = 0
            with contextlib.suppress(OSError):  # the last-use stamp is a hint for `retrain cache clear`
                os.utime(self.pointer)
            return old
        remove_stale(self.folder)  # rows a killed extraction was writing
        where = {h: i for i, h in enumerate(old_hashes)} if old is not None else {}
        missing = [i for i, h in enumerate(hashes) if h not in where]
        digest = hashlib.sha1("".join(hashes).encode()).hexdigest()[:12]
        final = self.folder / f"{self.split}-{digest}.npy"
        with replacing(final) as tmp:
            self._write(tmp, files, hashes, missing, where, old, extract, dtype)
        reached("cache-file-written")  # the rows are in place; no pointer names them yet
        previous = json.loads(self.pointer.read_text())["file"] if self.pointer.exists() else None
        atomic_write(self.pointer, json.dumps({"file": final.name, "hashes": hashes}))
        if previous and previous != final.name:
            (self.folder / previous).unlink(missing_ok=True)
        self.computed = len(missing)
        return np.load(final, mmap_mode="r")

    def _write(self, tmp: Path, files, hashes, missing, where, old, extract, dtype) -> None:
        rows, seen = None, np.zeros(len(missing), dtype=bool)
        with bar(f"features {self.split}", len(missing)) as b:
            for batch, positions in extract([files[i] for i in missing]):
                if rows is None:
                    rows = _open_rows(tmp, dtype, (len(files),) + batch.shape[1:])
                rows[[missing[p] for p in positions]] = batch.astype(dtype)
                seen[positions] = True
                b.advance(len(batch))
                reached("extract-batch")
        if not seen.all():
            failed = [files[missing[p]] for p in np.flatnonzero(~seen)]
            raise DatasetError(f"{len(failed)} image(s) passed the checks but cannot be decoded",
                               ", ".join(failed[:5]), "remove or replace them and rerun")
        if rows is None:  # nothing to compute: every row is reused
            rows = _open_rows(tmp, dtype, (len(files),) + old.shape[1:])
        for start in range(0, len(files), 4096):  # reuse old rows, a chunk at a time
            span = range(start, min(start + 4096, len(files)))
            keep = [i for i in span if hashes[i] in where]
            if keep:
                rows[keep] = old[[where[hashes[i]] for i in keep]]
        rows.flush()


def _open_rows(path: Path, dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A new .npy file of `shape`, memory-mapped for writing, its space checked and reserved
    first: a full disk under a memory map is a SIGBUS that kills the process, not an error."""
    needed = int(np.prod(shape)) * np.dtype(dtype).itemsize + 4096  # + the .npy header, at most
    check_room(path.parent, needed)
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    reserve(path, path.stat().st_size)
    return rows
