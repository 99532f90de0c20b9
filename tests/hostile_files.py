"""A corpus of hostile image files in a train/ + validation/ folder, for the hostile-files
tests (tests/test_hostile_files.py) and the fault harness (bench/faults.py).

`write_corpus(root)` writes good 32 px solid-colour PNGs, enough for fit to train on, and
beside them files that break naive readers: empty, truncated, a decompression bomb, odd
modes, EXIF orientations, a FIFO, symlink loops, a name that is not UTF-8 ... It returns
{relative path: what it is} for the hostile ones. Each is either used (and decoded as
predict decodes it) or skipped and named; which is decided by the tests, not here.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# Class folders: plain, with a space, with non-ASCII letters. Colours far apart.
GOOD_CLASSES = {"cyan": (0, 255, 255), "deep magenta": (255, 0, 255), "gelb-ä": (255, 255, 0)}
GOOD_TRAIN, GOOD_VALIDATION = 8, 4
SIZE = 32
# A file name that is not UTF-8 (Linux names are bytes): as Python sees it, a surrogate escape.
NOT_UTF8 = os.fsdecode(b"latin1-\xe9t\xe9.png")
NOT_UTF8_BROKEN = os.fsdecode(b"broken-\xff.png")


def _pixels(rgb, rng: np.random.Generator, height: int = SIZE, width: int = SIZE) -> np.ndarray:
    noisy = np.asarray(rgb, np.float64) + rng.normal(0, 12, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A PNG of a few dozen bytes whose header claims width x height RGB pixels (2.7 GB)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def exif_jpeg(pixels: np.ndarray, orientation: int) -> bytes:
    """A JPEG of `pixels` as stored, with the EXIF Orientation tag set to `orientation`."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encoded(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())


