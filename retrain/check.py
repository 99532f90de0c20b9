"""check(config): the pre-flight dataset report on its own. No TensorFlow.

Refusals are exactly what `retrain fit` refuses: `data.load_folders` decides them (missing
folder, fewer than 2 classes, a class with no readable images in a split, train/ and
validation/ with other classes). Warnings are what a run survives but should not: unreadable
files (skipped by fit), exact duplicates (same sha1 of the bytes) within a split or across
splits (a leak that inflates validation and test figures), the same image under two labels,
class imbalance, a test/ folder with other classes.
"""

from __future__ import annotations

import os
import stat
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from retrain.fileindex import FileIndex
from retrain.config import CheckConfig
from retrain.data import DECODABLE, VALIDATION_FOLDERS, class_files, describe_ignored, layout, load_folders, readable
from retrain.errors import DatasetError

IMBALANCE_WARN = 2.0  # largest class / smallest class in a split above this is reported
SHOWN = 5  # files or groups shown per finding
SHOWN_UNREADABLE = 100  # unreadable files named one a line, each with what is wrong


@dataclass(frozen=True)
class CheckReport:
    root: Path
    layout: str
    classes: tuple[str, ...]
    counts: dict[str, dict[str, int]]  # split -> class -> readable images
    unreadable: tuple[str, ...]
    duplicates_within: list[list[str]]  # groups of identical files in one split
    duplicates_across: list[list[str]]  # groups of identical files in more than one split
    conflicting_labels: list[list[str]]  # groups of identical files under different classes
    refusal: str | None  # what fit would refuse, or None
    warnings: list[str] = field(default_factory=list)


def check(config: CheckConfig) -> CheckReport:
    """Scan, split and check `config.data` as fit would, then look for duplicates and imbalance."""
    root = Path(config.data)
    try:
        folders = load_folders(root, config.validation_split)
    except DatasetError as err:
        return _refused(root, str(err))
    splits = {"train": folders.train, "validation": folders.validation}
    files = {name: [(f, folders.class_names[c]) for f, c in zip(s.files, s.labels)] for name, s in splits.items()}
    unreadable = list(folders.skipped)
    train_dir, validation_dir, _ = layout(root)
    if validation_dir is not None:
        shape = f"train/ + {validation_dir.name}/"
    else:
        shape = f"{'train/' if train_dir else ''}<label>/ split by path hash (--validation-split {config.validation_split})"
    warnings = [describe_ignored(list(folders.ignored))] if folders.ignored else []
    if (root / "test").is_dir():
        shape += " + test/"
        found = class_files(root / "test")
        listed = [(f, name) for name, paths in found.items() for f in paths]
        ok = readable([f for f, _ in listed])
        files["test"] = [(str(f), name) for (f, name), good in zip(listed, ok) if good]
        unreadable += [str(f) for (f, _), good in zip(listed, ok) if not good]
        other = sorted(set(found) ^ set(folders.class_names))
        if other:
            warnings.append(f"test/ and train/ differ in classes: {', '.join(other[:10])} "
                            "(evaluate refuses test classes the run was not trained on)")
    counts = {name: {c: 0 for c in folders.class_names} for name in files}
    for name, listing in files.items():
        for _, label in listing:
            counts[name][label] = counts[name].get(label, 0) + 1
    within, across, conflicting = find_duplicates(files)
    report = CheckReport(root, shape, folders.class_names, counts, tuple(sorted(unreadable)), within,
                         across, conflicting, None, warnings)
    _warn(report)
    return report


def find_duplicates(files: dict[str, list[tuple[str, str]]]):
    """Groups of byte-identical files (sha1): within one split, across splits, and under more
    than one label. -> (within, across, conflicting), each a list of sorted path lists."""
    every = [(split, path, label) for split, listing in files.items() for path, label in listing]
    groups: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for entry, digest in zip(every, FileIndex(None).hashes([path for _, path, _ in every])):
        groups[digest].append(entry)
    within, across, conflicting = [], [], []
    for group in groups.values():
        if len(group) < 2:
            continue
        paths = sorted(path for _, path, _ in group)
        by_split = defaultdict(list)
        for split, path, _ in group:
            by_split[split].append(path)
        if len(by_split) > 1:
            across.append(paths)
        within += [sorted(p) for p in by_split.values() if len(p) > 1]
        if len({label for _, _, label in group}) > 1:
            conflicting.append(paths)
    return sorted(within), sorted(across), sorted(conflicting)


