"""The bottleneck feature cache: hits and misses, what invalidates which rows, killed writes,
cached vs uncached training, the budget and augmented views, resume.

tiny_cnn on 32 px toy colours: 4 training and 2 validation images per colour (12 + 6).
`--freeze block1_out` makes phase 2 train on the 32x32x8 activations after block1_out, so a
cold run computes 18 boundary rows and, from them, 18 pooled feature rows, all in phase 1. Each test that
trains copies the warm cache (or starts a fresh one) into its own tmp folder, so none
depends on another's writes.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fit_fixtures import (COLOURS, column, fit_args, invoke, load_model, make_colour_data, model_weights, noisy_colour,
                          read_history, write_png)
from retrain.cache import SplitCache
from retrain.fileindex import FileIndex, file_digest
from retrain.config import FitConfig

TRAIN, VAL = 12, 6  # images per side in the toy data
ROWS = TRAIN + VAL
BOUNDARY = "block1_out"
BOUNDARY_KEY = "layer 4"  # the cache names a boundary by position: block1_out is layer 3
BLOCK2_KEY = "layer 8"


# --- helpers ---------------------------------------------------------------------------------

def config(data: Path, runs: Path, name: str, cache_root: Path, **overrides) -> FitConfig:
    """A quick tiny_cnn run: 2 head epochs, 1 fine-tuning epoch above block1_out."""
    values = dict(data=str(data), backbone="tiny_cnn", weights="none", image_size=32, freeze=BOUNDARY,
                  epochs=2, fine_tune_epochs=1, batch_size=4, learning_rate=0.05,
                  fine_tune_learning_rate=0.01, schedule="constant", runs_dir=str(runs), name=name,
                  cache_dir=str(cache_root), label_smoothing=0.0, validation_split=0.2, feature_shift=0)
    values.update(overrides)
    return FitConfig(**values)


def fit_in_process(cfg: FitConfig, resume: bool = False):
    """retrain.train.fit(cfg) -> (FitResult, what it said on stderr, shown as the CLI shows it)."""
    import tensorflow as tf

    from retrain.progress import show_news
    from retrain.train import fit

    show_news()

    tf.get_logger()  # bind TensorFlow's log handler to the real stderr, not the capture below
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        result = fit(cfg, resume=resume)
    return result, err.getvalue()


def cache_line(stderr: str, phase: int) -> tuple[int, int]:
    """(rows reused, rows computed) from phase `phase`'s "training on cached ..." line."""
    found = re.findall(rf"phase {phase}: training on cached \w+ \([\d, ]+\) \(([\d,]+) rows reused, "
                       rf"([\d,]+) computed", stderr)
    assert len(found) == 1, stderr
    return tuple(int(x.replace(",", "")) for x in found[0])


def boundary_line(stderr: str) -> tuple[int, int]:
    """(rows reused, rows computed) of the activations phase 1 caches at the freeze point for
    phase 2 (before computing its features from them)."""
    found = re.findall(r"phase 1: cached the activations at the freeze point for phase 2 \([\d, ]+\) "
                       r"\(([\d,]+) rows reused, ([\d,]+) computed", stderr)
    assert len(found) == 1, stderr
    return tuple(int(x.replace(",", "")) for x in found[0])


def key_folders(cache: Path) -> dict[Path, dict]:
    """Every model-key folder under the cache root -> its key.json."""
    if not cache.is_dir():
        return {}
    return {f: json.loads((f / "key.json").read_text()) for f in sorted(cache.iterdir())
            if (f / "key.json").is_file()}