def asymmetric(rgb, rng: np.random.Generator, height: int = 24, width: int = 48) -> np.ndarray:
    """A non-square image whose quarters differ, so any flip or rotation shows."""
    pixels = _pixels(rgb, rng, height, width)
    pixels[: height // 2, : width // 3] = (0, 0, 0)
    pixels[height // 2:, -width // 4:] = (255, 255, 255)
    return pixels


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_good(root: Path, seed: int = 0) -> None:
    """root/{train,validation}/<class>/, GOOD_TRAIN and GOOD_VALIDATION noisy PNGs a class."""
    rng = np.random.default_rng(seed)
    for side, count in (("train", GOOD_TRAIN), ("validation", GOOD_VALIDATION)):
        for name, rgb in GOOD_CLASSES.items():
            for i in range(count):
                _write(root / side / name / f"good_{i:02d}.png", _encoded(Image.fromarray(_pixels(rgb, rng)), "PNG"))


def write_corpus(root: Path, seed: int = 0) -> dict[str, str]:
    """Write the good images and the hostile files under `root`; -> {relative path: what it is}
    for the hostile ones (paths as os.path.relpath gives them, so a non-UTF-8 name is a str
    with surrogate escapes)."""
    write_good(root, seed)
    rng = np.random.default_rng(seed + 1)
    cyan, magenta, yellow = GOOD_CLASSES.values()
    good_jpeg = _encoded(Image.fromarray(_pixels(cyan, rng)), "JPEG", quality=95)
    good_png = _encoded(Image.fromarray(_pixels(cyan, rng)), "PNG")
    made: dict[str, str] = {}

    def put(relative: str, what: str, data: bytes | None = None, image: Image.Image | None = None,
            fmt: str = "PNG", **options) -> Path:
        path = root / relative
        if image is not None:
            data = _encoded(image, fmt, **options)
        if data is not None:
            _write(path, data)
        made[relative] = what
        return path

    t, v = "train/cyan", "validation/cyan"
    put(f"{t}/zero-bytes.png", "an empty file", b"")
    put(f"{t}/zero-bytes.jpg", "an empty file named .jpg", b"")
    put(f"{t}/truncated.jpg", "a JPEG cut in half", good_jpeg[: len(good_jpeg) // 2])
    put(f"{t}/truncated.png", "a PNG cut in half", good_png[: len(good_png) // 2])
    put(f"{t}/header-only.png", "a PNG of its signature and IHDR only", good_png[:33])
    put(f"{t}/bomb.png", "a PNG header claiming 30,000 x 30,000 pixels (decompression bomb)", bomb_png())
    put(f"{t}/cmyk.jpg", "a CMYK JPEG", image=Image.fromarray(_pixels(cyan, rng)).convert("CMYK"),
        fmt="JPEG", quality=95)
    put(f"{t}/progressive.jpg", "a progressive JPEG", image=Image.fromarray(_pixels(cyan, rng)), fmt="JPEG",
        quality=95, progressive=True)
    deep = (_pixels(cyan, rng)[..., 0].astype(np.uint16) * 257)  # 16-bit grayscale
    put(f"{t}/16-bit.png", "a 16-bit grayscale PNG", image=Image.fromarray(deep))
    palette = Image.fromarray(_pixels(cyan, rng)).quantize(16)
    palette.info["transparency"] = 0
    put(f"{t}/palette-transparent.png", "a palette PNG with a transparent colour", image=palette,
        transparency=0)
    frames = [Image.fromarray(_pixels(rgb, rng)) for rgb in (cyan, magenta, yellow)]
    put(f"{t}/animated.gif", "an animated GIF, 3 frames (the first is cyan)",
        image=frames[0], fmt="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    for orientation in range(2, 9):
        put(f"{t}/exif-orientation-{orientation}.jpg", f"a 48 x 24 JPEG with EXIF orientation {orientation}",
            exif_jpeg(asymmetric(cyan, rng), orientation))
    put(f"{v}/exif-orientation-6.jpg", "a 48 x 24 JPEG with EXIF orientation 6 (validation)",
        exif_jpeg(asymmetric(cyan, rng), 6))
    put(f"{t}/corrupt-exif.jpg", "a JPEG whose EXIF block points past its end",
        _encoded(Image.fromarray(_pixels(cyan, rng)), "JPEG", exif=b"Exif\x00\x00MM\x00\x2a\xff\xff\xff\xff"))
    put(f"{t}/text.jpg", "a text file named .jpg", b"this is not an image\n")
    put(f"{t}/html.png", "an HTML error page saved as .png", b"<html><body>404 Not Found</body></html>\n")
    folder = put(f"{t}/x.jpg", "a folder named x.jpg (with a good image inside)")
    _write(folder / "inside.png", good_png)
    loop = put(f"{t}/loop.png", "a symlink to itself (a loop)")
    os.symlink(loop.name, loop)
    a, b = put(f"{t}/loop-a.png", "a symlink loop of two"), put(f"{t}/loop-b.png", "a symlink loop of two")
    os.symlink(b.name, a)
    os.symlink(a.name, b)
    dangling = put(f"{t}/dangling.png", "a symlink to nothing")
    os.symlink("no-such-file.png", dangling)
    fifo = put(f"{t}/fifo.png", "a FIFO named .png (opening it blocks until a writer comes)")
    os.mkfifo(fifo)
    locked = put(f"{t}/mode-000.png", "a good PNG with mode 000 (root reads it anyway)", good_png)
    locked.chmod(0)
    put(f"{t}/{NOT_UTF8}", "a good PNG whose name is not UTF-8", good_png)
    put(f"{t}/{NOT_UTF8_BROKEN}", "an empty file whose name is not UTF-8", b"")
    put(f"{t}/trailing-garbage.jpg", "a JPEG with 1 KiB of garbage after its end marker",
        good_jpeg + bytes(rng.integers(0, 256, 1024, dtype=np.uint8)))
    put(f"{t}/one-pixel.png", "a 1 x 1 PNG", image=Image.fromarray(_pixels(cyan, rng, 1, 1)))
    put(f"{t}/very-wide.png", "a 2000 x 3 PNG", image=Image.fromarray(_pixels(cyan, rng, 3, 2000)))
    put(f"{t}/webp-named.jpg", "a WebP named .jpg", image=Image.fromarray(_pixels(cyan, rng)), fmt="WEBP")
    put(f"{t}/tiff-named.jpg", "a TIFF named .jpg", image=Image.fromarray(_pixels(cyan, rng)), fmt="TIFF")
    put(f"{t}/png-named.jpg", "a PNG named .jpg", good_png)
    put(f"{t}/UPPER.JPG", "a JPEG with an upper-case extension", good_jpeg)
    put(f"{t}/.hidden.png", "a hidden file (ignored, as hidden files are)", good_png)
    put(f"{t}/bitmap.bmp", "a BMP", image=Image.fromarray(_pixels(cyan, rng)), fmt="BMP")
    rgba = np.dstack([_pixels(cyan, rng), np.full((SIZE, SIZE), 128, np.uint8)])
    put(f"{t}/rgba.png", "an RGBA PNG, half transparent", image=Image.fromarray(rgba, "RGBA"))
    put(f"{t}/grayscale.png", "a grayscale PNG", image=Image.fromarray(_pixels(cyan, rng)[..., 1]))
    put(f"{t}/bad-crc.png", "a PNG with a flipped byte in its pixel data (its checksum fails)",
        good_png[:-20] + bytes([good_png[-20] ^ 0xFF]) + good_png[-19:])
    put(f"{v}/truncated.jpg", "a JPEG cut in half (validation)", good_jpeg[: len(good_jpeg) // 3])
    put(f"{v}/cmyk.jpg", "a CMYK JPEG (validation)", image=Image.fromarray(_pixels(cyan, rng)).convert("CMYK"),
        fmt="JPEG", quality=95)
    put("validation/deep magenta/bomb.png", "a decompression-bomb PNG (validation)", bomb_png(40_000, 20_000))
    return made
