"""The job scheduler: queued jobs start FIFO in their own processes, at most --max-jobs at
once; running jobs are followed through their event logs until they end.

Its rules, in the order a tick applies them:
1. Read each live job's new events: progress, and how its process says it ended (succeeded,
   failed). The state lives in SQLite; the events file is what the job's process writes.
2. A live job whose process is gone without saying so (killed, out of memory, or the server
   was down when it ended) was cut off: it is started again and resumes from its checkpoint,
   at most --job-retries times, then marked failed with the reason. A cancelled one ends
   cancelled. Liveness is the job's lock (worker.py), which the kernel drops when a process
   dies, so a restarted server adopts a live process instead of starting a second one.
3. Start queued jobs, oldest first, while fewer than --max-jobs are live.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from retrain.errors import ConflictError, NotFoundError
from retrain.files import atomic_write, is_locked
from retrain.serve import events
from retrain.serve.home import Home, JobFolder
from retrain.serve.specs import JobSpec
from retrain.serve.store import FINAL, LIVE, Store
from retrain.serve.worker import ALREADY_RUNNING

log = logging.getLogger("retrain.serve")
TICK_S = 0.2
KILL_AFTER_S = 60.0  # a cancelled job that has not stopped after SIGTERM is killed


class Scheduler:
    """Starts, follows, cancels and resumes jobs; one thread ticks it."""

    def __init__(self, home: Home, store: Store, max_jobs: int, retries: int):
        self.home, self.store, self.max_jobs, self.retries = home, store, max_jobs, retries
        self.procs: dict[str, subprocess.Popen] = {}  # the jobs this server started
        self.offsets: dict[str, int] = {}  # how far each live job's events were read
        self.cancelled_at: dict[str, float] = {}
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self.tick()
            except Exception:  # a bug here must not stop every job's bookkeeping
                log.exception("scheduler tick failed")

    # --- requests ---------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> dict:
        id = secrets.token_hex(6)
        folder = self.home.job(id)
        folder.path.mkdir(parents=True)
        atomic_write(folder.settings, json.dumps({"id": id, "model": spec.model, "models": str(self.home.models),
                                                  "fit": spec.fit}, indent=2))
        job = self.store.add_job(id, spec.model, spec.fit, spec.dataset)
        events.append(folder.events, "state", state="queued")
        return job

    def cancel(self, id: str) -> dict:
        with self.lock:
            job = self.job(id)
            if self.store.move(id, ("queued",), state="cancelled", finished=time.time()):
                events.append(self.home.job(id).events, "state", state="cancelled")
            elif self.store.move(id, ("running",), state="cancelling"):
                events.append(self.home.job(id).events, "state", state="cancelling")
                self.cancelled_at[id] = time.monotonic()
                self._signal(id, signal.SIGTERM)
            elif job["state"] != "cancelling":
                raise ConflictError("only a queued or running job can be cancelled", f"job {id} is {job['state']}",
                                    "resume a cancelled or failed job with POST /v1/jobs/ID:resume")
            return self.store.job(id)

    def resume(self, id: str) -> dict:
        with self.lock:
            job = self.job(id)
            if not self.store.move(id, ("cancelled", "failed"), state="queued", attempts=0, error=None,
                                   finished=None):
                raise ConflictError("only a cancelled or failed job can be resumed", f"job {id} is {job['state']}",
                                    "wait for it to end, or cancel it first")
            events.append(self.home.job(id).events, "state", state="queued", resumed=True)
            return self.store.job(id)

    def job(self, id: str) -> dict:
        job = self.store.job(id)
        if job is None:
            raise NotFoundError("no such job", id, "GET /v1/jobs lists the jobs")
        return job

    # --- the tick ---------------------------------------------------------------------------

    def tick(self) -> None:
        with self.lock:
            for job in self.store.jobs(LIVE):
                self._follow(job)
            live = len(self.store.jobs(LIVE))
            for job in self.store.jobs(("queued",))[:max(0, self.max_jobs - live)]:
                self._spawn(job)

    def _follow(self, job: dict) -> None:
        id, folder = job["id"], self.home.job(job["id"])
        if self._read(job) in FINAL:
            return
        if self._alive(id, folder):
            if id in self.cancelled_at and time.monotonic() - self.cancelled_at[id] > KILL_AFTER_S:
                self._signal(id, signal.SIGKILL)
            return
        proc = self.procs.pop(id, None)
        if proc is not None and proc.returncode == ALREADY_RUNNING:
            return  # another process holds the job: followed by its lock from now on
        if self._read(job) in FINAL:  # its last words, written just before it exited
            return
        self.cancelled_at.pop(id, None)
        if self.store.job(id)["state"] == "cancelling":
            self._end(id, "cancelled")
            return
        reason = _how_it_ended(proc)
        if job["attempts"] < self.retries:
            self.store.update(id, attempts=job["attempts"] + 1)
            events.append(folder.events, "restarting", reason=reason, attempt=job["attempts"] + 1)
            log.warning("job %s: its process %s; resuming it from its last checkpoint", id, reason)
            self._spawn(self.store.job(id))
        else:
            self._end(id, "failed", error=f"the job's process {reason} and was resumed {job['attempts']} "
                                         "times; see its log, then POST /v1/jobs/ID:resume to try again")

    def _read(self, job: dict) -> str:
        """Apply the job's new events; -> its state after them."""
        id = job["id"]
        found, self.offsets[id] = events.read(self.home.job(id).events, self.offsets.get(id, job["events_from"]))
        state, progress = job["state"], None
        for _, event in found:
            kind = event["event"]
            if kind == "progress":
                progress = {k: v for k, v in event.items() if k not in ("event", "time")}
            elif kind == "started":
                self.store.update(id, pid=event["pid"])
            elif kind == "succeeded" and state in LIVE:
                state = self._end(id, "succeeded", version=event["version"], metrics=event["metrics"],
                                  progress=progress or job["progress"])
            elif kind == "failed" and state in LIVE:
                state = self._end(id, "failed", error=event["error"])
        if progress is not None and state in LIVE:
            self.store.update(id, progress=progress)
        return state

    def _end(self, id: str, state: str, **values) -> str:
        if self.store.move(id, LIVE, state=state, finished=time.time(), **values):
            events.append(self.home.job(id).events, "state", state=state, **{k: v for k, v in values.items()
                                                                           if k in ("error", "version")})
            log.info("job %s %s%s", id, state, f": {values['error']}" if "error" in values else "")
        self.offsets.pop(id, None)
        self.cancelled_at.pop(id, None)
        return state

    def _alive(self, id: str, folder: JobFolder) -> bool:
        proc = self.procs.get(id)
        if proc is not None:
            return proc.poll() is None
        return is_locked(folder.lock)

    def _spawn(self, job: dict) -> None:
        """Start the job's process (a resume when its run folder exists: worker.py decides)."""
        folder = self.home.job(job["id"])
        env = dict(os.environ, RETRAIN_CACHE_DIR=str(self.home.cache))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        start = folder.events.stat().st_size  # what came before is an earlier attempt's
        self.offsets[job["id"]] = start
        with open(folder.log, "ab") as out:
            # A session of its own: Ctrl-C on the server's terminal does not reach the job, which
            # goes on and is adopted by the next server on this home.
            proc = subprocess.Popen([sys.executable, "-m", "retrain.serve.worker", str(folder.path)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                    start_new_session=True, cwd=str(folder.path))
        self.procs[job["id"]] = proc
        self.store.update(job["id"], state="running", pid=proc.pid, started=job["started"] or time.time(),
                          events_from=start)
        if job["state"] != "running":
            events.append(folder.events, "state", state="running")

    def _signal(self, id: str, signum: int) -> None:
        """Signal the job's process, if it is alive: the pid its lock names (never a stale one)."""
        proc = self.procs.get(id)
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signum)
            return
        lock = self.home.job(id).lock
        if is_locked(lock):
            try:
                os.kill(int(Path(lock).read_text().strip()), signum)
            except (ValueError, ProcessLookupError):
                pass


def _how_it_ended(proc: subprocess.Popen | None) -> str:
    if proc is None:
        return "ended while the server was away, without finishing"
    code = proc.returncode
    if code is not None and code < 0:
        return f"was killed by signal {-code} ({signal.Signals(-code).name})"
    return f"exited with code {code} without finishing"
