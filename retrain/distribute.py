"""tf.distribute for `fit`: the strategy a flag names, who the chief is, and the Keras patches.

`none` is TensorFlow's default strategy; `mirrored` replicates over every local GPU (the CPU
when there is none); `multi-worker` is `MultiWorkerMirroredStrategy`, configured by the
standard `TF_CONFIG` variable, so any launcher that sets it (`retrain launch`, Kubeflow's
TFJob) runs `fit` unchanged. The cluster is read from `TF_CONFIG` here without TensorFlow,
so a missing or malformed one is reported before anything heavy loads.

Keras 3.15's `model.fit` does not work under `MultiWorkerMirroredStrategy` as shipped
(keras-team/keras#20585); `patch_keras` and `prepare_model` hold the workarounds, used only
for multi-worker runs.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from retrain.errors import DistributeError

# A collective op that waits longer than this for a peer fails instead of hanging forever
# (a dead peer is usually noticed sooner, by TensorFlow's coordination service). It must
# outlast the longest stretch one worker spends without the others: filling a cold feature
# cache while another worker's cache is warm. RETRAIN_COLLECTIVE_TIMEOUT (seconds) overrides.
COLLECTIVE_TIMEOUT = 1800.0

LAUNCH_HINT = "set TF_CONFIG (see the README, 'Running across hosts') or start the workers " \
              "with `retrain launch --workers N -- fit ...`"


@dataclass(frozen=True)
class Cluster:
    """This process's place in a multi-worker cluster, from TF_CONFIG."""

    num_workers: int  # tasks taking part in training (workers, plus the chief if there is one)
    task_type: str  # worker | chief
    task_index: int
    has_chief: bool  # the cluster lists a "chief" task

    @property
    def is_chief(self) -> bool:
        """The chief writes the run folder: the "chief" task if the cluster has one, else
        worker 0 (TensorFlow's own rule, `multi_worker_util.is_chief`)."""
        return self.task_type == "chief" or (self.task_index == 0 and not self.has_chief)


def read_cluster(environ=os.environ) -> Cluster:
    """Parse TF_CONFIG; a DistributeError says what is missing or wrong."""
    text = environ.get("TF_CONFIG", "").strip()
    if not text:
        raise DistributeError("--distribute multi-worker needs the TF_CONFIG environment variable",
                              "TF_CONFIG unset", LAUNCH_HINT)
    try:
        spec = json.loads(text)
        cluster, task = spec["cluster"], spec["task"]
        task_type, index = task["type"], int(task["index"])
        workers = list(cluster.get("worker", []))
        chiefs = list(cluster.get("chief", []))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DistributeError("TF_CONFIG is not a cluster description", text[:200],
                              'it needs {"cluster": {"worker": ["host:port", ...]}, '
                              '"task": {"type": "worker", "index": i}}') from None
    unsupported = sorted(set(cluster) - {"worker", "chief"})
    if unsupported:
        raise DistributeError("TF_CONFIG names tasks MultiWorkerMirroredStrategy does not use",
                              ", ".join(unsupported), "list only chief and worker tasks")
    size = {"worker": len(workers), "chief": len(chiefs)}
    if task_type not in size or not 0 <= index < size[task_type] or len(chiefs) > 1:
        raise DistributeError("TF_CONFIG's task is not one of its cluster's tasks",
                              f"task {task_type} {index}; cluster {json.dumps(cluster)}",
                              "give each process its own task type and index")
    return Cluster(len(workers) + len(chiefs), task_type, index, bool(chiefs))


@dataclass
class Distribution:
    """The strategy `fit` builds and trains under, and what follows from it."""

    mode: str  # none | mirrored | multi-worker
    strategy: object  # tf.distribute.Strategy
    cluster: Cluster | None  # multi-worker only

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief

    @property
    def multi_worker(self) -> bool:
        return self.mode == "multi-worker"

    def describe(self, batch_size: int) -> str:
        if self.mode == "mirrored":
            devices = [d.split("/")[-1] for d in self.strategy.extended.worker_devices]
            where = f"{self.replicas} local replica(s) ({', '.join(devices)})"
        elif self.multi_worker:
            where = (f"{self.cluster.num_workers} worker(s), {self.replicas} replica(s); this is "
                     f"{self.cluster.task_type} {self.cluster.task_index}{' (chief)' if self.is_chief else ''}")
        else:
            where = "one device"
        return (f"distribute: {self.mode}, {where}; global batch {batch_size * self.replicas} = "
                f"{batch_size} per replica x {self.replicas}; learning rates not scaled")


