"""retrain.serve.archive: an uploaded archive unpacked safely, all or nothing."""

from __future__ import annotations

import errno
import io
import stat
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrain.errors import DatasetError
from retrain.serve import archive
from retrain.serve.archive import UnpackLimits, unpack

LIMITS = UnpackLimits(max_bytes=10 << 20, max_files=100)
MB = 1 << 20


def _png(seed: int = 0) -> bytes:
    """A 16 px noise PNG (noise, so a compressed archive of a few stays a few KB)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


IMAGES = {"red/0.png": _png(0), "red/1.png": _png(1), "blue/0.png": _png(2)}


def _zip(path: Path, members) -> Path:
    """members: (name or ZipInfo, bytes) pairs."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def _tar(path: Path, members, mode: str = "w:gz") -> Path:
    """members: (name, bytes) pairs or TarInfo headers without data."""
    with tarfile.open(path, mode) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return path


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def _zip_symlink() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("red/link.png")
    info.create_system = 3  # unix, whose high 16 bits of external_attr are st_mode
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _zip_encrypted(path: Path) -> None:
    """A zip whose last member is marked encrypted (zipfile cannot encrypt; the mark is read)."""
    data = bytearray(_zip(path, [FIRST, ("red/1.png", IMAGES["red/1.png"])]).read_bytes())
    data[data.rindex(b"PK\x01\x02") + 8] |= 0x1  # the directory entry's flag bits
    path.write_bytes(bytes(data))


@pytest.fixture
def jail(tmp_path) -> Path:
    """The folder dest is made in, apart from the archive, so stray writes show."""
    (tmp_path / "jail").mkdir()
    return tmp_path / "jail"


def _assert_nothing_left(jail: Path) -> None:
    assert list(jail.iterdir()) == []  # neither dest nor a .data.<pid>.tmp folder


@pytest.mark.parametrize("mode", ["zip", "w:gz", "w:bz2", "w:xz", "w"])
def test_unpacks_label_folders(tmp_path, jail, mode):
    """<label>/<png> in any supported kind, read by content (the upload has no suffix): every
    image written byte for byte, modes 0o644/0o755, root is dest."""
    upload = tmp_path / "upload"
    members = list(IMAGES.items())
    _zip(upload, members) if mode == "zip" else _tar(upload, members, mode)
    got = unpack(upload, jail / "data", LIMITS)
    assert got.root == jail / "data"
    assert (got.files, got.bytes, got.skipped) == (3, sum(map(len, IMAGES.values())), ())
    assert sorted(p.name for p in got.root.iterdir()) == ["blue", "red"]
    for name, data in IMAGES.items():
        assert (got.root / name).read_bytes() == data
        assert stat.S_IMODE((got.root / name).stat().st_mode) == 0o644
    assert stat.S_IMODE((got.root / "red").stat().st_mode) == 0o755
    assert [p.name for p in jail.iterdir()] == ["data"]


def test_root_goes_down_a_wrapper_folder_but_not_into_splits(tmp_path, jail):
    wrapped = _zip(tmp_path / "a.zip", [(f"flowers/{n}", d) for n, d in IMAGES.items()])
    assert unpack(wrapped, jail / "a", LIMITS).root == jail / "a" / "flowers"
    splits = [(f"{side}/{n}", d) for side in ("train", "validation") for n, d in IMAGES.items()]
    assert unpack(_zip(tmp_path / "b.zip", splits), jail / "b", LIMITS).root == jail / "b"
    nested = [(f"data/{n}", d) for n, d in splits]
    assert unpack(_zip(tmp_path / "c.zip", nested), jail / "c", LIMITS).root == jail / "c" / "data"
    lone_train = _zip(tmp_path / "d.zip", [(f"train/{n}", d) for n, d in IMAGES.items()])
    assert unpack(lone_train, jail / "d", LIMITS).root == jail / "d"


