"""The `retrain` command line: flags -> one frozen config -> a library call -> an exit code.

The only module that imports typer. TensorFlow is imported inside the commands that need it,
so `retrain --help` and `retrain <command> --help` stay fast.
"""

from __future__ import annotations

import enum
import importlib.abc
import importlib.util
import os
import sys
import time
from types import SimpleNamespace
from typing import Callable, Optional, TypeVar

import typer

import dataclasses
from pathlib import Path

from retrain.config import (CHECKPOINTS, CIFAR_DATASETS, CLASS_WEIGHTS, DISTRIBUTE_MODES, EVAL_SPLITS,
                            EXPORT_FORMATS, IMAGE_FORMATS, LABEL_MODES, SCHEDULES, CheckConfig, EvaluateConfig,
                            CacheConfig, ExportConfig, FitConfig, LaunchConfig, PredictConfig, PrepareConfig,
                            QuickDrawConfig, ServeConfig, default_run_name, parse_class_names, parse_list)
from retrain.errors import ConfigError, RetrainError

# TensorFlow's C++ start-up chatter (absl, oneDNN, cuInit): hidden unless --debug.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn an ImageNet-pretrained backbone into a classifier for your own images.")
_state = {"debug": False}
_P = PrepareConfig()
_F = FitConfig()
# QuickDrawConfig() needs classes, so its defaults are read from the fields themselves.
_Q = SimpleNamespace(**{f.name: f.default for f in dataclasses.fields(QuickDrawConfig)})
_E = EvaluateConfig(run=".")
_PR = PredictConfig(run=".", inputs=(".",))
_X = ExportConfig(run=".")
_C = CheckConfig()
T = TypeVar("T")


def _choices(name: str, values) -> type[enum.Enum]:
    """An Enum typer turns into a choice flag; a value outside it is a usage error (exit 2)."""
    return enum.Enum(name, {v: v for v in values}, type=str)


Dataset = _choices("Dataset", CIFAR_DATASETS)
LabelMode = _choices("LabelMode", LABEL_MODES)
ImageFormat = _choices("ImageFormat", IMAGE_FORMATS)
ClassWeight = _choices("ClassWeight", CLASS_WEIGHTS)
Schedule = _choices("Schedule", SCHEDULES)
Checkpoint = _choices("Checkpoint", CHECKPOINTS)
EvalSplit = _choices("EvalSplit", EVAL_SPLITS)
ExportFormat = _choices("ExportFormat", EXPORT_FORMATS)
Distribute = _choices("Distribute", DISTRIBUTE_MODES)


def run(job: Callable[[], T], interrupted: Callable[[], str] | None = None) -> T:
    """Run a library call; report a RetrainError, or a full disk, as one line (exit 1, or 2 for a
    bad flag). `interrupted()`: what to tell the user after Ctrl-C (default: rerun the command)."""
    try:
        return job()
    except RetrainError as err:
        if _state["debug"]:
            raise
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2 if isinstance(err, ConfigError) else 1) from None
    except KeyboardInterrupt:
        if _state["debug"]:
            raise
        typer.echo(interrupted() if interrupted else "interrupted; rerun the same command to continue "
                   "where it stopped", err=True)
        raise typer.Exit(130) from None
    except Exception as err:  # re-raised unless a full disk: an OSError, or TensorFlow's by name
        from retrain.diskspace import as_disk_full

        full = as_disk_full(err)
        if full is None or _state["debug"]:
            raise
        typer.echo(f"error: {full}", err=True)
        raise typer.Exit(1) from None


def _version(shown: bool) -> None:
    if shown:
        from retrain import __version__

        typer.echo(f"retrain {__version__}")
        raise typer.Exit()


