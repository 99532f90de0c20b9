"""`fit --distribute` and `retrain launch`: two local workers, a killed worker, mirrored, errors.

The multi-worker runs go through `retrain launch` in new processes (each worker is a process
of its own, as on a cluster): tiny_cnn on the toy colours, 4 per replica, so the global batch
(8) is the single-process tests' batch. They also exercise the Keras 3 workarounds in
`retrain/distribute.py`: without them the first train step fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fit_fixtures import (assert_one_error_line, column, fit_args, history_rows, invoke,
                          make_colour_data, read_history, subprocess_env)
from retrain.config import FitConfig

FLAGS = dict(batch_size=4)  # per replica: 2 workers make the global batch 8


def start_launch(args: list[str], log: Path, tmp: Path) -> subprocess.Popen:
    """`python -m retrain launch <args>`, output to `log`, temporary files under `tmp`."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(subprocess_env(), TMPDIR=str(tmp))
    return subprocess.Popen([sys.executable, "-m", "retrain", "launch", *args], env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def worker_pid(log: Path, index: int) -> int | None:
    found = re.search(rf"launch: worker {index} \(pid (\d+)\)", log.read_text(errors="replace"))
    return int(found.group(1)) if found else None


def leftovers(*folders: Path) -> list[str]:
    """Worker temporary folders (fit's, and the launcher's per-worker TMPDIRs) still there."""
    return [str(p) for folder in folders for pattern in ("retrain-worker*", "worker*-tmp-*")
            for p in folder.rglob(pattern)]


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    """12 training and 6 validation images per colour (as tests/test_fit.py)."""
    return make_colour_data(tmp_path_factory.mktemp("colours") / "data", train=12, validation=6)


@pytest.fixture(scope="module")
def launched(colours, tmp_path_factory):
    """Two 2-worker launches side by side: one left alone; one whose worker 1 is SIGKILLed
    once the first checkpoint exists, then relaunched with --resume. -> {name: facts}."""
    root = tmp_path_factory.mktemp("launch")
    runs = {name: root / f"runs-{name}" for name in ("whole", "killed")}
    logs = {name: root / f"logs-{name}" for name in runs}
    procs = {name: start_launch(["--workers", "2", "--log-dir", str(logs[name]), "--",
                                 *fit_args(colours, runs[name], name, **FLAGS)],
                                root / f"{name}.log", root / f"tmp-{name}") for name in runs}
    resumed = None
    try:
        run = runs["killed"] / "killed"
        deadline = time.monotonic() + 240
        while not (run / "ckpt" / "checkpoint").exists():
            assert procs["killed"].poll() is None, (root / "killed.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        epochs_at_kill = history_rows(run)
        os.kill(worker_pid(root / "killed.log", 1), signal.SIGKILL)
        killed_code = procs["killed"].wait(120)
        killed_output = (root / "killed.log").read_text(errors="replace")
        resumed = start_launch(["--workers", "2", "--log-dir", str(logs["killed"]), "--", "fit",
                                "--resume", str(run)], root / "resumed.log", root / "tmp-killed")
        assert resumed.wait(300) == 0, (root / "resumed.log").read_text(errors="replace")
        assert procs["whole"].wait(300) == 0, (root / "whole.log").read_text(errors="replace")
    finally:
        for proc in [*procs.values(), resumed]:
            if proc is not None and proc.poll() is None:
                proc.terminate()  # the launcher stops its workers
                proc.wait(60)
    return {"root": root, "runs": runs, "logs": logs, "killed_code": killed_code,
            "killed_output": killed_output, "epochs_at_kill": epochs_at_kill,
            "resumed_output": (root / "resumed.log").read_text(errors="replace"),
            "whole_output": (root / "whole.log").read_text(errors="replace")}


@pytest.mark.slow
def test_two_workers_learn_the_colours(launched):
    """`launch --workers 2 -- fit`: the chief's run reaches the single-process bar (0.9
    validation accuracy), its history has every epoch of both phases, and the other worker
    reports the same (global) figures."""
    run = launched["runs"]["whole"] / "whole"
    assert column(run, "epoch").tolist() == [0, 1, 2, 3]
    assert column(run, "val_accuracy").max() >= 0.9
    output = launched["whole_output"]
    assert "distribute: multi-worker, 2 worker(s), 2 replica(s); this is worker 0 (chief); " \
           "global batch 8 = 4 per replica x 2" in output
    chief = re.search(r"done: (best epoch .*); model saved to (\S+)\n", output)
    assert chief and chief.group(2) == str(run / "model.keras"), output
    other = (launched["logs"]["whole"] / "worker-1.log").read_text()
    assert "this is worker 1;" in other
    assert f"done: {chief.group(1)}; model saved to {run / 'model.keras'} by the chief" in other


@pytest.mark.slow
def test_only_the_chief_writes_a_run_folder(launched, colours):
    """One complete run folder (config.json with --distribute multi-worker, history.csv,
    ckpt/, best/, logs/, model.keras) and nothing else: no second run folder, no worker
    temporary folder left."""
    runs, root = launched["runs"]["whole"], launched["root"]
    assert sorted(p.name for p in runs.iterdir()) == ["whole"]
    run = runs / "whole"
    assert FitConfig.from_json((run / "config.json").read_text()).distribute == "multi-worker"
    for name in ("labels.txt", "run.json", "history.csv", "model.keras"):
        assert (run / name).is_file(), name
    assert list((run / "ckpt").glob("ckpt-*.index")) and list((run / "best").glob("ckpt-*.index"))
    assert list((run / "logs" / "train").glob("events.out.tfevents.*"))
    assert not list(run.glob(".*tmp*"))
    assert leftovers(root / "tmp-whole", launched["logs"]["whole"]) == []
    assert sorted(p.name for p in launched["logs"]["whole"].iterdir()) == ["worker-1.log"]


@pytest.mark.slow
def test_killed_worker_then_resume(launched):
    """SIGKILL worker 1 after the first checkpoint: the launcher stops the chief, exits
    non-zero and prints one line saying how to resume; that command finishes the run from
    the last checkpoint, with each epoch once in history.csv."""
    run = launched["runs"]["killed"] / "killed"
    assert launched["killed_code"] != 0
    hints = [line for line in launched["killed_output"].splitlines() if "resume with:" in line]
    assert hints == [hints[0]] and hints[0].startswith("error: worker "), launched["killed_output"]
    assert hints[0].endswith(f"resume with: retrain launch --workers 2 -- fit --resume {run}")
    # The chief, if it noticed the dead peer before the launcher stopped it, said so in one line.
    assert "Traceback" not in launched["killed_output"], launched["killed_output"]
    found = re.search(r"resuming .* from ckpt-\d+: phase (\d), (\d+) epochs", launched["resumed_output"])
    assert found, launched["resumed_output"]
    assert 1 <= int(found.group(2)) <= 3
    assert column(run, "epoch").tolist() == [0, 1, 2, 3]
    whole = launched["runs"]["whole"] / "whole"  # the same 2-worker run, not interrupted
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        np.testing.assert_allclose(column(run, key), column(whole, key), rtol=0, atol=1e-6, err_msg=key)
    assert (run / "model.keras").is_file()
    assert sorted(p.name for p in launched["runs"]["killed"].iterdir()) == ["killed"]
    assert leftovers(launched["root"] / "tmp-killed", launched["logs"]["killed"]) == []


def test_mirrored_in_one_process(colours, tmp_path):
    """--distribute mirrored (here: the CPU, one replica) trains to the same bar."""
    result = invoke(fit_args(colours, tmp_path / "runs", "mirrored", distribute="mirrored"))
    assert result.exit_code == 0, (result.output, result.exception)
    assert "distribute: mirrored, 1 local replica(s) (device:CPU:0); global batch 8" in result.stderr
    run = tmp_path / "runs" / "mirrored"
    assert len(read_history(run)) == 4
    assert column(run, "val_accuracy").max() >= 0.9


# --- errors, before any training ----------------------------------------------------------------

def test_bad_distribute_value(colours, tmp_path):
    result = invoke(fit_args(colours, tmp_path / "runs", "x", distribute="everywhere"))
    assert result.exit_code == 2
    assert "Invalid value for '--distribute'" in result.output
    assert not (tmp_path / "runs").exists()


def test_multi_worker_without_tf_config(colours, tmp_path, monkeypatch):
    """--distribute multi-worker with no TF_CONFIG: one line saying to set it or use launch."""
    monkeypatch.delenv("TF_CONFIG", raising=False)
    result = invoke(fit_args(colours, tmp_path / "runs", "x", distribute="multi-worker"))
    assert_one_error_line(result, 1, "needs the TF_CONFIG environment variable", "retrain launch")
    assert not (tmp_path / "runs").exists()


def test_multi_worker_after_tensorflow_ran(colours, tmp_path, monkeypatch):
    """MultiWorkerMirroredStrategy cannot start in a process where TensorFlow already ran an
    op (as in this test process): one line saying to run fit in a process of its own."""
    import tensorflow as tf

    tf.constant(1) + 1
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    result = invoke(fit_args(colours, tmp_path / "runs", "x", distribute="multi-worker"))
    assert_one_error_line(result, 1, "must start in a process where TensorFlow has not run anything")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, text", [
    (["--workers", "2", "fit", "--data", "d"], "launch needs `--` before the fit command"),
    (["--workers", "0", "--", "fit"], "--workers must be 1 or more (received: 0)"),
    (["--", "evaluate", "x"], "launch runs `fit`"),
    (["--", "fit", "--distribute", "mirrored"], "launch runs fit with --distribute multi-worker"),
], ids=["no-dashdash", "workers-0", "not-fit", "distribute-mirrored"])
def test_launch_usage_errors(args, text):
    """Usage errors of `launch`: exit 2, one `error:` line, no worker started."""
    assert_one_error_line(invoke(["launch", *args]), 2, text)


