"""`retrain prepare-cifar`: download, verify and unpack CIFAR into class folders."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import retrain.prepare
from cifar_fixtures import (CIFAR10_LABELS, CifarArchive, Hostile, build_cifar10, build_tar_gz,
                            assert_one_line_error, cifar_pickle, md5_of, snapshot)
from retrain.cli import app
from retrain.config import PrepareConfig
from retrain.download import fetch
from retrain.errors import DatasetError, DownloadError
from retrain.prepare import load_batch, prepare_cifar

SPLITS = ("train", "validation", "test")


# --- helpers ------------------------------------------------------------------------------------

def run_cli(runner, *args):
    return runner.invoke(app, ["prepare-cifar", *map(str, args)])


def local_args(archive: CifarArchive, root: Path, *extra) -> list[str]:
    return ["--source", str(archive.path), "--md5", archive.md5, "--root", str(root),
            "--workers", "1", *map(str, extra)]


def files_by_split(out: Path, ext: str = "png") -> dict[str, dict[str, list[int]]]:
    """{split: {label: sorted image indices}} as found on disk."""
    found = {}
    for split in SPLITS:
        found[split] = {}
        for folder in sorted((out / split).iterdir()):
            names = sorted(p.name for p in folder.iterdir())
            assert all(re.fullmatch(rf"\d{{5}}\.{ext}", n) for n in names), names
            found[split][folder.name] = [int(n[:5]) for n in names]
    return found


def counts_of(found) -> dict[str, dict[str, int]]:
    return {split: {label: len(ix) for label, ix in per.items()} for split, per in found.items()}


def hidden_leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*")]


def mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def set_old_mtimes(out: Path, when: int = 1_000_000_000) -> None:
    for p in out.rglob("*"):
        if p.is_file():
            os.utime(p, (when, when))


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def half_of(path: Path) -> bytes:
    data = Path(path).read_bytes()
    return data[:len(data) // 2]


# --- a full run ---------------------------------------------------------------------------------

def test_full_run_from_loopback_url_writes_class_folders(runner, cifar10, http_server, tmp_path):
    """A download from a mirror URL unpacks into <root>/cifar10/{train,validation,test}/<label>/."""
    url = http_server.publish(cifar10.path)
    root = tmp_path / "data"
    result = run_cli(runner, "--source", url, "--md5", cifar10.md5, "--root", root, "--workers", 1)
    assert result.exit_code == 0, result.output
    out = root / "cifar10"
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "manifest.json", "test", "train",
                                                      "validation"]
    found = files_by_split(out)
    for split in SPLITS:
        assert sorted(found[split]) == sorted(CIFAR10_LABELS)
    assert (out / "labels.txt").read_text() == "".join(f"{n}\n" for n in CIFAR10_LABELS)
    assert md5_of(root / "downloads" / "cifar-10-python.tar.gz") == cifar10.md5
    assert http_server.range_headers() == [None]


def test_full_run_counts_match_disk_manifest_and_output(runner, cifar10, tmp_path):
    """The default split moves 10% of each class to validation; manifest and stdout agree with disk."""
    out = tmp_path / "cifar10"
    result = run_cli(runner, *local_args(cifar10, tmp_path))
    assert result.exit_code == 0, result.output
    on_disk = counts_of(files_by_split(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == on_disk
    assert manifest["labels"] == CIFAR10_LABELS
    assert manifest["archive_md5"] == cifar10.md5 and manifest["md5_verified"] is True
    assert on_disk["validation"] == {n: 1 for n in CIFAR10_LABELS}  # round(10% of 6)
    assert on_disk["train"] == {n: 5 for n in CIFAR10_LABELS}
    assert on_disk["test"] == {n: 2 for n in CIFAR10_LABELS}
    printed = {m[1]: (int(m[2]), int(m[3])) for m in
               re.finditer(r"^(\w+)\s+([\d,]+) images, (\d+) classes", result.stdout, re.M)}
    assert printed == {"train": (50, 10), "validation": (10, 10), "test": (20, 10)}


def test_pixels_of_data_batch_1_images_are_written_exactly(runner, cifar10, tmp_path):
    """Image i of data_batch_1 is <split>/<label>/<i:05d>.png with exactly its pixels."""
    assert run_cli(runner, *local_args(cifar10, tmp_path)).exit_code == 0
    out = tmp_path / "cifar10"
    data, labels = cifar10.batches["data_batch_1"]
    for i in range(len(data)):
        label = CIFAR10_LABELS[labels[i]]
        paths = [out / s / label / f"{i:05d}.png" for s in ("train", "validation")]
        existing = [p for p in paths if p.exists()]
        assert len(existing) == 1, paths
        expected = data[i].reshape(3, 32, 32).transpose(1, 2, 0)
        assert np.array_equal(pixels(existing[0]), expected)


def test_every_written_image_matches_its_archive_index(runner, cifar10, tmp_path):
    """Train indices run over data_batch_1..5 in order, test over test_batch; each file matches."""
    assert run_cli(runner, *local_args(cifar10, tmp_path)).exit_code == 0
    out = tmp_path / "cifar10"
    found = files_by_split(out)
    seen = []
    for split in SPLITS:
        source = "test" if split == "test" else "train"
        labels = cifar10.test_labels if split == "test" else cifar10.train_labels
        for label, indices in found[split].items():
            for i in indices:
                assert CIFAR10_LABELS[labels[i]] == label
                assert np.array_equal(pixels(out / split / label / f"{i:05d}.png"),
                                      cifar10.image(source, i))
                if source == "train":
                    seen.append(i)
    assert sorted(seen) == list(range(len(cifar10.train_labels)))  # train + validation partition it


# --- the validation split -------------------------------------------------------------------------

def validation_files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in (out / "validation").rglob("*.png")}


def test_validation_size_is_stratified_and_seeded(runner, cifar10, tmp_path):
    """--validation-size takes that many per class; the same seed picks the same images, another not."""
    picks = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        result = run_cli(runner, *local_args(cifar10, tmp_path / name), "--validation-size", 2,
                         "--seed", seed)
        assert result.exit_code == 0, result.output
        out = tmp_path / name / "cifar10"
        counts = counts_of(files_by_split(out))
        assert counts["validation"] == {n: 2 for n in CIFAR10_LABELS}
        assert counts["train"] == {n: 4 for n in CIFAR10_LABELS}
        picks[name] = validation_files(out)
    assert picks["a"] == picks["b"]
    assert picks["a"] != picks["c"]


def test_validation_size_leaving_no_training_images_is_an_error(runner, cifar10, tmp_path):
    """Moving every train image of a class to validation is refused with a one-line error."""
    result = run_cli(runner, *local_args(cifar10, tmp_path), "--validation-size", 6)
    line = assert_one_line_error(result)
    assert "--validation-size" in line
    assert not (tmp_path / "cifar10" / "manifest.json").exists()


def test_jpg_format_writes_jpeg_files(runner, cifar10, tmp_path):
    """--image-format jpg writes <index>.jpg files that are 32x32 RGB JPEGs."""
    result = run_cli(runner, *local_args(cifar10, tmp_path), "--image-format", "jpg")
    assert result.exit_code == 0, result.output
    out = tmp_path / "cifar10"
    assert not list(out.rglob("*.png"))
    jpgs = list(out.rglob("*.jpg"))
    assert len(jpgs) == len(cifar10.train_labels) + len(cifar10.test_labels)
    for path in jpgs[:10]:
        with Image.open(path) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (32, 32))
    assert counts_of(files_by_split(out, "jpg")) == json.loads((out / "manifest.json").read_text())["counts"]


# --- checksums and downloads ----------------------------------------------------------------------

def test_md5_mismatch_is_one_line_naming_both_sums_and_keeps_the_file(runner, cifar10, http_server,
                                                                      tmp_path):
    """A wrong --md5 fails with exit 1 naming expected and actual sums; the download is kept."""
    url = http_server.publish(cifar10.path)
    wrong = "0123456789abcdef0123456789abcdef"
    result = run_cli(runner, "--source", url, "--md5", wrong, "--root", tmp_path, "--workers", 1)
    line = assert_one_line_error(result)
    assert wrong in line and cifar10.md5 in line
    assert md5_of(tmp_path / "downloads" / "cifar-10-python.tar.gz") == cifar10.md5
    assert not (tmp_path / "cifar10").exists()


def test_fetch_resumes_a_cut_download_with_a_range_request(cifar10, http_server, tmp_path):
    """The server hangs up half-way; the retry asks for the missing bytes only, and the file is whole."""
    url = http_server.publish(cifar10.path)
    http_server.cut_requests = 1
    dest = tmp_path / "dl" / "cifar-10-python.tar.gz"
    assert fetch(url, dest, backoff=0.01) == dest
    size = cifar10.path.stat().st_size
    assert http_server.range_headers() == [None, f"bytes={size // 2}-"]
    assert md5_of(dest) == cifar10.md5
    assert not dest.with_name(dest.name + ".part").exists()


def test_cli_resumes_a_cut_download(runner, cifar10, http_server, tmp_path):
    """Through the CLI, a cut download is retried (one 1 s wait) and resumed, then unpacked."""
    url = http_server.publish(cifar10.path)
    http_server.cut_requests = 1
    result = run_cli(runner, "--source", url, "--md5", cifar10.md5, "--root", tmp_path, "--workers", 1)
    assert result.exit_code == 0, result.output
    assert "retrying" in result.stderr
    size = cifar10.path.stat().st_size
    assert http_server.range_headers() == [None, f"bytes={size // 2}-"]
    assert md5_of(tmp_path / "downloads" / "cifar-10-python.tar.gz") == cifar10.md5
    assert (tmp_path / "cifar10" / "manifest.json").exists()


def test_part_file_of_an_earlier_run_is_resumed(runner, cifar10, http_server, tmp_path):
    """A .part left by an earlier run is continued with a Range request, not downloaded again."""
    url = http_server.publish(cifar10.path)
    part = tmp_path / "downloads" / "cifar-10-python.tar.gz.part"
    part.parent.mkdir()
    part.write_bytes(half_of(cifar10.path))
    have = part.stat().st_size
    result = run_cli(runner, "--source", url, "--md5", cifar10.md5, "--root", tmp_path, "--workers", 1)
    assert result.exit_code == 0, result.output
    assert http_server.range_headers() == [f"bytes={have}-"]
    assert not part.exists()
    assert md5_of(tmp_path / "downloads" / "cifar-10-python.tar.gz") == cifar10.md5


def test_fetch_accepts_a_part_file_that_is_already_complete(cifar10, http_server, tmp_path):
    """A whole .part (the server answers 416 to its Range) becomes the file without re-downloading."""
    url = http_server.publish(cifar10.path)
    dest = tmp_path / "cifar-10-python.tar.gz"
    dest.with_name(dest.name + ".part").write_bytes(cifar10.path.read_bytes())
    fetch(url, dest, backoff=0.01)
    assert http_server.range_headers() == [f"bytes={cifar10.path.stat().st_size}-"]
    assert md5_of(dest) == cifar10.md5


def test_fetch_restarts_when_the_server_ignores_range(cifar10, http_server, tmp_path):
    """A server answering 200 to a Range request sends the whole file; the part is overwritten."""
    url = http_server.publish(cifar10.path)
    http_server.honor_range = False
    dest = tmp_path / "cifar-10-python.tar.gz"
    dest.with_name(dest.name + ".part").write_bytes(b"x" * 1000)
    fetch(url, dest, backoff=0.01)
    assert http_server.range_headers() == ["bytes=1000-"]
    assert md5_of(dest) == cifar10.md5


def test_fetch_discards_a_part_file_longer_than_the_server_file(cifar10, http_server, tmp_path):
    """A .part longer than the file (416, other size) is dropped and the download starts over."""
    url = http_server.publish(cifar10.path)
    dest = tmp_path / "cifar-10-python.tar.gz"
    too_long = cifar10.path.read_bytes() + b"junk"
    dest.with_name(dest.name + ".part").write_bytes(too_long)
    fetch(url, dest, backoff=0.01)
    assert http_server.range_headers() == [f"bytes={len(too_long)}-", None]
    assert md5_of(dest) == cifar10.md5


def test_http_404_is_one_line_error_without_retries(runner, http_server, tmp_path):
    """A missing file on the mirror fails at once (exit 1) naming the HTTP status."""
    result = run_cli(runner, "--source", http_server.url("nothing.tar.gz"), "--root", tmp_path)
    line = assert_one_line_error(result)
    assert "HTTP 404" in line
    assert len(http_server.requests) == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_raises_download_error(tmp_path):
    """Nothing listening on the port: DownloadError after the retries, with a one-line message."""
    url = f"http://127.0.0.1:{free_port()}/cifar-10-python.tar.gz"
    dest = tmp_path / "cifar-10-python.tar.gz"
    with pytest.raises(DownloadError) as caught:
        fetch(url, dest, retries=1, backoff=0.01)
    message = str(caught.value)
    assert "\n" not in message
    assert "could not download after 2 attempts" in message and url in message
    assert not dest.exists()


def test_missing_source_path_is_one_line_error(runner, tmp_path):
    """--source naming no file and no URL: exit 1 with a line naming the path."""
    missing = tmp_path / "nowhere" / "cifar.tar.gz"
    line = assert_one_line_error(run_cli(runner, "--source", missing, "--root", tmp_path / "data"))
    assert "--source" in line and str(missing) in line
    assert not (tmp_path / "data").exists()


# --- interrupted runs and reruns ------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_cifar10(tmp_path_factory) -> CifarArchive:
    """300 train images per class: a run long enough to be killed mid-way."""
    return build_cifar10(tmp_path_factory.mktemp("big") / "cifar-10-python.tar.gz",
                         train_per_class=300, test_per_class=20, seed=3, compresslevel=1)


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def test_run_killed_while_unpacking_is_completed_by_a_rerun(runner, big_cifar10, tmp_path):
    """SIGKILL during the train split leaves no manifest; a rerun makes it identical to a clean run."""
    root, out = tmp_path / "killed", tmp_path / "killed" / "cifar10"
    cmd = [sys.executable, "-m", "retrain", "prepare-cifar", *local_args(big_cifar10, root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if (out / ".train.tmp").is_dir() and count_files(out / ".train.tmp") >= 100:
                break
            time.sleep(0.002)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (out / ".train.tmp").is_dir() and not (out / "manifest.json").exists()

    result = run_cli(runner, *local_args(big_cifar10, root))
    assert result.exit_code == 0, result.output
    assert run_cli(runner, *local_args(big_cifar10, tmp_path / "clean")).exit_code == 0
    assert hidden_leftovers(out) == []
    assert (out / "manifest.json").exists()
    assert snapshot(out) == snapshot(tmp_path / "clean" / "cifar10")


def test_run_interrupted_on_the_second_split_is_completed_by_a_rerun(runner, cifar10, tmp_path,
                                                                     monkeypatch):
    """Ctrl-C while writing validation: exit 130 and no manifest; a rerun equals a clean run."""
    real = retrain.prepare.write_split
    calls = []

    def interrupt_second(out, split, *args):
        calls.append(split)
        if len(calls) == 2:
            (out / f".{split}.tmp" / "airplane").mkdir(parents=True)  # as if cut mid-way
            (out / f".{split}.tmp" / "airplane" / "99999.png").write_bytes(b"partial")
            raise KeyboardInterrupt
        return real(out, split, *args)

    monkeypatch.setattr(retrain.prepare, "write_split", interrupt_second)
    result = run_cli(runner, *local_args(cifar10, tmp_path / "cut"))
    assert result.exit_code == 130 and "interrupted" in result.stderr
    out = tmp_path / "cut" / "cifar10"
    assert calls == ["train", "validation"] and not (out / "manifest.json").exists()

    monkeypatch.setattr(retrain.prepare, "write_split", real)
    assert run_cli(runner, *local_args(cifar10, tmp_path / "cut")).exit_code == 0
    assert run_cli(runner, *local_args(cifar10, tmp_path / "clean")).exit_code == 0
    assert hidden_leftovers(out) == []
    assert snapshot(out) == snapshot(tmp_path / "clean" / "cifar10")


def test_rerun_is_a_no_op_that_rewrites_nothing(runner, cifar10, tmp_path):
    """A second identical run says 'already prepared' on stderr and leaves every file untouched."""
    assert run_cli(runner, *local_args(cifar10, tmp_path)).exit_code == 0
    out = tmp_path / "cifar10"
    set_old_mtimes(out)
    before = mtimes(out)
    result = run_cli(runner, *local_args(cifar10, tmp_path))
    assert result.exit_code == 0, result.output
    assert "already prepared" in result.stderr
    assert "train" in result.stdout  # the counts are still printed
    assert mtimes(out) == before


def test_force_rewrites_the_same_content(runner, cifar10, tmp_path):
    """--force redoes the unpacking: every file is written again, with the same content."""
    assert run_cli(runner, *local_args(cifar10, tmp_path)).exit_code == 0
    out = tmp_path / "cifar10"
    content = snapshot(out)
    set_old_mtimes(out)
    result = run_cli(runner, *local_args(cifar10, tmp_path), "--force")
    assert result.exit_code == 0, result.output
    assert "already prepared" not in result.stderr
    assert all(t > 1_000_000_000 * 10**9 for t in mtimes(out).values())
    assert snapshot(out) == content


def test_rerun_with_another_seed_asks_for_force(runner, cifar10, tmp_path):
    """A rerun with different settings is refused (exit 1) with a hint to pass --force."""
    assert run_cli(runner, *local_args(cifar10, tmp_path)).exit_code == 0
    out = tmp_path / "cifar10"
    before = snapshot(out)
    line = assert_one_line_error(run_cli(runner, *local_args(cifar10, tmp_path), "--seed", 7))
    assert "--force" in line and "seed" in line
    assert snapshot(out) == before


def test_rerun_after_a_file_was_deleted_redoes_it(runner, cifar10, tmp_path):
    """If an image was removed by hand the folder no longer matches its manifest, so a rerun redoes it."""
    assert run_cli(runner, *local_args(cifar10, tmp_path)).exit_code == 0
    out = tmp_path / "cifar10"
    before = snapshot(out)
    victim = next((out / "test" / "cat").iterdir())
    victim.unlink()
    result = run_cli(runner, *local_args(cifar10, tmp_path))
    assert result.exit_code == 0 and "already prepared" not in result.stderr
    assert snapshot(out) == before


# --- broken and hostile archives ------------------------------------------------------------------

def broken_archive(kind: str, folder: Path, cifar10: CifarArchive) -> Path:
    path = folder / f"{kind}.tar.gz"
    if kind == "truncated":
        path.write_bytes(half_of(cifar10.path))
    elif kind == "other-tar":
        build_tar_gz(path, {"photos/cat.jpg": b"\xff\xd8 not really", "README": b"hello\n"})
    else:  # not a tar.gz at all
        path.write_bytes(b"<html>404 not found</html>\n")
    return path


@pytest.mark.parametrize("kind, words", [("truncated", "truncated"),
                                         ("other-tar", "not a cifar-10-batches-py archive"),
                                         ("not-gzip", "not a tar.gz")])
def test_broken_archive_is_one_line_error(runner, cifar10, tmp_path, kind, words):
    """A truncated archive, a tar.gz of other files or a non-archive: exit 1, one clear line."""
    path = broken_archive(kind, tmp_path, cifar10)
    line = assert_one_line_error(run_cli(runner, "--source", path, "--root", tmp_path / "data"))
    assert words in line
    assert not (tmp_path / "data" / "cifar10" / "manifest.json").exists()


def test_symlink_in_place_of_a_batch_is_not_followed(runner, make_cifar_archive, tmp_path):
    """A batch member that is a symlink counts as missing; the link target is never read."""
    link = tarfile.TarInfo("cifar-10-batches-py/data_batch_3")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = make_cifar_archive(replace={"data_batch_3": link})
    line = assert_one_line_error(run_cli(runner, *local_args(archive, tmp_path)))
    assert "data_batch_3" in line and "missing" in line


def hostile_batch(marker: Path) -> dict:
    return {b"batch_label": b"training batch 2 of 5", b"labels": [0],
            b"data": Hostile(f"touch {marker}"), b"filenames": [b"x.png"]}


def test_load_batch_refuses_a_pickle_that_runs_code(tmp_path):
    """load_batch raises DatasetError for a pickle calling os.system, and the call never happens."""
    marker = tmp_path / "pwned"
    blob = cifar_pickle(hostile_batch(marker))
    pickle.loads(blob)  # the payload is live: plain pickle runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(DatasetError, match="data_batch_2.*not allowed"):
        load_batch(blob, "data_batch_2")
    assert not marker.exists()


def test_load_batch_reads_an_official_batch_and_rejects_non_dicts(cifar10):
    """An official batch comes back with str keys and its array; a pickled list or junk is refused."""
    data, labels = cifar10.batches["data_batch_1"]
    batch = load_batch(cifar_pickle({b"labels": [int(v) for v in labels], b"data": data}), "b")
    assert set(batch) == {"labels", "data"} and np.array_equal(batch["data"], data)
    with pytest.raises(DatasetError, match="holds a list"):
        load_batch(cifar_pickle([1, 2]), "b")
    with pytest.raises(DatasetError, match="not a valid CIFAR batch"):
        load_batch(b"definitely not a pickle", "b")


def test_hostile_pickle_in_archive_is_refused(runner, make_cifar_archive, tmp_path):
    """An archive whose data_batch_2 would run a shell command fails cleanly; the command never runs."""
    marker = tmp_path / "pwned"
    archive = make_cifar_archive(replace={"data_batch_2": hostile_batch(marker)})
    line = assert_one_line_error(run_cli(runner, *local_args(archive, tmp_path / "data")))
    assert "data_batch_2" in line and "not allowed" in line
    assert not marker.exists()
    assert not (tmp_path / "data" / "cifar10" / "manifest.json").exists()


def test_unexpected_members_are_ignored_and_nothing_lands_outside_root(
        runner, make_cifar_archive, cifar10, tmp_path, monkeypatch):
    """Extra members (../evil, an absolute path, a symlink, an extra file) are not extracted anywhere."""
    cwd = tmp_path / "cwd" / "deeper"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    link = tarfile.TarInfo("cifar-10-batches-py/evil_link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = make_cifar_archive(extra={
        "../evil": b"escaped\n", "cifar-10-batches-py/../../evil_up": b"escaped\n",
        str(tmp_path / "evil_abs"): b"escaped\n", "cifar-10-batches-py/extra": b"surplus\n",
        "cifar-10-batches-py/evil_link": link})
    root = tmp_path / "root"
    result = run_cli(runner, *local_args(archive, root))
    assert result.exit_code == 0, result.output
    strays = [p for p in tmp_path.rglob("*") if "evil" in p.name or p.name == "extra"]
    assert strays == []
    images = {k: v for k, v in snapshot(root / "cifar10").items() if k != "manifest.json"}
    assert run_cli(runner, *local_args(cifar10, tmp_path / "clean")).exit_code == 0
    clean = {k: v for k, v in snapshot(tmp_path / "clean" / "cifar10").items() if k != "manifest.json"}
    assert images == clean


@pytest.mark.parametrize("bad_name", ["../../../escaped", "airplane"], ids=["traversal", "duplicate"])
def test_label_names_that_are_not_plain_folder_names_are_refused(runner, make_cifar_archive, tmp_path,
                                                                 bad_name):
    """batches.meta label names become folder names: '..' paths or duplicates must be a clean error."""
    names = list(CIFAR10_LABELS)
    names[1] = bad_name  # automobile -> a path out of the folder, or airplane twice
    archive = make_cifar_archive(label_names=names)
    root = tmp_path / "a" / "root"
    result = run_cli(runner, *local_args(archive, root))
    assert [p for p in tmp_path.rglob("escaped*")] == []
    line = assert_one_line_error(result)
    assert "label" in line


# --- CIFAR-100 --------------------------------------------------------------------------------------

def test_cifar100_fine_labels(runner, cifar100, tmp_path):
    """CIFAR-100 unpacks into <root>/cifar100/<fine label>/ with each image under its fine label."""
    result = run_cli(runner, "--dataset", "cifar100", *local_args(cifar100, tmp_path))
    assert result.exit_code == 0, result.output
    out = tmp_path / "cifar100"
    assert (out / "labels.txt").read_text().split() == cifar100.label_names
    found = files_by_split(out)
    for split in SPLITS:
        labels = cifar100.test_labels if split == "test" else cifar100.train_labels
        for label, indices in found[split].items():
            for i in indices:
                assert cifar100.label_names[labels[i]] == label
                assert np.array_equal(pixels(out / split / label / f"{i:05d}.png"),
                                      cifar100.image("test" if split == "test" else "train", i))
    assert counts_of(found) == json.loads((out / "manifest.json").read_text())["counts"]
    assert counts_of(found)["validation"] == {n: 1 for n in cifar100.label_names}


def test_cifar100_coarse_labels(runner, cifar100, tmp_path):
    """--label-mode coarse writes <root>/cifar100_coarse/ with the coarse names and 10% per class."""
    result = run_cli(runner, "--dataset", "cifar100", "--label-mode", "coarse",
                     *local_args(cifar100, tmp_path))
    assert result.exit_code == 0, result.output
    out = tmp_path / "cifar100_coarse"
    assert not (tmp_path / "cifar100").exists()
    assert (out / "labels.txt").read_text().split() == cifar100.coarse_names
    found = files_by_split(out)
    for split in SPLITS:
        coarse = cifar100.test_coarse if split == "test" else cifar100.train_coarse
        for label, indices in found[split].items():
            assert all(cifar100.coarse_names[coarse[i]] == label for i in indices)
    per_class = np.bincount(cifar100.train_coarse)
    expected_val = {n: round(0.1 * per_class[c]) for c, n in enumerate(cifar100.coarse_names)}
    assert counts_of(found)["validation"] == expected_val
    assert counts_of(found)["test"] == {n: int(k) for n, k in
                                        zip(cifar100.coarse_names, np.bincount(cifar100.test_coarse))}


# --- flags ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, mentions", [
    (["--dataset", "foo"], "--dataset"),
    (["--image-format", "gif"], "--image-format"),
    (["--validation-size", "-1"], "--validation-size"),
    (["--md5", "xyz"], "--md5"),
    (["--label-mode", "coarse"], "--label-mode"),
    (["--workers", "-1"], "--workers"),
])
def test_bad_flag_values_exit_2(runner, tmp_path, flags, mentions):
    """A flag value that cannot work is a usage error: exit 2, naming the flag, nothing written."""
    result = run_cli(runner, *flags, "--root", tmp_path / "data")
    assert result.exit_code == 2, result.output
    assert mentions in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "data").exists()


def test_library_call_matches_the_cli(cifar10, tmp_path, runner):
    """prepare_cifar(PrepareConfig(...)) returns the manifest it writes, as the CLI does."""
    manifest = prepare_cifar(PrepareConfig(source=str(cifar10.path), md5=cifar10.md5,
                                           root=str(tmp_path / "lib"), workers=1))
    out = tmp_path / "lib" / "cifar10"
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert run_cli(runner, *local_args(cifar10, tmp_path / "cli")).exit_code == 0
    assert snapshot(out) == snapshot(tmp_path / "cli" / "cifar10")
