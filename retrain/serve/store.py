"""The service's tables: datasets and jobs, in SQLite (stdlib `sqlite3`, WAL) under the home.

One connection, shared by the request handlers and the scheduler's thread behind a lock:
every statement is a few milliseconds, and WAL lets another process (a `sqlite3` shell, a
second reader) read while the server writes. Rows come back as plain dicts, JSON columns
decoded.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

STATES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
LIVE = ("running", "cancelling")  # a process may be training
FINAL = ("succeeded", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, path TEXT NOT NULL, report TEXT NOT NULL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, model TEXT NOT NULL,
    state TEXT NOT NULL, settings TEXT NOT NULL, dataset TEXT,
    pid INTEGER, attempts INTEGER NOT NULL DEFAULT 0, error TEXT, progress TEXT,
    version INTEGER, metrics TEXT, created REAL NOT NULL, started REAL, finished REAL,
    events_from INTEGER NOT NULL DEFAULT 0);  -- where this attempt's events begin in events.jsonl
"""
_JSON = ("report", "settings", "progress", "metrics")


class Store:
    """The datasets and jobs tables of one home."""

    def __init__(self, path: Path):
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL keeps a commit whole; a power cut may lose the last
            self._db.executescript(_SCHEMA)

    def _rows(self, sql: str, args=()) -> list[dict]:
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [{k: (json.loads(r[k]) if k in _JSON and r[k] is not None else r[k]) for k in r.keys()}
                for r in rows]

    def _write(self, sql: str, args=()) -> None:
        with self._lock:
            self._db.execute(sql, args)

    # --- datasets -----------------------------------------------------------------------------

    def add_dataset(self, id: str, name: str, path: Path, report: dict) -> dict:
        self._write("INSERT INTO datasets (id, name, path, report, created) VALUES (?, ?, ?, ?, ?)",
                    (id, name, str(path), json.dumps(report), time.time()))
        return self.dataset(id)

    def dataset(self, id: str) -> dict | None:
        rows = self._rows("SELECT * FROM datasets WHERE id = ?", (id,))
        return rows[0] if rows else None

    def datasets(self) -> list[dict]:
        return self._rows("SELECT * FROM datasets ORDER BY created")

    # --- jobs ---------------------------------------------------------------------------------

    def add_job(self, id: str, model: str, settings: dict, dataset: str | None) -> dict:
        self._write("INSERT INTO jobs (id, model, state, settings, dataset, created) "
                    "VALUES (?, ?, 'queued', ?, ?, ?)", (id, model, json.dumps(settings), dataset, time.time()))
        return self.job(id)

    def job(self, id: str) -> dict | None:
        rows = self._rows("SELECT * FROM jobs WHERE id = ?", (id,))
        return rows[0] if rows else None

    def jobs(self, states: tuple[str, ...] = STATES) -> list[dict]:
        """Jobs in these states, oldest first (FIFO)."""
        marks = ", ".join("?" * len(states))
        return self._rows(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY seq", states)

    def update(self, id: str, **values) -> None:
        """Set columns of a job (JSON columns from Python values)."""
        values = {k: (json.dumps(v) if k in _JSON and v is not None else v) for k, v in values.items()}
        assigns = ", ".join(f"{k} = ?" for k in values)
        self._write(f"UPDATE jobs SET {assigns} WHERE id = ?", (*values.values(), id))

    def move(self, id: str, from_states: tuple[str, ...], **values) -> bool:
        """Set columns only if the job is in one of `from_states`; -> whether it was."""
        values = {k: (json.dumps(v) if k in _JSON and v is not None else v) for k, v in values.items()}
        assigns = ", ".join(f"{k} = ?" for k in values)
        marks = ", ".join("?" * len(from_states))
        with self._lock:
            cursor = self._db.execute(f"UPDATE jobs SET {assigns} WHERE id = ? AND state IN ({marks})",
                                      (*values.values(), id, *from_states))
        return cursor.rowcount == 1

    def close(self) -> None:
        with self._lock:
            self._db.close()
