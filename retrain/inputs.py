"""The input plan: for each phase, whether it trains on cached rows (and which) or on images,
and the datasets it reads.

Phase 1 (the backbone frozen) trains the head on the pooled features; phase 2 (frozen below
the freeze point) trains the top on the activations at the freeze point, when they fit
--cache-budget and no skip connection crosses it; otherwise a phase reads images every epoch.
When phase 2 will read cached activations, phase 1 caches them first and computes its
features from them (retrain/bottleneck.py, retrain/cache.py hold the cache itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from retrain import checkpoints as ckpts
from retrain.config import FitConfig, parse_size
from retrain.data import ImageFolders, eval_dataset, train_dataset
from retrain.fileindex import FileIndex
from retrain.progress import say

# Forward passes that fill the cache: 128 measured 16% faster than 64 here (MobileNetV2 0.35,
# 96 px, 2 cores); 256 added 2% more.
EXTRACT_BATCH = 128
# Validation on cached rows: the batch does not change the result (a mean over the rows), and
# few large batches cost less than many small ones (see docs/benchmarks.md).
CACHED_EVAL_BATCH = 1024


@dataclass(frozen=True)
class PhaseInputs:
    """What one phase trains and on what."""

    trainee: object  # the keras.Model fit trains: the whole model, or its trainable top
    train_data: Callable  # (first epoch, end epoch, batches to skip) -> the epochs' batches
    val: object  # the validation batches


class InputPlan:
    """Decides, per phase, cached rows or images, and makes the rows that are missing."""

    def __init__(self, config: FitConfig, model, backbone, data: ImageFolders, image_size: int,
                 freeze_layers: int, cache_root: Path, index: FileIndex, batch_size: int, fine_tunes: bool):
        self.config, self.model, self.backbone, self.data = config, model, backbone, data
        self.image_size, self.freeze_layers, self.batch_size = image_size, freeze_layers, batch_size
        self.cache_root, self.index, self.fine_tunes = cache_root, index, fine_tunes
        self.channels = int(model.input.shape[-1])
        self.computed = 0  # bottleneck rows computed by this process (tests count them)
        self._weights_key = None
        self._hashes: dict[str, list[str]] = {}  # content hashes per split, read once per run

    def compute_or_reuse(self, phase: int, frozen: int) -> PhaseInputs:
        """Phase `phase`'s inputs, `frozen` backbone layers frozen: the images through the whole
        model, or the cached rows through its trainable top, computing (a forward pass over
        every image: the heavy part) the rows the cache lacks."""
        images = PhaseInputs(
            self.model, lambda first, end, skip=0: train_dataset(
                self.data.train, self.data.num_classes, self.image_size, self.batch_size,
                self.config.seed, first, end, skip, self.channels),
            eval_dataset(self.data.validation, self.data.num_classes, self.image_size,
                         self.batch_size, self.channels, skip_errors=False))
        plan = self._cache_plan(phase, frozen)
        if isinstance(plan, str):
            say(f"phase {phase}: reading images every epoch ({plan})")
            return images
        from retrain import bottleneck

        top, extractor = plan
        # Phase 1 before a cached phase 2: cache the activations at the freeze point first and
        # compute the pooled features from them (the layers above it only), rather than
        # running the bottom of the network over every image twice.
        bottom = self._phase2_extractor() if phase == 1 else None
        via = ""
        if bottom is None:
            (train, val), computed = self._cache_rows(None if phase == 1 else frozen, self._from_images(extractor))
        else:
            from retrain.model import features_from_boundary

            (train_b, val_b), computed_b = self._cache_rows(self.freeze_layers, self._from_images(bottom))
            self.computed += computed_b
            say(f"phase 1: cached the activations at the freeze point for phase 2 "
                f"{tuple(bottom.output.shape[1:])} ({len(train_b.labels) + len(val_b.labels) - computed_b:,} "
                f"rows reused, {computed_b:,} computed)")
            upper = features_from_boundary(self.model, self.backbone, self.freeze_layers)
            extract = {name: bottleneck.from_rows_fn(upper, split.files, rows.views[0], EXTRACT_BATCH)
                       for name, split, rows in (("train", self.data.train, train_b),
                                                 ("validation", self.data.validation, val_b))}
            (train, val), computed = self._cache_rows(None, extract, via=self.freeze_layers)
            via = f"; from the cached activations at {self.backbone.layers[self.freeze_layers - 1].name}"
        total = len(train.labels) * len(train.views) + len(val.labels)
        say(f"phase {phase}: training on cached {'features' if phase == 1 else 'activations'} "
            f"{tuple(extractor.output.shape[1:])} ({total - computed:,} rows reused, "
            f"{computed:,} computed, in {self.cache_root}{via})")
        self.computed += computed
        return PhaseInputs(top, lambda first, end, skip=0: bottleneck.train_dataset(
            train, self.batch_size, self.config.seed, first, end, skip, self.config.feature_shift),
            bottleneck.eval_dataset_cached(val, max(self.batch_size, CACHED_EVAL_BATCH)))

    def _phase2_extractor(self):
        """The extractor of phase 2's cached activations when phase 2 will train on them from
        the same, unaugmented images; else None."""
        if not self.fine_tunes or self.config.augment:
            return None
        plan = self._cache_plan(2, self.freeze_layers)
        return None if isinstance(plan, str) else plan[1]

    def _cache_plan(self, phase: int, frozen: int):
        """-> (the trainable top, the extractor of its cached inputs), or why phase `phase`
        reads images instead."""
        from retrain import bottleneck
        from retrain.model import feature_extractor, trainable_top

        why_not = self._why_not_cached(phase, frozen)
        if why_not:
            unshifted = "; --feature-shift applies to cached activations only" \
                if phase == 2 and self.config.feature_shift else ""
            return why_not + unshifted
        boundary = None if phase == 1 else frozen
        try:
            top = trainable_top(self.model, self.backbone, boundary)
        except ValueError:
            return (f"a skip connection crosses the freeze point, layer {frozen}; "
                    "a named freeze point has none")
        extractor = feature_extractor(self.model, self.backbone, boundary)
        views = self.config.cache_views if self.config.augment else 1
        size = bottleneck.boundary_bytes(extractor.output.shape[1:],
                                         len(self.data.train.files) * views + len(self.data.validation.files))
        if phase == 2 and size > parse_size(self.config.cache_budget):
            return f"its cache would take {size / 2**30:.2f} GiB, over --cache-budget {self.config.cache_budget}"
        return top, extractor

    def _from_images(self, extractor) -> dict:
        """split name -> the extractor's pass over that split's images (training mode for
        augmented training views, so the augmentations are active)."""
        from retrain import bottleneck

        plain = bottleneck.extract_fn(extractor, self.image_size, EXTRACT_BATCH, training=False)
        return {"train": bottleneck.extract_fn(extractor, self.image_size, EXTRACT_BATCH, training=True)
                if self.config.augment else plain, "validation": plain}

    def _cache_rows(self, boundary: int | None, extract: dict, via: int | None = None):
        """-> ((train rows, validation rows), how many computed) for the pooled features
        (boundary None) or the activations at `boundary`, computed by `extract[split]`: from
        the images, or (`via`) from the activations cached at layer `via`."""
        from retrain import bottleneck

        # The boundary by position: layer names can carry a per-process counter (input_layer_3).
        key = self._cache_key("features" if boundary is None else f"layer {boundary}")
        if via is not None:  # the rows differ from a direct pass by the float16 rounding at `via`
            key["via"] = f"layer {via}"
        common = dict(num_classes=self.data.num_classes, folder_root=self.cache_root)
        views = self.config.cache_views if self.config.augment else 1
        augmented = bool(self.config.augment)  # (with --cache-views K >= 1, or we would not be here)
        for name, split in (("train", self.data.train), ("validation", self.data.validation)):
            if name not in self._hashes:
                self._hashes[name] = self.index.hashes(split.files)
        train, computed = bottleneck.cache_split(
            key={**key, "augment": list(self.config.augment), "seed": self.config.seed} if augmented else key,
            split_name="train", split=self.data.train, hashes=self._hashes["train"], views=views,
            set_view=self._set_view if augmented else None, extract=extract["train"], **common)
        val, computed_val = bottleneck.cache_split(key=key, split_name="validation", split=self.data.validation,
                                                   hashes=self._hashes["validation"], extract=extract["validation"],
                                                   **common)
        return (train, val), computed + computed_val

    def _why_not_cached(self, phase: int, frozen: int) -> str:
        if not self.config.cache:
            return "--no-cache"
        if frozen == 0:
            return "nothing is frozen"
        if self.config.augment and not self.config.cache_views:
            return "--augment without --cache-views"
        return ""

    def _cache_key(self, boundary: str) -> dict:
        from retrain.cache import weights_digest

        if self._weights_key is None:
            spec_weights = self.config.backbone if self.config.backbone.startswith("hub:") \
                else weights_digest(self.config.weights)
            init = ckpts.init_checkpoint(Path(self.config.init_from)) if self.config.init_from else None
            self._weights_key = {"weights": spec_weights,
                                 "init_from": [str(Path(init).resolve()), weights_digest(f"{init}.index")]
                                 if init else None,
                                 "seed": self.config.seed if self.config.weights == "none" else None}
        return {"version": 1, "backbone": self.config.backbone, "alpha": self.config.alpha,
                "image_size": self.image_size, "boundary": boundary, **self._weights_key}

    def _set_view(self, view: int) -> None:
        from retrain.callbacks import seed_value

        augment = self.model.get_layer("augment")
        for i, v in enumerate(x for x in augment.variables if "seed_generator_state" in x.path):
            v.assign(np.asarray(seed_value(self.config.seed + 1, view, i), dtype=v.dtype))
