"""Export formats side by side: size on disk, ms per image and test accuracy of a run's model
as Keras (.keras), SavedModel, TFLite float32 and TFLite int8.

Exports the run's checkpoint to a temporary folder in each format (`retrain.exports`), then
times each on the first --timed images of the test folder, one image a call (batch 1, as an
app classifying a photo would) and in batches of 64, after a few warm-up calls; and scores
each on the whole test folder. Keras and the SavedModel run on TensorFlow's own thread
pool; the TFLite interpreter gets one thread per core (XNNPACK).

usage: python bench/export_formats.py RUN [--data TEST_DIR] [--timed 200] [--checkpoint best]
       [--representative-images 200]
TEST_DIR defaults to the run's <data>/test/.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrain.config import ExportConfig  # noqa: E402
from retrain.data import eval_dataset  # noqa: E402
from retrain.evaluation import labelled_split  # noqa: E402
from retrain.exports import TFLiteClassifier, export, size_on_disk  # noqa: E402
from retrain.runs import load_model  # noqa: E402

WARM_UP = 5
BATCH = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, help="test folder of <label>/ (default: the run's <data>/test)")
    parser.add_argument("--timed", type=int, default=200, help="images timed per format")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
    parser.add_argument("--representative-images", type=int, default=200)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    loaded = load_model(args.run, args.checkpoint)
    test_dir = args.data or Path(json.loads((args.run / "config.json").read_text())["data"]) / "test"
    split = labelled_split(test_dir, loaded.labels)
    images, labels = [], []
    for x, y in eval_dataset(split, None, loaded.image_size, 256).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    # Every format gets the same pixels: the pipeline's resize makes fractions, and the
    # SavedModel and the int8 model take uint8, so all get them rounded.
    uint8 = np.clip(np.rint(np.concatenate(images)), 0, 255).astype(np.uint8)
    images, labels = uint8.astype(np.float32), np.concatenate(labels)
    print(f"{args.run.name}: {loaded.config.backbone}, {loaded.image_size} px, {len(loaded.labels)} classes; "
          f"{len(labels)} test images from {test_dir}; {args.checkpoint} checkpoint")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = {"keras": tmp / "model.keras"}
        loaded.model.save(paths["keras"])
        for fmt, name in (("savedmodel", "savedmodel"), ("tflite", "float32.tflite"),
                          ("tflite-int8", "int8.tflite")):
            config = ExportConfig(run=str(args.run), format=fmt, output=str(tmp / name),
                                  checkpoint=args.checkpoint, representative_images=args.representative_images)
            start = time.perf_counter()
            paths[fmt] = export(config)
            print(f"  export {fmt}: {time.perf_counter() - start:.1f} s")

        keras_model = keras.saving.load_model(paths["keras"], compile=False)
        keras_forward = tf.function(lambda x: keras_model(x, training=False), reduce_retracing=True,
                                    autograph=False)
        serve = tf.saved_model.load(str(paths["savedmodel"])).signatures["pixels"]
        tflite_float, tflite_int8 = TFLiteClassifier(paths["tflite"]), TFLiteClassifier(paths["tflite-int8"])
        runners = {
            "keras": (lambda x: np.asarray(keras_forward(x)), images),
            "savedmodel": (lambda x: serve(images=tf.constant(x))["probabilities"].numpy(), uint8),
            "tflite": (tflite_float, images),
            "tflite-int8": (tflite_int8, uint8),
        }
        print(f"\n{'format':<13}{'size MiB':>10}{'ms/img b=1':>12}{'ms/img b=64':>13}{'accuracy':>10}"
              f"{'agrees':>8}")
        reference = None
        for name, (predict, inputs) in runners.items():
            probs = np.concatenate([predict(inputs[i:i + BATCH]) for i in range(0, len(inputs), BATCH)])
            predicted = probs.argmax(1)
            reference = predicted if reference is None else reference
            one = _ms_per_image(predict, inputs[:args.timed], 1)
            many = _ms_per_image(predict, inputs[:max(args.timed, BATCH)], BATCH)
            print(f"{name:<13}{size_on_disk(paths[name]) / 2**20:>10.2f}{one:>12.3f}{many:>13.3f}"
                  f"{np.mean(predicted == labels):>10.4f}{np.mean(predicted == reference):>8.1%}")
    print("\nms/img b=1: one image a call; b=64: batches of 64. agrees: same top-1 as Keras.")


def _ms_per_image(predict, inputs: np.ndarray, batch: int) -> float:
    batches = [inputs[i:i + batch] for i in range(0, len(inputs), batch)]
    full = [b for b in batches if len(b) == batch] or batches
    for b in full[:WARM_UP]:
        predict(b)
    start = time.perf_counter()
    for b in full:
        predict(b)
    return (time.perf_counter() - start) * 1000 / sum(len(b) for b in full)


if __name__ == "__main__":
    main()
