"""`prepare-cifar`: get CIFAR-10/100 (download or local file), then unpack it into class folders.

Output: `<root>/<dataset>/{train,validation,test}/<label>/<index>.png`, `labels.txt` and
`manifest.json`. Each split is written to a hidden temporary folder and renamed into place
when complete; `manifest.json` is written last, so its presence means the whole job is done.
The writing and manifest helpers are shared with `prepare-quickdraw` (retrain/quickdraw.py).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tarfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from retrain.config import PrepareConfig, unsafe_folder_names
from retrain.diskspace import FULL_ERRNOS, disk_full
from retrain.download import fetch, is_url, md5sum
from retrain.errors import DatasetError, DownloadError
from retrain.files import atomic_write
from retrain.progress import bar, say

SPLITS = ("train", "validation", "test")
DEFAULT_VALIDATION_FRACTION = 0.1


@dataclass(frozen=True)
class Archive:
    """Where an official CIFAR archive lives and what its members hold."""

    url: str
    md5: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str  # with {mode} standing for fine or coarse in CIFAR-100
    names_key: str


ARCHIVES = {
    "cifar10": Archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                       "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py",
                       tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                       "batches.meta", "labels", "label_names"),
    "cifar100": Archive("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python",
                        ("train",), ("test",), "meta", "{mode}_labels", "{mode}_label_names"),
}


# --- reading: a restricted unpickler over the tar stream -----------------------------------

class _BatchUnpickler(pickle.Unpickler):
    """Admits only what CIFAR batches hold: builtins plus numpy's array reconstruction.

    `pickle.load` would call any global a file names (os.system, say); this refuses every
    global but these, so a hostile mirror cannot run code.
    """

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR batch")
        # numpy 2 moved numpy.core to numpy._core; the official files name the old path.
        if hasattr(np, "_core"):
            module = module.replace("numpy.core.", "numpy._core.")
        else:
            module = module.replace("numpy._core.", "numpy.core.")
        return super().find_class(module, name)


def load_batch(blob: bytes, member: str) -> dict[str, object]:
    """Unpickle one CIFAR member safely; keys come back as str."""
    try:
        raw = _BatchUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise DatasetError(f"archive member {member} is not a valid CIFAR batch: {err}", member,
                           "use the official archive or check the mirror") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"archive member {member} holds a {type(raw).__name__}, not a dict",
                           member, "use the official archive or check the mirror")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}


def read_archive(path: Path, archive: Archive) -> dict[str, bytes]:
    """Read the expected members straight from the tar stream; other members are ignored."""
    wanted = {f"{archive.folder}/{m}" for m in archive.train + archive.test + (archive.meta,)}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r|*") as tar:  # a stream: one pass, no seeking
            for member in tar:
                name = member.name.removeprefix("./")
                if name in wanted and member.isfile():
                    found[name.rsplit("/", 1)[1]] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DatasetError(f"cannot read the archive, it is truncated or not a tar.gz: {err}", path,
                           "delete it and rerun to download it again, or pass another --source") from None
    missing = sorted(m.rsplit("/", 1)[1] for m in wanted if m.rsplit("/", 1)[1] not in found)
    if missing:
        raise DatasetError(f"not a {archive.folder} archive: members {', '.join(missing)} are missing",
                           path, "pass the python-version CIFAR archive as --source")
    return found


def decode(members: dict[str, bytes], archive: Archive, label_mode: str):
    """-> (label names, {split: (images NHWC uint8, labels int64)})."""
    label_key = archive.label_key.format(mode=label_mode)
    names_key = archive.names_key.format(mode=label_mode)
    meta = load_batch(members[archive.meta], archive.meta)
    names = meta.get(names_key)
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{archive.meta} has no '{names_key}' list", archive.meta,
                           "pass the python-version CIFAR archive as --source")
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]
    # Names become folder names: refuse any that could escape the root, hide or collide.
    bad = unsafe_folder_names(names)
    if bad or len(set(names)) != len(names):
        raise DatasetError(f"{archive.meta} has label names that cannot be folder names "
                           "(empty, hidden, duplicated, or with a path separator)",
                           ", ".join(map(repr, bad or names))[:200], "use the official archive")
    splits = {}
    for split, batch_names in (("train", archive.train), ("test", archive.test)):
        images, labels = [], []
        for batch_name in batch_names:
            batch = load_batch(members[batch_name], batch_name)
            data, batch_labels = batch.get("data"), batch.get(label_key)
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                    or data.shape[1] != 3072 or not isinstance(batch_labels, list) \
                    or len(batch_labels) != len(data):
                raise DatasetError(f"{batch_name} does not hold N x 3072 uint8 pixels with "
                                   f"'{label_key}'", batch_name, "pass the python-version CIFAR archive")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            if not all(isinstance(v, int) for v in batch_labels):
                raise DatasetError(f"{batch_name} has labels that are not whole numbers", batch_name,
                                   "use the official archive or check the mirror")
            labels.append(np.asarray(batch_labels, dtype=np.int64))
        y = np.concatenate(labels)
        if len(y) == 0:
            raise DatasetError(f"the {split} batches hold no images", ", ".join(batch_names),
                               "use the official archive or check the mirror")
        if y.min() < 0 or y.max() >= len(names):
            raise DatasetError(f"{split} labels fall outside the {len(names)} classes",
                               int(y.max()), "the archive is damaged; download it again")
        splits[split] = (np.concatenate(images), y)
    return names, splits


# --- splitting and writing -----------------------------------------------------------------

def split_validation(labels: np.ndarray, num_classes: int, size: int | None, seed: int):
    """Stratified, seeded choice of validation indices: `size` per class (default 10%)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        n = round(DEFAULT_VALIDATION_FRACTION * len(idx)) if size is None else size
        if n >= len(idx):
            raise DatasetError(f"--validation-size {n} leaves class {c} no training images "
                               f"(it has {len(idx)})", n, "pass a smaller --validation-size")
        chosen.append(rng.permutation(idx)[:n])
    val = np.sort(np.concatenate(chosen))
    mask = np.zeros(len(labels), bool)
    mask[val] = True
    return np.flatnonzero(~mask), val


