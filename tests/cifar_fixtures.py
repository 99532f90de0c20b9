"""Small CIFAR archives in the exact official python-version format, and a loopback HTTP server.

The archive layout, pickle protocol and numpy global name follow
../shared/tools/make_cifar_archive.py, i.e. what the files at cs.toronto.edu hold:
a tar.gz of pickled dicts with bytes keys, `data` an N x 3072 uint8 array whose rows are
channel-planar RGB (`row.reshape(3, 32, 32)`).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import re
import tarfile
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                  "truck"]
CIFAR100_FINE = ["apple", "bee", "cloud", "dolphin", "maple_tree"]
CIFAR100_COARSE = ["things", "living"]
FINE_TO_COARSE = [0, 1, 0, 1, 0]  # apple, cloud, maple_tree -> things; bee, dolphin -> living
README_HTML = (b"<meta HTTP-EQUIV=\"REFRESH\" content=\"0; "
               b"url=https://www.cs.toronto.edu/~kriz/cifar.html\">\n")


def cifar_pickle(obj) -> bytes:
    """Pickle as the official files are: protocol 3, numpy's global under `numpy.core`."""
    return pickle.dumps(obj, protocol=3).replace(
        b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n")


class Hostile:
    """Unpickles into a call of os.system(command): what a hostile mirror could ship."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@dataclass
class CifarArchive:
    """A built archive, with the arrays it holds in split order (train: batch 1, 2, ... 5)."""

    path: Path
    md5: str
    label_names: list[str]
    train_data: np.ndarray  # N x 3072 uint8, rows in the order of the train batches
    train_labels: np.ndarray
    test_data: np.ndarray
    test_labels: np.ndarray
    batches: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    coarse_names: list[str] | None = None
    train_coarse: np.ndarray | None = None
    test_coarse: np.ndarray | None = None

    def image(self, split: str, index: int) -> np.ndarray:
        """Image `index` of `split` ("train" or "test") as 32 x 32 x 3 HWC uint8."""
        data = self.train_data if split == "train" else self.test_data
        return data[index].reshape(3, 32, 32).transpose(1, 2, 0)


def _write_tar(path: Path, members: dict[str, object], compresslevel: int) -> None:
    """members: name -> bytes (a plain file), a picklable object, or a TarInfo (links, dirs)."""
    with tarfile.open(path, "w:gz", compresslevel=compresslevel) as tar:
        for name, obj in members.items():
            if isinstance(obj, tarfile.TarInfo):
                tar.addfile(obj)
                continue
            blob = obj if isinstance(obj, bytes) else cifar_pickle(obj)
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) -> sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def md5_of(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _images(rng, labels_per_image) -> np.ndarray:
    return rng.integers(0, 256, (len(labels_per_image), 3072), dtype=np.uint8)


def build_cifar10(path: Path, train_per_class: int = 6, test_per_class: int = 2, seed: int = 0,
                  extra: dict[str, object] | None = None, replace: dict[str, object] | None = None,
                  label_names: list[str] | None = None, compresslevel: int = 9) -> CifarArchive:
    """Write a CIFAR-10 archive to `path`.

    `replace` swaps the content of official members (key: the name inside the folder, e.g.
    "data_batch_2"); `extra` adds members under their full names, after the official ones.
    """
    names = label_names or CIFAR10_LABELS
    rng = np.random.default_rng(seed)
    train_labels = rng.permutation(np.repeat(np.arange(len(names)), train_per_class))
    train_data = _images(rng, train_labels)
    test_labels = rng.permutation(np.repeat(np.arange(len(names)), test_per_class))
    test_data = _images(rng, test_labels)
    folder = "cifar-10-batches-py"
    members: dict[str, object] = {}
    batches = {}
    for i, (data, labels) in enumerate(zip(np.array_split(train_data, 5),
                                           np.array_split(train_labels, 5)), start=1):
        batches[f"data_batch_{i}"] = (data, labels)
    batches["test_batch"] = (test_data, test_labels)
    for name, (data, labels) in batches.items():
        title = "testing batch 1 of 1" if name == "test_batch" else f"training batch {name[-1]} of 5"
        members[f"{folder}/{name}"] = {
            b"batch_label": title.encode(), b"labels": [int(v) for v in labels], b"data": data,
            b"filenames": [f"{names[v]}_{seed}_{j:05d}.png".encode() for j, v in enumerate(labels)]}
    members[f"{folder}/batches.meta"] = {b"label_names": [n.encode() for n in names],
                                         b"num_cases_per_batch": len(batches["data_batch_1"][0]),
                                         b"num_vis": 3072}
    members[f"{folder}/readme.html"] = README_HTML
    for name, obj in (replace or {}).items():
        members[f"{folder}/{name}"] = obj
    members.update(extra or {})
    _write_tar(path, members, compresslevel)
    return CifarArchive(path, md5_of(path), list(names), train_data, train_labels, test_data,
                        test_labels, batches)


def build_cifar100(path: Path, train_per_class: int = 6, test_per_class: int = 2,
                   seed: int = 1, num_fine: int = 5) -> CifarArchive:
    """Write a CIFAR-100 archive with 5 fine classes in 2 coarse ones, or with `num_fine`
    classes (fine00 ...) in 20 coarse ones (coarse00 ...), as the real one has 100 in 20."""
    rng = np.random.default_rng(seed)
    fine_names, coarse_names, fine_to_coarse = CIFAR100_FINE, CIFAR100_COARSE, np.asarray(FINE_TO_COARSE)
    if num_fine != len(CIFAR100_FINE):
        fine_names = [f"fine{i:02d}" for i in range(num_fine)]
        coarse_names = [f"coarse{i:02d}" for i in range(20)]
        fine_to_coarse = np.arange(num_fine) % 20
    train_fine = rng.permutation(np.repeat(np.arange(num_fine), train_per_class))
    test_fine = rng.permutation(np.repeat(np.arange(num_fine), test_per_class))
    train_data, test_data = _images(rng, train_fine), _images(rng, test_fine)
    folder = "cifar-100-python"

    def batch(title, data, fine):
        return {b"filenames": [f"{fine_names[v]}_s_{j:06d}.png".encode() for j, v in enumerate(fine)],
                b"batch_label": title.encode(), b"fine_labels": [int(v) for v in fine],
                b"coarse_labels": [int(fine_to_coarse[v]) for v in fine], b"data": data}

    members = {f"{folder}/meta": {b"fine_label_names": [n.encode() for n in fine_names],
                                  b"coarse_label_names": [n.encode() for n in coarse_names]},
               f"{folder}/test": batch("testing batch 1 of 1", test_data, test_fine),
               f"{folder}/train": batch("training batch 1 of 1", train_data, train_fine)}
    _write_tar(path, members, 9)
    return CifarArchive(path, md5_of(path), list(fine_names), train_data, train_fine, test_data,
                        test_fine, coarse_names=list(coarse_names),
                        train_coarse=fine_to_coarse[train_fine], test_coarse=fine_to_coarse[test_fine])


def build_tar_gz(path: Path, members: dict[str, object]) -> Path:
    """Any tar.gz: name -> bytes, picklable object or TarInfo."""
    _write_tar(path, members, 9)
    return path


# --- a loopback HTTP server with Range support and a switch to cut a response short -------------

class _Handler(http.server.BaseHTTPRequestHandler):
    server: "LoopbackServer"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        record = {"path": self.path, "headers": dict(self.headers.items()), "sent": 0}
        with srv.lock:
            srv.requests.append(record)
            cut = srv.cut_requests > 0 and len(srv.requests) > srv.cut_skip
            if cut:
                srv.cut_requests -= 1
        file = srv.directory / urllib.parse.unquote(self.path.lstrip("/").split("?", 1)[0])
        if not file.is_file():
            self.send_error(404)
            return
        data = file.read_bytes()
        start, stop = 0, len(data)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and srv.honor_range:
            start = int(match.group(1))
            if match.group(2):
                stop = min(stop, int(match.group(2)) + 1)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:stop]
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if cut:  # announce every byte, send half, hang up
            record["sent"] = len(body) // 2
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        record["sent"] = len(body)  # set first: the client may have it all before write returns
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client had read enough
            self.close_connection = True


class LoopbackServer(http.server.ThreadingHTTPServer):
    """Serves files from `directory` on 127.0.0.1; records each request's headers and bytes sent.

    `cut_requests = n` makes the next n responses (after the first `cut_skip` requests) announce
    their full Content-Length but send only half the bytes before closing; `honor_range = False`
    makes it ignore Range (reply 200). Ranges are `bytes=start-` or `bytes=start-end`.
    """

    daemon_threads = True

    def __init__(self, directory: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.directory = Path(directory)
        self.requests: list[dict] = []
        self.cut_requests = 0
        self.cut_skip = 0
        self.honor_range = True
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def publish(self, source: Path, name: str | None = None) -> str:
        """Copy `source` into the served folder; -> its URL."""
        name = name or Path(source).name
        (self.directory / name).write_bytes(Path(source).read_bytes())
        return self.url(name)

    def range_headers(self) -> list[str | None]:
        return [r["headers"].get("Range") for r in self.requests]


def assert_one_line_error(result, code: int = 1) -> str:
    """The command failed with `code`, reported as one `error:` line, without a traceback."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}"
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]
