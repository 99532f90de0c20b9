"""evaluate(config): a run's classifier on a labelled split -> metrics, confusion matrix, mistakes.

The images go through the training pipeline's own decode and resize (`data.eval_dataset`),
so the model sees exactly what it would have seen in training. Writes RUN/eval/<split>/
metrics.json, confusion_matrix.png and misclassified.csv. An exported .tflite model can be
evaluated in the same pass, beside the Keras model.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrain.checkpoints import read_run
from retrain.config import EvaluateConfig
from retrain.data import Split, class_files, describe_skipped, eval_dataset, load_folders, readable
from retrain.files import atomic_write
from retrain.errors import ConfigError, DatasetError
from retrain.progress import bar, say
from retrain.runs import load_model

TOP_K = (1, 3, 5)  # top-k accuracies reported, those below the number of classes
SHOWN_MATRIX_UP_TO = 20  # classes; a bigger confusion matrix is only drawn, not printed


@dataclass(frozen=True)
class Evaluation:
    folder: Path  # RUN/eval/<split>/
    metrics: dict  # what metrics.json holds


def evaluate(config: EvaluateConfig) -> Evaluation:
    """Evaluate the run's `best` or `last` checkpoint (and a .tflite file) on the chosen images."""
    if config.model is not None and not Path(config.model).is_file():
        raise DatasetError("the .tflite file does not exist", config.model,
                           "pass the file `retrain export --format tflite` wrote")
    fit_config, labels, _ = read_run(Path(config.run))
    split, source = choose_images(config, fit_config.data, fit_config.validation_split, labels)
    loaded = load_model(config.run, config.checkpoint)
    tflite = None
    if config.model is not None:
        from retrain.exports import TFLiteClassifier

        tflite = TFLiteClassifier(config.model)
        if (tflite.image_size, tflite.num_classes) != (loaded.image_size, len(labels)):
            raise ConfigError("--model was exported from another model",
                              f"{tflite.image_size} px, {tflite.num_classes} classes; the run: "
                              f"{loaded.image_size} px, {len(labels)} classes",
                              "pass a .tflite file exported from this run")
    probs, kept, tflite_probs = _predict(loaded.model, tflite, split, loaded.image_size, config.batch_size,
                                         loaded.channels)
    files = [split.files[i] for i in kept]
    if len(kept) < len(split.files):
        dropped = tuple(sorted(set(split.files) - set(files)))
        say(f"{describe_skipped(dropped)} (TensorFlow could not decode them)")
    truth = split.labels[kept]
    metrics = {"run": str(config.run), "checkpoint": config.checkpoint, "checkpoint_path": loaded.checkpoint,
               "split": config.split_name, "images_from": str(source), "labels": list(labels),
               **compute_metrics(truth, probs, labels)}
    if tflite is not None:
        scored = compute_metrics(truth, tflite_probs, labels)
        metrics["tflite"] = {"model": str(config.model), "images": scored["images"],
                             "accuracy": scored["accuracy"], "top_k_accuracy": scored["top_k_accuracy"],
                             "agreement": float(np.mean(tflite_probs.argmax(1) == probs.argmax(1)))}
    folder = Path(config.run) / "eval" / config.split_name
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "metrics.json", json.dumps(metrics, indent=2))
    _write_misclassified(folder / "misclassified.csv", files, truth, probs, labels)
    from retrain.plots import write_confusion_matrix

    write_confusion_matrix(np.asarray(metrics["confusion_matrix"]), labels, folder / "confusion_matrix.png",
                           f"{Path(config.run).name}: {config.split_name} ({config.checkpoint} checkpoint)")
    return Evaluation(folder, metrics)


def choose_images(config: EvaluateConfig, data_dir: str, validation_split: float,
                  labels: tuple[str, ...]) -> tuple[Split, Path]:
    """The labelled images to evaluate on: the run's test/ folder, its validation split (the
    very files fit held out), or a <label>/ folder; -> (split, where the images are)."""
    if config.data is not None:
        return labelled_split(Path(config.data), labels), Path(config.data)
    root = Path(data_dir)
    if (config.split or "test") == "test":
        if not (root / "test").is_dir():
            raise DatasetError("the run's data has no test/ folder", str(root / "test"),
                               "pass --split validation, or --data with a folder of <label>/ subfolders")
        return labelled_split(root / "test", labels), root / "test"
    data = load_folders(root, validation_split)
    if data.class_names != labels:
        raise DatasetError("the run's data folder now holds other classes than the run was trained on",
                           ", ".join(sorted(set(data.class_names) ^ set(labels))),
                           "evaluate with --data on a folder of the run's classes")
    return data.validation, root


def labelled_split(folder: Path, labels: tuple[str, ...]) -> Split:
    """folder/<label>/... images as a Split labelled by the run's label order; unreadable files
    are left out and listed. A class may be missing; an unknown one is refused."""
    if not folder.is_dir():
        raise DatasetError("the image folder does not exist", str(folder),
                           "pass a folder of <label>/ subfolders named as in the run's labels.txt")
    found = class_files(folder)
    unknown = sorted(set(found) - set(labels))
    if unknown:
        raise DatasetError("class folders the run was not trained on", ", ".join(unknown[:10]),
                           f"use the run's classes only: {', '.join(labels[:10])}"
                           f"{' ...' if len(labels) > 10 else ''}")
    pairs = [(f, labels.index(name)) for name, files in found.items() for f in files]
    ok = readable([p for p, _ in pairs])
    skipped = tuple(p for (p, _), good in zip(pairs, ok) if not good)
    if skipped:
        say(describe_skipped(skipped))
    pairs = [pair for pair, good in zip(pairs, ok) if good]
    if not pairs:
        raise DatasetError("no readable images to evaluate on", str(folder),
                           "pass a folder with <label>/ subfolders of images")
    return Split(tuple(p for p, _ in pairs), np.asarray([c for _, c in pairs], dtype=np.int64))


