"""`prepare-quickdraw`: Quick, Draw! bitmap files (.npy, a 28x28 drawing a row) -> PNG class folders.

Output: `<root>/quickdraw/{train,validation,test}/<class>/<row>.png` (28x28 grayscale),
`labels.txt` and `manifest.json`, written with prepare-cifar's helpers (retrain/prepare.py):
each split in a hidden folder renamed into place, the manifest last.

Only the first `max_per_class` rows of a class are read. Over HTTP that is two Range
requests: the first KB for the .npy header (where the rows start, how many there are), then
exactly the header and those rows, kept as `<class>.npy.prefix`, a byte prefix of the
server's file that resumes and grows like any `.part`. From a folder, a memory map.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import urllib.parse
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrain.config import QuickDrawConfig
from retrain.download import Refused, fetch, is_url, read_head
from retrain.errors import DatasetError, DownloadError
from retrain.files import atomic_write
from retrain.prepare import SPLITS, finished_manifest, write_split
from retrain.progress import say

OFFICIAL_URL = "https://storage.googleapis.com/quickdraw_dataset/full/numpy_bitmap"
CLASS_LIST = "https://github.com/googlecreativelab/quickdraw-dataset/blob/master/categories.txt"
SIDE = 28
PIXELS = SIDE * SIDE
HEAD_BYTES = 1024  # the first request; a bitmap file's header takes 128 bytes or fewer
DIGITS = 6  # file names are row numbers; the largest classes have about 330,000 rows


@dataclass(frozen=True)
class Layout:
    """What a bitmap file's .npy header says: where the rows start and how many there are."""

    offset: int
    rows: int

    def end(self, wanted: int) -> int:
        """Bytes from the start of the file through the first `wanted` rows (0: all)."""
        return self.offset + _needed(wanted, self.rows) * PIXELS


def _needed(wanted: int, rows: int) -> int:
    return rows if wanted == 0 else min(wanted, rows)


def _check_bitmaps(shape, dtype, where) -> None:
    if dtype != np.uint8 or len(shape) != 2 or shape[1] != PIXELS:
        raise DatasetError(f"{where} does not hold Quick, Draw! bitmaps (rows of {PIXELS} uint8 "
                           "pixels)", f"shape {tuple(shape)}, dtype {dtype}",
                           "pass the numpy_bitmap files (full_numpy_bitmap_<class>.npy)")
    if shape[0] == 0:
        raise DatasetError(f"{where} holds no drawings", "shape (0, 784)", "drop the class")


def parse_header(head: bytes, where) -> Layout:
    """The layout from the first bytes of a bitmap .npy file (numpy format 1.0 or 2.0)."""
    fp = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"npy format {version[0]}.{version[1]} is not supported")
    except ValueError as err:
        raise DatasetError(f"{where} does not start with a .npy header: {err}", f"{len(head)} bytes",
                           "check --source: it should serve the numpy_bitmap .npy files") from None
    _check_bitmaps(shape, dtype, where)
    if fortran_order:  # rows would not be contiguous, so no prefix holds the first ones
        raise DatasetError(f"{where} stores its rows in Fortran order", "fortran_order: True",
                           "pass the numpy_bitmap files (C order, one drawing a row)")
    return Layout(fp.tell(), shape[0])


# --- over HTTP: a byte prefix of each class's file ---------------------------------------------

def class_url(prefix: str, name: str) -> str:
    """<prefix>/<name>.npy with the name URL-quoted: The%20Eiffel%20Tower.npy."""
    return f"{prefix.rstrip('/')}/{urllib.parse.quote(name)}.npy"


def downloads_folder(root: str, prefix: str) -> Path:
    """<root>/downloads/quickdraw/ for the official bucket. Another URL prefix gets a folder
    of its own, so that a resume never appends one server's bytes to another's."""
    prefix = prefix.rstrip("/")
    if prefix == OFFICIAL_URL:
        return Path(root) / "downloads" / "quickdraw"
    return Path(root) / "downloads" / f"quickdraw-{hashlib.sha1(prefix.encode()).hexdigest()[:8]}"


