"""`retrain prepare-quickdraw`: the first rows of Quick, Draw! bitmap files -> PNG class folders."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import retrain.quickdraw
from cifar_fixtures import LoopbackServer, assert_one_line_error, snapshot
from retrain.cli import app
from retrain.config import QuickDrawConfig
from retrain.download import fetch, read_head
from retrain.quickdraw import downloads_folder, prepare_quickdraw

SPLITS = ("train", "validation", "test")
CLASSES = ("apple", "cat", "The Eiffel Tower")  # sorted: "T" before "a"
ROWS = 50
PIXELS = 784


# --- helpers ------------------------------------------------------------------------------------

def bitmaps(name: str, rows: int = ROWS) -> np.ndarray:
    """rows x 784 uint8 drawings, different for every class and row."""
    seed = sum(name.encode())
    return np.random.default_rng(seed).integers(0, 256, (rows, PIXELS), dtype=np.uint8)


def save_bitmaps(folder: Path, naming: str = "{}.npy", classes=CLASSES) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in classes:
        paths[name] = folder / naming.format(name)
        np.save(paths[name], bitmaps(name))
    return paths


@pytest.fixture
def bucket(http_server: LoopbackServer) -> str:
    """The loopback server serving <prefix>/<class>.npy for CLASSES; -> the URL prefix."""
    save_bitmaps(http_server.directory / "numpy_bitmap")
    return http_server.url("numpy_bitmap")


def header_bytes(name: str = "apple") -> int:
    """Where the rows start in the .npy files np.save writes: 10 bytes + the header's length."""
    buffer = io.BytesIO()
    np.save(buffer, bitmaps(name))
    data = buffer.getvalue()
    assert data[:8] == b"\x93NUMPY\x01\x00"  # format 1.0, as the official files
    return 10 + int.from_bytes(data[8:10], "little")


def run_cli(runner, *args):
    return runner.invoke(app, ["prepare-quickdraw", *map(str, args)])


def files_on_disk(out: Path) -> dict[str, dict[str, list[int]]]:
    """{split: {class: sorted row numbers}} from the file names."""
    found = {}
    for split in SPLITS:
        found[split] = {folder.name: sorted(int(p.stem) for p in folder.iterdir())
                        for folder in sorted((out / split).iterdir())}
    return found


def counts_of(found) -> dict[str, dict[str, int]]:
    return {split: {name: len(rows) for name, rows in per.items()} for split, per in found.items()}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "L", (28, 28)), path
        return np.asarray(im)


def assert_pixels_match(out: Path, source_rows: dict[str, np.ndarray]) -> None:
    for split in SPLITS:
        for folder in (out / split).iterdir():
            for path in folder.iterdir():
                row = int(path.stem)
                assert np.array_equal(pixels(path).reshape(-1), source_rows[folder.name][row]), path


def mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


# --- over HTTP ----------------------------------------------------------------------------------

def test_download_writes_grayscale_class_folders_with_the_source_pixels(runner, bucket, http_server,
                                                                        tmp_path):
    """Three classes (one with spaces) via the CLI: 28x28 L PNGs equal to their rows, labels, manifest."""
    root = tmp_path / "data"
    result = run_cli(runner, "--classes", "apple, cat,The Eiffel Tower", "--max-per-class", 30,
                     "--source", bucket, "--root", root, "--workers", 1)
    assert result.exit_code == 0, result.output
    out = root / "quickdraw"
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "manifest.json", "test", "train",
                                                      "validation"]
    assert (out / "labels.txt").read_text() == "The Eiffel Tower\napple\ncat\n"
    found = files_on_disk(out)
    for split in SPLITS:
        assert sorted(found[split]) == sorted(CLASSES)
    assert all(len(p.stem) == 6 for p in out.rglob("*.png"))
    assert_pixels_match(out, {name: bitmaps(name) for name in CLASSES})
    for name in CLASSES:  # the first 30 rows, split 24 / 3 / 3
        assert sorted(sum((found[s][name] for s in SPLITS), [])) == list(range(30))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == counts_of(found)
    assert manifest["counts"]["train"] == {n: 24 for n in CLASSES}
    assert manifest["labels"] == sorted(CLASSES)
    assert manifest["drawings"]["The Eiffel Tower"] == {"used": 30, "in_file": ROWS}
    assert "train           72 images, 3 classes, 24 per class" in result.stdout


