"""The cache home: where the bottleneck caches live, what each holds and is for, clearing the unused.

An entry is a dataset's cache folder (marked by `dataset.json`, written by retrain/cache.py
when fit first caches there) or a model key's folder in it (marked by `key.json`). Its last
use is the newest mtime among its files: fit touches `dataset.json` when it starts and a
split's pointer whenever it reads the rows. Clearing deletes, inside marked folders only, the
files the cache writes (by name, and a pointer by its content too), then the folders left
empty: anything else a user keeps there stays. No numpy, no TensorFlow: `retrain cache` is quick.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from retrain.errors import CacheError

DATASET_MARK = "dataset.json"  # in a dataset's cache folder: the data folders it serves
KEY_MARK = "key.json"  # in a model key's folder: the key (backbone, size, boundary, view...)
# What else the cache writes: the file index, split pointers, row files, temporaries.
_DATASET_FILES = re.compile(r"files\.json|\.(files|dataset)\.json\..+\.tmp")
_KEY_FILES = re.compile(r"\w+-[0-9a-f]{12}\.npy|\..+\.tmp")
_POINTER = re.compile(r"\w+\.json")


def cache_home() -> Path:
    """Where the caches live: $RETRAIN_CACHE_DIR, else $XDG_CACHE_HOME/retrain, else ~/.cache/retrain."""
    if os.environ.get("RETRAIN_CACHE_DIR"):
        return Path(os.environ["RETRAIN_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "retrain"


@dataclass(frozen=True)
class KeyEntry:
    """One model key's folder: the rows of each split for one backbone, size, boundary, view."""

    path: Path
    key: dict
    size: int  # bytes on disk of the cache's files in it
    last_used: float  # a time.time()

    def describe(self) -> str:
        k = self.key
        alpha = f" alpha {k['alpha']}" if k.get("alpha") is not None else ""
        weights = k.get("weights")
        if weights not in (None, "imagenet", "none") and not str(weights).startswith("hub:"):
            weights = f"file {str(weights)[:8]}"
        if k.get("weights") == "none" and k.get("seed") is not None:
            weights = f"none, seed {k['seed']}"
        parts = [f"{k.get('backbone')}{alpha}", f"{k.get('image_size')} px", str(k.get("boundary")),
                 f"via {k['via']}" if k.get("via") else "", f"view {k['view']}" if k.get("view") is not None else "",
                 f"augment {','.join(k['augment'])}" if k.get("augment") else "",
                 f"weights {weights}" if weights else "", "--init-from" if k.get("init_from") else ""]
        return ", ".join(p for p in parts if p)


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset's cache folder and its key folders. `marked` False: key folders found loose
    in the folder looked at (a cache made before dataset folders were marked)."""

    path: Path
    data: tuple[str, ...]  # the data folders it serves
    keys: tuple[KeyEntry, ...]
    size: int  # the keys' and its own files' bytes on disk
    last_used: float
    marked: bool = True


def list_cache(folder: Path) -> list[DatasetEntry]:
    """The entries in `folder`: the cache home (dataset folders in it) or one dataset's cache
    folder (as given to fit's --cache-dir). A folder that does not exist holds none."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CacheError("not a cache folder", str(folder),
                         "pass --cache-dir with the cache home or a folder given to fit's --cache-dir")
    if not folder.is_dir():
        return []
    if (folder / DATASET_MARK).is_file():
        return [_dataset(folder)]
    entries = [_dataset(sub) for sub in _subfolders(folder) if (sub / DATASET_MARK).is_file()]
    loose = tuple(_key(sub) for sub in _subfolders(folder) if (sub / KEY_MARK).is_file())
    if loose:
        entries.append(DatasetEntry(folder, (), loose, sum(k.size for k in loose),
                                    max(k.last_used for k in loose), marked=False))
    return entries


def clear_cache(folder: Path, older_than: float | None = None,
                now: float | None = None) -> list[tuple[Path, int]]:
    """Delete the entries in `folder` not used within `older_than` seconds (None: all); a dataset
    folder goes whole when nothing in it was. -> (folder, bytes freed) per entry removed; the
    folder itself stays when it holds anything not the cache's."""
    now = time.time() if now is None else now
    folder = Path(folder)

    def unused(entry) -> bool:
        return older_than is None or entry.last_used < now - older_than

    removed = []
    for dataset in list_cache(folder):
        whole = dataset.marked and unused(dataset)
        freed = 0
        for key in dataset.keys:
            if whole or unused(key):
                gone = _remove_own(key.path, _is_key_file, remove_folder=True)
                freed += gone
                if not whole:
                    removed.append((key.path, gone))
        if whole:
            freed += _remove_own(dataset.path, _is_dataset_file, remove_folder=dataset.path != folder)
            removed.append((dataset.path, freed))
    return removed