def _saved_layout(path: Path) -> Layout | None:
    """The layout announced by a saved prefix (or .part), None when its header is not all there."""
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    try:
        return parse_header(head, path)
    except DatasetError:
        if len(head) < HEAD_BYTES and path.suffix == ".part":
            return None  # cut off inside the header: the probe will say what it holds
        raise DatasetError(f"{path} is not the start of a bitmap .npy file", f"{len(head)} bytes",
                           "delete it and rerun to download it again") from None


def _probe(url: str, name: str) -> Layout:
    """Ask for the first KB only, to read the header."""
    try:
        return parse_header(read_head(url, HEAD_BYTES), url)
    except Refused as err:
        if err.status == 404:
            raise DatasetError(f"there is no Quick, Draw! class '{name}' at the source (HTTP 404)",
                               url, f"check the name against the official class list, {CLASS_LIST}; "
                               "names are case-sensitive") from None
        raise


def locate(url: str, dest: Path, name: str) -> Layout:
    """The class's layout: from what an earlier run saved when it holds the header, else a probe."""
    part = dest.with_name(dest.name + ".part")
    return _saved_layout(dest) or _saved_layout(part) or _probe(url, name)


def download_rows(url: str, dest: Path, layout: Layout, wanted: int) -> None:
    """Make `dest` hold the header and the first `wanted` rows (0: all): a resumable prefix."""
    end = layout.end(wanted)
    if dest.exists():
        if dest.stat().st_size >= end:
            return  # an earlier run fetched these rows (or more)
        os.replace(dest, dest.with_name(dest.name + ".part"))  # more rows now: extend it
    fetch(url, dest, end=end)


def read_prefix(dest: Path, layout: Layout, wanted: int) -> np.ndarray:
    """The first `wanted` rows (0: all) of a saved prefix, as n x 28 x 28 uint8."""
    n = _needed(wanted, layout.rows)
    if dest.stat().st_size < layout.end(wanted):
        raise DatasetError(f"{dest} is shorter than its header says", dest.stat().st_size,
                           "delete it and rerun to download it again")
    rows = np.memmap(dest, np.uint8, "r", offset=layout.offset, shape=(n, PIXELS))
    return np.array(rows).reshape(n, SIDE, SIDE)


# --- from a folder --------------------------------------------------------------------------

def local_file(folder: Path, name: str) -> Path:
    """<name>.npy or full_numpy_bitmap_<name>.npy in `folder`."""
    candidates = [folder / f"{name}.npy", folder / f"full_numpy_bitmap_{name}.npy"]
    for path in candidates:
        if path.is_file():
            return path
    raise DatasetError(f"--source {folder} has no bitmap file for class '{name}'",
                       " or ".join(p.name for p in candidates),
                       "add the file under either name, or drop the class")