def test_read_cluster():
    """TF_CONFIG: the chief is worker 0, or the "chief" task when there is one; errors name
    what is wrong."""
    from retrain.distribute import read_cluster
    from retrain.errors import DistributeError

    def env(cluster, task_type, index):
        return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})}

    two = {"worker": ["a:1", "b:1"]}
    assert read_cluster(env(two, "worker", 0)).is_chief
    assert not read_cluster(env(two, "worker", 1)).is_chief
    with_chief = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}
    assert read_cluster(env(with_chief, "chief", 0)).is_chief
    assert not read_cluster(env(with_chief, "worker", 0)).is_chief
    assert read_cluster(env(with_chief, "worker", 1)).num_workers == 3
    for bad, text in [({}, "needs the TF_CONFIG"), ({"TF_CONFIG": "{"}, "not a cluster description"),
                      (env(two, "worker", 2), "not one of its cluster's tasks"),
                      (env({**two, "ps": ["p:1"]}, "worker", 0), "does not use (received: ps)")]:
        with pytest.raises(DistributeError, match=re.escape(text)):
            read_cluster(bad)


def test_peer_failure_message():
    """A collective aborted by a dead peer, or timed out (RETRAIN_COLLECTIVE_TIMEOUT), becomes
    one line naming what TensorFlow saw and how to resume."""
    from retrain.distribute import peer_failure

    class Aborted:
        message = ("{{function_node __wrapped__CollectiveReduceV2}} Collective ops is aborted by: "
                   "Error reported from /job:worker/task:1: The following tasks are unhealthy (stopped "
                   "sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed.")

    class TimedOut:
        message = ("{{function_node __wrapped__CollectiveReduceV2}} Collective has timed out during "
                   "execution. [Op:CollectiveReduceV2] name: ")

    aborted, timed_out = str(peer_failure(Aborted(), Path("r/x"))), str(peer_failure(TimedOut(), Path("r/x")))
    assert "(received: Error reported from /job:worker/task:1: The following tasks are unhealthy " \
           "(stopped sending heartbeats): /job:worker/replica:0/task:1)" in aborted
    assert "(received: Collective has timed out during execution.)" in timed_out
    for line in (aborted, timed_out):
        assert "\n" not in line and "fit --resume r/x" in line