def test_only_the_header_and_the_needed_rows_are_requested(runner, bucket, http_server, tmp_path):
    """Per class: a 1 KB Range for the header, then one Range for header + N rows; names quoted."""
    result = run_cli(runner, "--classes", ",".join(CLASSES), "--max-per-class", 30, "--source",
                     bucket, "--root", tmp_path, "--workers", 1)
    assert result.exit_code == 0, result.output
    end = header_bytes() + 30 * PIXELS
    order = sorted(CLASSES)
    quoted = [f"/numpy_bitmap/{n.replace(' ', '%20')}.npy" for n in order]
    assert [r["path"] for r in http_server.requests] == quoted + quoted  # every header first
    assert http_server.range_headers() == ["bytes=0-1023"] * 3 + [f"bytes=0-{end - 1}"] * 3
    assert [r["sent"] for r in http_server.requests] == [1024] * 3 + [end] * 3
    prefixes = downloads_folder(str(tmp_path), bucket)
    assert sorted(p.name for p in prefixes.iterdir()) == sorted(f"{n}.npy.prefix" for n in CLASSES)
    served = (http_server.directory / "numpy_bitmap" / "The Eiffel Tower.npy").read_bytes()
    assert (prefixes / "The Eiffel Tower.npy.prefix").read_bytes() == served[:end]


def test_cut_download_resumes_with_a_range_for_the_rest(runner, bucket, http_server, tmp_path):
    """The server hangs up half-way through the rows; the retry asks for the missing bytes only."""
    http_server.cut_skip, http_server.cut_requests = 1, 1  # the header probe, then cut the rows
    result = run_cli(runner, "--classes", "apple", "--max-per-class", 30, "--source", bucket,
                     "--root", tmp_path, "--workers", 1)
    assert result.exit_code == 0, result.output
    assert "retrying" in result.stderr
    end = header_bytes() + 30 * PIXELS
    assert http_server.range_headers() == ["bytes=0-1023", f"bytes=0-{end - 1}",
                                           f"bytes={end // 2}-{end - 1}"]
    assert_pixels_match(tmp_path / "quickdraw", {"apple": bitmaps("apple")})


def test_part_file_of_an_earlier_run_is_resumed_without_a_probe(runner, bucket, http_server, tmp_path):
    """A .part holding the header: no header request, one Range from its end to the last row."""
    served = (http_server.directory / "numpy_bitmap" / "apple.npy").read_bytes()
    part = downloads_folder(str(tmp_path), bucket) / "apple.npy.prefix.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(served[:5000])
    result = run_cli(runner, "--classes", "apple", "--max-per-class", 30, "--source", bucket,
                     "--root", tmp_path, "--workers", 1)
    assert result.exit_code == 0, result.output
    end = header_bytes() + 30 * PIXELS
    assert http_server.range_headers() == [f"bytes=5000-{end - 1}"]
    assert not part.exists()
    assert_pixels_match(tmp_path / "quickdraw", {"apple": bitmaps("apple")})


def test_server_ignoring_range_is_read_only_as_far_as_needed(runner, bucket, http_server, tmp_path):
    """A 200 to a Range request: the stream is read up to the last row needed, then closed."""
    http_server.honor_range = False
    result = run_cli(runner, "--classes", "cat", "--max-per-class", 10, "--source", bucket,
                     "--root", tmp_path, "--workers", 1)
    assert result.exit_code == 0, result.output
    prefix = downloads_folder(str(tmp_path), bucket) / "cat.npy.prefix"
    assert prefix.stat().st_size == header_bytes("cat") + 10 * PIXELS
    assert_pixels_match(tmp_path / "quickdraw", {"cat": bitmaps("cat")})


def test_rerun_is_a_no_op_without_requests(runner, bucket, http_server, tmp_path):
    """A second identical run says so, sends no request and rewrites nothing."""
    args = ["--classes", "apple,cat", "--max-per-class", 20, "--source", bucket, "--root", tmp_path,
            "--workers", 1]
    assert run_cli(runner, *args).exit_code == 0
    out = tmp_path / "quickdraw"
    for p in tmp_path.rglob("*"):
        if p.is_file():
            os.utime(p, (1_000_000_000, 1_000_000_000))
    before, requests = mtimes(tmp_path), len(http_server.requests)
    result = run_cli(runner, *args)
    assert result.exit_code == 0, result.output
    assert "already prepared" in result.stderr and "train" in result.stdout
    assert len(http_server.requests) == requests
    assert mtimes(tmp_path) == before
    assert (out / "manifest.json").exists()