@app.callback()
def _global(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors, and "
                                       "TensorFlow's own log lines."),
            version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                         help="Print retrain's version and exit.")):
    _state["debug"] = debug
    if debug:  # before any command imports TensorFlow
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    elif not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())
    from retrain.progress import show_news

    show_news()


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Imports TensorFlow, whenever a command first does, with the process's stderr (fd 2)
    sent to a temporary file: its C++ libraries print start-up lines (absl, cudart) while
    loading, before any setting can silence them. The lines are shown if the import fails."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        import tempfile

        with tempfile.TemporaryFile() as lines:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(lines.fileno(), 2)
            try:
                self.loader.exec_module(module)
            except BaseException:
                os.dup2(saved, 2)
                lines.seek(0)
                sys.stderr.write(lines.read().decode(errors="replace"))
                raise
            finally:
                os.dup2(saved, 2)
                os.close(saved)


@app.command("prepare-cifar")
def prepare_cifar(
    dataset: Dataset = typer.Option(_P.dataset, case_sensitive=False, help="Which CIFAR."),
    label_mode: LabelMode = typer.Option(_P.label_mode, case_sensitive=False,
                                         help="cifar100 only: 100 fine or 20 coarse classes."),
    root: str = typer.Option(_P.root, help="Dataset root; writes <root>/<dataset>/."),
    source: Optional[str] = typer.Option(None, help="Archive URL (a mirror) or local path. "
                                         "Default: the official python-version archive."),
    md5: Optional[str] = typer.Option(None, help="Expected md5 of a custom --source."),
    validation_size: Optional[int] = typer.Option(None, min=0, help="Images per class moved "
                                                  "from train to validation. Default: 10% of each class."),
    image_format: ImageFormat = typer.Option(_P.image_format, case_sensitive=False,
                                             help="png is lossless; jpg is smaller."),
    seed: int = typer.Option(_P.seed, help="Seed of the validation split."),
    force: bool = typer.Option(_P.force, "--force", help="Redo the unpacking even if it is done."),
    workers: int = typer.Option(_P.workers, min=0, help="Processes writing images; 0 = one per core."),
):
    """Download CIFAR-10/100 and unpack it into <root>/<dataset>/{train,validation,test}/<label>/."""
    config = run(lambda: PrepareConfig(
        dataset=dataset.value, label_mode=label_mode.value, root=root, source=source, md5=md5,
        validation_size=validation_size, image_format=image_format.value, seed=seed,
        force=force, workers=workers))
    from retrain.prepare import prepare_cifar as job

    manifest = run(lambda: job(config))
    _print_counts(manifest["counts"])


@app.command("prepare-quickdraw")
def prepare_quickdraw(
    classes: Optional[str] = typer.Option(None, help="Comma list of class names, e.g. "
                                          "\"apple,cat,The Eiffel Tower\"."),
    classes_file: Optional[Path] = typer.Option(None, exists=True, dir_okay=False, help="A file of "
                                                "class names, one a line (blank lines and # comments "
                                                "ignored)."),
    max_per_class: int = typer.Option(_Q.max_per_class, min=0, help="Take the first N drawings of "
                                      "each class; 0 = all of them (100,000+ a class)."),
    root: str = typer.Option(_Q.root, help="Dataset root; writes <root>/quickdraw/."),
    source: Optional[str] = typer.Option(None, help="URL prefix serving <class>.npy, or a folder "
                                         "holding <class>.npy or full_numpy_bitmap_<class>.npy. "
                                         "Default: the official Quick, Draw! bucket."),
    validation_split: float = typer.Option(_Q.validation_split, help="Share of each class for validation."),
    test_split: float = typer.Option(_Q.test_split, help="Share of each class for test."),
    seed: int = typer.Option(_Q.seed, min=0, help="Seed of the split."),
    force: bool = typer.Option(_Q.force, "--force", help="Redo the class folders even if they are done."),
    workers: int = typer.Option(_Q.workers, min=0, help="Processes writing images; 0 = one per core."),
):
    """Fetch Quick, Draw! bitmaps and write <root>/quickdraw/{train,validation,test}/<class>/ 28x28 PNGs."""
    config = run(lambda: _quickdraw_config(
        classes, classes_file, max_per_class=max_per_class, root=root, source=source,
        validation_split=validation_split, test_split=test_split, seed=seed, force=force,
        workers=workers))
    from retrain.quickdraw import prepare_quickdraw as job

    manifest = run(lambda: job(config))
    _print_counts(manifest["counts"])


