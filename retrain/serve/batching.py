"""Predictions: model versions loaded lazily into a small LRU cache, and concurrent requests
grouped into batches.

Each loaded version has two threads that take requests from a queue: each waits for a first
request, then gathers more until the batch holds --batch-size images, or --batch-wait-ms
have passed, or no other request is on its way (a lone request does not wait), and runs them
through the SavedModel's `serving_default` at once (TF Serving's batching, in small). Two,
because a batch of the few images that concurrent clients make keeps one core busy. A batch whose run fails (an image the graph cannot decode despite rest.py's check)
is run again request by request, so one bad image fails only its own request.
TensorFlow's thread pools are sized to the cores before the first model loads: each running
batch gets its share of them.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from retrain.errors import ConfigError

log = logging.getLogger("retrain.serve")


RUNNERS = 2  # batches run at once: a small batch keeps about one core busy, so two overlap


class Predictor:
    """name/version folder -> batched predictions; at most `loaded` versions in memory."""

    def __init__(self, batch_size: int, wait_ms: float, loaded: int):
        self.batch_size, self.wait_s, self.loaded = batch_size, wait_ms / 1000, loaded
        self._models: OrderedDict[Path, _Batcher] = OrderedDict()
        self._lock = threading.Lock()
        self.arriving = 0  # predict requests read but not yet submitted (the routes count them)

    def predict(self, folder: Path, images: list[bytes]) -> concurrent.futures.Future:
        """-> a future of the signature's outputs {name: array [len(images), ...]}."""
        return self._batcher(folder).submit(images)

    def _batcher(self, folder: Path) -> "_Batcher":
        with self._lock:  # quick: TensorFlow loads in the batcher's own thread, not the event loop's
            batcher = self._models.pop(folder, None) or _Batcher(folder, self.batch_size, self.wait_s,
                                                                 lambda: self.arriving > 0)
            self._models[folder] = batcher  # most recently used last
            while len(self._models) > self.loaded:
                _, old = self._models.popitem(last=False)
                old.close()
            return batcher

    def close(self) -> None:
        with self._lock:
            for batcher in self._models.values():
                batcher.close()
            self._models.clear()


_pools = threading.Lock()
_pools_sized = False


def _size_thread_pools() -> None:
    """Once per process, before TensorFlow runs anything (it refuses later)."""
    global _pools_sized
    import tensorflow as tf

    with _pools:
        if not _pools_sized:
            cores = len(os.sched_getaffinity(0))
            # Each of the RUNNERS batches gets its share of the cores: two small batches on one
            # core each went 1.17 x faster than both fighting over both (bench/serve_speed.py).
            tf.config.threading.set_intra_op_parallelism_threads(max(1, cores // RUNNERS))
            tf.config.threading.set_inter_op_parallelism_threads(min(2, cores))
            _pools_sized = True


class _Batcher:
    """One loaded version and the threads that run its batches. A batch waits for more
    requests only while others are on their way (`more_coming`), and at most wait_s: a lone
    request runs at once."""

    def __init__(self, folder: Path, batch_size: int, wait_s: float, more_coming):
        self.folder, self.batch_size, self.wait_s, self.more_coming = folder, batch_size, wait_s, more_coming
        self.requests: queue.Queue = queue.Queue()
        self.signature = None
        self.loaded = threading.Event()
        self.failed: Exception | None = None
        self.threads = [threading.Thread(target=self._run, daemon=True,
                                         name=f"batcher {folder.parent.name}/{folder.name} {i}")
                        for i in range(RUNNERS)]
        for thread in self.threads:
            thread.start()

    def submit(self, images: list[bytes]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.requests.put((images, future))
        return future

    def close(self) -> None:
        for _ in self.threads:
            self.requests.put(None)

    def _run(self) -> None:
        if not self._load():
            self._fail_all()
            return
        while True:
            batch = self._gather()
            if batch is None:
                return
            self._run_batch(batch)

    def _load(self) -> bool:
        """Load the SavedModel once (the first thread does; the others wait); -> loaded."""
        import tensorflow as tf

        if self.threads[0] is not threading.current_thread():
            self.loaded.wait()
            return self.failed is None
        try:
            _size_thread_pools()
            self.signature = tf.saved_model.load(str(self.folder)).signatures["serving_default"]
        except Exception as err:  # every waiting request gets the reason; the threads end
            log.exception("could not load %s", self.folder)
            self.failed = ConfigError("the model version could not be loaded", str(self.folder),
                                      f"re-publish it ({type(err).__name__})")
        finally:
            self.loaded.set()
        return self.failed is None

    def _gather(self) -> list | None:
        first = self.requests.get()
        if first is None:
            return None
        batch, count = [first], len(first[0])
        deadline = time.monotonic() + self.wait_s
        while count < self.batch_size:
            try:
                item = self.requests.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0 or not self.more_coming():
                    break
                time.sleep(min(left, 0.0005))
                continue
            if item is None:
                self.requests.put(None)  # close after this batch
                break
            batch.append(item)
            count += len(item[0])
        return batch

    def _run_batch(self, batch: list) -> None:
        import tensorflow as tf

        try:
            outputs = self._call([image for images, _ in batch for image in images])
        except tf.errors.InvalidArgumentError:
            if len(batch) > 1:
                for item in batch:
                    self._run_batch([item])
                return
            batch[0][1].set_exception(ConfigError("an image could not be decoded", f"{len(batch[0][0])} image(s)",
                                                  "send complete JPEG, PNG, GIF or BMP files"))
            return
        except Exception as err:
            for _, future in batch:
                future.set_exception(err)
            return
        start = 0
        for images, future in batch:
            future.set_result({k: v[start:start + len(images)] for k, v in outputs.items()})
            start += len(images)

    def _call(self, images: list[bytes]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        return {k: v.numpy() for k, v in self.signature(image_bytes=tf.constant(images, tf.string)).items()}

    def _fail_all(self) -> None:
        while True:
            item = self.requests.get()
            if item is None:
                return
            item[1].set_exception(self.failed)
