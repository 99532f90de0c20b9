"""The process that runs one job: `python -m retrain.serve.worker HOME/jobs/<id>`.

The server spawns it (a fresh interpreter: TensorFlow is not fork-safe, and repeated fits in
one process leak memory), never waits on it to answer a request, and may die and come back
while it trains. The job's story, top to bottom:
1. hold the job's lock (.lock) for the process's life: a server that restarts tells a live
   job from a dead one by it, and a second process for the same job stops at once (exit 3);
2. `fit`: a new run in run/, or `fit --resume` when run/ exists (a job cancelled, killed,
   or whose server went away), so a job cut off anywhere continues from its checkpoint;
3. evaluate on the held-out split (test/ when the data has one, else validation);
4. export the SavedModel and publish it as the model's next version (once per job);
5. say how it ended in events.jsonl: succeeded (with the version), failed (with the error),
   or interrupted (SIGTERM: a cancel, or the machine shutting down).
Progress goes to events.jsonl as it happens, at most a few lines a second.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from retrain.errors import RetrainError
from retrain.files import try_lock
from retrain.serve import events
from retrain.serve.home import JobFolder

ALREADY_RUNNING = 3  # exit code: another process holds this job
PROGRESS_EVERY_S = 0.5


def main(argv: list[str]) -> int:
    job = JobFolder(Path(argv[0]))
    lock = try_lock(job.lock, wait_s=2.0)  # a server testing the lock holds it for an instant
    if lock is None:
        print(f"another process is running the job in {job.path}; this one stops", file=sys.stderr)
        return ALREADY_RUNNING
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    settings = json.loads(job.settings.read_text())
    events.append(job.events, "started", pid=os.getpid())
    try:
        version, metrics = run_job(job, settings)
    except KeyboardInterrupt:
        events.append(job.events, "interrupted")
        return 0
    except RetrainError as err:
        events.append(job.events, "failed", error=str(err))
        return 1
    except Exception as err:  # the job ends "failed" with one line; the traceback goes to log.txt
        from retrain.diskspace import as_disk_full

        full = as_disk_full(err)
        if full is None:
            logging.getLogger("retrain").exception("the job failed")
        message = str(full) if full else f"internal error: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        events.append(job.events, "failed", error=message)
        return 1
    events.append(job.events, "succeeded", version=version, metrics=metrics)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # fit stops as at Ctrl-C: its checkpoints stay resumable


def run_job(job: JobFolder, settings: dict) -> tuple[int, dict]:
    """fit (or resume), evaluate, export, publish; -> (version, headline metrics)."""
    import retrain
    from retrain.checkpoints import read_run
    from retrain.exports import signature_def
    from retrain.serve import registry

    report = _Progress(job.events)
    if (job.run / "config.json").is_file():
        retrain.fit(resume=job.run, on_progress=report)
    else:
        retrain.fit(**settings["fit"], runs_dir=str(job.path), name=job.run.name, on_progress=report)
    events.append(job.events, "trained")
    split = "test" if (Path(settings["fit"]["data"]) / "test").is_dir() else "validation"
    evaluation = retrain.evaluate(job.run, split=split)
    exported = retrain.export(job.run, "savedmodel")
    config, labels, facts = read_run(job.run)
    metrics = {"split": split, **{k: v for k, v in evaluation.metrics.items() if isinstance(v, (int, float))}}
    about = {"job": settings["id"], "run": str(job.run), "created": time.time(), "labels": list(labels),
             "backbone": config.backbone, "image_size": facts["image_size"], "metrics": metrics,
             "signature_def": signature_def(len(labels), facts["image_size"], facts["channels"])}
    extras = {name: evaluation.folder / name for name in ("metrics.json", "confusion_matrix.png",
                                                          "misclassified.csv")}
    version = registry.publish(Path(settings["models"]), settings["model"], exported, extras, about)
    return version, metrics


class _Progress:
    """fit's on_progress -> "progress" events: every epoch's end, else at most every 0.5 s."""

    def __init__(self, path: Path):
        self.path, self.last = path, 0.0

    def __call__(self, progress: dict) -> None:
        now = time.monotonic()
        if progress["step"] == progress["steps"] or now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            events.append(self.path, "progress", **progress)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
