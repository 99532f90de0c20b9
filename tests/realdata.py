"""Where the tests find real files (ImageNet weights, Quick, Draw! bitmaps, the CIFAR-10 JPEGs).

Search order, first hit wins:
1. $RETRAIN_TEST_DATA (or the older $RETRAIN_SHARED_DATA), a folder laid out like ../shared/data;
2. ../shared/data beside the repository;
3. Keras' cache ($KERAS_HOME or ~/.keras, under the file's cache folder, by its exact file name);
4. a download of the official file through `keras.utils.get_file` into that cache, tried only
   when nothing local has the file and the file's host answers within a few seconds.
When none works the test skips with one line saying what it needed and where it looked, or
fails when $RETRAIN_REQUIRE_TEST_DATA=1 (.ci/run sets it: CI always has ../shared).

Tests reach this through the `real_file` fixture in conftest.py; nothing here runs at import.
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BESIDE_REPO = REPO.parent / "shared" / "data"
ONLINE_TIMEOUT = 3.0  # seconds for the one probe a host gets per session

KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications"
QUICKDRAW = "https://storage.googleapis.com/quickdraw_dataset/full/numpy_bitmap"
MOBILENET_V2_035 = "weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
SQUEEZENET = "weights/squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5"


@dataclass(frozen=True)
class RealFile:
    """One real file: its path inside the data folder, where Keras caches it, where it comes from."""

    path: str  # relative to a folder laid out like ../shared/data
    cache_subdir: str | None  # under Keras' home; None: Keras never holds this file
    url: str | None = None  # the official copy; None: no public copy of these exact bytes
    md5: str | None = None

    @property
    def name(self) -> str:
        return Path(self.path).name


def _weights(name: str, url: str, md5: str | None = None) -> RealFile:
    return RealFile(f"weights/{name}", "models", url, md5)


def _quickdraw(cls: str) -> RealFile:
    # Google's full file holds every drawing of the class; ../shared holds its first 3,000 rows.
    return RealFile(f"quickdraw/full_numpy_bitmap_{cls}.npy", "datasets/quickdraw", f"{QUICKDRAW}/{cls}.npy")


KNOWN = {f.path: f for f in [
    _weights("mobilenet_2_5_224_tf_no_top.h5", f"{KERAS_APPS}/mobilenet/mobilenet_2_5_224_tf_no_top.h5"),
    *(_weights(f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_224_no_top.h5",
               f"{KERAS_APPS}/mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_224_no_top.h5")
      for alpha in ("0.35", "0.5")),
    _weights("squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5",
             "https://github.com/rcmalli/keras-squeezenet/releases/download/v1.0/"
             "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5", md5="80b66c92d79d4310e07fb60a297bf0d1"),
    *(_quickdraw(cls) for cls in ("apple", "bicycle", "cat", "diamond", "eye", "fish")),
    RealFile("cifar10-jpeg.tar.gz", None),  # a JPEG re-encode made for ../shared: nowhere to download it
]}


class MissingRealFile(Exception):
    """No place had the file; the message is the one line the test skips (or fails) with."""


def data_folders() -> list[Path]:
    """The folders laid out like ../shared/data, in the order they are searched."""
    named = os.environ.get("RETRAIN_TEST_DATA") or os.environ.get("RETRAIN_SHARED_DATA")
    return ([Path(named)] if named else []) + [BESIDE_REPO]


def keras_home() -> Path:
    """Keras' own rule (keras.src.backend.config): $KERAS_HOME, else ~/.keras, else /tmp/.keras."""
    if "KERAS_HOME" in os.environ:
        return Path(os.environ["KERAS_HOME"])
    home = Path.home()
    return (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"


def required() -> bool:
    """True where a missing file is a failure, not a skip ($RETRAIN_REQUIRE_TEST_DATA=1, set by .ci/run)."""
    return os.environ.get("RETRAIN_REQUIRE_TEST_DATA", "") not in ("", "0")


class RealFiles:
    """path -> a local file, found or downloaded once per session."""

    def __init__(self):
        self._found: dict[str, Path] = {}
        self._online: dict[str, bool] = {}  # host -> answered the probe

    def __call__(self, path: str) -> Path:
        if path not in self._found:
            self._found[path] = self._find(KNOWN.get(path) or RealFile(path, None))
        return self._found[path]

    def _find(self, real: RealFile) -> Path:
        places = [folder / real.path for folder in data_folders()]
        if real.cache_subdir:
            places.append(keras_home() / real.cache_subdir / real.name)
        for place in places:
            if place.is_file():
                return place
        looked = ", ".join(str(p) for p in places)
        if real.url is None:
            raise MissingRealFile(f"needs {real.name}: set RETRAIN_TEST_DATA to a folder laid out like "
                                  f"../shared/data, or put ../shared/data beside the repository "
                                  f"(looked in {looked}; it has no public download)")
        host = urllib.parse.urlsplit(real.url).netloc
        if host not in self._online:
            self._online[host] = _answers(real.url)
        if self._online[host]:
            return _download(real, looked)
        raise MissingRealFile(f"needs {real.name}: set RETRAIN_TEST_DATA, or put ../shared/data beside the "
                              f"repository, or put it in Keras' cache (looked in {looked}), or go online to "
                              f"download {real.url}")


def _answers(url: str) -> bool:
    """Whether the file's host answers a HEAD request within ONLINE_TIMEOUT (proxies honoured)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=ONLINE_TIMEOUT) as r:
            return r.status < 400
    except (OSError, ValueError):  # URLError, HTTPError, timeouts and refused connections are OSErrors
        return False


def _download(real: RealFile, looked: str) -> Path:
    from keras.utils import get_file

    try:
        return Path(get_file(real.name, real.url, file_hash=real.md5, cache_subdir=real.cache_subdir,
                             cache_dir=str(keras_home())))
    # get_file turns every network error into a bare Exception carrying the URL and the reason
    except Exception as err:  # noqa: BLE001
        # Nothing was in the cache before (or we would not download): what is there now is a
        # file that failed its checksum, which the next search must not find.
        (keras_home() / real.cache_subdir / real.name).unlink(missing_ok=True)
        raise MissingRealFile(f"needs {real.name}: not in {looked}, and downloading {real.url} failed: "
                              f"{' '.join(str(err).split())}") from None
