"""The service's home folder: everything `retrain serve` owns, and where each part lives.

    HOME/retrain.db           the job and dataset tables (store.py)
    HOME/serve.lock           held by the running server: one server per home
    HOME/datasets/<id>/       uploaded archives, unpacked (archive.py)
    HOME/jobs/<id>/           a job: job.json (its settings), events.jsonl, log.txt, .lock,
                              run/ (the `retrain fit` run folder)
    HOME/models/<name>/<v>/   published versions, in TF Serving's model-base-path layout
    HOME/cache/               the bottleneck cache every job shares ($RETRAIN_CACHE_DIR)
    HOME/uploads/             archives while they arrive
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_home() -> Path:
    """$RETRAIN_HOME, else $XDG_DATA_HOME/retrain, else ~/.local/share/retrain."""
    if os.environ.get("RETRAIN_HOME"):
        return Path(os.environ["RETRAIN_HOME"])
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "retrain"


@dataclass(frozen=True)
class Home:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(os.path.realpath(self.root)))

    def make(self) -> "Home":
        for folder in (self.datasets, self.jobs, self.models, self.cache, self.uploads):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def db(self) -> Path:
        return self.root / "retrain.db"

    @property
    def lock(self) -> Path:
        return self.root / "serve.lock"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    def job(self, id: str) -> "JobFolder":
        return JobFolder(self.jobs / id)


@dataclass(frozen=True)
class JobFolder:
    path: Path

    @property
    def settings(self) -> Path:
        return self.path / "job.json"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def log(self) -> Path:
        return self.path / "log.txt"

    @property
    def lock(self) -> Path:
        return self.path / ".lock"

    @property
    def run(self) -> Path:
        return self.path / "run"
