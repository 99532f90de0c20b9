"""Pictures of a run: training curves (curves.png) and a confusion matrix, as PNG files.

matplotlib draws on its Agg backend through `Figure` + `FigureCanvasAgg`, never pyplot, so no
window, no display and no global backend switch are involved. Each file is written to a
temporary name and renamed into place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retrain import runs
from retrain.files import replacing

ANNOTATE_UP_TO = 30  # classes; above that the counts would not fit in their cells


def write_curves(run: str | Path) -> Path:
    """RUN/curves.png: accuracy and loss per epoch, train and validation, both phases, with a
    line where fine-tuning starts. -> its path."""
    run = Path(run)
    rows = runs.history(run)
    epochs = [int(r["epoch"]) + 1 for r in rows]  # 1-based: the line sits after the last head epoch
    figure = _figure(11, 4.2)
    for i, metric in enumerate(("accuracy", "loss")):
        axes = figure.add_subplot(1, 2, i + 1)
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = [float(r[prefix + metric]) if r.get(prefix + metric) else np.nan for r in rows]
            axes.plot(epochs, values, marker="o", markersize=3, label=label)
        start = fine_tune_start(run, len(rows))
        if start is not None:
            axes.axvline(start + 0.5, color="grey", linestyle="--", linewidth=1, label="fine-tuning starts")
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.set_title(metric)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle(run.name)
    figure.tight_layout()
    return _save(figure, run / "curves.png")


def fine_tune_start(run: Path, epochs_logged: int) -> int | None:
    """Epochs of phase 1 before fine-tuning started; None when there was no fine-tuning.

    The last checkpoint records it exactly (`phase_start`, set when phase 2 begins, and kept
    when a resume changes --epochs); a run with no phase-2 checkpoint did not fine-tune yet.
    """
    from retrain.checkpoints import read_state

    prefix = runs.checkpoint_prefix(run / "ckpt")  # the pointer's: reading the state needs no check of every tensor
    if prefix is None:
        return None
    state = read_state(prefix)
    if state["phase"] != 2 or state["phase_start"] >= epochs_logged:
        return None
    return int(state["phase_start"])


def write_confusion_matrix(matrix: np.ndarray, labels: tuple[str, ...], path: Path, title: str) -> Path:
    """A heat map of counts, rows the true class, columns the predicted one."""
    n = len(labels)
    side = min(max(4.5, 0.45 * n + 2.5), 30)
    figure = _figure(side, side * 0.9)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(matrix, cmap="Blues", interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    font = "small" if n <= 15 else "xx-small"
    axes.set_xticks(range(n), labels, rotation=90, fontsize=font)
    axes.set_yticks(range(n), labels, fontsize=font)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    if n <= ANNOTATE_UP_TO:
        high = matrix.max() / 2 if matrix.size else 0
        for (row, col), count in np.ndenumerate(matrix):
            if count:
                axes.text(col, row, str(count), ha="center", va="center", fontsize=font,
                          color="white" if count > high else "black")
    figure.tight_layout()
    return _save(figure, path)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    with replacing(path) as tmp:
        figure.savefig(tmp, format="png")
    return path