def _quickdraw_config(classes: str | None, classes_file: Path | None, **values) -> QuickDrawConfig:
    if (classes is None) == (classes_file is None):
        raise ConfigError("pass exactly one of --classes and --classes-file",
                          "both" if classes is not None else "neither",
                          "list the classes with --classes apple,cat or in a file")
    if classes_file is None:
        return QuickDrawConfig(classes=parse_class_names(classes), **values)
    try:
        text = classes_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read --classes-file: {err}", str(classes_file),
                          "pass a UTF-8 text file with one class name a line") from None
    return QuickDrawConfig(classes=parse_class_names(text, one_per_line=True), **values)


def _print_counts(counts: dict[str, dict[str, int]]) -> None:
    for split, per_class in counts.items():
        values = list(per_class.values())
        spread = f"{min(values):,}" if min(values) == max(values) else f"{min(values):,}-{max(values):,}"
        typer.echo(f"{split:<10} {sum(values):>7,} images, {len(values)} classes, {spread} per class")


@app.command()
def fit(
    ctx: typer.Context,
    data: str = typer.Option(_F.data, help="Image folder: train/<label>/ + validation/<label>/ (or val/, "
                             "valid/), or <label>/ split by --validation-split."),
    backbone: str = typer.Option(_F.backbone, help="A name from `retrain backbones`, or "
                                 "hub:<handle-or-SavedModel-folder>."),
    alpha: Optional[float] = typer.Option(None, help="Width multiplier (MobileNets). Default 1.0."),
    weights: str = typer.Option(_F.weights, help="imagenet (Keras' download and cache), none, "
                                "or the path of a Keras .h5 / .weights.h5 file."),
    image_size: Optional[int] = typer.Option(None, min=1, help="Pixels; default: the backbone's native size."),
    freeze: str = typer.Option(_F.freeze, help="auto, all (head only), none, a count N (layers "
                               "[0, N) frozen) or a layer name (frozen through it)."),
    augment: str = typer.Option(",".join(_F.augment), help="Comma list of flip, crop, rotation, "
                                "brightness, contrast."),
    epochs: int = typer.Option(_F.epochs, min=0, help="Phase 1: epochs of the head on the frozen backbone."),
    fine_tune_epochs: int = typer.Option(_F.fine_tune_epochs, min=0, help="Phase 2: epochs of fine-tuning."),
    batch_size: int = typer.Option(_F.batch_size, min=1),
    learning_rate: Optional[float] = typer.Option(None, help="Adam, phase 1; default: 1e-3 x sqrt(7,030 / "
                                                  "phase 1's steps), within [1e-3, 1e-2]."),
    fine_tune_learning_rate: float = typer.Option(_F.fine_tune_learning_rate, help="Adam, phase 2."),
    schedule: Schedule = typer.Option(_F.schedule, case_sensitive=False,
                                      help="Learning rate within each phase: cosine (warm-up, then decay to 0) or constant."),
    dropout_rate: float = typer.Option(_F.dropout_rate, help="Before the new dense layer."),
    label_smoothing: float = typer.Option(_F.label_smoothing),
    validation_split: float = typer.Option(_F.validation_split, help="Share of a single <label>/ "
                                           "tree held out, by a hash of each file's path."),
    class_weight: ClassWeight = typer.Option(_F.class_weight, help="auto balances imbalanced classes."),
    seed: int = typer.Option(_F.seed),
    runs_dir: str = typer.Option(_F.runs_dir, help="Where run folders go."),
    name: Optional[str] = typer.Option(None, help="Run folder name. Default: <backbone>-<time>."),
    keep_checkpoints: int = typer.Option(_F.keep_checkpoints, min=1, help="Last N checkpoints kept."),
    save_every_steps: Optional[int] = typer.Option(None, min=1, help="Also checkpoint every K steps."),
    init_from: Optional[str] = typer.Option(None, help="Start from the weights of a run or checkpoint."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this folder where it stopped."),
    cache: bool = typer.Option(_F.cache, "--cache/--no-cache", help="Cache the frozen part's output "
                               "(bottlenecks) and train on it."),
    cache_dir: Optional[str] = typer.Option(None, help="Bottleneck cache folder for this dataset. "
                                            "Default: <cache home>/<data folder name>-<hash>, the home "
                                            "$RETRAIN_CACHE_DIR, else $XDG_CACHE_HOME/retrain, else "
                                            "~/.cache/retrain. See `retrain cache ls`."),
    cache_budget: str = typer.Option(_F.cache_budget, help="Disk allowed for phase 2's cached "
                                     "activations at the freeze point, e.g. 4G, 500M."),
    cache_views: int = typer.Option(_F.cache_views, min=0, help="With --augment: cache K augmented "
                                    "views per image (epoch e reads view e mod K). 0: no cache."),
    feature_shift: int = typer.Option(_F.feature_shift, min=0, help="Fine-tuning on cached activations: "
                                      "move each map by up to N cells at random, the cached form of a "
                                      "random crop (N x the boundary's stride in pixels). 0: off."),
    distribute: Distribute = typer.Option(_F.distribute, case_sensitive=False, help="none; mirrored "
                                          "(every local GPU, or the CPU); multi-worker (the cluster in "
                                          "TF_CONFIG; see `retrain launch`). --batch-size is per replica."),
    time_budget: Optional[str] = typer.Option(None, help="End the command within this time, e.g. 10m, "
                                              "90s, 1.5h: phase 2 runs as many of its epochs (at most "
                                              "--fine-tune-epochs) as fit in what phase 1 left, from a "
                                              "few timed steps; run.json keeps the plan for --resume."),
):
    """Train a classifier: a new head on a pretrained backbone, then fine-tuning."""
    started = time.monotonic()  # --time-budget counts from here
    given = {p for p in ctx.params
             if ctx.get_parameter_source(p) is not None and ctx.get_parameter_source(p).name != "DEFAULT"}
    values = dict(data=data, backbone=backbone, alpha=alpha, weights=weights, image_size=image_size,
                  freeze=freeze, augment=parse_list(augment), epochs=epochs,
                  fine_tune_epochs=fine_tune_epochs, batch_size=batch_size, learning_rate=learning_rate,
                  fine_tune_learning_rate=fine_tune_learning_rate, schedule=schedule.value,
                  dropout_rate=dropout_rate,
                  label_smoothing=label_smoothing, validation_split=validation_split,
                  class_weight=class_weight.value, seed=seed, runs_dir=runs_dir, name=name,
                  keep_checkpoints=keep_checkpoints, save_every_steps=save_every_steps, init_from=init_from,
                  cache=cache, cache_dir=cache_dir, cache_budget=cache_budget, cache_views=cache_views,
                  feature_shift=feature_shift, distribute=distribute.value, time_budget=time_budget)
    if resume is not None:
        from retrain.checkpoints import resumed_config

        config = run(lambda: resumed_config(resume, {k: v for k, v in values.items() if k in given}))
    else:
        config = run(lambda: FitConfig(**values))
        if config.name is None:  # named here, so that Ctrl-C can say which run to resume
            config = dataclasses.replace(config, name=default_run_name(config.backbone))
    from retrain.train import fit as job

    run(lambda: job(config, resume=resume is not None, started=started),
        interrupted=lambda: _how_to_continue(Path(config.runs_dir) / config.name))


def _how_to_continue(run_dir: Path) -> str:
    """The line after Ctrl-C on fit: the exact command that continues the run."""
    import shlex

    if not (run_dir / "config.json").is_file():
        return "interrupted before the run folder was made; nothing to resume: rerun the same command"
    return f"interrupted; continue with: retrain fit --resume {shlex.quote(str(run_dir))}"


class _DashDash(typer.core.TyperCommand):
    """Notes whether the command line had `--`, which click drops while parsing."""

    def parse_args(self, ctx, args):
        ctx.meta["dashdash"] = "--" in args
        return super().parse_args(ctx, args)


@app.command(cls=_DashDash, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def launch(
    ctx: typer.Context,
    command: Optional[list[str]] = typer.Argument(None, metavar="-- fit [FLAGS]...",
                                                  help="The `fit` command every worker runs."),
    workers: int = typer.Option(LaunchConfig.workers, help="Local worker processes."),
    port_base: Optional[int] = typer.Option(None, help="Ports P .. P+N-1 on 127.0.0.1. "
                                            "Default: free ports the system picks."),
    log_dir: Optional[str] = typer.Option(None, help="Where workers 1.. write their output. "
                                          "Default: <temp dir>/retrain-launch-<run name>."),
):
    """Run `fit` on N local worker processes (MultiWorkerMirroredStrategy, TF_CONFIG generated).

    retrain launch --workers 2 -- fit --data DIR --backbone mobilenet_v2
    """
    args = [*(command or []), *ctx.args]
    config = run(lambda: _launch_config(ctx.meta.get("dashdash", False), workers, port_base, log_dir, args))
    from retrain.launch import launch as job

    raise typer.Exit(run(lambda: job(config, debug=_state["debug"])))


def _launch_config(dashdash: bool, workers: int, port_base, log_dir, args: list[str]) -> LaunchConfig:
    if not dashdash:
        raise ConfigError("launch needs `--` before the fit command", " ".join(args) or "no --",
                          "for example: retrain launch --workers 2 -- fit --data DIR")
    return LaunchConfig(workers=workers, port_base=port_base, log_dir=log_dir, command=tuple(args))


@app.command()
def backbones():
    """List the backbones: input size and channels, parameters, size on disk, features, freeze points."""
    from retrain.backbones import REGISTRY

    rows = run(lambda: _describe_backbones(REGISTRY))
    typer.echo(f"{'name':<20}{'native':>7}{'min':>5}{'in':>4}{'params':>12}{'float32':>10}{'features':>9}"
               "  freeze points")
    for name, native, least, channels, params, features, points in rows:
        typer.echo(f"{name:<20}{native:>7}{least:>5}{channels:>4}{params:>12,}{params * 4 / 2**20:>8.2f}MB"
                   f"{features:>9}  {points}")
    typer.echo("(without the head; channels 1 for grayscale data where the network follows the data)")
    typer.echo("hub:<handle-or-path>  a TF Hub image feature-vector module (224 px by default; "
               "freeze all or none)")


def _describe_backbones(registry):
    from retrain.model import build_backbone

    rows = []
    for spec in registry.values():
        channels = 1 if spec.channels_follow_data else 3
        model = build_backbone(spec, spec.native_size, None, "none", channels)
        rows.append((spec.name, spec.native_size, spec.min_size, channels, model.count_params(),
                     model.output_shape[-1], ", ".join(spec.freeze_points)))
    return rows


_CHECKPOINT_HELP = "best: the epoch of lowest validation loss (model.keras holds it too); last: the newest checkpoint."


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="A run folder made by `retrain fit`."),
    split: Optional[EvalSplit] = typer.Option(None, case_sensitive=False,
                                              help="test: the run's <data>/test/ folder (the default); "
                                              "validation: the images fit held out."),
    data: Optional[str] = typer.Option(None, help="Evaluate on this folder of <label>/ subfolders instead."),
    checkpoint: Checkpoint = typer.Option(_E.checkpoint, case_sensitive=False, help=_CHECKPOINT_HELP),
    model: Optional[str] = typer.Option(None, help="An exported .tflite file, evaluated on the same "
                                        "images beside the Keras model."),
    batch_size: int = typer.Option(_E.batch_size, min=1),
):
    """Accuracy, top-k, per-class precision/recall/F1, confusion matrix; writes RUN/eval/<split>/."""
    config = run(lambda: EvaluateConfig(run=str(run_dir), split=split.value if split else None, data=data,
                                        checkpoint=checkpoint.value, model=model, batch_size=batch_size))
    from retrain.evaluation import evaluate as job, format_report

    typer.echo(format_report(run(lambda: job(config))))


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="A run folder made by `retrain fit`."),
    images: list[str] = typer.Argument(..., metavar="IMAGE_OR_DIR...", help="Image files and folders of them."),
    top_k: int = typer.Option(_PR.top_k, min=1, help="Labels shown per image."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    checkpoint: Checkpoint = typer.Option(_PR.checkpoint, case_sensitive=False, help=_CHECKPOINT_HELP),
    batch_size: int = typer.Option(_PR.batch_size, min=1),
):
    """Top-k labels with probabilities for each image; exit 1 if any image could not be read."""
    config = run(lambda: PredictConfig(run=str(run_dir), inputs=tuple(images), top_k=top_k,
                                       checkpoint=checkpoint.value, batch_size=batch_size))
    from retrain.prediction import format_json, format_table, predict as job

    results = run(lambda: job(config))
    for failed in (r for r in results if r.error is not None):
        typer.echo(f"error: {failed.error}", err=True)
    text = format_json(results) if json_output else format_table(results)
    if text:
        typer.echo(text)
    if any(r.error is not None for r in results):
        raise typer.Exit(1)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="A run folder made by `retrain fit`."),
    export_format: ExportFormat = typer.Option(_X.format, "--format", case_sensitive=False,
                                       help="savedmodel, tflite (float32) or tflite-int8 (full integer)."),
    output: Optional[str] = typer.Option(None, help="Where to write. Default: RUN/export/savedmodel, "
                                         "RUN/export/model-float32.tflite or RUN/export/model-int8.tflite. "
                                         "An existing path is replaced only if retrain exported it."),
    checkpoint: Checkpoint = typer.Option(_X.checkpoint, case_sensitive=False, help=_CHECKPOINT_HELP),
    representative_images: int = typer.Option(_X.representative_images, min=1,
                                              help="tflite-int8: training images that calibrate the ranges."),
    seed: int = typer.Option(_X.seed, help="tflite-int8: which training images those are."),
):
    """Export the classifier: uint8 pixels in, probabilities out; labels.txt beside it."""
    config = run(lambda: ExportConfig(run=str(run_dir), format=export_format.value, output=output,
                                      checkpoint=checkpoint.value,
                                      representative_images=representative_images, seed=seed))
    from retrain.exports import export as job

    typer.echo(run(lambda: job(config)))


