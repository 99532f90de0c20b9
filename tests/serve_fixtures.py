"""Helpers for the `retrain serve` tests: the real server in a subprocess on an ephemeral
loopback port, driven over HTTP with urllib; archives of tiny generated images.

Imported explicitly (`from serve_fixtures import ...`); nothing here is auto-used.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from fit_fixtures import make_colour_data, subprocess_env

# A job that trains the toy colours to 100% in a few seconds (fit_fixtures.fit_args's settings).
TOY_JOB = {"backbone": "tiny_cnn", "weights": "none", "freeze": "none", "image_size": 32, "epochs": 2,
           "fine_tune_epochs": 2, "batch_size": 8, "learning_rate": 0.05, "fine_tune_learning_rate": 0.01,
           "schedule": "constant", "label_smoothing": 0.0, "feature_shift": 0}


def colour_zip(folder: Path, name: str = "colours", **kwargs) -> Path:
    """A zip of folder/<name>/{train,validation}/<colour>/*.png, wrapped in one folder as
    zipping a folder makes it."""
    root = make_colour_data(folder / name, **kwargs)
    archive = folder / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(root.rglob("*.png")):
            z.write(f, f.relative_to(folder))
    return archive


def b64(path: Path) -> dict:
    return {"b64": base64.b64encode(Path(path).read_bytes()).decode()}


class Server:
    """`python -m retrain serve --port 0 --home HOME ...` in a subprocess; its URL once listening."""

    def __init__(self, home: Path, *flags: str, token: str | None = None, env: dict | None = None):
        self.home, self.flags, self.token = Path(home), flags, token
        self.env = {**subprocess_env(), **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.log = self.home.parent / f"{self.home.name}-server.log"

    def start(self, timeout: float = 60) -> "Server":
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "retrain", "serve", "--port", "0", "--home",
                                      str(self.home), *self.flags], stdout=subprocess.PIPE, stderr=out,
                                     env=self.env)
        line = self.proc.stdout.readline().decode()
        if "listening on " not in line:
            self.proc.wait(timeout)
            raise AssertionError(f"the server did not start: {line!r}\n{self.log.read_text()}")
        self.url = line.split("listening on ")[1].split()[0]
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def request(self, method: str, path: str, body=None, headers: dict | None = None,
                timeout: float = 120) -> tuple[int, object]:
        """-> (status, the JSON answer, or the text when it is not JSON)."""
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        headers = dict(headers or {})
        if self.token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def upload(self, archive: Path, name: str = "colours") -> dict:
        status, answer = self.post(f"/v1/datasets?name={name}", archive.read_bytes())
        assert status == 201, answer
        return answer

    def submit(self, dataset: str, model: str = "colours", **settings) -> str:
        status, answer = self.post("/v1/jobs", {"model": model, "dataset": dataset, **TOY_JOB, **settings})
        assert status == 202, answer
        return answer["id"]

    def wait(self, job: str, states=("succeeded", "failed", "cancelled"), timeout: float = 240) -> dict:
        """Poll the job until its state is one of `states`; -> the job."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, answer = self.get(f"/v1/jobs/{job}")
            assert status == 200, answer
            if answer["state"] in states:
                return answer
            time.sleep(0.2)
        raise AssertionError(f"job {job} still {answer['state']} after {timeout} s; log:\n"
                             + str(self.get(f"/v1/jobs/{job}/log")[1])[-3000:])

    def wait_for_event(self, job: str, kind: str, timeout: float = 120, **match) -> dict:
        """Until the job's events.jsonl has an event of `kind` (with `match`'s values)."""
        path = self.home / "jobs" / job / "events.jsonl"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.is_file():
                for line in path.read_text().splitlines():
                    event = json.loads(line)
                    if event["event"] == kind and all(event.get(k) == v for k, v in match.items()):
                        return event
            time.sleep(0.1)
        raise AssertionError(f"no {kind} event in {path} after {timeout} s")


def worker_pid(home: Path, job: str) -> int | None:
    """The pid in the job's lock file, while a live process holds it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from retrain.files import is_locked

    lock = Path(home) / "jobs" / job / ".lock"
    text = lock.read_text().strip() if lock.is_file() and is_locked(lock) else ""
    return int(text) if text.isdigit() else None  # empty for an instant while the holder writes it


def kill_workers(home: Path) -> None:
    """SIGKILL every job process still holding a lock under `home` (a test's clean-up: jobs
    outlive their server on purpose)."""
    for lock in Path(home).glob("jobs/*/.lock"):
        pid = worker_pid(home, lock.parent.name)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def png_bytes(pixels) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()