def read_local(path: Path, wanted: int) -> tuple[np.ndarray, int]:
    """The first `wanted` rows (0: all) as n x 28 x 28 uint8, read through a memory map; and
    the file's number of rows."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DatasetError(f"{path} is not a readable .npy file: {err}", path,
                           "pass the numpy_bitmap files (full_numpy_bitmap_<class>.npy)") from None
    if not isinstance(array, np.ndarray):
        raise DatasetError(f"{path} is not a single array", type(array).__name__,
                           "pass the numpy_bitmap .npy files, not .npz")
    _check_bitmaps(array.shape, array.dtype, path)
    n = _needed(wanted, len(array))
    return np.array(array[:n]).reshape(n, SIDE, SIDE), len(array)


def read_drawings(names, source: str, root: str, wanted: int) -> tuple[list[np.ndarray], list[int]]:
    """Each class's first `wanted` drawings (0: all), and how many its file holds in all.

    Cheap checks come first: every class's file (or header, over HTTP) is found before any
    rows are read or downloaded, so a misspelt class fails at once.
    """
    if not is_url(source):
        folder = Path(source)
        if not folder.is_dir():
            raise DownloadError("--source is neither a URL nor an existing folder", source,
                                "pass an http(s):// URL prefix or a folder of <class>.npy files")
        paths = [local_file(folder, name) for name in names]
        drawings, totals = zip(*(read_local(path, wanted) for path in paths))
        return list(drawings), list(totals)
    folder = downloads_folder(root, source)
    urls = [class_url(source, name) for name in names]
    dests = [folder / f"{name}.npy.prefix" for name in names]
    layouts = [locate(url, dest, name) for url, dest, name in zip(urls, dests, names)]
    drawings = []
    for url, dest, layout in zip(urls, dests, layouts):
        download_rows(url, dest, layout, wanted)
        drawings.append(read_prefix(dest, layout, wanted))
    return drawings, [layout.rows for layout in layouts]


# --- splitting --------------------------------------------------------------------------------

def split_rows(n: int, validation_split: float, test_split: float, seed: int,
               name: str) -> dict[str, np.ndarray]:
    """Rows 0..n-1 of one class -> {split: sorted row numbers}.

    A shuffle seeded by (seed, class name), then round(validation_split x n) rows to
    validation, round(test_split x n) to test, the rest to train: every class is split in the
    same proportions, and adding or dropping a class never moves another class's rows.
    """
    n_val, n_test = round(validation_split * n), round(test_split * n)
    if n - n_val - n_test < 1:
        raise DatasetError(f"class '{name}' has too few drawings to leave any for training", n,
                           "pass a larger --max-per-class or smaller --validation-split/--test-split")
    order = np.random.default_rng([seed, zlib.crc32(name.encode())]).permutation(n)
    return {"train": np.sort(order[n_val + n_test:]), "validation": np.sort(order[:n_val]),
            "test": np.sort(order[n_val:n_val + n_test])}


# --- the job ----------------------------------------------------------------------------------

def _settings(config: QuickDrawConfig) -> dict:
    return {"classes": list(config.classes), "max_per_class": config.max_per_class,
            "validation_split": config.validation_split, "test_split": config.test_split,
            "seed": config.seed}


def prepare_quickdraw(config: QuickDrawConfig) -> dict:
    """Fetch (or read) each class's first drawings and write them as class folders; -> the manifest."""
    out = Path(config.root) / "quickdraw"
    done = finished_manifest(out, _settings(config), config.force)
    if done is not None:
        say(f"{out} is already prepared (manifest.json matches); nothing to do. --force redoes it.")
        return done
    names = list(config.classes)  # sorted: the label order
    source = config.source or OFFICIAL_URL
    drawings, totals = read_drawings(names, source, config.root, config.max_per_class)
    for name, rows, total in zip(names, drawings, totals):
        say(f"{name}: {len(rows):,} of {total:,} drawings")
    splits = [split_rows(len(rows), config.validation_split, config.test_split, config.seed, name)
              for name, rows in zip(names, drawings)]

    images = np.concatenate(drawings)
    labels = np.repeat(np.arange(len(names)), [len(rows) for rows in drawings])
    row_numbers = np.concatenate([np.arange(len(rows)) for rows in drawings])
    starts = np.cumsum([0] + [len(rows) for rows in drawings[:-1]])
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # from here on the folder is not complete
    workers = config.workers or os.cpu_count() or 1
    counts = {}
    for split in SPLITS:
        indices = np.concatenate([start + rows[split] for start, rows in zip(starts, splits)])
        counts[split] = write_split(out, split, images, labels, indices, names, "png", workers,
                                    file_numbers=row_numbers, digits=DIGITS)
    atomic_write(out / "labels.txt", "".join(f"{n}\n" for n in names))
    manifest = {"settings": _settings(config), "source": source, "labels": names, "counts": counts,
                "drawings": {name: {"used": len(rows), "in_file": total}
                             for name, rows, total in zip(names, drawings, totals)},
                "split": "per class, a shuffle seeded by (seed, class name): "
                         "round(validation_split x n) to validation, round(test_split x n) to test, "
                         "the rest to train",
                "file_names": f"<row in the class's .npy file, {DIGITS} digits>.png"}
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=2))
    return manifest
