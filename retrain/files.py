"""Writing a file so that no reader ever sees half of it: a temporary name beside it, then a
rename. The one helper every module writes through. No TensorFlow.

`os.replace` is atomic on POSIX within a file system: a reader sees the old file or the new
one. The temporary name is unique to the process on its host (several workers, possibly on
several hosts sharing a folder, may write the same file at once), hidden, and removed
whatever happens (a full disk, an exception), so nothing half-written is left to trust.
"""

from __future__ import annotations

import os
import re
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def tmp_path(path: Path, suffix: str = "") -> Path:
    """A temporary name beside `path`, unique to this process on this host; `suffix` for
    writers that insist on one (Keras saves only to a name ending in .keras)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp{suffix}")


@contextmanager
def replacing(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write `path`'s new content to; when the block ends without
    an error it is renamed onto `path`, otherwise removed."""
    tmp = tmp_path(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, data: str | bytes, errors: str | None = None) -> None:
    """Write text (UTF-8; `errors` as for str.encode) or bytes to `path`, all or nothing."""
    with replacing(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8", errors=errors)


def remove_stale(folder: Path) -> list[Path]:
    """Remove the temporaries that processes of this host left in `folder` when they died
    (kill -9, a power cut: no `finally` ran). Ours by their name (tmp_path's), and provably
    abandoned: the process id in the name is not running. -> what was removed."""
    host = socket.gethostname()
    pattern = re.compile(rf"\..+\.{re.escape(host)}\.(\d+)\.tmp(\.\w+)?")
    removed = []
    for path in Path(folder).glob(".*.tmp*"):
        found = pattern.fullmatch(path.name)
        if found and path.is_file() and not running(int(found.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def try_lock(path: Path, wait_s: float = 0.0) -> int | None:
    """Take an exclusive lock on the file `path` (made if missing), trying for up to `wait_s`,
    and write our pid in it; -> its descriptor (closing it, or the process ending however it
    ends, releases the lock), or None when another process holds it."""
    import fcntl
    import time

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.02)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def is_locked(path: Path) -> bool:
    """Whether a live process holds `path`'s lock (try_lock's): the kernel drops a dead one's.
    The test takes the lock for an instant and writes nothing, so a holder-to-be that finds it
    taken should try again for a moment (try_lock's wait_s)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` for the block, waiting for it if need be."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