def _predict(model, tflite, split: Split, image_size: int, batch_size: int, channels: int = 3):
    """-> (Keras probabilities, indices of the images decoded, TFLite probabilities or None).

    Each element carries its own index as its label, so an image TensorFlow fails to decode
    (dropped by the pipeline) cannot shift the rows after it."""
    import tensorflow as tf

    indexed = Split(split.files, np.arange(len(split.files)))
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True, autograph=False)
    probs, kept, tflite_probs = [], [], []
    with bar("evaluating", total=len(split.files), unit="images") as progress:
        for images, index in eval_dataset(indexed, None, image_size, batch_size, channels).as_numpy_iterator():
            probs.append(np.asarray(forward(images)))
            if tflite is not None:
                tflite_probs.append(tflite(images))
            kept.append(index)
            progress.advance(len(index))
    if not kept:
        raise DatasetError("TensorFlow could decode none of the images", len(split.files),
                           "check the files with `retrain check`")
    return (np.concatenate(probs), np.concatenate(kept),
            np.concatenate(tflite_probs) if tflite is not None else None)


def top_k_values(num_classes: int) -> list[int]:
    """1, 3 and 5 where they mean something: k below the number of classes (top-1 always)."""
    return [k for k in TOP_K if k == 1 or k < num_classes]


def compute_metrics(truth: np.ndarray, probs: np.ndarray, labels: tuple[str, ...]) -> dict:
    """Accuracy, top-k accuracy, per-class precision, recall, F1 and support, the confusion
    matrix (rows: true class, columns: predicted). A class never predicted has precision 0;
    the macro average is over the classes present in `truth`."""
    num_classes = len(labels)
    predicted = probs.argmax(axis=1)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    hits = np.diag(matrix).astype(np.float64)
    support, predicted_count = matrix.sum(axis=1), matrix.sum(axis=0)
    precision = np.divide(hits, predicted_count, out=np.zeros(num_classes), where=predicted_count > 0)
    recall = np.divide(hits, support, out=np.zeros(num_classes), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_classes),
                   where=precision + recall > 0)
    ranked = np.argsort(-probs, axis=1, kind="stable")
    top_k = {str(k): float(np.mean((ranked[:, :k] == truth[:, None]).any(axis=1)))
             for k in top_k_values(num_classes)}
    present = support > 0
    return {
        "images": int(len(truth)),
        "accuracy": float(np.mean(predicted == truth)),
        "top_k_accuracy": top_k,
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(labels)},
        "macro_avg": {"precision": float(precision[present].mean()), "recall": float(recall[present].mean()),
                      "f1": float(f1[present].mean())},
        "confusion_matrix": matrix.tolist(),
    }


def _write_misclassified(path: Path, files: list[str], truth: np.ndarray, probs: np.ndarray,
                         labels: tuple[str, ...]) -> None:
    """file, true label, predicted label, probability of the prediction; surest mistakes first."""
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != truth)
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["file", "true_label", "predicted_label", "probability"])
    for i in wrong:
        writer.writerow([files[i], labels[truth[i]], labels[predicted[i]], f"{probs[i, predicted[i]]:.6f}"])
    atomic_write(path, text.getvalue(), errors="surrogateescape")  # a name that is not UTF-8: its own bytes


def format_report(evaluation: Evaluation) -> str:
    """The readable table `retrain evaluate` prints."""
    m = evaluation.metrics
    labels = m["labels"]
    width = max(12, *(len(n) for n in labels)) + 2
    top = "  ".join(f"top-{k} {v:.4f}" for k, v in m["top_k_accuracy"].items() if k != "1")
    lines = [f"{m['split']}: {m['images']} images from {m['images_from']}, {m['checkpoint']} checkpoint "
             f"({Path(m['checkpoint_path']).name})",
             f"accuracy {m['accuracy']:.4f}" + (f"  {top}" if top else ""), "",
             f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, row in m["per_class"].items():
        lines.append(f"{name:<{width}}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}"
                     f"{row['support']:>10}")
    avg = m["macro_avg"]
    lines.append(f"{'macro avg':<{width}}{avg['precision']:>10.4f}{avg['recall']:>10.4f}{avg['f1']:>10.4f}"
                 f"{m['images']:>10}")
    if len(labels) <= SHOWN_MATRIX_UP_TO:
        cell = max(6, *(len(n) for n in labels)) + 1
        lines += ["", "confusion matrix (rows: true, columns: predicted)",
                  " " * width + "".join(f"{n:>{cell}}" for n in labels)]
        lines += [f"{name:<{width}}" + "".join(f"{c:>{cell}}" for c in row)
                  for name, row in zip(labels, m["confusion_matrix"])]
    if "tflite" in m:
        t = m["tflite"]
        width = max(width, len(Path(t["model"]).name) + 2)
        top = "  ".join(f"top-{k} {v:.4f}" for k, v in t["top_k_accuracy"].items() if k != "1")
        lines += ["", f"{'model':<{width}}{'accuracy':>10}  (same images)",
                  f"{'keras':<{width}}{m['accuracy']:>10.4f}",
                  f"{Path(t['model']).name:<{width}}{t['accuracy']:>10.4f}" + (f"  {top}" if top else "")
                  + f"  agrees with keras on {t['agreement']:.1%}"]
    lines += ["", f"wrote {evaluation.folder}/: metrics.json, confusion_matrix.png, misclassified.csv"]
    return "\n".join(lines)
