"""`retrain launch`: N local worker processes running one `fit` under a generated TF_CONFIG.

For trying multi-worker training on one machine, and for tests: each worker gets a free
loopback port and `TF_CONFIG = {"cluster": {"worker": [...]}, "task": {"type": "worker",
"index": i}}`, as a cluster launcher (Kubeflow's TFJob) would set it. Worker 0, the chief,
prints to this terminal; the others write to files in the log folder. When a worker fails
the others are stopped and the command says how to resume. No TensorFlow is imported here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from retrain.config import FitConfig, LaunchConfig, default_run_name
from retrain.errors import ConfigError
from retrain.progress import say

POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 10  # after SIGTERM, before SIGKILL


class _Terminated(Exception):
    """SIGTERM reached the launcher: stop the workers as for Ctrl-C."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def launch(config: LaunchConfig, debug: bool = False) -> int:
    """Start the workers, wait for them; -> the exit code (the first failing worker's)."""
    fit_args, run = _fit_command(config.command)
    ports = list(range(config.port_base, config.port_base + config.workers)) if config.port_base \
        else free_ports(config.workers)
    cluster = [f"127.0.0.1:{port}" for port in ports]
    logs = Path(config.log_dir) if config.log_dir else Path(tempfile.gettempdir()) / f"retrain-launch-{run.name}"
    logs.mkdir(parents=True, exist_ok=True)
    resume_hint = f"retrain launch --workers {config.workers} -- fit --resume {run}"
    say(f"launch: {config.workers} worker(s) on {', '.join(cluster)}; run {run}")
    procs, outputs, scratch = [], [], []
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        for index in range(config.workers):
            # Each worker's temporary folders go in a folder of ours, removed however it ends.
            tmp = Path(tempfile.mkdtemp(prefix=f"worker{index}-tmp-", dir=logs))
            scratch.append(tmp)
            env = dict(os.environ, TMPDIR=str(tmp), PYTHONUNBUFFERED="1",
                       TF_CONFIG=json.dumps({"cluster": {"worker": cluster},
                                             "task": {"type": "worker", "index": index}}))
            out = None
            if index > 0:
                out = open(logs / f"worker-{index}.log", "ab")
                outputs.append(out)
            argv = [sys.executable, "-m", "retrain", *(["--debug"] if debug else []), *fit_args]
            procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT if out else None))
            say(f"launch: worker {index} (pid {procs[-1].pid}) " +
                (f"writes to {out.name}" if out else "is the chief; its output follows"))
        failed = _wait(procs)
    except (KeyboardInterrupt, _Terminated) as stop:
        _stop(procs)
        say(f"interrupted; the workers were stopped; resume with: {resume_hint}")
        return 130 if isinstance(stop, KeyboardInterrupt) else 143
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(procs)
        for out in outputs:
            out.close()
        for tmp in scratch:
            shutil.rmtree(tmp, ignore_errors=True)
    if failed is None:
        return 0
    index, code = failed
    where = "output above" if index == 0 else f"output in {logs}/worker-{index}.log"
    what = f"exit code {code}" if code > 0 else f"killed by signal {-code}"
    if (run / "config.json").is_file():
        say(f"error: worker {index} of {config.workers} failed ({what}; {where}); "
            f"the others were stopped; resume with: {resume_hint}")
    else:
        say(f"error: worker {index} of {config.workers} failed ({what}; {where}) before the run "
            "started; the others were stopped")
    return code if code > 0 else 128 - code


def _wait(procs: list[subprocess.Popen]) -> tuple[int, int] | None:
    """Wait for every worker; at the first failure stop the rest. -> (index, code) or None."""
    while True:
        codes = [p.poll() for p in procs]
        for index, code in enumerate(codes):
            if code not in (None, 0):
                _stop(procs)
                return index, code
        if all(code == 0 for code in codes):
            return None
        time.sleep(POLL_SECONDS)


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM the workers still running; SIGKILL those that outlast the grace period (one
    blocked in a collective op with a dead peer may not answer)."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for p in running:
        try:
            p.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1 (held open together, so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _fit_command(command: tuple[str, ...]) -> tuple[list[str], Path]:
    """The workers' `fit` arguments (with --distribute multi-worker, and a --name so that every
    worker and the resume hint agree on the run) and the run folder."""
    args = list(command)
    flags = _flag_values(args[1:])
    distribute = flags.get("--distribute", "multi-worker").lower()
    if distribute != "multi-worker":
        raise ConfigError("launch runs fit with --distribute multi-worker", f"--distribute {distribute}",
                          "drop --distribute, or run `retrain fit` directly")
    if "--distribute" not in flags:
        args += ["--distribute", "multi-worker"]
    if "--resume" in flags:
        return args, Path(flags["--resume"])
    name = flags.get("--name")
    if name is None:
        name = default_run_name(flags.get("--backbone", FitConfig.backbone))
        args += ["--name", name]
    return args, Path(flags.get("--runs-dir", FitConfig.runs_dir)) / name


def _flag_values(args: list[str]) -> dict[str, str]:
    """{--flag: value} for `--flag value` and `--flag=value` (the last one given wins)."""
    values = {}
    for i, arg in enumerate(args):
        if arg.startswith("--") and "=" in arg:
            flag, value = arg.split("=", 1)
            values[flag] = value
        elif arg.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            values[arg] = args[i + 1]
    return values
