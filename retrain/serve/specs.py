"""A job spec (the JSON of POST /v1/jobs) -> fit settings the server trusts, or a ConfigError.

The spec takes `retrain fit`'s settings by their Python names (backbone, alpha, image_size,
freeze, epochs, fine_tune_epochs, time_budget, augment, seed, ...), checked by the same
FitConfig and backbone code as the command line, plus `model` (the name to publish under)
and the data: `dataset` (an uploaded dataset's id) or `data` (a folder under one of the
operator's --data-root folders). Every path a spec names (data, a weights file, init_from, a
hub module folder) must lie inside the data roots or the home once `..` and symlinks are
resolved: a spec must never become a way to read the server's files. No TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

from retrain.backbones import HUB_PREFIX, check_alpha, check_image_size, check_weights, get_spec
from retrain.config import SERVER_DECIDES, FitConfig
from retrain.errors import ConfigError, NotFoundError
from retrain.serve.registry import check_name

SETTINGS = tuple(f.name for f in dataclasses.fields(FitConfig) if f.name not in SERVER_DECIDES + ("data",))


@dataclasses.dataclass(frozen=True)
class JobSpec:
    model: str
    dataset: str | None  # an uploaded dataset's id, or None for a data-root folder
    fit: dict  # FitConfig settings; every path resolved and allowed


def parse(spec: object, datasets, roots: tuple[Path, ...]) -> JobSpec:
    """Check a spec; `datasets(id)` -> an uploaded dataset's row or None; `roots`: the folders
    paths may lie in (the data roots and the home)."""
    if not isinstance(spec, dict):
        raise ConfigError("a job spec is a JSON object", type(spec).__name__,
                          'send for example {"model": "flowers", "dataset": "ID", "epochs": 5}')
    unknown = sorted(set(spec) - set(SETTINGS) - {"model", "dataset", "data"})
    if unknown:
        decided = [k for k in unknown if k in SERVER_DECIDES]
        raise ConfigError("the job spec has settings the service does not take", ", ".join(unknown),
                          f"remove them{' (the service decides ' + ', '.join(decided) + ')' if decided else ''}; "
                          f"known: model, dataset, data, {', '.join(SETTINGS)}")
    model = check_name(spec.get("model"))
    if ("dataset" in spec) == ("data" in spec):
        raise ConfigError("a job names its images by `dataset` (an uploaded dataset's id) or `data` "
                          "(a folder under a --data-root), exactly one", None,
                          "POST /v1/datasets an archive and pass its id as dataset")
    if "dataset" in spec:
        row = datasets(str(spec["dataset"]))
        if row is None:
            raise NotFoundError("no such dataset", spec["dataset"], "GET /v1/datasets lists them")
        data = row["report"]["root"]
    else:
        data = str(allowed(spec["data"], roots, "data"))
    fit = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items() if k in SETTINGS}
    if fit.get("weights") not in (None, "imagenet", "none"):
        fit["weights"] = str(allowed(fit["weights"], roots, "weights"))
    if fit.get("init_from") is not None:
        fit["init_from"] = str(allowed(fit["init_from"], roots, "init_from"))
    for name, value in fit.items():
        _check_type(name, value)
    backbone = fit.get("backbone", FitConfig.backbone)
    if backbone.startswith(HUB_PREFIX):
        fit["backbone"] = HUB_PREFIX + _hub_handle(backbone[len(HUB_PREFIX):], roots)
    config = FitConfig(**fit, data=data)
    if not config.backbone.startswith(HUB_PREFIX):
        backbone_spec = get_spec(config.backbone)
        check_alpha(backbone_spec, config.alpha, config.weights)
        check_weights(backbone_spec, config.weights)
        check_image_size(backbone_spec, config.image_size)
    return JobSpec(model, spec.get("dataset"), {**fit, "data": data})


# The JSON types each FitConfig field takes, from its annotation.
_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "tuple[str, ...]": (list, tuple)}


def _check_type(name: str, value: object) -> None:
    annotation = next(str(f.type) for f in dataclasses.fields(FitConfig) if f.name == name)
    kinds = annotation.split(" | ")
    if value is None and "None" in kinds:
        return
    wanted = tuple(t for kind in kinds for t in _TYPES.get(kind, ()))
    ok = isinstance(value, wanted) and not (isinstance(value, bool) and bool not in wanted)
    if isinstance(value, (list, tuple)):
        ok = ok and all(isinstance(v, str) for v in value)
    if isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        raise ConfigError(f"`{name}` must be {' or '.join(_NAMES.get(k, k) for k in kinds)}",
                          json.dumps(value)[:60], "send numbers as numbers, names as strings")


_NAMES = {"int": "a whole number", "float": "a number", "str": "a string", "bool": "true or false",
          "tuple[str, ...]": "a list of strings", "None": "null"}
_REMOTE = ("http://", "https://", "gs://")  # hub handles fetched, not read from this disk


def _hub_handle(handle: str, roots: tuple[Path, ...]) -> str:
    """A `hub:` handle: a URL tensorflow_hub downloads, or a folder inside the roots (also
    when given as file://)."""
    if handle.startswith(_REMOTE):
        return handle
    if handle.startswith("file://"):
        handle = handle[len("file://"):]
    elif "://" in handle:
        raise ConfigError("a hub handle is an http(s):// or gs:// URL or a folder", handle,
                          "pass hub:https://... or hub:<folder under a --data-root>")
    return str(allowed(handle, roots, "backbone"))


def allowed(path: object, roots: tuple[Path, ...], setting: str) -> Path:
    """`path` resolved (symlinks and `..` followed), if it lies inside one of `roots`; a relative
    path is taken from each data root in turn."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise ConfigError(f"`{setting}` must be a path", repr(path), "pass a folder under a --data-root")
    candidates = [Path(path)] if os.path.isabs(path) else [root / path for root in roots]
    for candidate in candidates:
        real = Path(os.path.realpath(candidate))
        inside = any(real.is_relative_to(os.path.realpath(root)) for root in roots)
        if inside and (real.exists() or candidate is candidates[-1]):
            return real
        if not inside and (candidate.exists() or candidate.is_symlink()):
            break  # found, but it leads out (a symlink, `..`): refused, not looked for further
    raise ConfigError(f"`{setting}` names a path outside the folders this server may read", path,
                      "pass a path under one of the operator's --data-root folders, or upload the "
                      "images with POST /v1/datasets")