@app.command()
def plot(run_dir: Path = typer.Argument(..., metavar="RUN", help="A run folder made by `retrain fit`.")):
    """Write RUN/curves.png: accuracy and loss, train and validation, both phases."""
    from retrain.checkpoints import read_run
    from retrain.plots import write_curves

    run(lambda: read_run(run_dir))
    typer.echo(run(lambda: write_curves(run_dir)))


@app.command()
def runs(runs_dir: str = typer.Option(_F.runs_dir, help="The folder holding run folders.")):
    """One line per run: backbone, freeze point, epochs, the best epoch's validation accuracy, status."""
    from retrain.runs import format_runs, list_runs

    typer.echo(format_runs(run(lambda: list_runs(runs_dir))))


@app.command()
def check(
    data: Path = typer.Argument(..., metavar="DIR", help="An image folder as `retrain fit --data` takes it."),
    validation_split: float = typer.Option(_C.validation_split, help="As for fit: the share of a "
                                           "single <label>/ tree held out."),
    strict: bool = typer.Option(_C.strict, "--strict", help="Exit 1 on warnings too (unreadable "
                                "files, duplicates, imbalance)."),
):
    """The pre-flight dataset report; exit 1 when fit would refuse the folder."""
    config = run(lambda: CheckConfig(data=str(data), validation_split=validation_split, strict=strict))
    from retrain.check import check as job, format_report

    report = run(lambda: job(config))
    text = format_report(report)
    if text:
        typer.echo(text)
    if report.refusal is not None:
        typer.echo(f"error: fit would refuse this folder: {report.refusal}", err=True)
        raise typer.Exit(1)
    if config.strict and report.warnings:
        typer.echo(f"error: {len(report.warnings)} warning(s) (received: --strict); fix them or drop --strict",
                   err=True)
        raise typer.Exit(1)


