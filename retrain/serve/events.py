"""A job's event log: JSON lines appended to HOME/jobs/<id>/events.jsonl.

The job's process writes its progress and its outcome there; the server adds its own state
changes. The file outlives both processes, so a restarted server learns what happened while
it was away, and a client's event stream can start over or go on from a byte offset (its
server-sent event id). Each line is one `write` of an O_APPEND file, so lines from two
writers never interleave.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def append(path: Path, event: str, **values) -> None:
    """Add one event (`{"event": ..., "time": ..., **values}`) as a line."""
    line = json.dumps({"event": event, "time": round(time.time(), 3), **values}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read(path: Path, offset: int = 0) -> tuple[list[tuple[int, dict]], int]:
    """The whole lines after byte `offset` -> ([(offset after the line, event)], new offset).
    A line still being written (no newline yet) waits for the next read."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    events = []
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        offset += len(line)
        try:
            events.append((offset, json.loads(line)))
        except ValueError:  # a torn line from a process killed mid-write (not expected: one write)
            continue
    return events, offset
