"""How the library reports: news through the `retrain` logger, bars for long work (downloads,
unpacking, feature extraction) drawn by rich on a terminal.

The library only logs; whoever runs it decides how that looks. The CLI shows each record as
a plain line on stderr (`show_news`); a Python caller sees nothing until it configures
logging (`logging.basicConfig(level=logging.INFO)`), and can silence or redirect the
`retrain` logger like any other.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TaskID,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

# Messages go to stderr so that stdout stays clean for results (counts, tables, --json).
console = Console(stderr=True, highlight=False)


class Bar:
    """One task on a rich progress display: `advance(n)` as work completes."""

    def __init__(self, progress: Progress, task: TaskID):
        self._progress, self._task = progress, task

    def advance(self, n: float = 1) -> None:
        self._progress.advance(self._task, n)

    def reset(self, completed: float, total: float | None) -> None:
        self._progress.update(self._task, completed=completed, total=total)


@contextmanager
def bar(description: str, total: float | None, unit: str = "items") -> Iterator[Bar]:
    """A progress bar: bytes with rate and time left when `unit="bytes"`, else a count."""
    if unit == "bytes":
        columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TimeRemainingColumn()]
    else:
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn()]
    # transient=False leaves the finished bar as a record of the work in logs.
    with Progress(*columns, console=console, disable=not sys.stderr.isatty()) as progress:
        yield Bar(progress, progress.add_task(description, total=total))


log = logging.getLogger("retrain")


def say(message: str) -> None:
    """A line of progress news for the user (INFO on the `retrain` logger)."""
    log.info(message)


class _ConsoleHandler(logging.Handler):
    """Each record as its bare message on the console (stderr), beside rich's bars."""

    def emit(self, record: logging.LogRecord) -> None:
        console.print(self.format(record), markup=False, soft_wrap=True)


def show_news() -> None:
    """Show the library's news on stderr, once per process (the CLI calls this)."""
    if not any(isinstance(h, _ConsoleHandler) for h in log.handlers):
        log.addHandler(_ConsoleHandler())
        log.setLevel(logging.INFO)
        log.propagate = False  # TensorFlow's absl puts a handler on the root logger: no second copy
