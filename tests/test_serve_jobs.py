"""retrain serve's jobs when things go wrong: cancel and resume; the server killed (-9) while
a job trains, its process adopted; both killed, the job resumed from its checkpoint; a job's
process killed under a running server, resumed, then failed once its retries are spent.
A job cut off and continued ends with the same weights as one that never was.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from fit_fixtures import make_colour_data
from serve_fixtures import TOY_JOB, Server, kill_workers, worker_pid

pytestmark = pytest.mark.slow
SPEC = {**TOY_JOB, "model": "colours", "data": "colours", "epochs": 3, "fine_tune_epochs": 3, "batch_size": 4}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("roots")
    make_colour_data(root / "colours", train=16, validation=4)
    return root


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """The weights of the job run once, never interrupted."""
    with running(tmp_path_factory.mktemp("reference") / "home", data_root) as server:
        job = submit(server)
        assert server.wait(job)["state"] == "succeeded"
        return weights(server, job)


class running:
    """A server on a home with the data root; on exit it and every job process it left are killed."""

    def __init__(self, home, data_root, *flags):
        self.server = Server(home, "--data-root", str(data_root), *flags)

    def __enter__(self) -> Server:
        return self.server.start()

    def __exit__(self, *exc):
        self.server.stop(signal.SIGKILL)
        kill_workers(self.server.home)


def submit(server: Server, **settings) -> str:
    status, answer = server.post("/v1/jobs", {**SPEC, **settings})
    assert status == 202, answer
    return answer["id"]


def weights(server: Server, job: str) -> list[np.ndarray]:
    import retrain

    model, _ = retrain.load(server.home / "jobs" / job / "run", checkpoint="last")
    return model.get_weights()


def assert_same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def wait_for_worker(server: Server, job: str, other_than: int | None = None, timeout: float = 60) -> int:
    """The pid of the job's live process (not `other_than`), once it holds the job's lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = worker_pid(server.home, job)
        if pid is not None and pid != other_than:
            return pid
        time.sleep(0.05)
    raise AssertionError(f"no new process for job {job} after {timeout} s")


def events_of(server: Server, job: str, kind: str) -> list[dict]:
    import json

    path = server.home / "jobs" / job / "events.jsonl"
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == kind]


def test_cancel_then_resume_equals_uninterrupted(data_root, reference, tmp_path):
    with running(tmp_path / "home", data_root) as server:
        job = submit(server)
        server.wait_for_event(job, "progress", phase=1)
        status, answer = server.post(f"/v1/jobs/{job}:cancel")
        assert status == 200 and answer["state"] in ("cancelling", "cancelled"), answer
        done = server.wait(job, ("cancelled",))
        assert done["finished"] is not None and worker_pid(server.home, job) is None
        status, answer = server.post(f"/v1/jobs/{job}:cancel")
        assert status == 409 and "cancelled" in answer["error"]
        status, answer = server.post(f"/v1/jobs/{job}:resume")
        assert status == 200 and answer["state"] == "queued"
        done = server.wait(job)
        assert done["state"] == "succeeded" and done["version"] == 1, done
        assert len(events_of(server, job, "started")) == 2
        assert server.post(f"/v1/jobs/{job}:resume")[0] == 409
        assert_same_weights(weights(server, job), reference)


def test_server_killed_mid_job_adopts_the_live_job(data_root, tmp_path):
    home = tmp_path / "home"
    with running(home, data_root) as server:  # a longer job: still training when the server is back
        job = submit(server, epochs=12, fine_tune_epochs=12, batch_size=2)
        server.wait_for_event(job, "progress", phase=1)
        pid = worker_pid(home, job)
        server.stop(signal.SIGKILL)
        assert worker_pid(home, job) == pid  # the job outlives its server
        with running(home, data_root) as again:
            assert again.get(f"/v1/jobs/{job}")[1]["state"] == "running"
            assert worker_pid(home, job) == pid  # adopted: still the same process, alone
            done = again.wait(job)
            assert done["state"] == "succeeded" and done["attempts"] == 0, done
            assert len(events_of(again, job, "started")) == 1
            assert done["progress"]["epoch"] == 24


def test_server_and_job_killed_then_the_job_resumes_exactly(data_root, reference, tmp_path):
    home = tmp_path / "home"
    with running(home, data_root) as server:
        job = submit(server)
        server.wait_for_event(job, "progress", phase=1)
        pid = worker_pid(home, job)
        server.stop(signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)
    with running(home, data_root) as again:
        done = again.wait(job)
        assert done["state"] == "succeeded" and done["attempts"] == 1, done
        restarting = events_of(again, job, "restarting")
        assert len(restarting) == 1 and "server was away" in restarting[0]["reason"]
        assert_same_weights(weights(again, job), reference)
        assert (home / "models" / "colours" / "1" / "saved_model.pb").is_file()


def test_a_job_whose_process_keeps_dying_ends_failed_with_the_reason(data_root, tmp_path):
    with running(tmp_path / "home", data_root, "--job-retries", "1") as server:
        job = submit(server)
        first = wait_for_worker(server, job)
        os.kill(first, signal.SIGKILL)
        server.wait_for_event(job, "restarting")
        os.kill(wait_for_worker(server, job, other_than=first), signal.SIGKILL)
        done = server.wait(job)
        assert done["state"] == "failed", done
        assert "killed by signal 9" in done["error"] and "resumed 1 times" in done["error"]
        assert worker_pid(server.home, job) is None
        assert server.get(f"/v1/jobs/{job}")[1]["state"] == "failed"  # and it stays so
