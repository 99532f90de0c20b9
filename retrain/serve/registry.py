"""The model registry: HOME/models/<name>/<version>/, TF Serving's model-base-path layout.

Each version is a SavedModel folder named by an integer (saved_model.pb, variables/), so
`tensorflow_model_server --model_base_path=HOME/models/NAME` serves the same folders. Beside
the SavedModel each version holds what TF Serving ignores and a client wants: labels.txt,
retrain.json (the job, the run, the metrics, the signatures), metrics.json and
confusion_matrix.png. A version appears whole: it is copied under a hidden name, then renamed
to its number, which TF Serving (which ignores names that are not numbers) never sees half-made.
No TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from retrain.errors import ConfigError, NotFoundError
from retrain.files import atomic_write, locked

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
INFO = "retrain.json"


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError("a model name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
                          repr(name), 'pass for example "model": "flowers"')
    return name


def versions(models: Path, name: str) -> list[int]:
    """The published versions of `name`, lowest first."""
    folder = models / name
    if not NAME.fullmatch(name) or not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir()
                  if p.name.isdigit() and (p / "saved_model.pb").is_file())


def names(models: Path) -> list[str]:
    """Every model name with at least one version."""
    if not models.is_dir():
        return []
    return sorted(p.name for p in models.iterdir() if versions(models, p.name))


def resolve(models: Path, name: str, version: int | str | None) -> tuple[int, Path]:
    """(version, folder) of `name` at `version`, or at its highest version when None."""
    found = versions(models, name)
    if not found:
        raise NotFoundError("no such model", name, "GET /v1/models lists the models")
    if version is None:
        return found[-1], models / name / str(found[-1])
    if not str(version).isdigit() or int(version) not in found:
        raise NotFoundError(f"model {name} has no such version", version,
                            f"its versions are {', '.join(map(str, found))}")
    return int(version), models / name / str(int(version))


def info(folder: Path) -> dict:
    """A version's retrain.json (empty when it has none: a SavedModel put there by hand)."""
    try:
        return json.loads((folder / INFO).read_text())
    except (OSError, ValueError):
        return {}


def publish(models: Path, name: str, savedmodel: Path, extras: dict[str, Path], about: dict) -> int:
    """Publish the SavedModel folder `savedmodel` as the next version of `name`, with the files
    `extras` ({name in the version: source}) and `about` as retrain.json; -> the version.
    Publishing the same job again (`about["job"]`) returns the version it already has, so a job
    resumed after publishing does not publish twice."""
    folder = models / check_name(name)
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder / ".lock"):  # two jobs of one name finishing at once get two numbers
        for version in versions(models, name):
            if about.get("job") and info(folder / str(version)).get("job") == about["job"]:
                return version
        version = (versions(models, name) or [0])[-1] + 1
        tmp = folder / f".{version}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            shutil.copytree(savedmodel, tmp)
            for target, source in extras.items():
                if Path(source).is_file():
                    shutil.copyfile(source, tmp / target)
            atomic_write(tmp / INFO, json.dumps({**about, "version": version}, indent=2))
            os.rename(tmp, folder / str(version))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return version