def test_other_settings_need_force_and_more_rows_extend_the_download(runner, bucket, http_server,
                                                                     tmp_path):
    """More rows later: refused without --force; with it, only the new rows' bytes are fetched."""
    args = ["--classes", "apple", "--source", bucket, "--root", tmp_path, "--workers", 1]
    assert run_cli(runner, *args, "--max-per-class", 20).exit_code == 0
    out = tmp_path / "quickdraw"
    before, requests = snapshot(out), len(http_server.requests)
    line = assert_one_line_error(run_cli(runner, *args, "--max-per-class", 40))
    assert "--force" in line and "max_per_class 20 -> 40" in line
    assert snapshot(out) == before and len(http_server.requests) == requests

    result = run_cli(runner, *args, "--max-per-class", 40, "--force")
    assert result.exit_code == 0, result.output
    start = header_bytes()
    assert http_server.range_headers()[requests:] == [
        f"bytes={start + 20 * PIXELS}-{start + 40 * PIXELS - 1}"]
    assert counts_of(files_on_disk(out))["train"] == {"apple": 32}
    assert_pixels_match(out, {"apple": bitmaps("apple")})


def test_unknown_class_is_one_line_naming_it_and_the_class_list(runner, bucket, http_server, tmp_path):
    """A 404 for a class: exit 1 at the header probes, naming the class and the official list."""
    result = run_cli(runner, "--classes", "apple,zebra cake", "--source", bucket, "--root", tmp_path)
    line = assert_one_line_error(result)
    assert "'zebra cake'" in line and "categories.txt" in line and "HTTP 404" in line
    assert http_server.range_headers() == ["bytes=0-1023", "bytes=0-1023"]  # no retries, no rows
    assert not (tmp_path / "quickdraw").exists()


def test_served_file_of_the_wrong_shape_is_refused_after_the_header(runner, http_server, tmp_path):
    """A (50, 100) array: the header request alone shows it; exit 1 naming the URL and the shape."""
    folder = http_server.directory / "numpy_bitmap"
    folder.mkdir()
    np.save(folder / "apple.npy", np.zeros((50, 100), np.uint8))
    result = run_cli(runner, "--classes", "apple", "--source", http_server.url("numpy_bitmap"),
                     "--root", tmp_path)
    line = assert_one_line_error(result)
    assert "apple.npy" in line and "(50, 100)" in line
    assert len(http_server.requests) == 1


# --- from a folder ------------------------------------------------------------------------------

def test_local_folder_with_either_file_name(runner, tmp_path):
    """--source DIR takes full_numpy_bitmap_<class>.npy and <class>.npy; --max-per-class 0 is all."""
    folder = tmp_path / "bitmaps"
    save_bitmaps(folder, "full_numpy_bitmap_{}.npy", classes=("apple", "The Eiffel Tower"))
    save_bitmaps(folder, classes=("cat",))
    result = run_cli(runner, "--classes", ",".join(CLASSES), "--max-per-class", 0, "--source", folder,
                     "--root", tmp_path / "data", "--workers", 2)
    assert result.exit_code == 0, result.output
    out = tmp_path / "data" / "quickdraw"
    assert counts_of(files_on_disk(out)) == {"train": {n: 40 for n in CLASSES},
                                            "validation": {n: 5 for n in CLASSES},
                                            "test": {n: 5 for n in CLASSES}}
    assert_pixels_match(out, {name: bitmaps(name) for name in CLASSES})
    assert not (tmp_path / "data" / "downloads").exists()


def test_classes_file_with_comments_and_a_name_with_spaces(runner, tmp_path):
    """--classes-file: one a line, blank lines and # comments ignored; spaces kept in the folder name."""
    folder = tmp_path / "bitmaps"
    save_bitmaps(folder, "full_numpy_bitmap_{}.npy")
    names = tmp_path / "classes.txt"
    names.write_text("# landmarks first\nThe Eiffel Tower\n\n  apple   # a fruit\n")
    result = run_cli(runner, "--classes-file", names, "--max-per-class", 10, "--source", folder,
                     "--root", tmp_path, "--workers", 1)
    assert result.exit_code == 0, result.output
    out = tmp_path / "quickdraw"
    assert (out / "labels.txt").read_text() == "The Eiffel Tower\napple\n"
    assert sorted(p.name for p in (out / "train").iterdir()) == ["The Eiffel Tower", "apple"]
    assert_pixels_match(out, {name: bitmaps(name) for name in CLASSES})


