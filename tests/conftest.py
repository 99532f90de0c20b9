"""Shared fixtures: small official-format CIFAR archives, a loopback HTTP server, and the one
way to the real files (ImageNet weights, Quick, Draw! bitmaps) that some tests need."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import realdata
from cifar_fixtures import CifarArchive, LoopbackServer, build_cifar10, build_cifar100


@pytest.fixture(scope="session")
def real_file():
    """real_file("weights/<Keras file name>") -> the local path of a file laid out as in
    ../shared/data; searched as tests/realdata.py says, the test skips with one line when no
    place has it (fails instead when RETRAIN_REQUIRE_TEST_DATA=1, as in CI)."""
    files = realdata.RealFiles()

    def get(path: str) -> Path:
        try:
            return files(path)
        except realdata.MissingRealFile as missing:
            reason = str(missing)
        # outside the except: the report is the one line, not a chained traceback
        if realdata.required():
            pytest.fail(f"RETRAIN_REQUIRE_TEST_DATA=1 and the test {reason}", pytrace=False)
        pytest.skip(reason)

    return get


@pytest.fixture
def mobilenet_v2_035(real_file) -> Path:
    """Keras' MobileNetV2 alpha 0.35 no-top ImageNet weights file."""
    return real_file(realdata.MOBILENET_V2_035)


@pytest.fixture(scope="session")
def cifar10(tmp_path_factory) -> CifarArchive:
    """CIFAR-10: 6 train images per class over data_batch_1..5, 2 test images per class."""
    return build_cifar10(tmp_path_factory.mktemp("cifar10") / "cifar-10-python.tar.gz")


@pytest.fixture(scope="session")
def cifar100(tmp_path_factory) -> CifarArchive:
    """CIFAR-100 with 5 fine classes grouped in 2 coarse ones."""
    return build_cifar100(tmp_path_factory.mktemp("cifar100") / "cifar-100-python.tar.gz")


@pytest.fixture
def make_cifar_archive(tmp_path_factory):
    """Build a CIFAR-10 archive with the given options: make_cifar_archive(**build_cifar10 kwargs)."""

    def make(name: str = "cifar-10-python.tar.gz", **kwargs) -> CifarArchive:
        return build_cifar10(tmp_path_factory.mktemp("archive") / name, **kwargs)

    return make


@pytest.fixture
def http_server(tmp_path):
    """A loopback HTTP server serving `<tmp>/www`; shut down at teardown."""
    www = tmp_path / "www"
    www.mkdir()
    server = LoopbackServer(www)
    server.thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        server.thread.join(timeout=5)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()



@pytest.fixture(scope="session", autouse=True)
def _cache_home(tmp_path_factory):
    """Every fit in the tests caches under a temporary home, never in the user's ~/.cache."""
    import os

    os.environ["RETRAIN_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache-home"))
