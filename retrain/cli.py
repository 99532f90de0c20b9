"""The `retrain` command line: flags -> one frozen config -> a library call -> an exit code.

The only module that imports typer. TensorFlow is imported inside the commands that need it,
so `retrain --help` and `retrain <command> --help` stay fast.
"""

from __future__ import annotations

import enum
import os
import sys
from typing import Callable, Optional, TypeVar

import typer

import dataclasses
from pathlib import Path

from retrain.config import (CIFAR_DATASETS, CLASS_WEIGHTS, DISTRIBUTE_MODES, IMAGE_FORMATS, LABEL_MODES,
                            FitConfig, LaunchConfig, PrepareConfig, parse_list)
from retrain.errors import ConfigError, RetrainError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn an ImageNet-pretrained backbone into a classifier for your own images.")
_state = {"debug": False}
_P = PrepareConfig()
_F = FitConfig()
T = TypeVar("T")


def _choices(name: str, values) -> type[enum.Enum]:
    """An Enum typer turns into a choice flag; a value outside it is a usage error (exit 2)."""
    return enum.Enum(name, {v: v for v in values}, type=str)


Dataset = _choices("Dataset", CIFAR_DATASETS)
LabelMode = _choices("LabelMode", LABEL_MODES)
ImageFormat = _choices("ImageFormat", IMAGE_FORMATS)
ClassWeight = _choices("ClassWeight", CLASS_WEIGHTS)
Distribute = _choices("Distribute", DISTRIBUTE_MODES)


def run(job: Callable[[], T]) -> T:
    """Run a library call; report a RetrainError as one line (exit 1, or 2 for a bad flag)."""
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
        typer.echo("interrupted; rerun the same command to continue where it stopped", err=True)
        raise typer.Exit(130) from None


@app.callback()
def _global(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    _state["debug"] = debug


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


def _print_counts(counts: dict[str, dict[str, int]]) -> None:
    for split, per_class in counts.items():
        values = list(per_class.values())
        spread = f"{min(values):,}" if min(values) == max(values) else f"{min(values):,}-{max(values):,}"
        typer.echo(f"{split:<10} {sum(values):>7,} images, {len(values)} classes, {spread} per class")


@app.command()
def fit(
    ctx: typer.Context,
    data: str = typer.Option(_F.data, help="Image folder: train/<label>/ + validation/<label>/, "
                             "or <label>/ split by --validation-split."),
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
    learning_rate: float = typer.Option(_F.learning_rate, help="Adam, phase 1."),
    fine_tune_learning_rate: float = typer.Option(_F.fine_tune_learning_rate, help="Adam, phase 2."),
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
    cache_dir: Optional[str] = typer.Option(None, help="Bottleneck cache root. Default: beside "
                                            "the dataset, <data>/../.<name>-cache."),
    cache_budget: str = typer.Option(_F.cache_budget, help="Disk allowed for phase 2's cached "
                                     "activations at the freeze point, e.g. 4G, 500M."),
    cache_views: int = typer.Option(_F.cache_views, min=0, help="With --augment: cache K augmented "
                                    "views per image (epoch e reads view e mod K). 0: no cache."),
    distribute: Distribute = typer.Option(_F.distribute, case_sensitive=False, help="none; mirrored "
                                          "(every local GPU, or the CPU); multi-worker (the cluster in "
                                          "TF_CONFIG; see `retrain launch`). --batch-size is per replica."),
):
    """Train a classifier: a new head on a pretrained backbone, then fine-tuning."""
    given = {p for p in ctx.params
             if ctx.get_parameter_source(p) is not None and ctx.get_parameter_source(p).name != "DEFAULT"}
    values = dict(data=data, backbone=backbone, alpha=alpha, weights=weights, image_size=image_size,
                  freeze=freeze, augment=parse_list(augment), epochs=epochs,
                  fine_tune_epochs=fine_tune_epochs, batch_size=batch_size, learning_rate=learning_rate,
                  fine_tune_learning_rate=fine_tune_learning_rate, dropout_rate=dropout_rate,
                  label_smoothing=label_smoothing, validation_split=validation_split,
                  class_weight=class_weight.value, seed=seed, runs_dir=runs_dir, name=name,
                  keep_checkpoints=keep_checkpoints, save_every_steps=save_every_steps, init_from=init_from,
                  cache=cache, cache_dir=cache_dir, cache_budget=cache_budget, cache_views=cache_views,
                  distribute=distribute.value)
    if resume is not None:
        config = run(lambda: _resumed_config(resume, {k: v for k, v in values.items() if k in given}))
    else:
        config = run(lambda: FitConfig(**values))
    from retrain.train import fit as job

    run(lambda: job(config, resume=resume is not None))


def _resumed_config(folder: Path, overrides: dict) -> FitConfig:
    """The run's own config with the flags given now; train.fit refuses shape changes."""
    from retrain.checkpoints import read_run

    if "runs_dir" in overrides or "name" in overrides:
        raise ConfigError("--resume names the run folder; --runs-dir and --name do not apply",
                          str(folder), "drop --runs-dir and --name")
    saved, _, _ = read_run(folder)
    return dataclasses.replace(saved, runs_dir=str(folder.parent), name=folder.name, **overrides)


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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
