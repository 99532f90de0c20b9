"""serve(config): take the home, bind the port, run the app on uvicorn until stopped.

One server per home (HOME/serve.lock). Jobs run in processes of their own sessions, so
stopping the server (Ctrl-C, kill -9) leaves them training; the next server on the same home
adopts them (jobs.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from pathlib import Path

from retrain.config import ServeConfig
from retrain.errors import ConfigError
from retrain.files import remove_stale, running, try_lock
from retrain.serve.home import Home, default_home

log = logging.getLogger("retrain.serve")


def serve(config: ServeConfig) -> None:
    import uvicorn

    from retrain.serve.app import Service, create_app
    from retrain.serve.batching import Predictor
    from retrain.serve.catalog import Catalog
    from retrain.serve.jobs import Scheduler
    from retrain.serve.store import Store

    home = Home(Path(config.home) if config.home else default_home())
    for root in config.data_roots:
        if not Path(root).is_dir():
            raise ConfigError("--data-root must be a folder", root, "pass an existing folder of datasets")
    try:
        home.root.mkdir(parents=True, exist_ok=True)
        home.make()
    except OSError as err:
        raise ConfigError("--home cannot be made", f"{home.root}: {err.strerror}", "pass a folder you can write") from None
    lock = try_lock(home.lock)
    if lock is None:
        raise ConfigError("another retrain serve is using this home", f"{home.root}, process "
                          f"{home.lock.read_text().strip() or '?'}", "stop it, or pass another --home")
    _tidy(home)
    sock = _bind(config.host, config.port)
    store = Store(home.db)
    service = Service(config, home, store, Scheduler(home, store, config.max_jobs, config.job_retries),
                      Predictor(config.batch_size, config.batch_wait_ms, config.loaded_models),
                      Catalog(home.root / "backbones.json"))
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"retrain serve: listening on http://{shown}:{port} (home {home.root})", flush=True)
    uvicorn_config = uvicorn.Config(create_app(service), log_level="warning", access_log=False,
                                    timeout_graceful_shutdown=5)
    uvicorn.Server(uvicorn_config).run(sockets=[sock])
    os.close(lock)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError("cannot listen there", f"{host}:{port}: {err.strerror}",
                          "pass another --port (0: any free one) or --host") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _tidy(home: Home) -> None:
    """Remove what a server or an upload killed mid-way left: partial uploads (only this
    server writes them, and it holds the home), and unpack folders of dead processes."""
    for part in home.uploads.glob("*.part"):
        part.unlink(missing_ok=True)
    for folder in home.datasets.glob(".*.tmp"):
        pid = folder.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    for models in home.models.iterdir():
        remove_stale(models)
        for folder in models.glob(".*.tmp"):
            pid = folder.name.rsplit(".", 2)[-2]
            if folder.is_dir() and pid.isdigit() and not running(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)
