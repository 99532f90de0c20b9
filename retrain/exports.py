"""export(config): a run's classifier as a SavedModel, a float32 TFLite or a full-integer TFLite.

`labels.txt` goes beside each (inside the SavedModel folder, beside saved_model.pb).
- SavedModel: `tf.saved_model.save` of a tf.Module with two signatures, both returning
  `probabilities` (float32 [batch, classes], labels.txt order), `classes` (tf.string
  [batch, k], the k = min(5, classes) most likely labels, most likely first) and `scores`
  (float32 [batch, k], their probabilities):
  - `serving_default` takes `image_bytes`, a tf.string [batch] of encoded JPEG, PNG, GIF
    or BMP images of any size: what a TF Serving REST client sends as
    `{"instances": [{"b64": "..."}]}`. Each is decoded (`tf.io.decode_image`, a GIF's first
    frame) and resized (`tf.image.resize`, bilinear, float 0-255) as training decodes and
    resizes its files. The EXIF orientation of a JPEG is NOT applied: TensorFlow has no op
    that reads it, so a client sending a phone photo that relies on EXIF rotation should
    send it upright (`retrain serve` turns it upright before calling the signature).
  - `pixels` takes `images`, raw uint8 pixels [batch, H, W, channels] at the run's image
    size, for clients that send tensors; the cast and the backbone's rescaling are inside.
- TFLite float32: `tf.lite.TFLiteConverter.from_keras_model`; float32 pixels 0-255 in (the
  Keras model's own input), probabilities out.
- TFLite int8: the same converter with post-training full-integer quantization, calibrated on
  `--representative-images` training images decoded as in training: every op int8, input
  uint8 (scale 1, zero point 0 when the images span 0-255, as real photos do: the raw
  pixels), output uint8 (probability = q / 256), what integer-only accelerators want.
  from_keras_model rather than from_concrete_functions or from_saved_model on our own
  tf.Module: on TF 2.21 those keep Keras 3's variables as resource variables, and the int8
  calibration then fails on READ_VARIABLE.
`TFLiteClassifier` runs an exported .tflite file (`retrain evaluate --model`).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from retrain.checkpoints import read_run
from retrain.files import atomic_write
from retrain.config import ExportConfig
from retrain.data import Split, eval_dataset, load_folders
from retrain.errors import ConfigError
from retrain.progress import say
from retrain.runs import LoadedRun, load_model


def export(config: ExportConfig) -> Path:
    """Write the run's `best` or `last` checkpoint in `config.format`; -> the model's path."""
    representative = None
    if config.format == "tflite-int8":  # the training images first: a missing folder fails fast
        fit_config, _, _ = read_run(Path(config.run))
        representative = representative_files(fit_config.data, fit_config.validation_split,
                                              config.representative_images, config.seed)
    path = config.output_path
    inside_run = _inside(path, Path(config.run))
    targets = [path] if config.format == "savedmodel" else [path, path.parent / "labels.txt"]
    for target in targets:  # before the model loads: a refusal costs nothing
        refuse_foreign(target, inside_run)
    loaded = load_model(config.run, config.checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    if config.format == "savedmodel":
        write_savedmodel(loaded, path)
    else:
        write_tflite(loaded, path, representative)
        _mark(path)
        atomic_write(path.parent / "labels.txt", _labels_text(loaded.labels))
        _mark(path.parent / "labels.txt")
    say(f"exported {config.format} ({size_on_disk(path) / 2**20:.2f} MiB) to {path}")
    return path


def representative_files(data_dir: str, validation_split: float, count: int, seed: int) -> Split:
    """`count` training images of the run (the files fit trained on), chosen at random by seed."""
    train = load_folders(data_dir, validation_split).train
    chosen = np.sort(np.random.default_rng(seed).permutation(len(train.files))[:count])
    return Split(tuple(train.files[i] for i in chosen), train.labels[chosen])


TOP_K = 5  # labels in a SavedModel signature's `classes` and `scores` (fewer when fewer classes)


def write_savedmodel(loaded: LoadedRun, path: Path) -> None:
    """A SavedModel folder (labels.txt inside, beside saved_model.pb) with the `serving_default`
    (encoded images) and `pixels` (uint8 pixels) signatures, written to a temporary folder and
    renamed into place."""
    import tensorflow as tf

    size, channels, labels = loaded.image_size, loaded.channels, loaded.labels
    k = min(TOP_K, len(labels))

    def decoded(image_bytes):  # as training's data._loader, less the EXIF turn (no TF op reads it)
        image = tf.io.decode_image(image_bytes, channels=channels, expand_animations=False)
        return tf.image.resize(image, (size, size))  # bilinear, float32, still 0-255

    class Serving(tf.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def from_bytes(self, image_bytes):
            images = tf.map_fn(decoded, image_bytes,
                               fn_output_signature=tf.TensorSpec([size, size, channels], tf.float32))
            return _outputs(self.model(images, training=False), labels, k)

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, channels], tf.uint8, name="images")])
        def from_pixels(self, images):
            return _outputs(self.model(tf.cast(images, tf.float32), training=False), labels, k)

    module = Serving(loaded.model)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # a name only this process uses
    try:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.from_bytes,
                                                           "pixels": module.from_pixels})
        (tmp / "labels.txt").write_text(_labels_text(labels))
        _mark(tmp)
        _replace_folder(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def signature_def(num_classes: int, image_size: int, channels: int) -> dict:
    """The SavedModel's signatures as TF Serving's metadata endpoint describes them (its JSON
    form of SignatureDef), without loading the model: write_savedmodel fixes their shape."""
    def tensor(name: str, dtype: str, *dims: int) -> dict:
        return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in dims],
                                                 "unknown_rank": False}, "name": name}

    k = min(TOP_K, num_classes)
    outputs = {"probabilities": tensor("probabilities", "DT_FLOAT", -1, num_classes),
               "classes": tensor("classes", "DT_STRING", -1, k), "scores": tensor("scores", "DT_FLOAT", -1, k)}
    predict = "tensorflow/serving/predict"
    return {"serving_default": {"inputs": {"image_bytes": tensor("image_bytes", "DT_STRING", -1)},
                                "outputs": outputs, "method_name": predict},
            "pixels": {"inputs": {"images": tensor("images", "DT_UINT8", -1, image_size, image_size, channels)},
                       "outputs": outputs, "method_name": predict}}


def _outputs(probabilities, labels: tuple[str, ...], k: int) -> dict:
    """Probabilities [batch, classes] -> every SavedModel signature's outputs: them, and the k
    most likely labels (`classes`) and their probabilities (`scores`), most likely first."""
    import tensorflow as tf

    scores, indices = tf.math.top_k(probabilities, k=k)  # ties: the lower index first, as predict
    return {"probabilities": probabilities, "classes": tf.gather(tf.constant(labels), indices),
            "scores": scores}


def write_tflite(loaded: LoadedRun, path: Path, representative: Split | None) -> None:
    """float32 TFLite, or full-integer int8 calibrated on `representative` images."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(loaded.model)
    if representative is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _calibration(representative, loaded.image_size,
                                                                loaded.channels)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    # Quiet: the converter has Keras export a SavedModel first and print its signature to
    # stdout, which carries results; and the input's range comes from calibration, not from
    # "statistics" it warns are missing.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        flat = converter.convert()
    atomic_write(path, flat)
    if representative is not None:
        scale, zero = TFLiteClassifier(path).input["quantization"]
        if (scale, zero) != (1.0, 0):
            say(f"note: the int8 model's input is quantized with scale {scale:g} and zero point {zero} "
                "(the calibration images did not span 0-255): feed round(pixel / scale + zero point)")