cache_app = typer.Typer(no_args_is_help=True, help="List or clear the bottleneck cache.")
app.add_typer(cache_app, name="cache")
_CACHE_DIR_HELP = ("The cache home (default: $RETRAIN_CACHE_DIR, else $XDG_CACHE_HOME/retrain, else "
                   "~/.cache/retrain), or a folder given to fit's --cache-dir.")


@cache_app.command("ls")
def cache_ls(cache_dir: Optional[str] = typer.Option(None, help=_CACHE_DIR_HELP)):
    """Each dataset's cache folder and its model keys: size on disk, last use, what it is for."""
    config = run(lambda: CacheConfig(cache_dir=cache_dir))
    from retrain.cachehome import cache_home, format_listing, list_cache

    folder = Path(config.cache_dir) if config.cache_dir else cache_home()
    typer.echo(format_listing(run(lambda: list_cache(folder)), folder))


@cache_app.command("clear")
def cache_clear(
    older_than: Optional[str] = typer.Option(None, help="Only what was not used within this age, "
                                             "e.g. 30d, 12h, 90m. Default: everything."),
    cache_dir: Optional[str] = typer.Option(None, help=_CACHE_DIR_HELP),
):
    """Delete cache entries (key folders, dataset folders); only the cache's own files, never others."""
    config = run(lambda: CacheConfig(cache_dir=cache_dir, older_than=older_than))
    from retrain.cachehome import cache_home, clear_cache, format_cleared
    from retrain.config import parse_age

    folder = Path(config.cache_dir) if config.cache_dir else cache_home()
    age = parse_age(config.older_than) if config.older_than is not None else None
    typer.echo(format_cleared(run(lambda: clear_cache(folder, age)), folder, config.older_than))