def why_unreadable(path: str) -> str:
    """What is wrong with a file the pre-flight refused, and what to do about it."""
    try:
        found = os.stat(path)
    except OSError as err:  # a dangling symlink, a symlink loop, a file gone since the scan
        return f"{err.strerror.lower()}: fix the link or remove it"
    if not stat.S_ISREG(found.st_mode):  # (not opened: a FIFO would block)
        return "not a regular file (a FIFO, socket or device): remove it"
    if found.st_size == 0:
        return "an empty file: copy it again or remove it"
    try:
        with Image.open(path) as image:
            if image.format not in DECODABLE:
                return f"a {image.format} file, which TensorFlow does not decode: convert it to PNG or JPEG"
            image.load()
    except Image.DecompressionBombError:
        return "its header claims more pixels than Pillow opens (a decompression bomb?): remove it"
    except UnidentifiedImageError:
        return "not an image file: remove it"
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        return f"damaged or truncated ({_first_line(err)}): copy it again or remove it"
    return "damaged (its checksums fail): copy it again or remove it"


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:120]


def shown_path(path: str) -> str:
    """A path any terminal prints: the bytes of a name that is not UTF-8 as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _warn(report: CheckReport) -> None:
    if report.unreadable:
        # Then a line for each file (the first SHOWN_UNREADABLE), saying what is wrong: a
        # damaged dataset is mended file by file.
        report.warnings.append(f"{len(report.unreadable)} unreadable file(s), skipped by fit: "
                               + _shown(report.unreadable)
                               + "".join(f"\n  {shown_path(f)}: {why_unreadable(f)}"
                                         for f in report.unreadable[:SHOWN_UNREADABLE]))
    if report.duplicates_across:
        report.warnings.append(f"{len(report.duplicates_across)} image(s) in more than one split "
                               "(a leak: validation and test figures come out too high): "
                               + _groups(report.duplicates_across))
    if report.duplicates_within:
        extra = sum(len(g) - 1 for g in report.duplicates_within)
        report.warnings.append(f"{extra} duplicate file(s) within a split, in {len(report.duplicates_within)} "
                               "group(s): " + _groups(report.duplicates_within))
    if report.conflicting_labels:
        report.warnings.append(f"{len(report.conflicting_labels)} image(s) under more than one class: "
                               + _groups(report.conflicting_labels))
    for split, per_class in report.counts.items():
        values = list(per_class.values())
        smallest, largest = min(values), max(values)
        if smallest and largest / smallest > IMBALANCE_WARN:
            low = min(per_class, key=per_class.get)
            high = max(per_class, key=per_class.get)
            report.warnings.append(f"{split} is imbalanced: {high} has {largest} images, {low} {smallest} "
                                   f"({largest / smallest:.1f}x; fit's --class-weight auto evens out the loss)")


def _refused(root: Path, reason: str) -> CheckReport:
    """What there is to show when fit would refuse: the class folders' raw file counts."""
    counts = {}
    if root.is_dir():
        sides = [s for s in ("train", *VALIDATION_FOLDERS, "test") if (root / s).is_dir()] or [""]
        for side in sides:
            counts[side or "all"] = {c: len(f) for c, f in class_files(root / side).items()}
    classes = tuple(sorted({c for per_class in counts.values() for c in per_class}))
    return CheckReport(root, "", classes, counts, (), [], [], [], reason)


def _groups(groups: list[list[str]]) -> str:
    return "; ".join(" = ".join(map(shown_path, g)) for g in groups[:SHOWN])


def _shown(paths) -> str:
    paths = [shown_path(p) for p in paths]
    return ", ".join(paths[:SHOWN]) + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def format_report(report: CheckReport) -> str:
    """Classes with images per split, then the findings; "" when there was nothing to count."""
    if not report.counts:
        return ""
    splits = list(report.counts)
    width = max([len("class"), len("total"), *(len(c) for c in report.classes)]) + 2
    lines = [f"{report.root}: {len(report.classes)} classes" + (f", {report.layout}" if report.layout else "")
             + ("" if report.refusal is None else " (files found, before any check)"),
             f"{'class':<{width}}" + "".join(f"{s:>12}" for s in splits)]
    for name in report.classes:
        lines.append(f"{name:<{width}}" + "".join(f"{report.counts[s].get(name, 0):>12,}" for s in splits))
    lines.append(f"{'total':<{width}}" + "".join(f"{sum(report.counts[s].values()):>12,}" for s in splits))
    lines += [f"warning: {w}" for w in report.warnings]
    if report.refusal is None:
        lines.append("ok: fit would accept this folder" + (f" ({len(report.warnings)} warning(s))"
                                                           if report.warnings else ""))
    return "\n".join(lines)
