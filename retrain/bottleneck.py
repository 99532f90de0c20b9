"""Training on cached bottlenecks: extract the frozen part's output once, then serve it.

Phase 1 (the whole backbone frozen) caches the pooled features; phase 2 (frozen below the
freeze point N) caches the activations at N when they fit the disk budget. Either way the
trainable part then trains on cached rows: an epoch costs a fraction of a full forward pass.
The rows are shuffled exactly as the image files would be (the same seed per epoch over
the same number of elements), so cached and uncached runs see the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import tensorflow as tf

from retrain.cache import SplitCache, key_folder
from retrain.data import Split, eval_dataset, shard_by_data

IN_MEMORY_BYTES = 1 << 30  # rows below this are read into memory; above, served from the map


@dataclass
class CachedSplit:
    """One split's cached rows (one array per view) and labels."""

    views: list[np.ndarray]
    labels: np.ndarray
    num_classes: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.views[0].shape[1:]


def _any_batch(shape) -> list:
    """A tf.function signature for float32 batches of `shape` (one example's) of any size."""
    return [tf.TensorSpec([None, *shape], tf.float32)]


def extract_fn(extractor, image_size: int, batch_size: int, training: bool):
    """files -> batches of the extractor's output, through the real input pipeline.

    One trace for every call and batch size. A short last batch runs as it is: padding it
    to the full size cost more than a new shape does (InceptionV3 at 299 px: a first batch
    of 64 after 128s took 0.4 s more than the next; padding the 14 and 30 images of 300
    split into 128s cost 212 images' forward passes, 9 s)."""

    @tf.function(input_signature=_any_batch((image_size, image_size, extractor.input.shape[-1])))
    def forward(images):
        return extractor(images, training=training)

    def run(files: list[str], shape: tuple[int, int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        # `shape`: the (height, width) every file has, if known (Split.shape): the fast
        # pipeline then resizes whole batches. The label slot carries each file's position,
        # so a file dropped by the pipeline (undecodable) is known rather than shifting every
        # later row. The fast pipeline stops at such a file (or one of another shape); the
        # files from its batch on then go through the one that resizes image by image and
        # drops what does not decode.
        done, strict = 0, True
        while done < len(files):
            split = Split(tuple(files[done:]), np.arange(done, len(files), dtype=np.int64), shape)
            try:
                for images, positions in eval_dataset(split, None, image_size, batch_size,
                                                      extractor.input.shape[-1], skip_errors=not strict):
                    positions = positions.numpy()
                    yield forward(images).numpy(), positions
                    done = int(positions[-1]) + 1
                return
            except tf.errors.InvalidArgumentError:
                if not strict:
                    raise
                strict = False

    return run


def from_rows_fn(model, files: tuple[str, ...], rows: np.ndarray, batch_size: int):
    """files -> batches of `model`'s output on their rows of another cache (`rows[i]` belongs
    to `files[i]`): the pooled features computed from the activations cached at the freeze
    point, which costs the layers above it only, not another pass over the images. One
    trace for any batch size, as in `extract_fn`."""
    where = {f: i for i, f in enumerate(files)}

    @tf.function(input_signature=_any_batch(rows.shape[1:]))
    def forward(x):
        return model(x, training=False)

    def run(wanted: list[str], shape=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(wanted), batch_size):
            positions = np.arange(start, min(start + batch_size, len(wanted)))
            x = np.asarray(rows[[where[wanted[p]] for p in positions]], dtype=np.float32)
            yield forward(x).numpy(), positions

    return run


def cache_split(folder_root: Path, key: dict, split_name: str, split: Split, hashes: list[str],
                num_classes: int, extract, views: int = 1, set_view=None) -> tuple[CachedSplit, int]:
    """Make sure the rows of every image (and view) are cached; -> (rows, how many computed).

    `extract` comes from `extract_fn`. With `set_view`, the rows are augmented views:
    `set_view(v)` seeds the extractor's random layers for view v (and `extract` must run the
    extractor in training mode, so they are active). `hashes`: the files' content hashes."""
    arrays, computed = [], 0
    for view in range(views):
        folder = key_folder(folder_root, {**key, "view": view if set_view else None})
        if set_view is not None:
            set_view(view)
        cache = SplitCache(folder, split_name)
        arrays.append(cache.ensure(list(split.files), hashes, lambda files: extract(files, split.shape)))
        computed += cache.computed
    return CachedSplit(arrays, split.labels, num_classes), computed


def _source(views: list[np.ndarray]):
    """All views' rows, one after another: small ones as one in-graph constant (gathered by
    TensorFlow, no Python per batch), large ones memory-mapped and gathered by numpy."""
    if sum(v.nbytes for v in views) <= IN_MEMORY_BYTES:
        return tf.constant(np.concatenate([np.asarray(v) for v in views]))
    return views


def _gather(source, labels, num_classes: int, shape):
    """(view, index batch) -> (rows as float32, one-hot labels). Captured once per dataset:
    a constant captured by one function per epoch would be copied into each."""
    n = len(labels)

    def gather(view, index):
        if isinstance(source, tf.Tensor):
            x = tf.cast(tf.gather(source, view * n + index), tf.float32)
        else:
            x = tf.numpy_function(lambda v, i: np.asarray(source[v][i], dtype=np.float32),
                                  [view, index], tf.float32)
            x.set_shape((None,) + tuple(shape))
        return x, tf.one_hot(tf.gather(labels, index), num_classes)

    return gather


def shift_rows(rows, cells: int, seed):
    """Each activation map moved by up to `cells` cells at random in each direction (edges
    mirrored): the cached counterpart of a random crop of the image. Convolutions commute with
    translation, so a shift by one cell at a boundary of stride s is close to the activations
    of the image moved by s pixels, without a forward pass. `seed`: a stateless seed pair."""
    h, w = rows.shape[1], rows.shape[2]
    padded = tf.pad(rows, [[0, 0], [cells, cells], [cells, cells], [0, 0]], mode="SYMMETRIC")
    offsets = tf.random.stateless_uniform((tf.shape(rows)[0], 2), seed, 0, 2 * cells + 1, dtype=tf.int32)
    ys = offsets[:, :1] + tf.range(h)[None, :]
    xs = offsets[:, 1:] + tf.range(w)[None, :]
    return tf.gather(tf.gather(padded, ys, axis=1, batch_dims=1), xs, axis=2, batch_dims=1)


def epoch_order(n: int, epoch_seed: int):
    """The epoch's row order, as one tensor: the order data.train_dataset shuffles n files
    into with this seed (tf.data's shuffle depends on the seed and the count only)."""
    return (tf.data.Dataset.range(n).shuffle(n, seed=epoch_seed, reshuffle_each_iteration=False)
            .batch(n).get_single_element())


def train_dataset(cached: CachedSplit, batch_size: int, seed: int, first_epoch: int,
                  end_epoch: int, skip_batches: int = 0, shift: int = 0):
    """Like data.train_dataset, over cached rows: epoch e reads view e % views. With `shift`
    and activation maps (not pooled features), each batch goes through `shift_rows`, seeded
    by (seed, epoch, batch): a resumed run shifts every row as the uninterrupted one did.

    A dataset of batch numbers, each sliced from the epoch's order: shuffling the rows'
    indices one element at a time cost 200 us a batch, beside a head step of about 1 ms."""
    n = len(cached.labels)
    steps = -(-n // batch_size)
    shift = shift if len(cached.shape) == 3 else 0
    ds = None
    for epoch in range(first_epoch, end_epoch):
        epoch_seed = seed * 100_003 + epoch  # orders the epoch's rows and seeds its shifts
        order = epoch_order(n, epoch_seed)
        view = tf.constant(epoch % len(cached.views), dtype=tf.int64)
        first_batch = skip_batches if epoch == first_epoch else 0
        one = tf.data.Dataset.range(first_batch, steps).map(
            lambda batch, order=order, view=view, epoch_seed=epoch_seed: (
                view, order[batch * batch_size:(batch + 1) * batch_size],
                tf.stack([tf.constant(epoch_seed, tf.int64), batch])))
        ds = one if ds is None else ds.concatenate(one)
    gather = _gather(_source(cached.views), tf.constant(cached.labels), cached.num_classes, cached.shape)

    def rows(view, index, batch_seed):
        x, y = gather(view, index)
        return (shift_rows(x, shift, batch_seed) if shift else x), y

    return shard_by_data(ds.map(rows).prefetch(tf.data.AUTOTUNE))


def eval_dataset_cached(cached: CachedSplit, batch_size: int):
    gather = _gather(_source(cached.views[:1]), tf.constant(cached.labels), cached.num_classes, cached.shape)
    zero = tf.constant(0, dtype=tf.int64)
    return shard_by_data(tf.data.Dataset.range(len(cached.labels)).batch(batch_size)
                         .map(lambda index: (zero, index)).map(gather).prefetch(tf.data.AUTOTUNE))


def boundary_bytes(shape, images: int, views: int = 1) -> int:
    """Disk for float16 activations of this shape for every image."""
    return int(np.prod(shape)) * 2 * images * views
