"""Image folders -> checked file lists with a stable split -> tf.data pipelines.

Scanning and checking need no TensorFlow, so a bad folder is reported before anything heavy
loads. Layouts: `DIR/train/<label>/` + `DIR/validation/<label>/` (what prepare-cifar writes;
`val/` or `valid/` instead of `validation/` as other tools write; `DIR/test/` is left for
evaluation), or one `DIR/<label>/` tree (or `DIR/train/<label>/` alone) split by a hash of each
file's relative path, so an image stays on its side when others are added (as retrain.py did).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from retrain.errors import DatasetError
from retrain.fileindex import FileIndex

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
DECODABLE = {"JPEG", "PNG", "BMP", "GIF"}  # what tf.io.decode_image reads
SHOWN_SKIPPED = 50  # files named in the one line that reports skipped files; `retrain check` names all


@dataclass(frozen=True)
class Split:
    files: tuple[str, ...]
    labels: np.ndarray  # int, index into class_names
    # (height, width) that every file has, when known (load_folders reads it from the
    # headers): then the extraction pipeline resizes whole batches, not image by image.
    shape: tuple[int, int] | None = None

    def counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=num_classes)


@dataclass(frozen=True)
class ImageFolders:
    """A checked dataset: class names (sorted folder names), train and validation files."""

    root: Path
    class_names: tuple[str, ...]
    train: Split
    validation: Split
    skipped: tuple[str, ...]  # unreadable files, left out
    ignored: tuple[Path, ...] = ()  # sibling folders of train/ that are no split fit reads

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _class_files(folder: Path, root: Path) -> dict[str, list[tuple[str, str]]]:
    """{class: [(path, path relative to root, posix)]}, sorted; strings, not Paths: 50,000
    Path objects cost a second here."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = {}
    for name in classes:
        files = []
        for dirpath, dirnames, filenames in os.walk(folder / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            relative = Path(dirpath).relative_to(root).as_posix()
            files += [(os.path.join(dirpath, f), _hashable(f"{relative}/{f}")) for f in sorted(filenames)
                      if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
        found[name] = files
    return found


def _hashable(relative: str) -> str:
    """`relative`, with the bytes of a name that is not UTF-8 (surrogate escapes) as \\xNN:
    the split hashes UTF-8, and other names keep the side they always had."""
    return relative if relative.isascii() else os.fsencode(relative).decode("utf-8", "backslashreplace")


def class_files(folder: Path) -> dict[str, list[str]]:
    """{class: [image paths]} of a <label>/ folder, sorted; hidden files and folders skipped."""
    return {name: [path for path, _ in files] for name, files in _class_files(folder, folder).items()}


def readable(files: list[str], index: FileIndex | None = None) -> list[bool]:
    """Which files TensorFlow can decode (the pre-flight check), in parallel, remembered by
    `index` when given."""
    return [size is not None for size in image_sizes(files, index)]


# The EXIF orientation (2-8) of each JPEG `image_sizes` found stored turned or mirrored, by
# path. The pipelines turn such an image upright as predict does (PIL.ImageOps.exif_transpose),
# so a phone photo is trained on as it is shown. Kept by path, not in Split: a split's files
# are regrouped into new Splits downstream (bottleneck extraction) by their paths alone.
_ORIENTATIONS: dict[str, int] = {}


def image_sizes(files: list[str], index: FileIndex | None = None) -> list[tuple[int, int] | None]:
    """Each file's (height, width) as shown (after its EXIF orientation) when TensorFlow can
    decode it, else None; as `readable`."""
    # "image2": [height, width, orientation]; "image" facts held the stored [height, width].
    found = (index or FileIndex(None)).facts([str(f) for f in files], "image2", _image_size)
    for path, fact in zip(files, found):
        if fact and fact[2] != 1:
            _ORIENTATIONS[str(path)] = fact[2]
        else:  # (an image since replaced by an upright one)
            _ORIENTATIONS.pop(str(path), None)
    return [tuple(fact[:2]) if fact else None for fact in found]


def _image_size(path: str) -> list[int] | None:
    """[height, width, orientation] when a cheap check says TensorFlow can decode the file:
    its header parses; PNG and GIF chunks verify; a JPEG ends with its end-of-image marker,
    or else decodes in full. Height and width are as shown, after the JPEG's EXIF orientation
    (1-8; 1 for other formats). Catches empty, truncated, mislabelled and special files and
    decompression bombs (a header claiming more pixels than Pillow allows): None."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # open() on a FIFO waits for a writer
            return None
        with Image.open(path) as image:
            if image.format not in DECODABLE:
                return None
            orientation = image.getexif().get(0x0112, 1) if image.format == "JPEG" else 1
            orientation = orientation if orientation in range(1, 9) else 1
            size = [image.height, image.width][::-1 if orientation >= 5 else 1] + [orientation]
            image.verify()
        if image.format == "JPEG":
            with open(path, "rb") as f:
                f.seek(-2, os.SEEK_END)
                if f.read(2) != b"\xff\xd9":  # truncated, or trailing bytes: decode to be sure
                    with Image.open(path) as full:
                        full.load()
        return size
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return None


def in_validation(relative_path: str, fraction: float) -> bool:
    """Stable hash split: a file's side depends on its own path only."""
    digest = int(hashlib.sha1(relative_path.encode("utf-8")).hexdigest(), 16)
    return (digest % 1_000_000) / 1_000_000 < fraction


def _to_split(pairs: list[tuple[str, int]], sizes: dict[str, tuple[int, int]]) -> Split:
    shapes = {sizes[p] for p, _ in pairs}
    return Split(tuple(p for p, _ in pairs), np.asarray([c for _, c in pairs], dtype=np.int64),
                 shapes.pop() if len(shapes) == 1 else None)


# Folder names of the validation split beside train/: ours and Keras' (validation), torchvision
# ImageFolder sets' and Imagenette's (val), fastai's (valid). test/ is evaluate's.
VALIDATION_FOLDERS = ("validation", "val", "valid")
TEST_FOLDER = "test"


def layout(root: Path) -> tuple[Path | None, Path | None, list[Path]]:
    """-> (train/ or None for a single <label>/ tree, its validation folder or None, the
    sibling folders neither fit nor evaluate reads, which callers report)."""
    if not (root / "train").is_dir():
        return None, None, []
    found = [root / name for name in VALIDATION_FOLDERS if (root / name).is_dir()]
    if len(found) > 1:
        raise DatasetError("the data has more than one validation folder",
                           ", ".join(f"{f.name}/" for f in found), "keep one of them (rename or move the others)")
    used = {"train", TEST_FOLDER, *(f.name for f in found)}
    others = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name not in used and not p.name.startswith(".")]
    return root / "train", (found[0] if found else None), others


def describe_ignored(folders: list[Path]) -> str:
    names = ", ".join(f"{f.name}/" for f in folders)
    return (f"ignoring {names} beside train/: fit reads train/ and one of "
            f"{', '.join(f'{n}/' for n in VALIDATION_FOLDERS)}; evaluate reads {TEST_FOLDER}/")


def load_folders(data_dir: str | Path, validation_split: float, index: FileIndex | None = None,
                 keep_out: Iterable[str] = ()) -> ImageFolders:
    """Scan, split and check an image folder; one clear DatasetError for what would fail later.

    `index` remembers which files were readable, so a rerun over unchanged files is cheap.
    `keep_out`: paths relative to the folder to leave out as if unreadable (a resumed run's
    files skipped when it began)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError("the data folder does not exist", str(root),
                           "pass --data with a folder of <label>/ or train/<label>/ subfolders")
    train_dir, validation_dir, ignored = layout(root)
    if validation_dir is not None:
        sides = {side: {name: [path for path, _ in files] for name, files in _class_files(folder, root).items()}
                 for side, folder in (("train", train_dir), ("validation", validation_dir))}
        lacking = set(sides["train"]) ^ set(sides["validation"])
        if lacking:
            raise DatasetError(f"train/ and {validation_dir.name}/ must hold the same classes; only one has",
                               ", ".join(sorted(lacking)), "add the missing class folders or remove them")
    else:
        tree = _class_files(train_dir or root, root)
        sides = {"train": {c: [] for c in tree}, "validation": {c: [] for c in tree}}
        for name, files in tree.items():
            for path, relative in files:
                sides["validation" if in_validation(relative, validation_split) else "train"][name].append(path)
    names = tuple(sides["train"])
    if len(names) < 2:
        raise DatasetError("a classifier needs at least 2 class folders", f"{len(names)} in {root}",
                           "add a subfolder of images for each class")
    every = [f for side in sides.values() for files in side.values() for f in files]
    sizes = dict(zip(every, image_sizes(every, index)))
    kept_out = {os.path.normpath(root / f) for f in keep_out}
    bad = {f for f, size in sizes.items() if size is None or os.path.normpath(f) in kept_out}
    pairs = {side: [(f, i) for i, n in enumerate(names) for f in sides[side][n] if f not in bad]
             for side in sides}
    for side, listing in pairs.items():
        counts = np.bincount([c for _, c in listing], minlength=len(names))
        empty = [names[i] for i in np.flatnonzero(counts == 0)]
        if empty:
            raise DatasetError(f"classes with no readable {side} images", ", ".join(empty[:10]),
                               "add images to them" + (", or raise --validation-split"
                                                       if side == "validation" else ""))
    return ImageFolders(root, names, _to_split(pairs["train"], sizes), _to_split(pairs["validation"], sizes),
                        tuple(sorted(bad)), tuple(ignored))


def describe_skipped(skipped: tuple[str, ...]) -> str:
    shown = ", ".join(skipped[:SHOWN_SKIPPED])
    more = f" and {len(skipped) - SHOWN_SKIPPED} more (`retrain check` names each, with why)" \
        if len(skipped) > SHOWN_SKIPPED else ""
    return f"skipped {len(skipped)} unreadable image(s): {shown}{more}"


def class_weights(split: Split, num_classes: int) -> dict[int, float]:
    """Balanced weights, n / (classes * n_c): each class counts the same in the loss."""
    counts = split.counts(num_classes)
    return {i: float(len(split.labels) / (num_classes * c)) for i, c in enumerate(counts)}


# --- tf.data -----------------------------------------------------------------------------

def image_channels(data: ImageFolders, sample: int = 64) -> int:
    """1 when the images are grayscale (a sample of each class, by Pillow's header), else 3."""
    for split in (data.train, data.validation):
        files = np.asarray(split.files)
        for label in range(data.num_classes):
            for path in files[split.labels == label][:sample]:
                with Image.open(path) as image:
                    if image.mode not in ("L", "1"):
                        return 3
    return 1


def _loader(image_size: int, num_classes: int | None, channels: int = 3):
    """(path, label, orientation) -> (image float32 0-255, label one-hot; or as it is for
    num_classes None)."""
    import tensorflow as tf

    def load(path, label, orientation):
        image, label = _decoded(path, label, num_classes, channels, orientation)
        image = tf.image.resize(image, (image_size, image_size))  # float32, still 0-255
        image.set_shape((image_size, image_size, channels))
        return image, label

    return load


def _decoded(path, label, num_classes: int | None, channels: int, orientation):
    """(path, label, EXIF orientation) -> (the file's image, uint8 at its own size, upright;
    label one-hot, or as it is)."""
    import tensorflow as tf

    image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
    return _upright(image, orientation), label if num_classes is None else tf.one_hot(label, num_classes)


# (transpose, reverse the rows, reverse the columns) that undo EXIF orientation 0-8 (0 and 1:
# upright) as PIL.ImageOps.exif_transpose does: 6, for one, is turned 90 degrees clockwise.
_UPRIGHT = [[False] * 3, [False] * 3, [False, False, True], [False, True, True], [False, True, False],
            [True, False, False], [True, False, True], [True, True, True], [True, True, False]]


def _upright(image, orientation):
    """The image as shown, its EXIF orientation undone. Table lookups, not tf.switch_case:
    8 branches made a pipeline of 32 px PNGs resized to 96 px 3x slower; this costs ~7%."""
    import tensorflow as tf

    flags = tf.gather(tf.constant(_UPRIGHT), orientation)
    image = tf.transpose(image, tf.where(flags[0], [1, 0, 2], [0, 1, 2]))
    return tf.raw_ops.Reverse(tensor=image, dims=tf.concat([flags[1:], [False]], 0))


def _files_dataset(split: Split):
    """(path, label, EXIF orientation) per file. Paths go as bytes: a name that is not UTF-8
    (a surrogate escape in Python) has no string tensor."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(([os.fsencode(f) for f in split.files], split.labels,
                                               [_ORIENTATIONS.get(str(f), 1) for f in split.files]))


def shard_by_data(ds):
    """Under a multi-worker strategy, give each worker its part of every global batch
    (tf.data's DATA auto-shard policy: every worker reads the whole, deterministic pipeline
    and keeps its own slice). The default policy would first try to shard by file, which a
    list of image paths held in memory cannot be, and warn. No effect on one worker."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


# The image pipelines run with fixed settings and tf.data's autotuning off: with it on, passes
# over the same files fell now and then to a fixed, lower rate beside the forward pass
# (MobileNetV2 0.35, 10,240 CIFAR-10 files: 0.79-0.89 of the raw forward at 96 px, 0.91-0.95
# with it off; see docs/benchmarks.md).
PARALLEL_CALLS = os.cpu_count() or 1
PREFETCH_BATCHES = 2


def _fixed(ds):
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(PREFETCH_BATCHES).with_options(options)


def _batch_loader(shape: tuple[int, int], image_size: int, num_classes: int | None, channels: int):
    """As _loader, for files that all have `shape`: decode one by one, resize whole batches.
    A file of another shape raises tf.errors.InvalidArgumentError."""
    import tensorflow as tf

    def decode(path, label, orientation):
        image, label = _decoded(path, label, num_classes, channels, orientation)
        return tf.ensure_shape(image, (*shape, channels)), label

    def resize(images, labels):
        return tf.image.resize(images, (image_size, image_size)), labels  # per image as _loader's

    return decode, resize


def eval_dataset(split: Split, num_classes: int | None, image_size: int, batch_size: int,
                 channels: int = 3, skip_errors: bool = True):
    """Decode, resize, batch, prefetch; fixed order. Labels one-hot, or as they are for
    num_classes None. A file that does not decode is dropped; with skip_errors False it
    raises tf.errors.InvalidArgumentError instead, and the pipeline is faster: nothing
    between map and batch, so tf.data fuses them (6% of the extraction at 96 px), and when
    every file has the split's `shape`, whole batches are resized (a 64 x 32 x 32 batch in one
    op: 100 instead of 140 us of CPU an image at 96 px, which the forward pass gets back)."""
    files = _files_dataset(split)
    if split.shape is not None and not skip_errors:
        decode, resize = _batch_loader(split.shape, image_size, num_classes, channels)
        return shard_by_data(_fixed(files.map(decode, num_parallel_calls=PARALLEL_CALLS)
                                    .batch(batch_size).map(resize)))
    ds = files.map(_loader(image_size, num_classes, channels), num_parallel_calls=PARALLEL_CALLS)
    return shard_by_data(_fixed((ds.ignore_errors() if skip_errors else ds).batch(batch_size)))


def train_dataset(split: Split, num_classes: int, image_size: int, batch_size: int, seed: int,
                  first_epoch: int, end_epoch: int, skip_batches: int = 0, channels: int = 3):
    """Epochs [first_epoch, end_epoch) back to back, each shuffled with its own seed.

    Seeding each epoch (seed + epoch) rather than reshuffling one dataset each iteration
    means a resumed run replays exactly the order the uninterrupted run would have seen.
    `skip_batches` drops the first batches of `first_epoch` (a resume from mid-epoch).
    """
    load = _loader(image_size, num_classes, channels)
    files = _files_dataset(split)
    ds = None
    for epoch in range(first_epoch, end_epoch):
        one = files.shuffle(len(split.files), seed=seed * 100_003 + epoch,
                            reshuffle_each_iteration=False)
        if epoch == first_epoch and skip_batches:
            one = one.skip(skip_batches * batch_size)
        # Batch within the epoch, so no batch straddles two epochs.
        # No ignore_errors(): a dropped file would shift every later batch of the run. The
        # pre-flight check decided what is skipped; a file that fails here stops the run.
        one = one.map(load, num_parallel_calls=PARALLEL_CALLS).batch(batch_size)
        ds = one if ds is None else ds.concatenate(one)
    return shard_by_data(_fixed(ds))


def undecodable(split: Split, image_size: int, channels: int = 3) -> list[str]:
    """The split's files TensorFlow's decoder fails on (after the pre-flight check passed
    them): what to name when a training pipeline stops on one."""
    numbered = Split(split.files, np.arange(len(split.files), dtype=np.int64))
    seen = np.zeros(len(split.files), dtype=bool)
    for _, positions in eval_dataset(numbered, None, image_size, 256, channels).as_numpy_iterator():
        seen[positions] = True
    return [split.files[i] for i in np.flatnonzero(~seen)]


def steps_per_epoch(split: Split, batch_size: int) -> int:
    return -(-len(split.files) // batch_size)
