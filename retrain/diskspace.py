"""A full disk, whatever raised it, told as one line naming the folder being written. No TensorFlow.

A write that runs out of room fails as an OSError (ENOSPC, or EDQUOT over a quota) from
Python, h5py or Keras, or as a TensorFlow OpError whose message says "No space left on device"
(TF 2.21 raises ResourceExhaustedError from its checkpoint, SavedModel and summary writers).
A memory map is the exception: a page the disk cannot back is a SIGBUS that kills the process
with no message, so room for a map is checked, then reserved, before it is written.
"""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import zipfile
from pathlib import Path

from retrain.errors import DiskFullError

FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
FULL_MESSAGES = ("No space left on device", "Disk quota exceeded")
TODO = "free space there and rerun the same command (a fit whose run folder was made: `retrain fit --resume RUN`)"

_TEMPORARY = re.compile(r".+_temp|\..+\.(creating|tmp)")
# Where a TensorFlow or h5py message names the file it was writing.
_NAMED = (re.compile(r"(?:^|\s)(\S+); (?:No space left on device|Disk quota exceeded)"),
          re.compile(r"filename = '([^']+)'"))


def free_bytes(folder: Path) -> int | None:
    """Free bytes on the disk holding `folder` (or its nearest existing parent); None: unknown."""
    folder = Path(folder).absolute()
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def disk_full(folder: Path | None, needed: int | None = None, cause: object = None) -> DiskFullError:
    """The one-line error for a full disk under `folder`, with the bytes `needed` when known."""
    if folder is None:
        return DiskFullError("no space left on a disk being written", cause, TODO)
    free = free_bytes(folder)
    facts = [f"{free:,} bytes free" if free is not None else None,
             f"{needed:,} bytes needed" if needed is not None else None]
    return DiskFullError(f"no space left on the disk holding {folder}",
                         ", ".join(f for f in facts if f) or cause, TODO)


def check_room(folder: Path, needed: int) -> None:
    """A DiskFullError unless the disk holding `folder` has `needed` bytes free."""
    free = free_bytes(folder)
    if free is not None and free < needed:
        raise disk_full(folder, needed)


def reserve(path: Path, size: int) -> None:
    """Allocate the first `size` bytes of the file `path` on disk, so that writing them through
    a memory map cannot meet a full disk; a DiskFullError if they do not fit."""
    try:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, size)
    except OSError as err:
        if err.errno in FULL_ERRNOS:
            raise disk_full(path.parent, size) from None
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without it: checked only
            raise


def is_disk_full(err: BaseException) -> bool:
    """An OSError with ENOSPC/EDQUOT, or a TensorFlow error saying so (told by its module)."""
    if isinstance(err, OSError) and err.errno in FULL_ERRNOS:
        return True
    return type(err).__module__.startswith("tensorflow") and any(m in str(err) for m in FULL_MESSAGES)


def as_disk_full(err: BaseException) -> DiskFullError | None:
    """`err` (or what it was raised from) told as a DiskFullError; None when it is no full disk."""
    while err is not None and not isinstance(err, DiskFullError) and not is_disk_full(err):
        err = err.__cause__
    if err is None or isinstance(err, DiskFullError):
        return err
    written = _written_file(err)
    return disk_full(_folder_of(written) if written else None, cause=str(err).splitlines()[0][:200])


def _written_file(err: BaseException) -> str | None:
    """The file `err` failed to write: named by the error, or else the file open for writing in
    the innermost frame that holds one (Python's write() errors name no file)."""
    if isinstance(err, OSError) and err.filename:
        return os.fsdecode(err.filename)
    for pattern in _NAMED:
        found = pattern.search(str(err))
        if found:
            return found.group(1)
    frames, tb = [], err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in list(frame.f_locals.values()):
            if isinstance(value, zipfile.ZipFile) and value.mode != "r" and value.filename:
                return value.filename
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str) \
                    and any(c in getattr(value, "mode", "") for c in "wax+"):
                return value.name
    return None


def _folder_of(file: str) -> Path:
    """The folder a file was being written to, above staging folders: TensorFlow's `*_temp`,
    retrain's hidden `.<name>.<pid>.creating` or `.<name>.tmp`."""
    folder = Path(file).parent
    while _TEMPORARY.fullmatch(folder.name) and folder.parent != folder:
        folder = folder.parent
    return folder
