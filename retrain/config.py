"""Every setting and default, as frozen dataclasses that validate themselves. No TensorFlow.

The CLI builds one config from its flags and hands it down; typer reads its defaults from
here, so each default lives in one place. `to_json`/`from_json` round-trip a run's config.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrain.errors import ConfigError

CIFAR_DATASETS = ("cifar10", "cifar100")
LABEL_MODES = ("fine", "coarse")
IMAGE_FORMATS = ("png", "jpg")
AUGMENTATIONS = ("flip", "crop", "rotation", "brightness", "contrast")
FREEZE_WORDS = ("auto", "all", "none")
CLASS_WEIGHTS = ("auto", "none")
SCHEDULES = ("cosine", "constant")
DISTRIBUTE_MODES = ("none", "mirrored", "multi-worker")


def _positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"--{name.replace('_', '-')} must be a positive number", value,
                          "pass a value above 0")


def _one_of(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}",
                          value, "pick one of those")


def unsafe_folder_names(names) -> list[str]:
    """The names that cannot be class folders: empty, `.`/`..`, hidden (fit skips those) or
    holding a path separator or NUL, so a folder could land outside its split."""
    return [n for n in names
            if n in ("", ".", "..") or n.startswith(".") or any(c in n for c in "/\\\0")]


def parse_class_names(text: str | None, one_per_line: bool = False) -> tuple[str, ...]:
    """Class names from `--classes` ('apple, The Eiffel Tower') or, one_per_line, from a
    `--classes-file` (blank lines and # comments ignored). Case and inner spaces are kept."""
    if not text:
        return ()
    if one_per_line:
        parts = [line.split("#", 1)[0] for line in text.splitlines()]
    else:
        parts = text.split(",")
    return tuple(part.strip() for part in parts if part.strip())


class _JsonMixin:
    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} settings", ", ".join(unknown),
                              "remove them or use the retrain version that wrote them")
        tuples = {f.name for f in dataclasses.fields(cls) if "tuple" in str(f.type)}
        return cls(**{k: tuple(v) if k in tuples and isinstance(v, list) else v
                      for k, v in values.items()})

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class PrepareConfig(_JsonMixin):
    """Settings of `retrain prepare-cifar`."""

    dataset: str = "cifar10"
    label_mode: str = "fine"
    root: str = "data"
    source: str | None = None  # None: the official archive URL
    md5: str | None = None
    validation_size: int | None = None  # None: 10% of each class
    image_format: str = "png"
    seed: int = 0
    force: bool = False
    workers: int = 0  # 0: one per CPU core

    def __post_init__(self):
        _one_of("dataset", self.dataset, CIFAR_DATASETS)
        _one_of("label_mode", self.label_mode, LABEL_MODES)
        _one_of("image_format", self.image_format, IMAGE_FORMATS)
        if self.label_mode != "fine" and self.dataset != "cifar100":
            raise ConfigError("--label-mode applies to cifar100 only", self.label_mode,
                              "drop --label-mode or pass --dataset cifar100")
        if self.validation_size is not None and (
                not isinstance(self.validation_size, int) or self.validation_size < 0):
            raise ConfigError("--validation-size must be a whole number of images per class, 0 or more",
                              self.validation_size, "pass for example --validation-size 500")
        if self.md5 is not None and (len(self.md5) != 32 or
                                     any(c not in "0123456789abcdef" for c in self.md5.lower())):
            raise ConfigError("--md5 must be 32 hexadecimal digits", self.md5,
                              "copy the checksum from the mirror's listing")

    @property
    def output_name(self) -> str:
        """The dataset folder under `root`: cifar10, cifar100 or cifar100_coarse."""
        return "cifar100_coarse" if self.label_mode == "coarse" else self.dataset