def format_listing(entries: list[DatasetEntry], folder: Path, now: float | None = None) -> str:
    """`retrain cache ls`: a line per dataset folder, one per key folder under it, a total."""
    now = time.time() if now is None else now
    if not entries:
        return f"nothing cached in {folder}"
    lines = [f"{'size':>10}  {'last used':<26}  what"]
    for dataset in entries:
        serves = f"data {', '.join(dataset.data)}" if dataset.data else \
            "no dataset.json: key folders of an older cache"
        lines.append(f"{_size(dataset.size):>10}  {_when(dataset.last_used, now):<26}  {dataset.path}  ({serves})")
        for key in dataset.keys:
            lines.append(f"{_size(key.size):>10}  {_when(key.last_used, now):<26}    {key.path.name}  "
                         f"{key.describe()}")
    total = sum(d.size for d in entries)
    lines.append(f"{_size(total):>10}  total: {total:,} bytes in {len(entries)} dataset folder(s), "
                 f"{sum(len(d.keys) for d in entries)} key folder(s)")
    return "\n".join(lines)


def format_cleared(removed: list[tuple[Path, int]], folder: Path, older_than: str | None) -> str:
    """`retrain cache clear`: what went and the bytes freed."""
    if not removed:
        within = f" unused for {older_than}" if older_than else ""
        return f"nothing{within} to remove in {folder}"
    freed = sum(n for _, n in removed)
    kept = " (the folder stays: it holds files not the cache's)"
    lines = [f"removed {path} ({_size(n)}){kept if path.exists() and path != folder else ''}"
             for path, n in removed]
    return "\n".join([*lines, f"freed {_size(freed)} ({freed:,} bytes)"])


# --- reading and removing ---------------------------------------------------------------------

def _subfolders(folder: Path) -> list[Path]:
    """Real folders directly in `folder` (a symlink is never followed: what it points at is not ours)."""
    return sorted(Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False))


def _own_files(folder: Path, is_own) -> list[os.DirEntry]:
    return [e for e in os.scandir(folder) if e.is_file(follow_symlinks=False) and is_own(folder, e.name)]


def _is_key_file(folder: Path, name: str) -> bool:
    if name == KEY_MARK or _KEY_FILES.fullmatch(name):
        return True
    return bool(_POINTER.fullmatch(name)) and _is_pointer(folder / name)


def _is_pointer(path: Path) -> bool:
    """A split's pointer: {"file": <a row file>, "hashes": [...]}."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(value, dict) and set(value) == {"file", "hashes"}


def _is_dataset_file(folder: Path, name: str) -> bool:
    return name == DATASET_MARK or bool(_DATASET_FILES.fullmatch(name))


def _usage(files: list[os.DirEntry]) -> tuple[int, float]:
    """(bytes on disk, newest mtime) of `files`."""
    stats = [f.stat(follow_symlinks=False) for f in files]
    return sum(s.st_blocks * 512 for s in stats), max((s.st_mtime for s in stats), default=0.0)


def _key(folder: Path) -> KeyEntry:
    size, last = _usage(_own_files(folder, _is_key_file))
    try:
        key = json.loads((folder / KEY_MARK).read_text())
    except ValueError:
        key = {}
    return KeyEntry(folder, key if isinstance(key, dict) else {}, size, last)


def _dataset(folder: Path) -> DatasetEntry:
    keys = tuple(_key(sub) for sub in _subfolders(folder) if (sub / KEY_MARK).is_file())
    size, last = _usage(_own_files(folder, _is_dataset_file))
    try:
        data = json.loads((folder / DATASET_MARK).read_text()).get("data", [])
    except (ValueError, AttributeError):
        data = []
    return DatasetEntry(folder, tuple(map(str, data)), keys, size + sum(k.size for k in keys),
                        max([last, *(k.last_used for k in keys)]))


def _remove_own(folder: Path, is_own, remove_folder: bool) -> int:
    """Delete the cache's own files in `folder`, then the folder if that left it empty; -> bytes freed.
    The mark goes last, so a folder cleared halfway is still known to be the cache's."""
    files = sorted(_own_files(folder, is_own), key=lambda e: e.name in (KEY_MARK, DATASET_MARK))
    freed, _ = _usage(files)
    for entry in files:
        Path(entry.path).unlink(missing_ok=True)
    if remove_folder:
        try:
            folder.rmdir()
        except OSError:  # something of the user's is in it: it stays, and so does the folder
            pass
    return freed


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _when(stamp: float, now: float) -> str:
    age = max(now - stamp, 0)
    ago = f"{age / 86400:.0f}d" if age >= 86400 else f"{age / 3600:.0f}h" if age >= 3600 else f"{age / 60:.0f}m"
    return f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(stamp))} ({ago} ago)"
