"""How fast is `retrain serve`? Predict over HTTP against in-process, and a job against the CLI.

On a CIFAR-10 subset (MobileNetV2 0.35, shared ImageNet weights, 96 px), all in one run:
  1. one job's wall time, from POST /v1/jobs to `succeeded` (fit, evaluate on the held-out
     split, export, publish), against `retrain fit` + `retrain export` as two commands, each
     with a cold bottleneck cache: target job / CLI <= 1.1, the fastest of each over
     --repeats, which alternate the order;
  2. predict throughput on the job's model (HOME/models/cifar/1): its `serving_default` called
     in this process on batches of --batch-size, then --clients threads POSTing single-image
     requests to /v1/models/cifar:predict until all --images are done, in turn --rounds times:
     target best HTTP / best in-process >= 0.7; with the CPU the server and this process (the
     clients) spent per image; then 8 images a request, and `retrain.predict(run, files)`;
  3. single-image latency: one client, sequential requests, p50 and p99 in ms.

usage: .venv/bin/python bench/serve_speed.py [--per-class 100] [--val-per-class 50]
           [--epochs 2] [--fine-tune-epochs 2] [--images 512] [--clients 16] [--rounds 3]
           [--latency 200] [--repeats 1] [--data EXTRACTED_CIFAR10] [--keep]
           [--serve-args="--batch-wait-ms 2"]
A full run: --per-class 500 --val-per-class 100 --epochs 5 --fine-tune-epochs 5 --images 2048
--rounds 5 --latency 1000 --repeats 3. The server, its jobs and the clients share one machine,
and other load on it moves every figure: compare figures from one run only.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import WEIGHTS, cifar_jpegs, subset

from retrain.machine import cpu_model

MODEL = "cifar"  # the data folder under the data root, and the model's name


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def env(**extra: str) -> dict[str, str]:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **extra)


def stage(args, tmp: Path) -> tuple[Path, Path, list[Path]]:
    """ROOT/cifar/{train,validation}/<class>/ (hard links), ROOT/<weights>.h5 (a copy: the
    service refuses paths that resolve outside its data roots), and --images test files
    beyond the validation ones, classes interleaved; -> (data root, weights, images)."""
    root, data_root, skip = cifar_jpegs(tmp, args.data), tmp / "roots", args.val_per_class
    subset(root, "train", args.per_class, data_root / MODEL / "train")
    subset(root, "test", skip, data_root / MODEL / "validation")
    weights = Path(shutil.copy(WEIGHTS, data_root / WEIGHTS.name))
    classes = sorted((root / "test").iterdir())
    per_class = -(-args.images // len(classes))
    columns = [sorted(c.iterdir())[skip:skip + per_class] for c in classes]
    return data_root, weights, [f for row in zip(*columns) for f in row][:args.images]


def run(cmd: list[str], log: Path, **extra: str) -> float:
    """`python -m retrain CMD` to its end, its output to `log`; -> seconds. Exits if it fails."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "retrain", *cmd], capture_output=True, text=True, env=env(**extra))
    log.write_text(done.stdout + done.stderr)
    if done.returncode:
        sys.exit(f"failed: retrain {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def cli_walls(args, data: Path, weights: Path, tmp: Path, i: int) -> tuple[float, float]:
    """`retrain fit` then `retrain export`, a fresh RETRAIN_CACHE_DIR; -> (fit s, export s)."""
    runs, cache = tmp / "cli-runs", str(tmp / f"cli-cache-{i}")
    runs.mkdir(exist_ok=True)
    fit = run(["fit", "--data", str(data), "--backbone", "mobilenet_v2", "--alpha", "0.35", "--image-size",
               str(args.image_size), "--weights", str(weights), "--epochs", str(args.epochs), "--fine-tune-epochs",
               str(args.fine_tune_epochs), "--runs-dir", str(runs), "--name", f"cli-{i}"],
              runs / f"fit-{i}.log", RETRAIN_CACHE_DIR=cache)
    return fit, run(["export", str(runs / f"cli-{i}"), "--format", "savedmodel"], runs / f"export-{i}.log",
                    RETRAIN_CACHE_DIR=cache)


class Server:
    """`retrain serve --port 0 --home HOME --data-root ROOT` in a subprocess."""

    def __init__(self, home: Path, data_root: Path, flags: list[str]):
        self.home, self.job, log = home, None, home.with_name(home.name + "-server.log")
        self.proc = subprocess.Popen([sys.executable, "-m", "retrain", "serve", "--port", "0", "--home", str(home),
                                      "--data-root", str(data_root), *flags], stdout=subprocess.PIPE,
                                     stderr=open(log, "wb"), env=env())
        line = self.proc.stdout.readline().decode()
        if "listening on " not in line:
            sys.exit(f"the server did not start: {line!r}\n{log.read_text()[-3000:]}")
        self.url = line.split("listening on ")[1].split()[0]

    def call(self, path: str, body: bytes | None = None) -> dict:
        request = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        """Cancel a job still running (its process outlives the server), SIGTERM, then SIGKILL."""
        if self.proc.poll() is None:
            try:
                if self.job and self.call(f"/v1/jobs/{self.job}")["state"] in ("queued", "running"):
                    self.call(f"/v1/jobs/{self.job}:cancel", b"")
            except OSError as err:  # urllib's errors; the server's log says more
                print(f"could not cancel job {self.job}: {err}", file=sys.stderr)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def job_wall(args, server: Server, weights: Path) -> tuple[float, dict]:
    """POST the job, poll it every 0.1 s; -> (seconds to `succeeded`, seconds of each stage)."""
    spec = {"model": MODEL, "data": MODEL, "backbone": "mobilenet_v2", "alpha": 0.35, "image_size": args.image_size,
            "weights": str(weights), "epochs": args.epochs, "fine_tune_epochs": args.fine_tune_epochs}
    posted, start = time.time(), time.perf_counter()
    server.job = server.call("/v1/jobs", json.dumps(spec).encode())["id"]
    while (job := server.call(f"/v1/jobs/{server.job}"))["state"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.1)
    wall, folder = time.perf_counter() - start, server.home / "jobs" / server.job
    if job["state"] != "succeeded":
        sys.exit(f"the job ended {job['state']}: {job['error']}\n{(folder / 'log.txt').read_text()[-3000:]}")
    at = {}  # each event's first time
    for event in map(json.loads, (folder / "events.jsonl").read_text().splitlines()):
        at.setdefault(event["event"], event["time"])
    evaluated = (folder / "run" / "eval" / job["metrics"]["split"] / "metrics.json").stat().st_mtime
    exported = (folder / "run" / "export" / "savedmodel" / "saved_model.pb").stat().st_mtime
    return wall, {"queued -> process": at["started"] - posted, "fit": at["trained"] - at["started"],
                  "evaluate": evaluated - at["trained"], "export": exported - evaluated,
                  "publish": at["succeeded"] - exported, "-> state seen": posted + wall - at["succeeded"]}


def walls(args, tmp: Path, data_root: Path, weights: Path, flags: list[str], servers: list[Server]) -> float:
    """Measurement 1, --repeats times in alternating order, each job on a fresh home (a cold
    cache); -> job / CLI, the fastest of each (other load on the machine only slows a run
    down). The last server stays up (servers[-1])."""
    cli, jobs = [], []
    for r in range(args.repeats):
        for kind in ("cli", "job") if r % 2 == 0 else ("job", "cli"):
            if kind == "cli":
                cli.append(cli_walls(args, data_root / MODEL, weights, tmp, r))
                print(f"  CLI #{r + 1}: fit {cli[-1][0]:.1f} s + export {cli[-1][1]:.1f} s = {sum(cli[-1]):.1f} s")
                continue
            if servers:
                servers[-1].stop()
            servers.append(Server(tmp / f"home-{r}", data_root, flags))
            jobs.append(job_wall(args, servers[-1], weights))
            print(f"  job #{r + 1}: {jobs[-1][0]:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in jobs[-1][1].items())
                  + ")")
    cli_s, (job_s, stages) = min(sum(c) for c in cli), min(jobs, key=lambda j: j[0])
    evaluation = stages["evaluate"]  # the job's; the CLI pair does not evaluate
    print(f"1. job {job_s:.1f} s / CLI fit + export {cli_s:.1f} s = {job_s / cli_s:.2f} (target <= 1.1); "
          f"without its evaluation ({evaluation:.1f} s): {(job_s - evaluation) / cli_s:.2f}")
    return job_s / cli_s


def in_process(folder: Path, blobs: list[bytes], batch: int) -> tuple[float, float, float]:
    """serving_default in this process on batches; -> (images/s, CPU s per image, the median
    ms of a 1-image call)."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(folder)).signatures["serving_default"]

    def call(images: list[bytes]) -> float:
        start = time.perf_counter()
        [v.numpy() for v in signature(image_bytes=tf.constant(images)).values()]
        return time.perf_counter() - start

    call(blobs[:batch]), call(blobs[:1])  # warm-up: traces and allocates
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(blobs), batch):
        call(blobs[i:i + batch])
    rate, cpu = len(blobs) / (time.perf_counter() - start), (time.process_time() - cpu) / len(blobs)
    return rate, cpu, statistics.median(call(blobs[i:i + 1]) for i in range(50)) * 1000


def library_predict(run_folder: Path, files: list[Path]) -> tuple[float, float]:
    """retrain.predict(run, files); -> (images/s of the whole call, seconds of a 1-image call)."""
    import retrain

    start = time.perf_counter()
    retrain.predict(run_folder, files[:1])
    one, start = time.perf_counter() - start, time.perf_counter()
    retrain.predict(run_folder, files)
    return len(files) / (time.perf_counter() - start), one


def http(server: Server, bodies: list[bytes], clients: int, images: int) -> tuple[float, float, float]:
    """`clients` threads POSTing the bodies to :predict until all are done; -> (images/s,
    server CPU s per image, this process's (the clients') CPU s per image)."""
    def post(body: bytes) -> int:
        return len(server.call(f"/v1/models/{MODEL}:predict", body)["predictions"])

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(post, bodies[:clients]))  # the threads up, the model loaded
        start, cpu, served = time.perf_counter(), time.process_time(), cpu_seconds(server.proc.pid)
        assert sum(pool.map(post, bodies)) == images
        wall = time.perf_counter() - start
    return images / wall, (cpu_seconds(server.proc.pid) - served) / images, (time.process_time() - cpu) / images


def predict_speed(args, server: Server, files: list[Path]) -> tuple[float, float, float]:
    """Measurements 2 and 3, in-process and HTTP in turn --rounds times, the best of each
    compared (other load on the machine only slows a round down); -> (HTTP / in-process
    img/s, p50 ms, p99 ms)."""
    blobs = [f.read_bytes() for f in files]
    bodies = {per: [json.dumps({"instances": [{"b64": base64.b64encode(b).decode()} for b in blobs[i:i + per]]})
                    .encode() for i in range(0, len(blobs), per)] for per in (1, 8)}
    version = server.home / "models" / MODEL / "1"
    local, remote = [], []
    for r in range(args.rounds):
        local.append(in_process(version, blobs, args.batch_size))
        remote.append(http(server, bodies[1], args.clients, len(blobs)))
        print(f"  round {r + 1}: in process {local[-1][0]:.0f} img/s ({local[-1][1] * 1000:.1f} ms CPU/img); HTTP "
              f"{remote[-1][0]:.0f} img/s (CPU/img: server {remote[-1][1] * 1000:.1f} ms, clients "
              f"{remote[-1][2] * 1000:.1f} ms) = {remote[-1][0] / local[-1][0]:.2f}")
    best, best_http = max(rate for rate, _, _ in local), max(rate for rate, _, _ in remote)
    print(f"2. in process, serving_default on batches of {args.batch_size}: {best:.0f} img/s; HTTP, {args.clients} "
          f"clients x 1 image a request: {best_http:.0f} img/s = {best_http / best:.2f} x (target >= 0.7)")
    rate, server_cpu, client_cpu = http(server, bodies[8], args.clients, len(blobs))
    print(f"   HTTP, {args.clients} clients x 8 images a request: {rate:.0f} img/s = {rate / best:.2f} x in-process "
          f"(CPU/img: server {server_cpu * 1000:.1f} ms, clients {client_cpu * 1000:.1f} ms)")
    library, one = library_predict(Path(json.loads((version / "retrain.json").read_text())["run"]), files)
    print(f"   retrain.predict(run, files): {library:.0f} img/s, the whole call with the model's load (a 1-image "
          f"call takes {one:.1f} s)")
    times = []
    for i in range(args.latency):
        start = time.perf_counter()
        server.call(f"/v1/models/{MODEL}:predict", bodies[1][i % len(blobs)])
        times.append((time.perf_counter() - start) * 1000)
    cuts = statistics.quantiles(times, n=100)
    print(f"3. one client, {args.latency} sequential single-image requests: p50 {cuts[49]:.1f} ms, p99 "
          f"{cuts[98]:.1f} ms (in process, a 1-image call: {statistics.median(one for _, _, one in local):.1f} ms)")
    return best_http / best, cuts[49], cuts[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=50, help="validation images per class (test split)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--fine-tune-epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--images", type=int, default=512, help="images predicted (test split)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32, help="the server's --batch-size and in-process batches")
    parser.add_argument("--rounds", type=int, default=3, help="in-process and HTTP throughput in turn; best of each")
    parser.add_argument("--latency", type=int, default=200, help="sequential requests for p50/p99")
    parser.add_argument("--repeats", type=int, default=1, help="job and CLI pairs, in alternating order")
    parser.add_argument("--data", type=Path, default=None, help="an extracted cifar10/ folder (train/, test/)")
    parser.add_argument("--serve-args", default="", help='more `retrain serve` flags, e.g. "--batch-wait-ms 2"')
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and say where")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before this process imports TensorFlow
    tmp, servers = Path(tempfile.mkdtemp(prefix="serve-speed-")), []
    flags = ["--batch-size", str(args.batch_size), *shlex.split(args.serve_args)]
    try:
        data_root, weights, files = stage(args, tmp)
        print(f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f}; "
              f"MobileNetV2 0.35 at {args.image_size} px, CIFAR-10 {args.per_class} train + {args.val_per_class} "
              f"validation a class, {args.epochs} + {args.fine_tune_epochs} epochs; {len(files)} test images "
              f"predicted; serve flags: {' '.join(flags)}")
        job_ratio = walls(args, tmp, data_root, weights, flags, servers)
        http_ratio, p50, p99 = predict_speed(args, servers[-1], files)
        print(f"\n{'figure':<44}{'value':>8}  target  result  ({cpu_model()}, load average {os.getloadavg()[0]:.1f})")
        for name, value, target, ok in (
                ("job wall / CLI fit + export", job_ratio, "<= 1.1", job_ratio <= 1.1),
                (f"HTTP {args.clients} clients / in-process img/s", http_ratio, ">= 0.7", http_ratio >= 0.7),
                ("single-image p50 ms", p50, "", None), ("single-image p99 ms", p99, "", None)):
            print(f"{name:<44}{value:>8.2f}  {target:<6}  {'' if ok is None else 'PASS' if ok else 'MISS'}")
    finally:
        for server in servers:
            server.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