def _write_chunk(args) -> int:
    images, paths, fmt = args
    for image, path in zip(images, paths):
        if fmt == "png":
            Image.fromarray(image).save(path, compress_level=6)
        else:
            Image.fromarray(image).save(path, quality=95)
    return len(paths)


def write_split(out: Path, split: str, images, labels, indices, names, fmt: str, workers: int,
                file_numbers=None, digits: int = 5) -> dict:
    """Write one split to `.split.tmp`, then rename it into place. -> counts per label.

    Image i goes to `<names[labels[i]]>/<number>.<fmt>`, its number `file_numbers[i]` (default
    i itself) written `digits` wide. 2-D images become grayscale files, 3-D ones RGB.
    """
    tmp, final, old = out / f".{split}.tmp", out / split, out / f".{split}.old"
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    numbers = indices if file_numbers is None else np.asarray(file_numbers)[indices]
    paths = [str(tmp / names[labels[i]] / f"{n:0{digits}d}.{fmt}") for i, n in zip(indices, numbers)]
    chunk = 500
    jobs = [(images[indices[s:s + chunk]], paths[s:s + chunk], fmt) for s in range(0, len(paths), chunk)]
    try:
        for name in names:
            (tmp / name).mkdir(parents=True)
        with bar(f"write {split}", len(paths)) as b:
            if workers > 1 and len(jobs) > 1:
                with ProcessPoolExecutor(workers) as pool:
                    for n in pool.map(_write_chunk, jobs):
                        b.advance(n)
            else:
                for job in jobs:
                    b.advance(_write_chunk(job))
    except BaseException as err:
        # The free space is told as it was when the disk filled, before half a split is removed.
        full = disk_full(out, cause=err.strerror) if isinstance(err, OSError) and err.errno in FULL_ERRNOS else None
        shutil.rmtree(tmp, ignore_errors=True)
        if full is not None:
            raise full from None
        raise
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    counts = np.bincount(labels[indices], minlength=len(names))
    return {name: int(n) for name, n in zip(names, counts)}


# --- the job ----------------------------------------------------------------------------------

def _settings(config: PrepareConfig) -> dict:
    return {"dataset": config.dataset, "label_mode": config.label_mode, "seed": config.seed,
            "validation_size": config.validation_size, "image_format": config.image_format}


