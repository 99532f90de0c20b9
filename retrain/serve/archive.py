"""An uploaded archive -> a folder of <label>/<image> files, written all or nothing. No TensorFlow.

The archive comes from a stranger, so nothing in it is trusted: its kind is read from its
content; one unsafe member (an absolute name, a `..`, a link, a device) refuses it whole; bytes
are counted as decompression produces them, not read from headers; and all lands in a hidden
folder beside `dest`, renamed to `dest` only when all went well and removed otherwise. Only
images are written; other files are listed as skipped, macOS and Windows litter dropped unlisted.
"""

from __future__ import annotations

import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Callable, Iterator

from retrain.data import IMAGE_EXTENSIONS, TEST_FOLDER, VALIDATION_FOLDERS
from retrain.errors import DatasetError

CHUNK = 1 << 20
SPLIT_FOLDERS = {"train", TEST_FOLDER, *VALIDATION_FOLDERS}  # data.py's layout: never a wrapper
JUNK = {".ds_store", "thumbs.db"}
TODO = "send a .zip or .tar.gz of <label>/<image> folders"
# What reading a damaged archive raises (bz2: a bare OSError; zipfile: NotImplementedError for a
# method it lacks). Only reads are wrapped, so a full disk while writing stays the OSError it is.
_DAMAGED = (zipfile.BadZipFile, tarfile.TarError, zlib.error, lzma.LZMAError, EOFError, OSError,
            NotImplementedError)

Member = tuple[str, bool, int, Callable[[], IO[bytes]]]  # name, is a folder, declared size, open


@dataclass(frozen=True)
class UnpackLimits:
    max_bytes: int  # bytes written, counted as produced; headers declaring more are refused first
    max_files: int  # member files: images written plus files skipped


@dataclass(frozen=True)
class Unpacked:
    root: Path  # the folder for `retrain check` or fit: dest, or the lone wrapper folder in it
    files: int  # image files written
    bytes: int  # bytes written
    skipped: tuple[str, ...]  # members not written because they are not images, sorted


def unpack(archive: Path, dest: Path, limits: UnpackLimits) -> Unpacked:
    """Write the images of `archive` (.zip, or .tar plain or gz/bz2/xz) into `dest`, which must
    not exist yet. On any failure, an interrupt or a full disk included, nothing is left."""
    archive, dest = Path(archive), Path(dest)
    if os.path.lexists(dest):
        raise DatasetError("the folder to unpack into already exists", dest, "pick a new one")
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.tmp"
    tmp.mkdir()  # exists: an unpack of this process into the same dest is under way; leave it be
    try:
        tmp.chmod(0o755)
        with _members(archive) as members:
            files, written, skipped = _write(members, tmp, limits, archive)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Unpacked(_root(dest), files, written, tuple(sorted(skipped)))


def _write(members: Iterator[Member], folder: Path, limits: UnpackLimits, archive: Path):
    """Check every member and write the images under `folder` -> (files, bytes, skipped)."""
    seen: set[str] = set()
    made: set[Path] = set()
    skipped: list[str] = []
    files = written = declared = 0
    for name, is_folder, size, open_member in members:
        parts = _parts(name)
        if is_folder or not parts:
            continue  # folders are made as their images need them, so no empty ones
        path = "/".join(parts)
        if path in seen:
            raise DatasetError("the archive holds two files of the same name", path, TODO)
        seen.add(path)
        # Every file counts, junk and skipped ones too: a tar is decompressed to pass over them.
        if len(seen) > limits.max_files:
            raise DatasetError(f"the archive holds more than {limits.max_files:,} files", path,
                               "send fewer files, or ask the operator to raise --max-upload-files")
        declared += size
        if declared > limits.max_bytes:
            raise _too_big(limits.max_bytes, f"{declared:,} bytes declared by its headers")
        if _junk(parts):
            continue  # macOS's and Windows' own files: not written, not listed
        hidden = any(p.startswith(".") for p in parts)
        if hidden or Path(path).suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append(path)
            continue
        with _create(folder, parts, made) as out:
            with _reading(archive):
                src = open_member()
            with src:
                written = _copy(src, out, written, limits.max_bytes, archive)
        files += 1
    return files, written, skipped


def _copy(src: IO[bytes], out: IO[bytes], written: int, limit: int, archive: Path) -> int:
    """Copy one member in chunks, counting what decompression really produces -> the bytes
    written so far; refused before writing the chunk that would take the total past `limit`."""
    while True:
        with _reading(archive):
            chunk = src.read(CHUNK)
        if not chunk:
            return written
        written += len(chunk)
        if written > limit:
            raise _too_big(limit, f"{archive.name}: more than that produced while unpacking")
        out.write(chunk)