@dataclass(frozen=True)
class QuickDrawConfig(_JsonMixin):
    """Settings of `retrain prepare-quickdraw`."""

    classes: tuple[str, ...] = ()  # stored sorted: the order of labels.txt
    max_per_class: int = 10_000  # the first N drawings of each class; 0: every one
    root: str = "data"
    source: str | None = None  # None: the official bucket; else a URL prefix or a folder
    validation_split: float = 0.1
    test_split: float = 0.1
    seed: int = 0
    force: bool = False
    workers: int = 0  # 0: one per CPU core

    def __post_init__(self):
        if isinstance(self.classes, str) or not all(isinstance(c, str) for c in self.classes):
            raise ConfigError("--classes must be a sequence of class names", self.classes,
                              "pass --classes apple,cat or --classes-file FILE")
        if not self.classes:
            raise ConfigError("no classes given", None, "pass --classes apple,cat or --classes-file FILE")
        duplicated = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if duplicated:
            raise ConfigError("--classes names a class more than once", ", ".join(duplicated),
                              "list each class once")
        bad = unsafe_folder_names(self.classes) + [c for c in self.classes if c != c.strip()]
        if bad:
            raise ConfigError("--classes holds names that cannot be folder names (empty, hidden, "
                              "padded with spaces, or with a path separator)",
                              ", ".join(map(repr, bad)), "pass Quick, Draw! class names such as "
                              "apple or 'The Eiffel Tower'")
        object.__setattr__(self, "classes", tuple(sorted(self.classes)))
        for name in ("max_per_class", "seed", "workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a whole number, 0 or more",
                                  value, "pass for example 0 or 1000")
        for name in ("validation_split", "test_split"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1)", value,
                                  "pass a share of each class, for example 0.1")
        if self.validation_split + self.test_split >= 1:
            raise ConfigError("--validation-split and --test-split leave nothing to train on",
                              f"{self.validation_split} + {self.test_split}",
                              "keep their sum below 1, for example 0.1 and 0.1")
        if self.source is not None and not self.source.strip():
            raise ConfigError("--source is empty", repr(self.source),
                              "pass a URL prefix or a folder, or leave it out for the official bucket")


# Phase 1's learning rate when --learning-rate is not given. The head on a frozen backbone is
# a convex problem (softmax regression on fixed features), whose best constant step size for T
# steps goes as 1/sqrt(T): 1e-3 was chosen on all of CIFAR-10 (10 epochs of 703 steps), and a
# short phase 1 underfits at that rate (README, "How the defaults were chosen").
HEAD_RATE, HEAD_RATE_STEPS, HEAD_RATE_MAX = 1e-3, 7030, 1e-2


def head_learning_rate(steps: int) -> float:
    """The head's Adam rate for a phase 1 of `steps` steps: 1e-3 x sqrt(7,030 / steps), never
    below 1e-3 (not measured beyond 7,030 steps) nor above 1e-2 (not measured beyond it)."""
    return min(HEAD_RATE_MAX, HEAD_RATE * max(1.0, (HEAD_RATE_STEPS / max(1, steps)) ** 0.5))