@pytest.mark.parametrize("array, words", [
    (np.zeros((50, 784), np.float32), "dtype float32"),
    (np.zeros((50, 28, 28), np.uint8), "shape (50, 28, 28)"),
    (np.zeros((0, 784), np.uint8), "no drawings"),
], ids=["float32", "3-d", "empty"])
def test_local_file_that_is_not_bitmaps_is_one_line_naming_it(runner, tmp_path, array, words):
    folder = tmp_path / "bitmaps"
    folder.mkdir()
    np.save(folder / "full_numpy_bitmap_apple.npy", array)
    line = assert_one_line_error(run_cli(runner, "--classes", "apple", "--source", folder,
                                         "--root", tmp_path))
    assert "full_numpy_bitmap_apple.npy" in line and words in line


def test_missing_local_class_names_both_file_names(runner, tmp_path):
    save_bitmaps(tmp_path / "bitmaps", classes=("apple",))
    line = assert_one_line_error(run_cli(runner, "--classes", "apple,cat", "--source",
                                         tmp_path / "bitmaps", "--root", tmp_path / "data"))
    assert "cat.npy or full_numpy_bitmap_cat.npy" in line
    assert not (tmp_path / "data").exists()


# --- the split ------------------------------------------------------------------------------------

def library_run(folder: Path, root: Path, classes=CLASSES, **values) -> dict[str, dict[str, list[int]]]:
    prepare_quickdraw(QuickDrawConfig(classes=tuple(classes), source=str(folder), root=str(root),
                                      workers=1, **values))
    return files_on_disk(root / "quickdraw")


def test_split_is_stratified_seeded_and_partitions_each_class(tmp_path):
    """Each class splits in the same proportions, the splits partition its rows, the seed decides."""
    folder = tmp_path / "bitmaps"
    save_bitmaps(folder)
    a = library_run(folder, tmp_path / "a", validation_split=0.2, test_split=0.1, seed=3)
    assert counts_of(a) == {"train": {n: 35 for n in CLASSES}, "validation": {n: 10 for n in CLASSES},
                            "test": {n: 5 for n in CLASSES}}
    for name in CLASSES:
        rows = [r for s in SPLITS for r in a[s][name]]
        assert sorted(rows) == list(range(ROWS))
    assert library_run(folder, tmp_path / "b", validation_split=0.2, test_split=0.1, seed=3) == a
    c = library_run(folder, tmp_path / "c", validation_split=0.2, test_split=0.1, seed=4)
    assert c["validation"]["apple"] != a["validation"]["apple"]
    alone = library_run(folder, tmp_path / "d", classes=["apple"], validation_split=0.2,
                        test_split=0.1, seed=3)
    assert {s: alone[s]["apple"] for s in SPLITS} == {s: a[s]["apple"] for s in SPLITS}


def test_library_call_returns_the_manifest_it_writes(tmp_path):
    folder = tmp_path / "bitmaps"
    save_bitmaps(folder)
    manifest = prepare_quickdraw(QuickDrawConfig(classes=CLASSES, source=str(folder),
                                                 root=str(tmp_path), max_per_class=10, workers=1))
    assert manifest == json.loads((tmp_path / "quickdraw" / "manifest.json").read_text())
    assert manifest["settings"] == {"classes": sorted(CLASSES), "max_per_class": 10,
                                    "validation_split": 0.1, "test_split": 0.1, "seed": 0}


def test_too_few_drawings_to_train_on_is_an_error(runner, tmp_path):
    save_bitmaps(tmp_path / "bitmaps", classes=("apple",))
    line = assert_one_line_error(run_cli(runner, "--classes", "apple", "--max-per-class", 2,
                                         "--source", tmp_path / "bitmaps", "--root", tmp_path,
                                         "--validation-split", 0.5, "--test-split", 0.4))
    assert "'apple'" in line and "--max-per-class" in line