_S = ServeConfig()


@app.command()
def serve(
    host: str = typer.Option(_S.host, help="Address to listen on. Anything but loopback needs a token."),
    port: int = typer.Option(_S.port, help="Port (TF Serving's REST port by default; 0: any free port)."),
    home: Optional[str] = typer.Option(None, help="Folder the service owns: job table, datasets, runs, "
                                       "models/<name>/<version>/. Default: $RETRAIN_HOME, else "
                                       "$XDG_DATA_HOME/retrain, else ~/.local/share/retrain."),
    data_root: list[str] = typer.Option([], "--data-root", help="A folder jobs may read datasets from "
                                        "(repeatable); nothing outside these and the home is readable."),
    max_jobs: int = typer.Option(_S.max_jobs, help="Jobs training at once (1 suits a CPU)."),
    token_file: Optional[Path] = typer.Option(None, help="File holding the bearer token every request must "
                                              "carry (else $RETRAIN_TOKEN)."),
    max_upload: str = typer.Option(_S.max_upload, help="Largest dataset archive, e.g. 2G."),
    max_unpacked: str = typer.Option(_S.max_unpacked, help="Most an archive may unpack to."),
    max_upload_files: int = typer.Option(_S.max_upload_files, help="Most files in an archive."),
    max_request: str = typer.Option(_S.max_request, help="Largest other request body (JSON, predict)."),
    job_retries: int = typer.Option(_S.job_retries, help="Times a job whose process died is resumed "
                                    "from its checkpoint before it is marked failed."),
    batch_size: int = typer.Option(_S.batch_size, help="Predict: most images run at once."),
    batch_wait_ms: float = typer.Option(_S.batch_wait_ms, help="Predict: how long a batch waits for more."),
):
    """The retraining service: datasets and training jobs over HTTP, a versioned model registry,
    predictions in TF Serving's REST format."""
    def configure() -> ServeConfig:
        token = os.environ.get("RETRAIN_TOKEN") or None
        if token_file is not None:
            try:
                token = token_file.read_text().strip()
            except OSError as err:
                raise ConfigError("--token-file cannot be read", f"{token_file}: {err.strerror}",
                                  "pass a readable file holding the token") from None
        return ServeConfig(host=host, port=port, home=home, data_roots=tuple(data_root), max_jobs=max_jobs,
                           token=token, max_upload=max_upload, max_unpacked=max_unpacked,
                           max_upload_files=max_upload_files, max_request=max_request,
                           job_retries=job_retries, batch_size=batch_size, batch_wait_ms=batch_wait_ms)

    config = run(configure)
    from retrain.serve.server import serve as job

    run(lambda: job(config), interrupted=lambda: "stopped; running jobs go on and the next `retrain serve` "
        "on this home adopts them")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