def finished_manifest(out: Path, settings: dict, force: bool, keys: tuple[str, ...] = ()) -> dict | None:
    """The manifest of a finished job in `out` with these settings, or None when it must run.

    None when forced, never finished, the manifest is damaged or lacks `keys`, or a class
    folder no longer holds its count of files (removed by hand). Other settings: an error.
    """
    manifest_path = out / "manifest.json"
    if force or not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        manifest["settings"], manifest["counts"], *(manifest[k] for k in keys)  # all there?
    except (ValueError, KeyError, TypeError):
        return None  # a damaged manifest: redo the job, which rewrites it
    differ = {k: (manifest["settings"].get(k), v) for k, v in settings.items()
              if manifest["settings"].get(k) != v}
    if differ:
        listing = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in differ.items())
        raise DatasetError(f"{out} was prepared with other settings", listing,
                           "pass --force to replace it, or another --root")
    for split, counts in manifest["counts"].items():
        for label, n in counts.items():
            folder = out / split / label
            if not folder.is_dir() or sum(1 for _ in os.scandir(folder)) != n:
                return None  # something was removed by hand: redo it
    return manifest


def _already_done(out: Path, config: PrepareConfig) -> dict | None:
    manifest = finished_manifest(out, _settings(config), config.force, keys=("archive_md5",))
    if manifest is not None and config.md5 and manifest["archive_md5"] != config.md5.lower():
        return None  # redo, which verifies the archive against the new --md5 first
    return manifest


def locate_archive(config: PrepareConfig) -> tuple[Path, str, bool]:
    """Download or find the archive; -> (path, md5, verified against a known sum)."""
    archive = ARCHIVES[config.dataset]
    source = config.source or archive.url
    expected = (config.md5 or "").lower() or (archive.md5 if config.source is None else None)
    if is_url(source):
        path = Path(config.root) / "downloads" / Path(source.rsplit("/", 1)[-1] or "archive.tar.gz").name
        if not path.exists():
            fetch(source, path)
    else:
        path = Path(source)
        if not path.is_file():
            raise DownloadError("--source is neither a URL nor an existing file", source,
                                "pass an http(s):// URL or the path of a downloaded archive")
    md5 = md5sum(path)
    if expected and md5 != expected:
        raise DownloadError(f"md5 mismatch for {path}: expected {expected}", md5,
                            "the file is kept for inspection; delete it to download again, "
                            "or pass the right --md5")
    if not expected:
        say(f"note: {path} was not verified (md5 {md5}); pass --md5 to check a custom --source")
    return path, md5, bool(expected)


def prepare_cifar(config: PrepareConfig) -> dict:
    """Download (if needed) and unpack CIFAR into class folders; -> the manifest."""
    out = Path(config.root) / config.output_name
    done = _already_done(out, config)
    if done is not None:
        say(f"{out} is already prepared (manifest.json matches); nothing to do. --force redoes it.")
        return done
    archive = ARCHIVES[config.dataset]
    path, md5, verified = locate_archive(config)
    say(f"reading {path}")
    names, splits = decode(read_archive(path, archive), archive, config.label_mode)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # from here on the folder is not complete
    train_images, train_labels = splits["train"]
    train_idx, val_idx = split_validation(train_labels, len(names), config.validation_size, config.seed)
    workers = config.workers or os.cpu_count() or 1
    counts = {
        "train": write_split(out, "train", train_images, train_labels, train_idx, names,
                             config.image_format, workers),
        "validation": write_split(out, "validation", train_images, train_labels, val_idx, names,
                                  config.image_format, workers),
    }
    test_images, test_labels = splits["test"]
    counts["test"] = write_split(out, "test", test_images, test_labels,
                                 np.arange(len(test_labels)), names, config.image_format, workers)
    atomic_write(out / "labels.txt", "".join(f"{n}\n" for n in names))
    manifest = {"settings": _settings(config), "source": config.source or archive.url,
                "archive_md5": md5, "md5_verified": verified, "labels": names, "counts": counts,
                "file_names": "<original index in its split, 5 digits>.<format>"}
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=2))
    return manifest