@dataclass(frozen=True)
class FitConfig(_JsonMixin):
    """Settings of `retrain fit`: the data, the backbone, the two training phases, the run."""

    data: str = "data/cifar10"
    backbone: str = "mobilenet_v2"
    alpha: float | None = None  # None: the backbone's default width (1.0)
    weights: str = "imagenet"  # imagenet | none | path to a .h5 / .weights.h5 file
    image_size: int | None = None  # None: the backbone's native size
    freeze: str = "auto"  # auto | all | none | layer count | layer name
    augment: tuple[str, ...] = ()
    # Defaults chosen by measurement on CIFAR-10 (README, "How the defaults were chosen"):
    # 10 head epochs, 14 fine-tuning epochs at 2e-4, cosine, label smoothing 0.1, feature shift 1.
    epochs: int = 10
    fine_tune_epochs: int = 14
    batch_size: int = 64
    learning_rate: float | None = None  # None: head_learning_rate(phase 1's steps)
    fine_tune_learning_rate: float = 2e-4
    schedule: str = "cosine"  # cosine: per phase, a warm-up then cosine decay to 0 | constant
    dropout_rate: float = 0.2
    label_smoothing: float = 0.1
    validation_split: float = 0.1
    class_weight: str = "auto"
    seed: int = 0
    runs_dir: str = "checkpoints"
    name: str | None = None  # None: <backbone>-<time>
    keep_checkpoints: int = 3
    save_every_steps: int | None = None
    init_from: str | None = None
    cache: bool = True  # bottleneck cache for the frozen part (see retrain/bottleneck.py)
    cache_dir: str | None = None  # None: <cache home>/<data folder name>-<hash of its path>, the home
    #   $RETRAIN_CACHE_DIR, else $XDG_CACHE_HOME/retrain, else ~/.cache/retrain (retrain/cache.py)
    cache_budget: str = "4G"  # disk for the phase-2 boundary activations
    cache_views: int = 0  # with --augment: K cached augmented views per image (0: no cache)
    feature_shift: int = 1  # phase 2 on cached activations: shift each map by up to N cells
    deterministic: bool = True  # op determinism: same seed, same result (exact resume)
    distribute: str = "none"  # none | mirrored | multi-worker (see retrain/distribute.py)
    time_budget: str | None = None  # e.g. 10m: plan phase 2's epochs to end within it (retrain/budget.py)

    def __post_init__(self):
        for name in ("epochs", "fine_tune_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more", value,
                                  "pass a whole number of epochs")
        if self.epochs + self.fine_tune_epochs == 0:
            raise ConfigError("there is nothing to train: --epochs and --fine-tune-epochs are both 0",
                              0, "pass --epochs 1 or more")
        for name in ("batch_size", "fine_tune_learning_rate", "keep_checkpoints"):
            _positive(name, getattr(self, name))
        _positive("learning_rate", self.learning_rate, allow_none=True)
        _positive("alpha", self.alpha, allow_none=True)
        _positive("save_every_steps", self.save_every_steps, allow_none=True)
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 1):
            raise ConfigError("--image-size must be a whole number of pixels", self.image_size,
                              "pass for example --image-size 224")
        if not 0 <= self.dropout_rate < 1:
            raise ConfigError("--dropout-rate must be in [0, 1)", self.dropout_rate, "pass for example 0.2")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("--label-smoothing must be in [0, 1)", self.label_smoothing,
                              "pass for example 0.1")
        if not 0 < self.validation_split < 1:
            raise ConfigError("--validation-split must be between 0 and 1", self.validation_split,
                              "pass for example 0.2")
        _one_of("class_weight", self.class_weight, CLASS_WEIGHTS)
        _one_of("schedule", self.schedule, SCHEDULES)
        _one_of("distribute", self.distribute, DISTRIBUTE_MODES)
        parse_size(self.cache_budget)
        if self.time_budget is not None:
            parse_duration(self.time_budget)
            if self.distribute == "multi-worker":  # each worker would time its own steps and plan apart
                raise ConfigError("--time-budget cannot plan for several workers", self.time_budget,
                                  "drop it and pass --fine-tune-epochs with --distribute multi-worker")
        if not isinstance(self.cache_views, int) or self.cache_views < 0:
            raise ConfigError("--cache-views must be 0 or more", self.cache_views,
                              "pass the number of augmented views to cache per image")
        if not isinstance(self.feature_shift, int) or self.feature_shift < 0:
            raise ConfigError("--feature-shift must be 0 or more", self.feature_shift,
                              "pass the number of cells, for example 1 (0: off)")
        for aug in self.augment:
            _one_of("augment", aug, AUGMENTATIONS)
        if self.freeze.lower() in FREEZE_WORDS and self.freeze != self.freeze.lower():
            object.__setattr__(self, "freeze", self.freeze.lower())
        if self.freeze.lstrip("-").isdigit() and int(self.freeze) < 0:
            raise ConfigError("--freeze must be auto, all, none, a layer count or a layer name",
                              self.freeze, "pass a count of 0 or more")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ConfigError("--name must be a plain folder name", self.name,
                              "pass a name without slashes, for example --name cifar-mnv2")

    @property
    def weights_path(self) -> Path | None:
        """The weights file, when `weights` names one."""
        return None if self.weights in ("imagenet", "none") else Path(self.weights)


@dataclass(frozen=True)
class LaunchConfig(_JsonMixin):
    """Settings of `retrain launch`: N local workers running one `fit` command."""

    workers: int = 2
    port_base: int | None = None  # None: free loopback ports picked by the system
    log_dir: str | None = None  # None: <temp dir>/retrain-launch-<run name>
    command: tuple[str, ...] = ()  # what follows `--`: fit and its flags

    def __post_init__(self):
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 1:
            raise ConfigError("--workers must be 1 or more", self.workers, "pass for example --workers 2")
        if self.port_base is not None and not 1024 <= self.port_base <= 65536 - self.workers:
            raise ConfigError(f"--port-base must leave {self.workers} ports between 1024 and 65535",
                              self.port_base, "pass for example --port-base 23456, or drop it")
        if not self.command or self.command[0] != "fit":
            raise ConfigError("launch runs `fit`: put it and its flags after --",
                              " ".join(self.command) or "nothing after --",
                              "for example: retrain launch --workers 2 -- fit --data DIR")