def create(mode: str) -> Distribution:
    """The strategy for `--distribute`. Call it before any other TensorFlow op in the process:
    MultiWorkerMirroredStrategy configures the runtime (its collective ops and server), which
    is refused once the runtime is initialised."""
    import tensorflow as tf

    if mode == "none":
        return Distribution(mode, tf.distribute.get_strategy(), None)
    if mode == "mirrored":
        return Distribution(mode, tf.distribute.MirroredStrategy(), None)
    assert mode == "multi-worker", mode
    cluster = read_cluster()
    timeout = float(os.environ.get("RETRAIN_COLLECTIVE_TIMEOUT", COLLECTIVE_TIMEOUT))
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except RuntimeError as err:  # "Collective ops must be configured at program startup"
        raise DistributeError("--distribute multi-worker must start in a process where TensorFlow "
                              "has not run anything yet", str(err),
                              "run `retrain fit` (or retrain.train.fit) in a process of its own") from err
    patch_keras()
    return Distribution(mode, strategy, cluster)


def peer_failure(err, run: Path) -> DistributeError:
    """The one-line error for a collective op aborted by a dead peer (noticed by the
    coordination service's heartbeats) or timed out."""
    message = getattr(err, "message", str(err))
    # "{{function_node ...}} Collective ops is aborted by: ... The following tasks are unhealthy
    # (stopped sending heartbeats):\n/job:worker/replica:0/task:1\n...", or "{{...}} Collective
    # has timed out during execution. [Op:CollectiveReduceV2]"
    text = re.sub(r"^\{\{.*?\}\}\s*", "", message.split("aborted by: ", 1)[-1].strip())
    reason = re.sub(r"\s*\[Op:.*$", "", " ".join(text.splitlines()[:2]))[:240]
    return DistributeError("another worker stopped or stopped answering during multi-worker training",
                           reason, f"restart every worker with `fit --resume {run}` (one machine: "
                           f"`retrain launch --workers N -- fit --resume {run}`); the run goes on "
                           "from its last checkpoint")


def output_folder(distribution: Distribution, run: Path) -> Path:
    """Where this process writes: the run folder for the chief; for any other worker a new
    temporary folder, where it writes the same files (its checkpoint saves take part in the
    same collective ops) and which the caller removes at the end."""
    if distribution.is_chief:
        return run
    return Path(tempfile.mkdtemp(prefix=f"retrain-worker{distribution.cluster.task_index}-"))


# --- Keras 3 under MultiWorkerMirroredStrategy (keras-team/keras#20585) ------------------------

def patch_keras() -> None:
    """Make Keras 3.15's metric reduction work across workers. Idempotent.

    `reduce_per_replica(..., "auto")` reduces each metric value with
    `strategy.reduce("MEAN", v, axis=0)` under a multi-worker strategy; the values are
    scalars, so every train step fails with "Invalid reduction dimension 0 for input with 0
    dimensions" (keras-team/keras#20585). Reducing over no axis (`axis=None`: the mean of the
    replicas' values) is what the single-worker path does; every worker then logs the same,
    global, figures."""
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer.reduce_per_replica, "_retrain_patched", False):
        return
    import tensorflow as tf

    original = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction == "auto" and trainer._collective_all_reduce_multi_worker(strategy):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica._retrain_patched = True
    trainer.reduce_per_replica = reduce_per_replica


def prepare_model(model, distribution: Distribution) -> None:
    """After `compile`, before `fit` (which must then run inside `strategy.scope()`).

    A model built under a strategy scope remembers it, and Keras 3.15's `fit` then builds
    the model's metrics symbolically by `strategy.reduce("MEAN", <first batch>)`, which
    MultiWorkerMirroredStrategy cannot do with a batch of per-replica values ("Attempt to
    convert a value (PerReplica...)", keras-team/keras#20585). Forgetting it makes Keras
    take the strategy from the enclosing scope and build while tracing the train step."""
    if distribution.multi_worker:
        model._distribute_strategy = None


def steps_per_execution(distribution: Distribution, wanted: int) -> int:
    """Keras steps per `fit` call: 1 under multi-worker, where more than one fails ("You must
    feed a value for placeholder tensor ... while/cond/Placeholder", the same issue)."""
    return 1 if distribution.multi_worker else wanted