def test_launch_names_the_run():
    """The launcher adds --distribute multi-worker and, for a new run, a --name every worker
    shares (and the resume hint uses)."""
    from retrain.launch import _fit_command

    args, run = _fit_command(("fit", "--data", "d", "--backbone", "tiny_cnn", "--runs-dir", "r"))
    assert args[:7] == ["fit", "--data", "d", "--backbone", "tiny_cnn", "--runs-dir", "r"]
    assert args[7:9] == ["--distribute", "multi-worker"] and args[9] == "--name"
    assert run == Path("r") / args[10] and args[10].startswith("tiny_cnn-")
    assert _fit_command(("fit", "--resume", "r/x", "--distribute=multi-worker")) == (
        ["fit", "--resume", "r/x", "--distribute=multi-worker"], Path("r/x"))


def test_keras_patch_is_idempotent():
    """patch_keras wraps Keras' metric reduction once, however often it is applied."""
    from keras.src.backend.tensorflow import trainer

    from retrain.distribute import patch_keras

    patch_keras()
    patched = trainer.reduce_per_replica
    patch_keras()
    assert trainer.reduce_per_replica is patched and patched._retrain_patched


def test_launcher_does_not_import_tensorflow():
    done = subprocess.run([sys.executable, "-c", "import sys, retrain.launch, retrain.distribute; "
                           "print('tensorflow' in sys.modules)"], capture_output=True, text=True,
                          env=subprocess_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


SHARED_CACHE_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from retrain.cache import SplitCache
folder, tag = Path(sys.argv[1]), sys.argv[2]
files = [f"f{i}" for i in range(20)]
hashes = [f"h{i}{tag if i == 0 else ''}" for i in range(20)]
def extract(names):
    for position, name in enumerate(names):
        time.sleep(0.02)  # slow enough that the two writers overlap
        yield np.full((1, 4), float(name[1:]), np.float32), np.array([position])
print(np.asarray(SplitCache(folder, "train").ensure(files, hashes, extract))[:, 0].tolist())
"""


def test_two_workers_fill_one_cache_at_once(tmp_path):
    """Two workers on one machine write the same feature cache at the same moment (twice: cold,
    then with one image changed): both get every row right, and one rows file, its pointer and
    no temporary file remain."""
    for tag in ("", "-changed"):
        procs = [subprocess.Popen([sys.executable, "-c", SHARED_CACHE_WRITER, str(tmp_path), tag],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
                 for _ in range(2)]
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert json.loads(out) == [float(i) for i in range(20)]
        names = sorted(p.name for p in tmp_path.iterdir())
        assert len(names) == 2 and names[1] == "train.json" and names[0].endswith(".npy"), names