def folder_for(cache: Path, **match) -> Path:
    """The one key folder whose key.json has every `match` item."""
    found = [f for f, key in key_folders(cache).items() if all(key.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, key_folders(cache))
    return found[0]


def split_rows(folder: Path, split: str) -> tuple[list[str], np.ndarray]:
    """(content hashes, rows as float32) that the split's pointer names."""
    meta = json.loads((folder / f"{split}.json").read_text())
    return meta["hashes"], np.load(folder / meta["file"]).astype(np.float32)


def rows_by_hash(folder: Path, split: str) -> dict[str, np.ndarray]:
    hashes, rows = split_rows(folder, split)
    return dict(zip(hashes, rows))


def npy_files(folder: Path, split: str) -> list[str]:
    return sorted(p.name for p in folder.glob(f"{split}-*.npy"))


def leftovers(cache: Path) -> list[str]:
    return sorted(str(p) for p in cache.rglob(".*.tmp"))


def copy_cache(warm: "Warm", tmp_path: Path) -> Path:
    target = tmp_path / "cache"
    shutil.copytree(warm.cache, target)
    return target


@dataclass
class Warm:
    data: Path
    cache: Path
    runs: Path
    result: object  # FitResult of the cold run
    stderr: str


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> Warm:
    """The toy data and a cold-cache run on it (phase 1 cached, phase 2 cached at block1_out)."""
    root = tmp_path_factory.mktemp("cache")
    data = make_colour_data(root / "data", train=TRAIN // 3, validation=VAL // 3)
    result, stderr = fit_in_process(config(data, root / "runs", "cold", root / "cache"))
    return Warm(data, root / "cache", root / "runs", result, stderr)


# --- 1. hit and miss -------------------------------------------------------------------------

def test_cold_run_computes_every_row(warm):
    """A cold cache: every training and validation image's activations at the freeze point
    are computed once in phase 1, then its pooled features from them (saying so); phase 2
    reuses the activations. Two key folders, the features' naming the activations they came
    from, each holding one pointer and one .npy per split; no temporary file is left."""
    assert warm.result.features_computed == 2 * ROWS
    assert boundary_line(warm.stderr) == (0, ROWS)
    assert cache_line(warm.stderr, 1) == (0, ROWS)
    assert f"from the cached activations at {BOUNDARY})" in warm.stderr
    assert cache_line(warm.stderr, 2) == (ROWS, 0)
    assert "phase 2: training on cached activations (32, 32, 8)" in warm.stderr
    keys = key_folders(warm.cache)
    assert sorted(k["boundary"] for k in keys.values()) == ["features", BOUNDARY_KEY]
    assert sorted(str(k.get("via")) for k in keys.values()) == ["None", BOUNDARY_KEY]
    for folder, key in keys.items():
        assert (key["backbone"], key["image_size"], key["weights"], key["seed"], key["view"]) == (
            "tiny_cnn", 32, "none", 0, None)
        for split, n in (("train", TRAIN), ("validation", VAL)):
            assert len(npy_files(folder, split)) == 1
            hashes, rows = split_rows(folder, split)
            assert len(hashes) == len(rows) == n
            assert np.isfinite(rows).all()
    _, features = split_rows(folder_for(warm.cache, boundary="features"), "train")
    assert features.shape == (TRAIN, 32)
    _, activations = split_rows(folder_for(warm.cache, boundary=BOUNDARY_KEY), "validation")
    assert activations.shape == (VAL, 32, 32, 8)
    assert leftovers(warm.cache) == []


def test_features_from_activations_match_a_pass_over_the_images(warm, tmp_path):
    """Without fine-tuning, phase 1 runs the whole backbone over the images (a key without
    `via`, and no boundary rows). Those features and the warm run's, computed from its
    float16 activations at block1_out, agree row by row within float16 rounding."""
    cache = tmp_path / "cache"
    result, stderr = fit_in_process(config(warm.data, tmp_path / "runs", "direct", cache, fine_tune_epochs=0))
    assert "for phase 2" not in stderr and "from the cached activations" not in stderr
    assert result.features_computed == ROWS
    [(folder, key)] = key_folders(cache).items()
    assert key["boundary"] == "features" and "via" not in key
    for split in ("train", "validation"):
        direct, routed = rows_by_hash(folder, split), rows_by_hash(folder_for(warm.cache, boundary="features"), split)
        assert set(direct) == set(routed)
        assert max(np.abs(row).max() for row in direct.values()) > 0.1
        for h, row in direct.items():
            np.testing.assert_allclose(routed[h], row, rtol=1e-2, atol=1e-3)


def test_warm_run_computes_nothing_and_trains_the_same(warm, tmp_path):
    """The same run again (a new run name): 0 rows computed in either phase, the cache files
    untouched (files.json, a memo of file facts, may learn more), and the very same
    history.csv as the cold run."""
    cache = copy_cache(warm, tmp_path)

    def contents():
        return {p: p.read_bytes() for p in cache.rglob("*") if p.is_file() and p.name != "files.json"}

    before = contents()
    result, stderr = fit_in_process(config(warm.data, tmp_path / "runs", "again", cache))
    assert result.features_computed == 0
    assert cache_line(stderr, 1) == (ROWS, 0)
    assert cache_line(stderr, 2) == (ROWS, 0)
    assert contents() == before
    assert (tmp_path / "runs" / "again" / "history.csv").read_text() == \
        (warm.runs / "cold" / "history.csv").read_text()


# --- 2. invalidation of exactly what changed -------------------------------------------------

def test_image_size_change_recomputes_everything(warm, tmp_path):
    """--image-size 24: a new key, every row computed again in both phases; the 32 px
    folders are left as they were."""
    cache = copy_cache(warm, tmp_path)
    old = {f: (f / "train.json").read_text() for f in key_folders(cache)}
    result, stderr = fit_in_process(config(warm.data, tmp_path / "runs", "px24", cache, image_size=24))
    assert result.features_computed == 2 * ROWS
    assert cache_line(stderr, 1) == (0, ROWS) and boundary_line(stderr) == (0, ROWS)
    assert cache_line(stderr, 2) == (ROWS, 0)
    assert "cached activations (24, 24, 8)" in stderr
    assert {f: (f / "train.json").read_text() for f in old} == old
    new = [k for k in key_folders(cache).values() if k["image_size"] == 24]
    assert sorted(k["boundary"] for k in new) == ["features", BOUNDARY_KEY]


def test_freeze_point_change_recomputes_only_the_boundary(warm, tmp_path):
    """--freeze block2_out: the activations at block2_out are all computed, and phase 1's
    pooled features again from them (under a key naming block2_out: they differ from those
    via block1_out by float16 rounding); the block1_out rows are left as they were."""
    cache = copy_cache(warm, tmp_path)
    before = (folder_for(cache, boundary=BOUNDARY_KEY) / "train.json").read_text()
    result, stderr = fit_in_process(config(warm.data, tmp_path / "runs", "b2", cache, freeze="block2_out"))
    assert result.features_computed == 2 * ROWS
    assert boundary_line(stderr) == (0, ROWS)
    assert cache_line(stderr, 1) == (0, ROWS)
    assert cache_line(stderr, 2) == (ROWS, 0)
    assert folder_for(cache, boundary="features", via=BLOCK2_KEY)
    assert (folder_for(cache, boundary=BOUNDARY_KEY) / "train.json").read_text() == before
    assert "cached activations (16, 16, 16)" in stderr
    _, rows = split_rows(folder_for(cache, boundary=BLOCK2_KEY), "train")
    assert rows.shape == (TRAIN, 16, 16, 16)


def test_seed_is_part_of_the_key_when_weights_are_none(warm, tmp_path):
    """--weights none: the seed decides the backbone's random weights, so another seed
    computes every row again (under its own key)."""
    cache = copy_cache(warm, tmp_path)
    result, _ = fit_in_process(config(warm.data, tmp_path / "runs", "seed1", cache, seed=1))
    assert result.features_computed == 2 * ROWS
    seed0 = split_rows(folder_for(cache, boundary="features", seed=0), "train")[1]
    seed1 = split_rows(folder_for(cache, boundary="features", seed=1), "train")[1]
    assert not np.allclose(seed0, seed1)


def _weights_file(path: Path, seed: int) -> Path:
    import keras

    from retrain.backbones import get_spec
    from retrain.model import build_backbone

    keras.utils.set_random_seed(seed)
    build_backbone(get_spec("tiny_cnn"), 32, None, "none").save_weights(str(path))
    return path


def test_weights_file_content_is_part_of_the_key(warm, tmp_path):
    """Two different .weights.h5 files each compute every row; a byte-identical copy of the
    first at another path, with another --seed, reuses every row (the key holds the file's
    content hash, and the seed only matters for --weights none)."""
    a = _weights_file(tmp_path / "a.weights.h5", 1)
    b = _weights_file(tmp_path / "b.weights.h5", 2)
    assert file_digest(str(a)) != file_digest(str(b))
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    first, _ = fit_in_process(config(warm.data, runs, "a", cache, weights=str(a)))
    second, _ = fit_in_process(config(warm.data, runs, "b", cache, weights=str(b)))
    assert (first.features_computed, second.features_computed) == (2 * ROWS, 2 * ROWS)
    copy = tmp_path / "elsewhere" / "copy.weights.h5"
    copy.parent.mkdir()
    shutil.copyfile(a, copy)
    third, _ = fit_in_process(config(warm.data, runs, "a-copy", cache, weights=str(copy), seed=3))
    assert third.features_computed == 0
    fa = split_rows(folder_for(cache, boundary="features", weights=file_digest(str(a))), "train")[1]
    fb = split_rows(folder_for(cache, boundary="features", weights=file_digest(str(b))), "train")[1]
    assert not np.allclose(fa, fb)
    assert all(k["seed"] is None for k in key_folders(cache).values())


def _copy_data(warm: Warm, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(warm.data, data)
    return data


@pytest.mark.parametrize("side", ["train", "validation"])
def test_changed_image_recomputes_only_its_rows(warm, tmp_path, side):
    """One image's pixels rewritten: exactly its row is computed again, in phase 1's
    features and in phase 2's activations of its split (1 + 1); every other row is the
    old one, the other split is untouched, and the superseded .npy is deleted."""
    data = _copy_data(warm, tmp_path)
    changed = data / side / "cyan" / "cyan_001.png"
    old_hash = file_digest(str(changed))
    write_png(changed, noisy_colour(COLOURS["cyan"], np.random.default_rng(99)))
    new_hash = file_digest(str(changed))
    assert new_hash != old_hash
    cache = copy_cache(warm, tmp_path)
    result, stderr = fit_in_process(config(data, tmp_path / "runs", "changed", cache))
    assert result.features_computed == 2
    assert boundary_line(stderr) == (ROWS - 1, 1)
    assert cache_line(stderr, 1) == (ROWS - 1, 1)
    assert cache_line(stderr, 2) == (ROWS, 0)
    other = "validation" if side == "train" else "train"
    for boundary in ("features", BOUNDARY_KEY):
        before = folder_for(warm.cache, boundary=boundary)
        after = folder_for(cache, boundary=boundary)
        old_rows, new_rows = rows_by_hash(before, side), rows_by_hash(after, side)
        assert set(new_rows) == set(old_rows) - {old_hash} | {new_hash}
        for h in set(old_rows) - {old_hash}:
            np.testing.assert_array_equal(new_rows[h], old_rows[h])
        assert not np.array_equal(new_rows[new_hash], old_rows[old_hash])
        assert len(npy_files(after, side)) == 1
        assert (after / f"{other}.json").read_text() == (before / f"{other}.json").read_text()
    assert leftovers(cache) == []


def test_added_image_computes_one_row_per_stage(warm, tmp_path):
    """A new training image: its row is the only one computed, once for phase 1's features
    and once for phase 2's activations."""
    data = _copy_data(warm, tmp_path)
    write_png(data / "train" / "magenta" / "magenta_new.png",
              noisy_colour(COLOURS["magenta"], np.random.default_rng(7)))
    cache = copy_cache(warm, tmp_path)
    result, stderr = fit_in_process(config(data, tmp_path / "runs", "added", cache))
    assert result.features_computed == 2
    assert boundary_line(stderr) == (ROWS, 1)
    assert cache_line(stderr, 1) == (ROWS, 1)
    assert cache_line(stderr, 2) == (ROWS + 1, 0)
    hashes, rows = split_rows(folder_for(cache, boundary="features"), "train")
    assert len(hashes) == len(rows) == TRAIN + 1


# --- 3 and 6. SplitCache: killed writes, reordered rows ---------------------------------------

ROW_SHAPE = (3, 2)


def _library_files(tmp_path: Path, n: int) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """n small files with distinct contents -> (paths, sha1 hashes, path -> its true row)."""
    rng = np.random.default_rng(0)
    files, truth = [], {}
    for i in range(n):
        path = tmp_path / "images" / f"img_{i:02d}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(f"image {i}".encode())
        files.append(str(path))
        # values a float16 holds exactly, so cached rows compare exactly
        truth[str(path)] = rng.integers(-512, 512, ROW_SHAPE).astype(np.float32) / 8
    return files, FileIndex(None).hashes(files), truth


def _extract(truth: dict[str, np.ndarray], batch: int = 2, fail_after: int | None = None, seen=None):
    """An extract function: the true rows of the asked files, `batch` at a time; with
    `fail_after`, raises after that many batches (a crash mid-write)."""

    def run(files):
        if seen is not None:
            seen.extend(files)
        for b, start in enumerate(range(0, len(files), batch)):
            if fail_after is not None and b == fail_after:
                raise RuntimeError("killed")
            positions = np.arange(start, min(start + batch, len(files)))
            yield np.stack([truth[files[p]] for p in positions]), positions

    return run


def _expected(files, truth) -> np.ndarray:
    return np.stack([truth[f] for f in files])


def test_library_first_ensure_then_hit(tmp_path):
    """ensure computes every row of a new split, in file order, as float16; the same call
    again computes none and calls extract with nothing to do."""
    files, hashes, truth = _library_files(tmp_path, 7)
    cache = SplitCache(tmp_path / "key", "train")
    (tmp_path / "key").mkdir()
    rows = cache.ensure(files, hashes, _extract(truth))
    assert cache.computed == 7 and rows.dtype == np.float16 and rows.shape == (7,) + ROW_SHAPE
    np.testing.assert_array_equal(np.asarray(rows, np.float32), _expected(files, truth))
    seen = []
    again = cache.ensure(files, hashes, _extract(truth, seen=seen))
    assert cache.computed == 0 and seen == []
    np.testing.assert_array_equal(np.asarray(again, np.float32), _expected(files, truth))


def test_library_killed_first_write_is_never_read(tmp_path):
    """A first write killed midway (extract yields one batch then raises), with a stale
    temporary file and a truncated .npy (of exactly the name the write would produce) in
    the folder: no pointer is written; the next ensure computes every row and returns the
    right values, whatever the leftovers held."""
    files, hashes, truth = _library_files(tmp_path, 7)
    # learn the name a complete write of these rows gets, elsewhere
    (tmp_path / "scratch").mkdir()
    SplitCache(tmp_path / "scratch", "train").ensure(files, hashes, _extract(truth))
    final = json.loads((tmp_path / "scratch" / "train.json").read_text())["file"]
    folder = tmp_path / "key"
    folder.mkdir()
    whole = (tmp_path / "scratch" / final).read_bytes()
    (folder / final).write_bytes(whole[: len(whole) // 2])  # truncated, named in no pointer
    (folder / f".{final}.99999.tmp").write_bytes(whole[:200])  # a killed process' temp file
    (folder / "train-0123456789ab.npy").write_bytes(b"\x93NUMPY garbage")

    cache = SplitCache(folder, "train")
    with pytest.raises(RuntimeError, match="killed"):
        cache.ensure(files, hashes, _extract(truth, fail_after=1))
    assert not (folder / "train.json").exists()

    seen = []
    rows = cache.ensure(files, hashes, _extract(truth, seen=seen))
    assert cache.computed == 7 and seen == files
    np.testing.assert_array_equal(np.asarray(rows, np.float32), _expected(files, truth))
    meta = json.loads((folder / "train.json").read_text())
    assert meta["file"] == final and meta["hashes"] == hashes
    np.testing.assert_array_equal(np.load(folder / final).astype(np.float32), _expected(files, truth))


def test_library_killed_update_keeps_the_old_rows(tmp_path):
    """A cached split, then an update (3 images changed) killed midway: the pointer and the
    .npy it names are unchanged and still read back the old rows; the next ensure computes
    exactly the 3 changed rows and returns every row right."""
    files, hashes, truth = _library_files(tmp_path, 8)
    folder = tmp_path / "key"
    folder.mkdir()
    cache = SplitCache(folder, "train")
    cache.ensure(files, hashes, _extract(truth))
    pointer = (folder / "train.json").read_text()
    old_file = json.loads(pointer)["file"]

    changed = [1, 4, 6]
    for i in changed:
        Path(files[i]).write_bytes(f"changed {i}".encode())
        truth[files[i]] = truth[files[i]] + 1
    new_hashes = FileIndex(None).hashes(files)
    assert [i for i in range(8) if new_hashes[i] != hashes[i]] == changed

    with pytest.raises(RuntimeError, match="killed"):
        cache.ensure(files, new_hashes, _extract(truth, fail_after=1))
    assert (folder / "train.json").read_text() == pointer
    old_rows = np.load(folder / old_file).astype(np.float32)
    for i in range(8):
        expected = truth[files[i]] - (1 if i in changed else 0)
        np.testing.assert_array_equal(old_rows[i], expected)

    seen = []
    rows = cache.ensure(files, new_hashes, _extract(truth, seen=seen))
    assert cache.computed == 3 and seen == [files[i] for i in changed]
    np.testing.assert_array_equal(np.asarray(rows, np.float32), _expected(files, truth))
    assert not (folder / old_file).exists()  # the superseded rows are deleted
    assert npy_files(folder, "train") == [json.loads((folder / "train.json").read_text())["file"]]


def test_library_reordered_files_reuse_every_row(tmp_path):
    """The same images in another order: 0 rows computed, extract never asked, and the rows
    come back in the new order (the pointer now lists the hashes in that order)."""
    files, hashes, truth = _library_files(tmp_path, 9)
    folder = tmp_path / "key"
    folder.mkdir()
    SplitCache(folder, "train").ensure(files, hashes, _extract(truth))
    order = np.random.default_rng(3).permutation(9)
    assert (order != np.arange(9)).any()
    files2, hashes2 = [files[i] for i in order], [hashes[i] for i in order]
    cache, seen = SplitCache(folder, "train"), []
    rows = cache.ensure(files2, hashes2, _extract(truth, seen=seen))
    assert cache.computed == 0 and seen == []
    np.testing.assert_array_equal(np.asarray(rows, np.float32), _expected(files2, truth))
    assert json.loads((folder / "train.json").read_text())["hashes"] == hashes2
    assert len(npy_files(folder, "train")) == 1


# --- 4. cached and uncached training agree ---------------------------------------------------

def test_cached_and_uncached_runs_agree(warm, tmp_path):
    """--no-cache reads images every epoch and touches no cache; its head weights and its
    losses equal the cached run's within float16 rounding of the cached rows."""
    cache = tmp_path / "never"
    result, stderr = fit_in_process(config(warm.data, tmp_path / "runs", "plain", cache, cache=False))
    assert result.features_computed == 0
    assert "phase 1: reading images every epoch (--no-cache)" in stderr
    assert "phase 2: reading images every epoch (--no-cache)" in stderr
    assert not cache.exists()
    cached = load_model(warm.runs / "cold" / "model.keras").get_layer("predictions")
    plain = load_model(tmp_path / "runs" / "plain" / "model.keras").get_layer("predictions")
    for a, b, what in zip(cached.get_weights(), plain.get_weights(), ("kernel", "bias")):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-3, err_msg=what)
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        np.testing.assert_allclose(column(warm.runs / "cold", key), column(tmp_path / "runs" / "plain", key),
                                   rtol=0, atol=1e-3, err_msg=key)


# --- 5. the budget, --augment and --cache-views ----------------------------------------------

def test_cache_budget_zero_reads_images_in_phase_2(warm, tmp_path):
    """--cache-budget 0: phase 2's activations do not fit, so phase 2 reads images (and says
    why); phase 1 still caches its features."""
    cache = tmp_path / "cache"
    result = invoke(fit_args(warm.data, tmp_path / "runs", "budget0", freeze=BOUNDARY, epochs=1,
                             fine_tune_epochs=1, batch_size=4, cache_dir=cache, cache_budget="0"))
    assert result.exit_code == 0, (result.output, result.exception)
    assert cache_line(result.stderr, 1) == (0, ROWS)
    assert re.search(r"phase 2: reading images every epoch \(its cache would take [\d.]+ GiB, "
                     r"over --cache-budget 0\)", result.stderr), result.stderr
    assert "phase 2: training on cached" not in result.stderr
    assert [k["boundary"] for k in key_folders(cache).values()] == ["features"]


@pytest.mark.parametrize("budget, cached", [("288K", True), ("287K", False)])
def test_cache_budget_boundary(warm, tmp_path, budget, cached):
    """The phase-2 activations take 32*32*8 values * 2 bytes * 18 images = 288 KiB: a budget
    of exactly that caches them (and phase 1's features come from them, all reused), one KiB
    less does not: then phase 1 computes its features by a pass over the images."""
    cache = copy_cache(warm, tmp_path)
    result, stderr = fit_in_process(config(warm.data, tmp_path / "runs", "b", cache, epochs=1,
                                           cache_budget=budget))
    assert ("phase 2: training on cached activations" in stderr) == cached, stderr
    assert ("over --cache-budget" in stderr) == (not cached), stderr
    assert ("from the cached activations at" in stderr) == cached, stderr
    assert result.features_computed == (0 if cached else ROWS)


def test_augment_without_views_reads_images(warm, tmp_path):
    """--augment flip without --cache-views: both phases read images every epoch (saying
    why), and nothing is cached."""
    cache = tmp_path / "cache"
    result = invoke(fit_args(warm.data, tmp_path / "runs", "aug", freeze=BOUNDARY, epochs=1,
                             fine_tune_epochs=1, batch_size=4, cache_dir=cache, augment="flip"))
    assert result.exit_code == 0, (result.output, result.exception)
    assert "phase 1: reading images every epoch (--augment without --cache-views)" in result.stderr
    assert "phase 2: reading images every epoch (--augment without --cache-views)" in result.stderr
    assert "training on cached" not in result.stderr
    assert key_folders(cache) == {}


def test_two_augmented_views(warm, tmp_path):
    """--augment flip --cache-views 2: phase 1 caches two augmented views of every training
    image (under view 0 and view 1 keys that name the augmentation) and one plain row per
    validation image: 2 * 12 + 6 rows. The views differ for some images (random flips), and
    the same run again computes nothing."""
    cache = tmp_path / "cache"
    cfg = dict(augment=("flip",), cache_views=2, fine_tune_epochs=0)
    result, stderr = fit_in_process(config(warm.data, tmp_path / "runs", "views", cache, **cfg))
    assert result.features_computed == 2 * TRAIN + VAL
    assert cache_line(stderr, 1) == (0, 2 * TRAIN + VAL)
    views = {}
    for folder, key in key_folders(cache).items():
        if key["view"] is None:
            assert "augment" not in key
            assert (folder / "validation.json").exists() and not (folder / "train.json").exists()
        else:
            assert key["augment"] == ["flip"] and key["boundary"] == "features"
            assert not (folder / "validation.json").exists()
            views[key["view"]] = split_rows(folder, "train")
    assert sorted(views) == [0, 1]
    (h0, v0), (h1, v1) = views[0], views[1]
    assert h0 == h1 and v0.shape == v1.shape == (TRAIN, 32)
    differ = np.abs(v0 - v1).max(axis=1) > 0
    assert differ.any(), "the two cached views are identical"
    again, _ = fit_in_process(config(warm.data, tmp_path / "runs", "views2", cache, **cfg))
    assert again.features_computed == 0


def test_augmented_views_at_the_freeze_point(warm, tmp_path):
    """--augment flip --cache-views 2 with fine-tuning: phase 2 caches two augmented views of
    the activations at the freeze point (plus plain validation rows) and trains the top on
    them; the same run again computes nothing."""
    cache = tmp_path / "cache"
    cfg = dict(augment=("flip",), cache_views=2, fine_tune_epochs=2)
    result, stderr = fit_in_process(config(warm.data, tmp_path / "runs", "views", cache, **cfg))
    assert cache_line(stderr, 2) == (0, 2 * TRAIN + VAL)
    boundary = {key["view"]: folder for folder, key in key_folders(cache).items()
                if key["boundary"] == BOUNDARY_KEY}
    assert sorted(boundary, key=str) == [0, 1, None]
    (h0, v0), (h1, v1) = split_rows(boundary[0], "train"), split_rows(boundary[1], "train")
    assert h0 == h1 and v0.shape == v1.shape == (TRAIN, 32, 32, 8)
    assert (np.abs(v0 - v1).reshape(TRAIN, -1).max(axis=1) > 0).any()
    assert len(column(tmp_path / "runs" / "views", "val_loss")) == 4
    again, _ = fit_in_process(config(warm.data, tmp_path / "runs", "views2", cache, **cfg))
    assert again.features_computed == 0


def test_one_augmented_view_is_augmented(warm, tmp_path):
    """--augment flip --cache-views 1 (`--cache-views` help: "cache K augmented views per
    image"): the one cached training view is augmented, so it is not the plain rows of a
    run without --augment: the 12 training rows are computed (validation rows are reused)
    under a key that names the augmentation. (Both runs without fine-tuning: the warm run's
    features came from its cached activations, under another key.)"""
    cache = tmp_path / "cache"
    plain, _ = fit_in_process(config(warm.data, tmp_path / "runs", "plain", cache, fine_tune_epochs=0))
    assert plain.features_computed == ROWS
    result, stderr = fit_in_process(config(warm.data, tmp_path / "runs", "view1", cache,
                                           augment=("flip",), cache_views=1, fine_tune_epochs=0))
    assert any(k.get("augment") == ["flip"] for k in key_folders(cache).values()), \
        f"no key names the augmentation: --augment flip was dropped\n{stderr}"
    assert result.features_computed == TRAIN


# --- 7. resume ------------------------------------------------------------------------------

def test_resume_reuses_the_cache(warm, tmp_path):
    """`fit --resume RUN --epochs 2` after a 1-epoch run: phase 1 trains on the rows the first
    run cached (the run's --cache-dir is kept), 0 computed."""
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    first = invoke(fit_args(warm.data, runs, "res", freeze=BOUNDARY, epochs=1, fine_tune_epochs=0,
                            batch_size=4, cache_dir=cache))
    assert first.exit_code == 0, (first.output, first.exception)
    assert cache_line(first.stderr, 1) == (0, ROWS)
    resumed = invoke(["fit", "--resume", str(runs / "res"), "--epochs", "2"])
    assert resumed.exit_code == 0, (resumed.output, resumed.exception)
    assert "phase 1, 1 epochs and 0 steps done" in resumed.stderr
    assert cache_line(resumed.stderr, 1) == (ROWS, 0)
    assert f"{ROWS} rows reused, 0 computed, in {cache}" in resumed.stderr
    assert [row["epoch"] for row in read_history(runs / "res")] == [0, 1]


# --- init-from and the key -------------------------------------------------------------------

def test_init_from_a_checkpoint_prefix_caches(warm, tmp_path):
    """--init-from RUN/ckpt/ckpt-N (a checkpoint prefix, which `--init-from` accepts: no file
    has that exact name) starts a cached run like --init-from RUN does."""
    prefix = sorted((warm.runs / "cold" / "ckpt").glob("ckpt-*.index"))[-1].with_suffix("")
    assert not prefix.exists() and Path(f"{prefix}.index").is_file()
    result = invoke(fit_args(warm.data, tmp_path / "runs", "init", freeze=BOUNDARY, epochs=1,
                             fine_tune_epochs=0, batch_size=4, cache_dir=tmp_path / "cache",
                             init_from=prefix))
    assert result.exit_code == 0, (result.output, repr(result.exception))
    assert f"initialised from {prefix}" in result.stderr
    assert cache_line(result.stderr, 1) == (0, ROWS)


# --- an image that passes the scan but does not decode ----------------------------------------

def test_undecodable_image_does_not_shift_cached_rows(warm, tmp_path):
    """A truncated JPEG passes the data scan (PIL parses its header) but TensorFlow cannot
    decode it, and the input pipeline drops it (`ignore_errors`). The cache must not pair
    the rows that follow with the wrong images: either the run stops naming the file, or
    every readable image's cached row is its own (as in a clean run) and none is left
    zero-filled. Those rows are kept under the images' hashes and reused by later runs."""
    from retrain.errors import RetrainError
    from PIL import Image

    data = _copy_data(warm, tmp_path)
    good = tmp_path / "whole.jpg"
    Image.fromarray(noisy_colour(COLOURS["cyan"], np.random.default_rng(5))).save(good, quality=95)
    whole = good.read_bytes()
    bad = data / "train" / "cyan" / "cyan_000x.jpg"  # sorts second among the training files
    bad.write_bytes(whole[: int(len(whole) * 0.8)])
    cache = tmp_path / "cache"
    try:
        fit_in_process(config(data, tmp_path / "runs", "bad", cache, epochs=1, fine_tune_epochs=0))
    except RetrainError as err:  # refusing the file is fine
        assert "cyan_000x.jpg" in str(err)
        return
    clean = rows_by_hash(folder_for(warm.cache, boundary="features"), "train")
    cached = rows_by_hash(folder_for(cache, boundary="features"), "train")
    hashes = list(clean)
    table = np.stack([clean[h] for h in hashes])
    # each image's cached row must be nearer its own clean row than any other image's
    zero = [h for h in hashes if not cached[h].any()]
    wrong = [h for h in hashes if h not in zero
             and hashes[int(np.abs(table - cached[h]).sum(axis=1).argmin())] != h]
    assert (wrong, zero) == ([], []), (f"{len(wrong)} of {len(clean)} readable images have another "
                                       f"image's row; {len(zero)} have a zero-filled row")


# --- --feature-shift: a random crop of cached activations ------------------------------------

def test_shift_rows_moves_each_map_within_the_mirrored_border():
    """Each map comes out as its own mirrored-border copy moved by -1, 0 or +1 cells in each
    direction, chosen per row; 0 cells changes nothing; the same seed, the same shifts."""
    import tensorflow as tf

    from retrain.bottleneck import shift_rows

    rows = np.random.default_rng(0).normal(size=(64, 5, 6, 3)).astype(np.float32)
    seed = tf.constant([3, 4], tf.int64)
    out = shift_rows(tf.constant(rows), 1, seed).numpy()
    padded = np.pad(rows, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="symmetric")
    moves = []
    for row, got in zip(padded, out):
        found = [(dy, dx) for dy in range(3) for dx in range(3)
                 if np.array_equal(row[dy:dy + 5, dx:dx + 6], got)]
        assert found, "a shifted map is not a crop of its mirrored copy"
        moves.append(found[0])
    assert len(set(moves)) == 9  # 64 rows: every move occurs
    np.testing.assert_array_equal(out, shift_rows(tf.constant(rows), 1, seed).numpy())
    assert not np.array_equal(out, shift_rows(tf.constant(rows), 1, tf.constant([3, 5], tf.int64)).numpy())


def test_shifted_batches_resume_mid_epoch_exactly():
    """bottleneck.train_dataset with a shift: seeded by (seed, epoch, batch), so skipping the
    first batches (a mid-epoch resume) gives the very rows the whole epoch gave; pooled
    features (one dimension) are never shifted."""
    from retrain.bottleneck import CachedSplit, train_dataset

    maps = CachedSplit([np.random.default_rng(1).normal(size=(10, 4, 4, 2)).astype(np.float16)],
                       np.arange(10) % 2, 2)
    whole = [x for x, _ in train_dataset(maps, 4, 0, 0, 2, 0, shift=1).as_numpy_iterator()]
    tail = [x for x, _ in train_dataset(maps, 4, 0, 1, 2, 1, shift=1).as_numpy_iterator()]
    plain = [x for x, _ in train_dataset(maps, 4, 0, 0, 2, 0).as_numpy_iterator()]
    assert len(whole) == 6 and len(tail) == 2
    for a, b in zip(whole[4:], tail):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(whole, plain))
    features = CachedSplit([np.ones((10, 8), np.float16)], np.arange(10) % 2, 2)
    for x, _ in train_dataset(features, 4, 0, 0, 1, 0, shift=1).as_numpy_iterator():
        np.testing.assert_array_equal(x, np.ones_like(x))


def test_cached_rows_come_in_the_files_order_of_every_epoch(tmp_path):
    """Row i is file i: bottleneck.train_dataset serves each epoch's rows in the order
    data.train_dataset gives the files (the same seed per epoch over the same count), with
    the short last batch, from the skipped batch on in the first epoch, labels alongside."""
    from retrain.bottleneck import CachedSplit, train_dataset
    from retrain.data import Split
    from retrain.data import train_dataset as files_dataset

    n = 11
    files = [str(write_png(tmp_path / f"{i:02d}.png", np.full((4, 4, 3), 10 * i, np.uint8))) for i in range(n)]
    split = Split(tuple(files), np.arange(n) % 3)
    args = (4, 3, 2, 5, 1)  # batch 4, seed 3, epochs [2, 5), the first batch of epoch 2 skipped
    by_files = [(x[:, 0, 0, 0] / 10).round().astype(int).tolist()
                for x, _ in files_dataset(split, 3, 4, *args).as_numpy_iterator()]
    cached = CachedSplit([np.arange(n, dtype=np.float16)[:, None]], split.labels, 3)
    by_rows = [(x[:, 0].astype(int).tolist(), y.argmax(1).tolist())
               for x, y in train_dataset(cached, *args).as_numpy_iterator()]
    assert [rows for rows, _ in by_rows] == by_files
    assert [len(b) for b in by_files] == [4, 3] + [4, 4, 3] * 2
    assert all(labels == [r % 3 for r in rows] for rows, labels in by_rows)
    assert by_files[2:5] != by_files[5:8]  # each epoch its own order


def test_feature_shift_trains_phase_2_only_and_resumes_exactly(warm, tmp_path):
    """--feature-shift 1 on the cached run: phase 1 (pooled features) trains exactly as
    without it, phase 2 differently; and a run stopped after one fine-tuning epoch, then
    resumed in a new fit call, ends with the uninterrupted run's history and weights."""
    cache = copy_cache(warm, tmp_path)
    runs = tmp_path / "runs"
    fit_in_process(config(warm.data, runs, "shift", cache, fine_tune_epochs=2, feature_shift=1))
    fit_in_process(config(warm.data, runs, "plain", cache, fine_tune_epochs=2))
    for key in ("loss", "val_loss"):
        np.testing.assert_array_equal(column(runs / "shift", key)[:2], column(runs / "plain", key)[:2])
        assert not np.allclose(column(runs / "shift", key)[2:], column(runs / "plain", key)[2:])
    fit_in_process(config(warm.data, runs, "stopped", cache, fine_tune_epochs=1, feature_shift=1))
    result, stderr = fit_in_process(config(warm.data, runs, "stopped", cache, fine_tune_epochs=2,
                                           feature_shift=1), resume=True)
    assert result.features_computed == 0 and "phase 2, 3 epochs" in stderr
    for key in ("loss", "val_loss", "accuracy"):
        np.testing.assert_allclose(column(runs / "stopped", key), column(runs / "shift", key),
                                   rtol=0, atol=1e-6, err_msg=key)
    for a, b in zip(model_weights(runs / "stopped" / "model.keras"), model_weights(runs / "shift" / "model.keras")):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_extraction_drops_a_file_tensorflow_cannot_decode(tmp_path):
    """The fast pipeline (no ignore_errors) stops at a file TensorFlow cannot decode; the
    extraction then goes on through the tolerant one: every other file's row comes out,
    under its own position, as a run over the good files alone computes it."""
    import keras

    from retrain.bottleneck import extract_fn

    rng = np.random.default_rng(3)
    files = [str(write_png(tmp_path / f"{i}.png", noisy_colour(rgb, rng))) for i, rgb in
             enumerate([COLOURS["cyan"], COLOURS["magenta"], COLOURS["yellow"]] * 2)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all" * 10)
    files.insert(3, str(bad))  # in the second batch of 2
    inputs = keras.Input((32, 32, 3))
    extractor = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    run = extract_fn(extractor, 32, 2, training=False)
    rows, positions = (np.concatenate(part) for part in zip(*run(files)))
    assert positions.tolist() == [0, 1, 2, 4, 5, 6]
    good = [f for f in files if f != str(bad)]
    expected = np.concatenate([r for r, _ in run(good)])
    np.testing.assert_allclose(rows, expected, rtol=1e-6)


def test_extraction_of_a_file_of_another_shape_goes_on_image_by_image(tmp_path):
    """Given the shape all files should share, the extraction resizes whole batches; a file
    of another shape makes it go on image by image from that batch: every row comes out,
    each as the image-by-image pipeline computes it, the odd file resized, not dropped."""
    import keras

    from retrain.bottleneck import extract_fn

    rng = np.random.default_rng(4)
    files = [str(write_png(tmp_path / f"{i}.png", noisy_colour(rgb, rng))) for i, rgb in
             enumerate([COLOURS["cyan"], COLOURS["magenta"], COLOURS["yellow"]] * 2)]
    files[3] = str(write_png(tmp_path / "wide.png", rng.integers(0, 256, (32, 48, 3), np.uint8)))
    inputs = keras.Input((16, 16, 3))
    extractor = keras.Model(inputs, keras.layers.Flatten()(inputs))
    run = extract_fn(extractor, 16, 2, training=False)
    rows, positions = (np.concatenate(part) for part in zip(*run(files, (32, 32))))
    assert positions.tolist() == list(range(6))
    np.testing.assert_array_equal(rows, np.concatenate([r for r, _ in run(files)]))
    np.testing.assert_array_equal(rows[:2], np.concatenate([r for r, _ in run(files[:2], (32, 32))]))


def test_cache_split_passes_the_split_shape_to_the_extraction(tmp_path):
    """fit's cache gives the extraction the shape load_folders found (so it resizes whole
    batches); rows land under their files."""
    from retrain.bottleneck import cache_split
    from retrain.data import Split

    seen = []

    def extract(files, shape=None):
        seen.append(shape)
        yield np.arange(len(files), dtype=np.float32)[:, None], np.arange(len(files))

    split = Split(("a.png", "b.png"), np.array([0, 1]), (32, 32))
    cached, computed = cache_split(tmp_path, {"k": 1}, "train", split, ["h1", "h2"], 2, extract)
    assert seen == [(32, 32)] and computed == 2
    assert np.asarray(cached.views[0])[:, 0].tolist() == [0, 1]
