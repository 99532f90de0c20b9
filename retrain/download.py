"""Download a file over HTTP(S) with a progress bar, Range resume, retries and an md5 check.

Written by hand because no library at hand resumes with a Range request: a cut-off download
leaves `<file>.part`, and the next attempt (or the next run) asks only for the missing bytes.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, TypeVar

from retrain.errors import DownloadError
from retrain.progress import bar, say

CHUNK = 1 << 20
USER_AGENT = "retrain/0.1 (+python urllib)"
T = TypeVar("T")


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://", "file://"))


def md5sum(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def fetch(url: str, dest: Path, retries: int = 4, backoff: float = 1.0,
          timeout: float = 30.0, end: int | None = None) -> Path:
    """Download `url` to `dest`, resuming `dest.part` if an earlier attempt left one.

    With `end`, only the first `end` bytes are fetched (`Range: bytes=<have>-<end - 1>`; a
    server that ignores Range is read only that far), so `dest` is a prefix of the file.
    Transient failures (connection errors, time-outs, a server cutting the stream, 5xx)
    are retried `retries` times, waiting `backoff`, 2x`backoff`, ... seconds; each retry
    resumes where the last one stopped. `dest` appears only once complete.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    def resuming() -> str:
        return f", resuming from {part.stat().st_size if part.exists() else 0:,} bytes"

    _retrying(lambda: _download_once(url, part, timeout, end), url, retries, backoff, resuming)
    os.replace(part, dest)
    return dest


def read_head(url: str, size: int, retries: int = 4, backoff: float = 1.0,
              timeout: float = 30.0) -> bytes:
    """The first `size` bytes of `url` (all of it if shorter), asked for with a Range request."""
    return _retrying(lambda: _read_head_once(url, size, timeout), url, retries, backoff)


class Refused(DownloadError):
    """The server answered with a client error (404, 403, ...): retrying will not help."""

    def __init__(self, status: int, what: str, received: object = None, todo: str = ""):
        super().__init__(what, received, todo)
        self.status = status


def _retrying(attempt_once: Callable[[], T], url: str, retries: int, backoff: float,
              progress: Callable[[], str] = lambda: "") -> T:
    """Run `attempt_once`, retrying transient failures with exponential backoff."""
    for attempt in range(retries + 1):
        try:
            return attempt_once()
        except urllib.error.HTTPError as err:
            if err.code < 500 and err.code not in (408, 429):
                raise Refused(err.code, f"the server refused the download with HTTP {err.code} "
                              f"{err.reason}", url,
                              "check the URL, or pass --source with a local archive") from None
            problem = f"HTTP {err.code}"
        except (urllib.error.URLError, http.client.HTTPException, socket.timeout,
                ConnectionError, _CutOff) as err:
            problem = str(getattr(err, "reason", None) or err) or type(err).__name__
        if attempt < retries:
            wait = backoff * 2 ** attempt
            say(f"download interrupted ({problem}); retrying in {wait:g} s{progress()}")
            time.sleep(wait)
    raise DownloadError(f"could not download after {retries + 1} attempts: {problem}", url,
                        "check the network and rerun (the download resumes), or pass --source "
                        "with a local archive or a mirror URL")


class _CutOff(Exception):
    """The server closed the stream before sending every byte it announced."""


def _download_once(url: str, part: Path, timeout: float, end: int | None = None) -> None:
    have = part.stat().st_size if part.exists() else 0
    if end is not None and have >= end:  # already holds the prefix asked for
        if have > end:
            os.truncate(part, end)
        return
    headers = {"User-Agent": USER_AGENT}
    if have or end is not None:
        headers["Range"] = f"bytes={have}-{'' if end is None else end - 1}"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # asked past the end: the part may already be whole
            total = err.headers.get("Content-Range", "").rpartition("/")[2]
            if total.isdigit() and int(total) == have:
                return
            part.unlink()
            raise _CutOff("the partial file is longer than the server's") from None
        raise
    with response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0  # the server ignored the Range request (or none was sent): start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        if end is not None:  # a server ignoring Range announces the whole file; stop at `end`
            total = end if total is None else min(total, end)
        name = Path(urllib.request.url2pathname(url.rsplit("/", 1)[-1])).name or "download"
        with open(part, "ab" if resumed else "wb") as f, bar(f"download {name}", total, "bytes") as b:
            b.reset(have, total)
            while chunk := response.read(CHUNK if end is None else min(CHUNK, end - f.tell())):
                f.write(chunk)
                b.advance(len(chunk))
            got = f.tell()
    if total is not None and got < total:
        raise _CutOff(f"got {got:,} of {total:,} bytes")


def _read_head_once(url: str, size: int, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT,
                                                   "Range": f"bytes=0-{size - 1}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        expected = min(size, int(length)) if length and length.isdigit() else None
        head = b""
        while len(head) < size and (chunk := response.read(size - len(head))):  # 200: stop early
            head += chunk
    if expected is not None and len(head) < expected:
        raise _CutOff(f"got {len(head):,} of {expected:,} bytes")
    return head
