"""The `retrain` command line: flags -> one frozen config -> a library call -> an exit code.

The only module that imports typer. TensorFlow is imported inside the commands that need it,
so `retrain --help` and `retrain <command> --help` stay fast.
"""

from __future__ import annotations

import enum
import sys
from typing import Callable, Optional, TypeVar

import typer

from retrain.config import CIFAR_DATASETS, IMAGE_FORMATS, LABEL_MODES, PrepareConfig
from retrain.errors import ConfigError, RetrainError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn an ImageNet-pretrained backbone into a classifier for your own images.")
_state = {"debug": False}
_P = PrepareConfig()
T = TypeVar("T")


def _choices(name: str, values) -> type[enum.Enum]:
    """An Enum typer turns into a choice flag; a value outside it is a usage error (exit 2)."""
    return enum.Enum(name, {v: v for v in values}, type=str)


Dataset = _choices("Dataset", CIFAR_DATASETS)
LabelMode = _choices("LabelMode", LABEL_MODES)
ImageFormat = _choices("ImageFormat", IMAGE_FORMATS)


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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
