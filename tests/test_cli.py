"""The command line stays light: help and the TensorFlow-free modules never import TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer.main

from retrain.cli import app

COMMANDS = sorted(typer.main.get_command(app).commands)  # every command registered right now


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_commands_are_registered():
    """The CLI registers its commands (and the loop below covers every one of them)."""
    assert {"prepare-cifar", "prepare-quickdraw", "fit", "backbones", "evaluate", "predict", "export",
            "plot", "runs", "check"} <= set(COMMANDS)


@pytest.mark.parametrize("command", [None, *COMMANDS], ids=["retrain", *COMMANDS])
def test_help_does_not_import_tensorflow(command):
    """`retrain [command] --help` exits 0 without importing TensorFlow."""
    args = ([command] if command else []) + ["--help"]
    done = python("import sys; from typer.testing import CliRunner; from retrain.cli import app; "
                  f"r = CliRunner().invoke(app, {args!r}); "
                  "assert r.exit_code == 0, r.output; assert 'Usage' in r.output, r.output; "
                  "print('tensorflow' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_python_dash_m_retrain_help():
    """`python -m retrain --help` exits 0 and lists prepare-cifar."""
    done = subprocess.run([sys.executable, "-m", "retrain", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "prepare-cifar" in done.stdout


@pytest.mark.parametrize("module", ["retrain.config", "retrain.errors", "retrain.prepare",
                                    "retrain.quickdraw", "retrain.download", "retrain.progress",
                                    "retrain.check", "retrain.runs", "retrain.plots", "retrain.evaluation",
                                    "retrain.prediction", "retrain.exports", "retrain.cache", "retrain.cachehome",
                                    "retrain.diskspace"])
def test_module_does_not_import_tensorflow(module):
    """Config, errors, the prepare modules and the after-fit commands' modules load without
    TensorFlow (the last three import it where they run a model)."""
    done = python(f"import sys, {module}; print('tensorflow' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"