def test_non_images_are_skipped_and_listed_junk_is_dropped(tmp_path, jail):
    members = [("red/0.png", IMAGES["red/0.png"]), ("notes.txt", b"hi"), ("red/labels.csv", b"a"),
               (".hidden/x.png", b"x"), ("red/.x.png", b"x"), ("__MACOSX/red/._0.png", b"x"),
               ("red/._1.png", b"x"), ("red/.DS_Store", b"x"), ("Thumbs.db", b"x"), ("blue/", b"")]
    got = unpack(_zip(tmp_path / "a.zip", members), jail / "data", LIMITS)
    assert got.skipped == (".hidden/x.png", "notes.txt", "red/.x.png", "red/labels.csv")
    assert got.files == 1
    written = sorted(str(p.relative_to(got.root)) for p in got.root.rglob("*"))
    assert written == ["red", "red/0.png"]  # no empty blue/: folders come with their images


def _damaged_zip(path: Path) -> None:
    whole = _zip(path, list(IMAGES.items())).read_bytes()
    path.write_bytes(whole[: len(whole) // 2])


def _damaged_tgz(path: Path) -> None:
    whole = _tar(path, list(IMAGES.items())).read_bytes()
    path.write_bytes(whole[: len(whole) * 2 // 3])


FIRST = ("red/0.png", IMAGES["red/0.png"])  # written before the bad member, so cleanup shows
REFUSALS = {
    "zip ..": (lambda p: _zip(p, [FIRST, ("../evil.png", b"x")]), "'../evil.png'"),
    "zip absolute": (lambda p: _zip(p, [FIRST, (str(p.parent / "abs.png"), b"x")]), "absolute"),
    "zip a/../..": (lambda p: _zip(p, [FIRST, ("a/../../x.png", b"x")]), "'a/../../x.png'"),
    "zip drive": (lambda p: _zip(p, [FIRST, ("C:\\evil.png", b"x")]), "absolute"),
    "zip backslash": (lambda p: _zip(p, [FIRST, ("\\evil.png", b"x")]), "absolute"),
    "zip backslash ..": (lambda p: _zip(p, [FIRST, ("..\\..\\evil.png", b"x")]), "absolute"),
    "zip symlink": (lambda p: _zip(p, [FIRST, (_zip_symlink(), "../../evil.png")]), "link"),
    "zip encrypted": (_zip_encrypted, "password"),
    "zip duplicate": (lambda p: _zip(p, [FIRST, ("red\\0.png", b"x")]), "same name"),
    "zip file and folder": (lambda p: _zip(p, [FIRST, ("red/0.png/1.png", b"x")]), "same name"),
    "tar ..": (lambda p: _tar(p, [FIRST, ("../../evil.png", b"x")]), "'../../evil.png'"),
    "tar symlink": (lambda p: _tar(p, [FIRST, _special("a.png", tarfile.SYMTYPE, "/etc/passwd")]), "link"),
    "tar hardlink": (lambda p: _tar(p, [FIRST, _special("a.png", tarfile.LNKTYPE, "red/0.png")]), "link"),
    "tar fifo": (lambda p: _tar(p, [FIRST, _special("a.png", tarfile.FIFOTYPE)]), "device"),
    "tar char device": (lambda p: _tar(p, [FIRST, _special("a.png", tarfile.CHRTYPE)]), "device"),
    "tar duplicate": (lambda p: _tar(p, [FIRST, FIRST]), "same name"),
    "not an archive": (lambda p: p.write_bytes(b"hello, not an archive\n"), "not a .zip"),
    "truncated zip": (_damaged_zip, "damaged"),
    "truncated tar.gz": (_damaged_tgz, "damaged"),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_refusals_leave_nothing_behind(tmp_path, jail, case):
    build, expected = REFUSALS[case]
    build(tmp_path / "upload")
    with pytest.raises(DatasetError) as raised:
        unpack(tmp_path / "upload", jail / "data", LIMITS)
    message = str(raised.value)
    assert expected in message and "\n" not in message and "(received: " in message
    _assert_nothing_left(jail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jail", "upload"]  # no evil.png, abs.png


def test_dest_that_exists_is_refused_and_kept(tmp_path, jail):
    (jail / "data").mkdir()
    (jail / "data" / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="already exists"):
        unpack(_zip(tmp_path / "a.zip", list(IMAGES.items())), jail / "data", LIMITS)
    assert (jail / "data" / "keep.txt").read_text() == "mine"


def _bomb(path: Path) -> Path:
    """50 MB of zeros as one image, ~50 KB compressed."""
    return _zip(path, [FIRST, ("red/big.png", bytes(50 * MB))])


def test_bomb_is_refused_by_its_headers(tmp_path, jail):
    with pytest.raises(DatasetError, match="more than 5,242,880 bytes.*declared"):
        unpack(_bomb(tmp_path / "bomb"), jail / "data", UnpackLimits(5 * MB, 100))
    _assert_nothing_left(jail)


def test_bomb_whose_headers_lie_is_stopped_while_reading(tmp_path, jail, monkeypatch):
    """Headers claiming 0 bytes: the count of bytes produced stops the copy at the limit."""
    real_members, real_copy, largest = archive._zip_members, archive._copy, [0]

    def lying(opened):
        for name, is_folder, _, open_member in real_members(opened):
            yield name, is_folder, 0, open_member

    def copy(src, out, written, limit, upload):
        try:
            return real_copy(src, out, written, limit, upload)
        finally:
            largest[0] = max(largest[0], out.tell())

    monkeypatch.setattr(archive, "_zip_members", lying)
    monkeypatch.setattr(archive, "_copy", copy)
    with pytest.raises(DatasetError, match="more than 5,242,880 bytes.*produced"):
        unpack(_bomb(tmp_path / "bomb"), jail / "data", UnpackLimits(5 * MB, 100))
    assert 0 < largest[0] <= 5 * MB
    _assert_nothing_left(jail)


def test_zip_whose_size_field_lies_low_is_damaged(tmp_path, jail):
    """zipfile yields no more than the declared size, then the CRC fails: refused, not trusted."""
    data = bytearray(_zip(tmp_path / "lie", [("red/big.png", bytes(MB))]).read_bytes())
    struct.pack_into("<I", data, 22, 1000)  # the local header's uncompressed size
    struct.pack_into("<I", data, data.index(b"PK\x01\x02") + 24, 1000)  # the directory's
    (tmp_path / "lie").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="damaged.*CRC"):
        unpack(tmp_path / "lie", jail / "data", LIMITS)
    _assert_nothing_left(jail)


def test_too_many_files_counting_skipped_ones(tmp_path, jail):
    members = [FIRST, ("a.txt", b"a"), ("b.txt", b"b"), ("red/1.png", IMAGES["red/1.png"])]
    with pytest.raises(DatasetError, match="more than 3 files"):
        unpack(_zip(tmp_path / "a.zip", members), jail / "data", UnpackLimits(MB, 3))
    _assert_nothing_left(jail)
    assert unpack(tmp_path / "a.zip", jail / "data", UnpackLimits(MB, 4)).files == 2


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     KeyboardInterrupt()], ids=["ENOSPC", "KeyboardInterrupt"])
def test_failure_mid_write_propagates_and_leaves_nothing(tmp_path, jail, monkeypatch, failure):
    real_copy, calls = archive._copy, []

    def copy(*args):
        calls.append(args)
        if len(calls) == 2:
            raise failure
        return real_copy(*args)

    monkeypatch.setattr(archive, "_copy", copy)
    with pytest.raises(type(failure)) as raised:
        unpack(_zip(tmp_path / "a.zip", list(IMAGES.items())), jail / "data", LIMITS)
    assert raised.value is failure  # as it was: a full disk is not called a damaged archive
    _assert_nothing_left(jail)


def test_module_does_not_import_tensorflow():
    code = "import sys, retrain.serve.archive; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