def default_run_name(backbone: str) -> str:
    """<backbone>-<date>-<time>, a plain folder name (a hub handle's slashes become _)."""
    import time

    safe = backbone.replace("hub:", "hub-").replace("/", "_").replace("\\", "_").strip("._") or "run"
    return f"{safe[-40:]}-{time.strftime('%Y%m%d-%H%M%S')}"


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, flag: str = "--cache-budget") -> int:
    """'4G', '500MB', '2GiB', '1000000' -> bytes (units are powers of 1024); `flag` names the
    setting in the error."""
    value = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (value[:-1], value[-1]) if value[-1:] in _UNITS and value[-1:] else (value, "")
    try:
        size = float(number) * _UNITS[unit]
    except ValueError:
        raise ConfigError(f"{flag} must be a size such as 4G or 500M", text,
                          "pass a number with an optional K, M, G or T") from None
    if size < 0:
        raise ConfigError(f"{flag} cannot be negative", text, "pass 0 or more")
    return int(size)


_SECONDS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """'90s', '10m', '1.5h', '600' (seconds) -> seconds, above 0."""
    seconds = _seconds(text, _SECONDS)
    if not 0 < seconds < math.inf:
        raise ConfigError("--time-budget must be a duration such as 10m, 90s or 1.5h", text,
                          "pass a number above 0 with an optional s, m or h")
    return seconds