def _calibration(files: Split, image_size: int, channels: int = 3):
    """One image at a time, decoded and resized as in training (float 0-255, the Keras
    model's input; the converter maps that range onto the uint8 input)."""
    say(f"calibrating int8 ranges on {len(files.files)} training images")
    for batch, _ in eval_dataset(files, None, image_size, 1, channels).as_numpy_iterator():
        yield [batch]


def _labels_text(labels: tuple[str, ...]) -> str:
    return "".join(f"{name}\n" for name in labels)


# What export writes carries this marker (a file inside a SavedModel folder; `.NAME` + it beside
# a file), so a later export replaces its own earlier output and never a user's file or folder.
MARKER = ".retrain-export"


def _marker(path: Path) -> Path:
    return path / MARKER if path.is_dir() else path.with_name(f".{path.name}{MARKER}")


def _mark(path: Path) -> None:
    atomic_write(_marker(path), "written by `retrain export`; the next export may replace it\n")


def _inside(path: Path, run: Path) -> bool:
    return path.resolve().is_relative_to((run / "export").resolve())


def refuse_foreign(path: Path, inside_run: bool) -> None:
    """Refuse to replace what is at `path` unless an earlier export wrote it (its marker), or
    it is in the run's own export/ folder (exports made before the marker existed)."""
    if not (path.exists() or path.is_symlink()) or inside_run or _marker(path).is_file():
        return
    kind = "folder" if path.is_dir() else "file"
    raise ConfigError(f"--output names an existing {kind} that retrain did not export", str(path),
                      "pass a new path (export replaces only its own earlier output), or move it away")


def _replace_folder(new: Path, path: Path) -> None:
    """Put folder `new` at `path`; an old one is moved aside first and removed after, so `path`
    holds either the old export or the new one, never a mixture."""
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    if path.exists():
        os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def size_on_disk(path: str | Path) -> int:
    """Bytes of a model file, or of all files in a model folder."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


class TFLiteClassifier:
    """An exported .tflite model: float 0-255 images [b, H, W, 3] -> probabilities [b, classes].

    Inputs are quantized as the model's input tensor wants (raw uint8 for ours); a quantized
    output is dequantized. It runs on LiteRT (`ai_edge_litert`), the runtime an exported
    model is deployed with; TensorFlow's own `tf.lite.Interpreter` is deprecated in its favour.
    """

    def __init__(self, path: str | Path, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads or len(os.sched_getaffinity(0)))
        except ValueError as err:
            raise ConfigError("--model is not a TFLite model TensorFlow can run", str(path),
                              f"pass a file `retrain export` wrote ({str(err).splitlines()[0][:120]})") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.interpreter.allocate_tensors()
        self.image_size = int(self.input["shape"][1])
        self.num_classes = int(self.output["shape"][-1])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = self._quantize(images)
        if tuple(self.input["shape"]) != x.shape:
            self.interpreter.resize_tensor_input(self.input["index"], x.shape)
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        scale, zero = self.output["quantization"]
        return (out.astype(np.float32) - zero) * scale if scale else out.astype(np.float32)

    def _quantize(self, images: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        scale, zero = self.input["quantization"]
        if dtype == np.float32:
            return np.asarray(images, np.float32)
        if scale:  # a quantized input: q = x / scale + zero_point
            images = np.asarray(images, np.float64) / scale + zero
        info = np.iinfo(dtype)
        return np.clip(np.rint(images), info.min, info.max).astype(dtype)
