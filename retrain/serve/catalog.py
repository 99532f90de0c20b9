"""The backbone catalog the web page offers: each registry backbone's size (parameters, without
the head) and speed (images per second through it at its native size on this server's CPU).

Sizes and speeds are measured, not quoted: `python -m retrain.serve.catalog HOME/backbones.json`
builds every backbone once (no weights needed for either figure) in a process of its own at the
lowest priority, so a job training beside it barely notices, and writes the table atomically.
The server starts that process on the first request and answers with what it has meanwhile
(the table is rewritten after each backbone).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from retrain import __version__
from retrain.backbones import REGISTRY
from retrain.files import atomic_write
from retrain.machine import cpu_model

BATCH = 8


class Catalog:
    """The table, measured once per home and retrain version."""

    def __init__(self, path: Path):
        self.path, self._proc = path, None

    def table(self) -> dict:
        measured = self._measured()
        if not (measured or {}).get("complete") and self._proc is None:
            self._proc = subprocess.Popen([sys.executable, "-m", "retrain.serve.catalog", str(self.path)],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True)
        figures = (measured or {}).get("backbones", {})
        rows = [{"name": s.name, "native_size": s.native_size, "min_size": s.min_size,
                 "channels": 1 if s.channels_follow_data else 3, "alphas": list(s.alphas),
                 "freeze_points": list(s.freeze_points), "imagenet": not (s.from_scratch or s.builder == "tiny_cnn"),
                 **figures.get(s.name, {"params": None, "images_per_s": None})} for s in REGISTRY.values()]
        running = self._proc is not None and self._proc.poll() is None
        return {"backbones": rows, "cpu": (measured or {}).get("cpu", cpu_model()),
                "measuring": not (measured or {}).get("complete") and running}

    def stop(self) -> None:
        """End a measurement still running (the server is stopping; the next one starts over)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def _measured(self) -> dict | None:
        try:
            table = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return table if table.get("version") == __version__ else None


def measure(path: Path) -> None:
    os.nice(19)
    import numpy as np

    from retrain.model import build_backbone

    figures = {}
    for spec in REGISTRY.values():
        channels = 1 if spec.channels_follow_data else 3
        model = build_backbone(spec, spec.native_size, None, "none", channels)
        batch = np.random.default_rng(0).uniform(0, 255, (BATCH, spec.native_size, spec.native_size, channels))
        model.predict_on_batch(batch)  # the first call traces
        start, calls = time.perf_counter(), 0
        while calls < 3 or time.perf_counter() - start < 0.5:
            model.predict_on_batch(batch)
            calls += 1
        figures[spec.name] = {"params": int(model.count_params()),
                              "images_per_s": round(calls * BATCH / (time.perf_counter() - start), 1)}
        complete = len(figures) == len(REGISTRY)  # written after each one: the page fills in as they come
        atomic_write(path, json.dumps({"version": __version__, "cpu": cpu_model(), "measured": time.time(),
                                       "complete": complete, "backbones": figures}, indent=2))


if __name__ == "__main__":
    measure(Path(sys.argv[1]))
