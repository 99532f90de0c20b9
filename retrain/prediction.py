"""predict(config): the top-k labels of each image, from a run's classifier.

Any image Pillow reads (grayscale, RGBA, palette GIF, 16-bit PNG, TIFF, WebP, any size) is
made RGB as TensorFlow's decoder makes it in training (alpha dropped, a GIF's first frame,
16-bit reduced to its top 8 bits) and, a JPEG, turned upright by its EXIF orientation as the
training pipeline turns it; then resized by `tf.image.resize` (bilinear), the same call the
training pipeline makes. A missing path or an unreadable file becomes a result with
an error; the other images are still classified.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from retrain.config import PredictConfig
from retrain.data import IMAGE_EXTENSIONS
from retrain.errors import DatasetError
from retrain.progress import bar
from retrain.runs import load_model

UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Prediction:
    file: str
    top: tuple[tuple[str, float], ...] = ()  # (label, probability), most likely first
    error: str | None = None  # why the file could not be classified


def predict(config: PredictConfig) -> list[Prediction]:
    """Classify every image named (folders: every image file in them, recursively), in order."""
    wanted = expand_inputs(config.inputs)
    loaded = load_model(config.run, config.checkpoint)
    k = min(config.top_k, len(loaded.labels))
    results: dict[int, Prediction] = {}
    batch: list[tuple[int, np.ndarray]] = []

    def classify() -> None:
        probs = np.asarray(loaded.model(np.stack([image for _, image in batch]), training=False))
        for (i, _), row in zip(batch, probs):
            best = np.argsort(-row, kind="stable")[:k]
            results[i] = Prediction(wanted[i][0], tuple((loaded.labels[j], float(row[j])) for j in best))
        batch.clear()

    with bar("predicting", total=len(wanted), unit="images") as progress:
        for i, (path, error) in enumerate(wanted):
            if error is None:
                try:
                    batch.append((i, load_image(Path(path), loaded.image_size, loaded.channels)))
                except UNREADABLE as err:
                    error = _printable(str(DatasetError(f"cannot read this image: {_first_line(err)}", path,
                                                        "pass a file Pillow can open")))
            if error is not None:
                results[i] = Prediction(path, error=error)
            if len(batch) == config.batch_size:
                classify()
            progress.advance(1)
        if batch:
            classify()
    return [results[i] for i in range(len(wanted))]


def expand_inputs(inputs: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """Each file as given (any format Pillow reads); each folder as the image files under it
    with the extensions fit and check read (data.IMAGE_EXTENSIONS), sorted; -> (path, error
    or None)."""
    extensions = IMAGE_EXTENSIONS
    found: list[tuple[str, str | None]] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            files = [Path(d) / f for d, dirs, names in sorted(os.walk(path)) for f in sorted(names)
                     if not f.startswith(".") and f.lower().endswith(extensions)
                     and not any(part.startswith(".") for part in Path(d).relative_to(path).parts)]
            none = DatasetError("no image files in the folder", given, "pass image files or a folder of them")
            found += [(str(f), None) for f in files] or [(given, str(none))]
        elif path.exists():  # a file, or a FIFO or device that load_image refuses
            found.append((given, None))
        else:
            found.append((given, str(DatasetError("no such file or folder", given, "check the path"))))
    return found


def load_image(path: Path, image_size: int, channels: int = 3) -> np.ndarray:
    """Any image Pillow reads -> float32 [image_size, image_size, channels], 0-255, resized as
    in training (channels 1: grayscale, for networks trained on grayscale data)."""
    import tensorflow as tf

    if not stat.S_ISREG(os.stat(path).st_mode):  # open() on a FIFO waits for a writer
        raise OSError("not a regular file (a FIFO, socket or device)")
    with Image.open(path) as image:
        image.load()
        # Upright, as the training pipeline turns a JPEG by its EXIF orientation (retrain/data.py).
        rgb = to_rgb(ImageOps.exif_transpose(image) if image.format == "JPEG" else image)
        pixels = np.asarray(rgb) if channels == 3 else np.asarray(rgb.convert("L"))[..., None]
    return tf.image.resize(pixels, (image_size, image_size)).numpy()


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as tf.io.decode_image(channels=3) gives it: alpha dropped (not composited), the
    palette applied, 16-bit samples reduced to their top 8 bits."""
    if image.mode.startswith("I;16"):
        image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # (P -> RGB directly warns about the transparency)
    return image.convert("RGB")


def _printable(text: str) -> str:
    """`text` with the bytes of a file name that is not UTF-8 (surrogate escapes) as \\xNN."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:200]


def format_table(predictions: list[Prediction]) -> str:
    """One line per image: the file, then label and probability, most likely first."""
    shown = [p for p in predictions if p.error is None]
    if not shown:
        return ""
    width = max(len("file"), *(len(p.file) for p in shown))
    lines = [f"{'file':<{width}}  top labels (probability)"]
    lines += [f"{p.file:<{width}}  " + "  ".join(f"{label} {prob:.4f}" for label, prob in p.top) for p in shown]
    return "\n".join(lines)


def format_json(predictions: list[Prediction]) -> str:
    """[{"file", "predictions": [{"label", "probability"}, ...]} or {"file", "error"}, ...]"""
    return json.dumps([{"file": p.file, "error": p.error} if p.error is not None else
                       {"file": p.file, "predictions": [{"label": label, "probability": prob}
                                                        for label, prob in p.top]}
                       for p in predictions], indent=2)