_AGE_SECONDS = {**_SECONDS, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """'30d', '12h', '90m', '2w', '0' -> seconds, 0 or more (an age, as --older-than takes it)."""
    seconds = _seconds(text, _AGE_SECONDS)
    if not 0 <= seconds < math.inf:
        raise ConfigError("--older-than must be an age such as 30d, 12h or 90m", text,
                          "pass a number of 0 or more with an optional s, m, h, d or w")
    return seconds


def _seconds(text: str, units: dict[str, int]) -> float:
    """A number with an optional unit suffix -> seconds; NaN when it is not one."""
    value = str(text).strip().lower()
    unit = value[-1:] if value[-1:] in units else ""
    try:
        return float(value[:-1] if unit else value) * units.get(unit, 1)
    except ValueError:
        return math.nan


def parse_list(text: str | None) -> tuple[str, ...]:
    """'flip, crop' -> ('flip', 'crop'); empty or None -> ()."""
    if not text:
        return ()
    return tuple(part.strip().lower() for part in text.split(",") if part.strip())


# --- after fit: evaluate, predict, export, check -----------------------------------------

CHECKPOINTS = ("best", "last")
EVAL_SPLITS = ("test", "validation")
EXPORT_FORMATS = ("savedmodel", "tflite", "tflite-int8")


def _run_folder(run: str) -> None:
    if not run:
        raise ConfigError("a run folder is needed", repr(run), "pass checkpoints/<name>")


@dataclass(frozen=True)
class EvaluateConfig(_JsonMixin):
    """Settings of `retrain evaluate`: which run, which checkpoint, which images."""

    run: str = ""
    split: str | None = None  # test | validation; None: test, unless `data` names a folder
    data: str | None = None  # a <label>/ folder to evaluate on instead of a split
    checkpoint: str = "best"
    model: str | None = None  # an exported .tflite file, evaluated beside the Keras model
    batch_size: int = 64

    def __post_init__(self):
        _run_folder(self.run)
        if self.split is not None and self.data is not None:
            raise ConfigError("--split and --data both choose the images", f"{self.split}, {self.data}",
                              "pass one of them")
        if self.split is not None:
            _one_of("split", self.split, EVAL_SPLITS)
        _one_of("checkpoint", self.checkpoint, CHECKPOINTS)
        if self.model is not None and not self.model.endswith(".tflite"):
            raise ConfigError("--model takes an exported .tflite file", self.model,
                              "pass the file `retrain export --format tflite` wrote")
        _positive("batch_size", self.batch_size)

    @property
    def split_name(self) -> str:
        """The images' name, which is also the folder under RUN/eval/."""
        if self.data is not None:
            return f"data-{Path(self.data).resolve().name}"
        return self.split or "test"


@dataclass(frozen=True)
class PredictConfig(_JsonMixin):
    """Settings of `retrain predict`."""

    run: str = ""
    inputs: tuple[str, ...] = ()  # image files and folders
    top_k: int = 3
    checkpoint: str = "best"
    batch_size: int = 32

    def __post_init__(self):
        _run_folder(self.run)
        if not self.inputs:
            raise ConfigError("no images to classify", "nothing", "pass image files or folders")
        _positive("top_k", self.top_k)
        _one_of("checkpoint", self.checkpoint, CHECKPOINTS)
        _positive("batch_size", self.batch_size)


@dataclass(frozen=True)
class ExportConfig(_JsonMixin):
    """Settings of `retrain export`."""

    run: str = ""
    format: str = "savedmodel"
    output: str | None = None  # None: RUN/export/savedmodel, model-float32.tflite, model-int8.tflite
    checkpoint: str = "best"
    representative_images: int = 200  # tflite-int8: training images that calibrate the ranges
    seed: int = 0  # which training images those are

    def __post_init__(self):
        _run_folder(self.run)
        _one_of("format", self.format, EXPORT_FORMATS)
        _one_of("checkpoint", self.checkpoint, CHECKPOINTS)
        _positive("representative_images", self.representative_images)
        if self.output is not None and self.format != "savedmodel" and not self.output.endswith(".tflite"):
            raise ConfigError("a TFLite --output must end in .tflite", self.output,
                              "pass for example --output model.tflite")

    @property
    def output_path(self) -> Path:
        default = {"savedmodel": "savedmodel", "tflite": "model-float32.tflite",
                   "tflite-int8": "model-int8.tflite"}[self.format]
        return Path(self.output) if self.output else Path(self.run) / "export" / default


@dataclass(frozen=True)
class CheckConfig(_JsonMixin):
    """Settings of `retrain check`: the pre-flight dataset report on its own."""

    data: str = FitConfig.data
    validation_split: float = FitConfig.validation_split
    strict: bool = False  # exit 1 on warnings too (unreadable files, duplicates, imbalance)

    def __post_init__(self):
        if not 0 < self.validation_split < 1:
            raise ConfigError("--validation-split must be between 0 and 1", self.validation_split,
                              "pass for example 0.2")


@dataclass(frozen=True)
class CacheConfig(_JsonMixin):
    """Settings of `retrain cache ls` and `retrain cache clear`."""

    cache_dir: str | None = None  # None: the cache home (retrain/cache.py's cache_home)
    older_than: str | None = None  # clear: only what was not used within this age; None: all

    def __post_init__(self):
        if self.older_than is not None:
            parse_age(self.older_than)


# The fit settings a job spec may not set: the service decides where runs and caches live.
SERVER_DECIDES = ("runs_dir", "name", "cache_dir", "distribute")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeConfig(_JsonMixin):
    """Settings of `retrain serve`: where it listens, what it owns, what it lets in."""

    host: str = "127.0.0.1"  # loopback only; any other address needs a token
    port: int = 8501  # TF Serving's REST port, so its clients' defaults work
    home: str | None = None  # None: $RETRAIN_HOME, else $XDG_DATA_HOME/retrain, else ~/.local/share/retrain
    data_roots: tuple[str, ...] = ()  # folders a job may name as its data (besides uploads)
    max_jobs: int = 1  # jobs training at once (one is right on a CPU: fit uses every core)
    token: str | None = None  # from --token-file or $RETRAIN_TOKEN; required off loopback
    max_upload: str = "2G"  # an uploaded archive's size
    max_unpacked: str = "8G"  # what an archive may inflate to
    max_upload_files: int = 200_000  # members of an archive
    max_request: str = "64M"  # any other request body (JSON; predict's base64 images)
    job_retries: int = 2  # times a job whose process died is resumed before it is marked failed
    batch_size: int = 32  # predict: images run through the model at once
    batch_wait_ms: float = 5.0  # predict: how long a batch waits for more requests
    loaded_models: int = 4  # predict: model versions kept in memory (least recently used dropped)

    def __post_init__(self):
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError("--port must be 0-65535", self.port, "pass for example --port 8501 (0: any free port)")
        for name in ("max_jobs", "max_upload_files", "batch_size", "loaded_models"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be 1 or more", value, "pass a whole number")
        if not isinstance(self.job_retries, int) or self.job_retries < 0:
            raise ConfigError("--job-retries must be 0 or more", self.job_retries, "pass for example 2")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ConfigError("--batch-wait-ms must be 0-1000", self.batch_wait_ms, "pass for example 5")
        for name in ("max_upload", "max_unpacked", "max_request"):
            if parse_size(getattr(self, name), f"--{name.replace('_', '-')}") <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be above 0", getattr(self, name),
                                  "pass a size such as 2G")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("the token is too short to be secret", f"{len(self.token)} characters",
                              "use 16 characters or more, e.g. from `openssl rand -hex 32`")
        if self.host not in LOOPBACK_HOSTS and self.token is None:
            raise ConfigError("serving beyond this machine needs a token", self.host,
                              "pass --token-file FILE (or set RETRAIN_TOKEN), or bind --host 127.0.0.1")

    def size(self, name: str) -> int:
        """A size setting (max_upload, max_unpacked, max_request) in bytes."""
        return parse_size(getattr(self, name), f"--{name.replace('_', '-')}")