@contextmanager
def _members(archive: Path) -> Iterator[Iterator[Member]]:
    """The members of a zip or a tar, told apart by content, each refused if not a plain file
    or folder."""
    with open(archive, "rb") as f:
        head = f.read(8)
    # a zip cut short has lost its directory at the end, not its first bytes: call it damaged
    is_zip = zipfile.is_zipfile(archive) or head.startswith(b"PK\x03\x04")
    if not (is_zip or tarfile.is_tarfile(archive)):
        raise DatasetError("the upload is not a .zip or .tar(.gz) archive",
                           f"{archive.stat().st_size:,} bytes starting {head!r}", TODO)
    with _reading(archive):
        opened = zipfile.ZipFile(archive) if is_zip else tarfile.open(archive, "r:*")
    with opened:
        yield _zip_members(opened) if is_zip else _tar_members(opened, archive)


def _zip_members(opened: zipfile.ZipFile) -> Iterator[Member]:
    for info in opened.infolist():
        if stat.S_ISLNK(info.external_attr >> 16):
            _refuse(info.filename, "a symbolic link")
        if info.flag_bits & 0x1:
            raise DatasetError("the archive holds a file locked by a password", info.filename,
                               "send it without a password")
        is_folder = info.filename.endswith(("/", "\\"))
        yield info.filename, is_folder, info.file_size, partial(opened.open, info)


def _tar_members(opened: tarfile.TarFile, archive: Path) -> Iterator[Member]:
    while True:
        with _reading(archive):
            member = opened.next()
        if member is None:
            return
        if member.issym() or member.islnk():
            _refuse(member.name, "a link")
        if not (member.isreg() or member.isdir()):
            _refuse(member.name, "a device, pipe or other special file")
        yield member.name, member.isdir(), member.size, partial(opened.extractfile, member)


def _parts(name: str) -> list[str]:
    """A member name -> its path parts under the folder; refused if it could point elsewhere."""
    posix = name.replace("\\", "/")  # zips made on Windows may separate with backslashes
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    drive = posix[1:2] == ":"  # C:\ or C: from Windows
    if "\0" in name or posix.startswith("/") or drive or ".." in parts:
        _refuse(name, "an absolute name or a `..` that leads out of its folder")
    if any(len(p.encode(errors="surrogateescape")) > 255 for p in parts) or len(posix.encode(errors="surrogateescape")) > 1024:
        _refuse(name[:80] + "...", "a name longer than a disk takes (255 bytes a part, 1,024 in all)")
    return parts


def _junk(parts: list[str]) -> bool:
    """What macOS (Finder's __MACOSX/, ._ resource forks, .DS_Store) and Windows add unasked."""
    return "__MACOSX" in parts or parts[-1].startswith("._") or parts[-1].lower() in JUNK


def _create(root: Path, parts: list[str], made: set[Path]) -> IO[bytes]:
    """A new file at `parts` under `root`, its folders made as needed; modes 0o644 and 0o755
    whatever the archive or the umask say."""
    path = root
    try:
        for part in parts[:-1]:
            path = path / part
            if path not in made:
                path.mkdir()
                path.chmod(0o755)
                made.add(path)
        path = path / parts[-1]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise DatasetError("the archive holds a file and a folder of the same name",
                           "/".join(parts), TODO) from None
    os.chmod(path, 0o644)
    return open(fd, "wb")


def _root(folder: Path) -> Path:
    """Go down through lone wrapper folders (zipping a folder gives `flowers/<label>/<image>`),
    but never into a split folder nor into a folder that holds only files."""
    while True:
        entries = list(folder.iterdir())
        if len(entries) != 1 or not entries[0].is_dir() or entries[0].name in SPLIT_FOLDERS \
                or not any(e.is_dir() for e in entries[0].iterdir()):
            return folder
        folder = entries[0]


@contextmanager
def _reading(archive: Path) -> Iterator[None]:
    try:
        yield
    except _DAMAGED as err:
        raise DatasetError("the archive is damaged or cut short", f"{archive.name}: {err}",
                           "create it again and upload it again") from None


def _refuse(name: str, why: str) -> None:
    raise DatasetError(f"the archive holds {why}, which is never unpacked", repr(name),
                       "send an archive of plain folders and image files with relative names")


def _too_big(limit: int, received: str) -> DatasetError:
    return DatasetError(f"the archive unpacks to more than {limit:,} bytes", received,
                        "send a smaller archive, or ask the operator to raise --max-unpacked")
