"""What retrain has learned about each image file, remembered between runs.

Checking that 50,000 images decode and hashing their bytes takes about 20 s here; a rerun
over unchanged files should cost 50,000 `stat` calls instead. As git's index does, a file's
facts (its image size if it decodes, the sha1 of its bytes) are trusted while its size, mtime
and ctime (in ns) are unchanged; any change, including a copy or a touch, makes them be
learned again. One JSON file per cache folder, written to a temporary file and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

from retrain.files import atomic_write

# A file changed within this many seconds of being indexed could change again within the
# same timestamp tick unnoticed (git's "racy" case): such facts are used but not remembered.
RACY_SECONDS = 2.0


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def _stamp(path: str) -> list[int] | None:
    """[size, mtime, ctime] of what `path` names; None when stat fails (a dangling symlink, a
    symlink loop, a file gone since the scan): its facts are computed each time, never kept."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class FileIndex:
    """Facts per file path, valid while the file's stamp is unchanged. `path` None: remember
    nothing (every fact is computed afresh, as with --no-cache)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, dict] = {}
        if path is not None and path.exists():
            try:
                self.entries = json.loads(path.read_text())
            except (OSError, ValueError):  # unreadable index: start over, it is only a memo
                self.entries = {}
        self.learned = 0  # facts computed (not remembered) by this object: tests count them

    def hashes(self, files: Iterable[str]) -> list[str]:
        return self.facts(list(files), "sha1", file_digest)

    def facts(self, files: list[str], fact: str, compute: Callable) -> list:
        """`compute(file)` (JSON-able) for each file, remembered under the name `fact`."""
        keys = [f if os.path.isabs(f) else os.path.abspath(f) for f in files]
        stamps = [_stamp(k) for k in keys]
        values, missing = [], []
        for i, (key, stamp) in enumerate(zip(keys, stamps)):
            entry = self.entries.get(key)
            if entry is None or entry["stamp"] != stamp:
                entry = self.entries[key] = {"stamp": stamp}
            if fact not in entry:
                missing.append(i)
            values.append(entry.get(fact))
        if missing:
            with ThreadPoolExecutor(8) as pool:  # reading and decoding release the GIL
                found = list(pool.map(compute, [files[i] for i in missing], chunksize=64))
            racy = time.time_ns() - int(RACY_SECONDS * 1e9)
            for i, value in zip(missing, found):
                values[i] = value
                if stamps[i] is not None and stamps[i][1] < racy and stamps[i][2] < racy:
                    self.entries[keys[i]][fact] = value
            self.learned += len(missing)
            self._save()
        return values

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps({k: v for k, v in self.entries.items() if len(v) > 1}))