def test_run_interrupted_on_the_second_split_is_completed_by_a_rerun(runner, tmp_path, monkeypatch):
    """Ctrl-C while writing validation: exit 130, no manifest; a rerun equals a clean run."""
    folder = tmp_path / "bitmaps"
    save_bitmaps(folder)
    args = ["--classes", ",".join(CLASSES), "--source", folder, "--workers", 1]
    real, calls = retrain.quickdraw.write_split, []

    def interrupt_second(out, split, *rest, **kwargs):
        calls.append(split)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(out, split, *rest, **kwargs)

    monkeypatch.setattr(retrain.quickdraw, "write_split", interrupt_second)
    result = run_cli(runner, *args, "--root", tmp_path / "cut")
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert not (tmp_path / "cut" / "quickdraw" / "manifest.json").exists()
    monkeypatch.setattr(retrain.quickdraw, "write_split", real)
    assert run_cli(runner, *args, "--root", tmp_path / "cut").exit_code == 0
    assert run_cli(runner, *args, "--root", tmp_path / "clean").exit_code == 0
    assert snapshot(tmp_path / "cut" / "quickdraw") == snapshot(tmp_path / "clean" / "quickdraw")


# --- flags ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, mentions", [
    ([], "exactly one of --classes and --classes-file"),
    (["--classes", "apple", "--classes-file", "{file}"], "exactly one of --classes and --classes-file"),
    (["--classes", "apple,cat,apple"], "more than once"),
    (["--classes", "apple,../escape"], "folder names"),
    (["--classes", ",,"], "no classes"),
    (["--classes-file", "{missing}"], "--classes-file"),
    (["--classes", "apple", "--max-per-class", "-1"], "--max-per-class"),
    (["--classes", "apple", "--validation-split", "1.5"], "--validation-split"),
    (["--classes", "apple", "--validation-split", "0.5", "--test-split", "0.5"], "--test-split"),
    (["--classes", "apple", "--seed", "-1"], "--seed"),
], ids=["neither", "both", "duplicate", "traversal", "empty", "missing-file", "max-per-class",
        "validation-split", "splits-sum", "seed"])
def test_bad_flags_exit_2(runner, tmp_path, flags, mentions):
    """A flag value that cannot work is a usage error: exit 2, naming the problem, nothing written."""
    names = tmp_path / "classes.txt"
    names.write_text("apple\n")
    flags = [f.format(file=names, missing=tmp_path / "nope.txt") for f in flags]
    result = run_cli(runner, *flags, "--root", tmp_path / "data", "--source", tmp_path)
    assert result.exit_code == 2, result.output
    assert mentions in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "data").exists()


# --- download.py: fetching a prefix ---------------------------------------------------------------

def test_fetch_with_end_takes_a_prefix_and_trims_a_longer_part(http_server, tmp_path):
    data = bytes(range(256)) * 40
    (http_server.directory / "blob").write_bytes(data)
    dest = tmp_path / "blob"
    fetch(http_server.url("blob"), dest, end=1000, backoff=0.01)
    assert dest.read_bytes() == data[:1000] and http_server.range_headers() == ["bytes=0-999"]
    dest.rename(dest.with_name("blob.part"))
    fetch(http_server.url("blob"), dest, end=600, backoff=0.01)  # already there: no request
    assert dest.read_bytes() == data[:600] and len(http_server.requests) == 1
    assert read_head(http_server.url("blob"), 100) == data[:100]
    http_server.honor_range = False
    assert read_head(http_server.url("blob"), 100) == data[:100]


# --- the real data --------------------------------------------------------------------------------

def test_real_quickdraw_bitmaps(runner, tmp_path, real_file):
    """Two real classes (../shared/data/quickdraw: 3,000 drawings each; Google's full files hold
    more), 100 drawings each: 80/10/10, exact pixels."""
    folder = tmp_path / "source"
    folder.mkdir()
    real = {}
    for name in ("apple", "cat"):
        path = real_file(f"quickdraw/full_numpy_bitmap_{name}.npy")
        (folder / path.name).symlink_to(path)
        real[name] = np.load(path, mmap_mode="r")
    result = run_cli(runner, "--classes", "apple,cat", "--max-per-class", 100, "--source", folder,
                     "--root", tmp_path, "--workers", 1)
    assert result.exit_code == 0, result.output
    out = tmp_path / "quickdraw"
    assert counts_of(files_on_disk(out)) == {"train": {"apple": 80, "cat": 80},
                                            "validation": {"apple": 10, "cat": 10},
                                            "test": {"apple": 10, "cat": 10}}
    assert_pixels_match(out, real)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["drawings"] == {name: {"used": 100, "in_file": len(rows)} for name, rows in real.items()}
