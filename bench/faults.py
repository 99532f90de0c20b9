"""The fault harness: kill `retrain fit` at every named point and resume it, fill the disk
under each writer, feed hostile files to every command; one summary table. Run by hand (10-20
minutes on 2 cores), not in the test suite:

    python bench/faults.py [--only kill|disk|badfiles] [--keep DIR]

kill: a small real two-phase fit (MobileNetV2 0.35 at 48 px, frozen through block_12_add, so
both phases train on cached bottlenecks) runs once to the end as the reference; then, for
each point, a fresh copy is killed (SIGKILL, by RETRAIN_KILL_AT=NAME[:N] of
retrain/faultpoints.py, or by the clock at a fraction of the reference's wall time) and
continued (`fit --resume RUN` when the run folder has config.json, else the same command).
Survived: the continuation exits 0, model.keras's weights and history.csv match the
reference's (atol 1e-6), no *.tmp* file is left in the run or cache folder, `retrain runs`
says finished, no traceback anywhere. Files lost: a file the reference run (or its cold
cache) has that the continued one lacks.
disk (root only): a small tmpfs, filled so that too little is left, under prepare-cifar's
--root, fit's --cache-dir, fit's --runs-dir and export's --output: exit 1 with one `error:`
line naming the folder and the bytes needed, no traceback, no partial file left; then,
the filler deleted, the same command succeeds.
badfiles: tests/hostile_files.py's corpus through check, fit, evaluate and predict; a point
per file per command: used, or skipped and named.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from common import WEIGHTS  # noqa: E402
from retrain.machine import cpu_model  # noqa: E402

PARTS = ("kill", "disk", "badfiles")
TIMEOUT = 600  # seconds any one command may take before it counts as a hang
COLOURS = {"cyan": (0, 255, 255), "grey": (128, 128, 128), "magenta": (255, 0, 255), "yellow": (255, 255, 0)}
KILL_POINTS = ["preflight-done", "run-created", "extract-batch:1", "extract-batch:2", "cache-file-written:1",
               "cache-file-written:3", "frozen-saved", "step:3", "step:9", "step:21", "step:29",
               "step-checkpoint-saved:1", "step-checkpoint-saved:6", "epoch-end:1", "epoch-end:3",
               "best-saved:1", "step:16", "epoch-checkpoint-saved:2", "epoch-checkpoint-saved:3",
               "phase-switch", "model-written"]
# (best-saved:2 is no point: the reference's validation loss improves in its first epoch only.)
TIME_FRACTIONS = (0.15, 0.3, 0.45, 0.6, 0.75, 0.9)
# The points whose killed run gets a cold cache of its own (the others share a warm one).
COLD = ("extract-batch", "cache-file-written", "preflight-done", "run-created", "frozen-saved", "step:3")


@dataclass
class Part:
    name: str
    tried: int = 0
    survived: int = 0
    tracebacks: int = 0
    lost: int = 0
    seconds: float = 0.0
    skipped: str = ""
    failures: list[str] = field(default_factory=list)

    def record(self, point: str, problems: list[str], outputs: list[str] = (), lost: int = 0) -> None:
        self.tried += 1
        traced = sum("Traceback" in text for text in outputs)
        self.tracebacks += traced
        self.lost += lost
        if traced:
            problems = problems + [f"traceback: {_last_traceback_line(outputs)}"]
        if problems:
            self.failures.append(f"{self.name} {point}: " + "; ".join(problems))
        else:
            self.survived += 1
        print(f"  {self.name} {point}: {'ok' if not problems else 'FAILED: ' + '; '.join(problems)}", flush=True)


def _last_traceback_line(outputs) -> str:
    for text in outputs:
        if "Traceback" in text:
            lines = [line for line in text.split("Traceback", 1)[1].splitlines() if line.strip()]
            return lines[-1].strip()[:200] if lines else "?"
    return "?"


def env(**extra) -> dict[str, str]:
    values = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0", **extra)
    values["PYTHONPATH"] = str(REPO) + os.pathsep + values.get("PYTHONPATH", "")
    values.pop("RETRAIN_KILL_AT", None)
    values.update(extra)
    return values


def retrain(args: list[str], log: Path, kill_at: str | None = None, kill_after: float | None = None,
            timeout: float = TIMEOUT) -> tuple[int, str]:
    """`python -m retrain ARGS`, output appended to `log`; -> (exit code, this call's output).
    A hang is killed at `timeout` and reported as exit code -999."""
    extra = {"RETRAIN_KILL_AT": kill_at} if kill_at else {}
    with open(log, "ab") as out:
        start = out.tell()
        proc = subprocess.Popen([sys.executable, "-m", "retrain", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env(**extra), cwd=str(REPO))
        try:
            code = proc.wait(kill_after if kill_after is not None else timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            code = -signal.SIGKILL if kill_after is not None else -999
    with open(log, "rb") as f:
        f.seek(start)
        return code, f.read().decode("utf-8", "replace")



# --- kill ------------------------------------------------------------------------------------

def make_images(root: Path, train: int = 16, validation: int = 5, size: int = 48) -> Path:
    rng = np.random.default_rng(0)
    for side, count in (("train", train), ("validation", validation)):
        for name, rgb in COLOURS.items():
            (root / side / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(np.asarray(rgb, float) + rng.normal(0, 30, (size, size, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(root / side / name / f"{name}_{i:02d}.png")
    return root


def fit_command(data: Path, runs: Path, name: str, cache: Path) -> list[str]:
    return ["fit", "--data", str(data), "--runs-dir", str(runs), "--name", name, "--cache-dir", str(cache),
            "--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", str(WEIGHTS), "--image-size", "48",
            "--freeze", "block_12_add", "--epochs", "2", "--fine-tune-epochs", "2", "--batch-size", "8",
            "--save-every-steps", "3", "--learning-rate", "0.01", "--fine-tune-learning-rate", "0.001",
            "--schedule", "cosine", "--seed", "3"]


def files_under(folder: Path) -> set[str]:
    """Relative paths of the files under `folder`, TensorBoard's (named by time and host) left out."""
    if not folder.is_dir():
        return set()
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and "events.out.tfevents" not in p.name}


def kept_names(run: Path) -> set[str]:
    """What a finished run must hold: its top-level entries (checkpoint numbers may differ)."""
    return {p.name for p in run.iterdir()} - {"logs"} if run.is_dir() else set()


def same_history(a: Path, b: Path) -> str:
    """"" when history.csv files match (atol 1e-6), else what differs."""
    def rows(path):
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    try:
        ra, rb = rows(a), rows(b)
    except OSError as err:
        return f"history.csv: {err}"
    if len(ra) != len(rb) or (ra and ra[0].keys() != rb[0].keys()):
        return f"history.csv: {len(rb)} rows, the reference {len(ra)}"
    for i, (x, y) in enumerate(zip(ra, rb)):
        for key in x:
            if abs(float(x[key]) - float(y[key])) > 1e-6:
                return f"history.csv row {i} {key}: {y[key]}, the reference {x[key]}"
    return ""


def same_weights(a: Path, b: Path) -> str:
    """"" when model.keras's weights match (atol 1e-6), else what differs. In a subprocess:
    this process stays free of TensorFlow."""
    code = ("import sys, numpy as np, keras, retrain.model\n"
            "wa, wb = (keras.saving.load_model(p, compile=False).get_weights() for p in sys.argv[1:])\n"
            "bad = [i for i, (x, y) in enumerate(zip(wa, wb)) if x.shape != y.shape or not np.allclose(x, y, rtol=0, atol=1e-6)]\n"
            "print('OK' if len(wa) == len(wb) and not bad else f'weights differ: {len(wa)} vs {len(wb)} arrays, "
            "differing {bad[:5]}, max {max((float(np.abs(wa[i] - wb[i]).max()) for i in bad if wa[i].shape == wb[i].shape), default=0):.3g}')")
    done = subprocess.run([sys.executable, "-c", code, str(a), str(b)], capture_output=True, text=True, env=env(),
                          timeout=TIMEOUT)
    out = done.stdout.strip().splitlines()
    return "" if out and out[-1] == "OK" else (out[-1] if out else done.stderr.strip().splitlines()[-1][:200])


def leftovers(*folders: Path) -> list[str]:
    return sorted(str(p) for folder in folders if folder.is_dir() for p in folder.rglob("*") if ".tmp" in p.name)


def run_kill(work: Path, part: Part, wanted: set[str] = frozenset()) -> None:
    data = make_images(work / "data")
    runs, log = work / "runs", work / "kill.log"
    warm = work / "cache-warm"
    start = time.monotonic()
    code, out = retrain(fit_command(data, runs, "reference", warm), log)
    wall = time.monotonic() - start
    if code != 0:
        part.record("reference", [f"the reference run failed, exit {code}: {out[-500:]}"], [out])
        return
    reference = runs / "reference"
    ref_run_files = kept_names(reference)
    ref_cache_files = files_under(warm)
    print(f"  reference run: {wall:.0f} s; run folder {sorted(ref_run_files)}", flush=True)
    points = [(p, None) for p in KILL_POINTS] + [(f"time:{f:.2f}", f * wall) for f in TIME_FRACTIONS]
    if wanted:
        points = [(p, after) for p, after in points if p in wanted]
    for point, after in points:
        name = re.sub(r"[^a-z0-9]+", "-", point)
        # Killed by the clock: a cold cache, as the reference had (a warm one ends sooner).
        cold = point.startswith(COLD) or after is not None
        cache = work / f"cache-{name}" if cold else warm
        args = fit_command(data, runs, name, cache)
        problems, outputs = [], []
        code, out = retrain(args, log, kill_at=None if after else point, kill_after=after)
        outputs.append(out)
        if code == 0:
            problems.append("the run ended before the kill point" if after is None else
                            "the run ended before the kill time")
        elif code != -signal.SIGKILL:
            problems.append(f"the killed run exited {code} before its kill: {out.strip().splitlines()[-1:]}")
        run = runs / name
        again = ["fit", "--resume", str(run)] if (run / "config.json").is_file() else args
        code, out = retrain(again, log)
        outputs.append(out)
        if code != 0:
            problems.append(f"the continuation ({again[1]}) exited {code}: {out.strip().splitlines()[-1:]}")
        else:
            problems += [p for p in (same_weights(reference / "model.keras", run / "model.keras"),
                                     same_history(reference / "history.csv", run / "history.csv")) if p]
        left = leftovers(run, cache)
        if left:
            problems.append(f"temporary files left: {left[:3]}")
        lost = sorted(ref_run_files - kept_names(run))
        if cold:
            lost += sorted(f"cache/{f}" for f in ref_cache_files - files_under(cache))
        if lost:
            problems.append(f"files lost: {lost[:5]}")
        code, listed = retrain(["runs", "--runs-dir", str(runs)], log)
        outputs.append(listed)
        line = next((line for line in listed.splitlines() if line.split()[:1] == [name]), "")
        if "finished" not in line:
            problems.append(f"`retrain runs` says: {line.strip() or 'nothing'}")
        part.record(point, problems, outputs, len(lost))
        if not problems:
            shutil.rmtree(run, ignore_errors=True)  # keeps `retrain runs` short and the disk free
            if cold:
                shutil.rmtree(cache, ignore_errors=True)


# --- disk ------------------------------------------------------------------------------------

def mounted_small(folder: Path, size_mb: int) -> str:
    """Mount a tmpfs of size_mb at `folder`; -> "" or why it could not be."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}M", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    return "" if done.returncode == 0 else (done.stderr.strip() or f"mount exited {done.returncode}")


def fill(folder: Path, leave: int) -> Path:
    """A filler file taking all but `leave` bytes of the file system under `folder`."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as f:
        chunk = b"\0" * 2**20
        todo = max(free - leave, 0)
        while todo > 0:
            f.write(chunk[: min(todo, len(chunk))])
            todo -= min(todo, len(chunk))
    return filler


def check_full_disk(part: Part, point: str, args: list[str], small: Path, leave: int, log: Path,
                    leftover_ok=lambda p: False, need_bytes: bool = False) -> None:
    """`args` on a nearly full `small`: one error line naming the folder and the bytes free
    (and, `need_bytes`, the bytes needed: known before the write only for the cache's memory
    map), nothing partial left; then with room, success."""
    filler = fill(small, leave)
    problems = []
    code, out = retrain(args, log)
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    if code != 1:
        problems.append(f"exit {code} on a full disk (want 1): {out.strip().splitlines()[-1:]}")
    if len(errors) != 1:
        problems.append(f"{len(errors)} error lines (want 1)")
    elif not (str(small) in errors[0] and re.search(r"\d", errors[0])):
        problems.append(f"the error line names no folder or bytes: {errors[0][:200]}")
    elif need_bytes and not re.search(r"bytes needed", errors[0]):
        problems.append(f"the error line does not say how many bytes were needed: {errors[0][:200]}")
    left = [p for p in leftovers(small) if not leftover_ok(p)]
    if left:
        problems.append(f"partial files left: {left[:3]}")
    filler.unlink()
    # The same command, or (as the error line says) --resume for a fit whose run folder was made.
    run = Path(args[args.index("--runs-dir") + 1]) / args[args.index("--name") + 1] if args[0] == "fit" else None
    code2, out2 = retrain(["fit", "--resume", str(run)] if run and (run / "config.json").is_file() else args, log)
    if code2 != 0:
        problems.append(f"with room again, exit {code2}: {out2.strip().splitlines()[-1:]}")
    part.record(point, problems, [out, out2])


def run_disk(work: Path, part: Part) -> None:
    from cifar_fixtures import build_cifar10

    archive = build_cifar10(work / "cifar-10-python.tar.gz", train_per_class=20, test_per_class=4).path
    data = make_images(work / "data")
    small = work / "small"
    why = mounted_small(small, 48)
    if why:
        part.skipped = f"cannot mount a tmpfs ({why}); run as root"
        return
    log = work / "disk.log"
    try:
        check_full_disk(part, "prepare-cifar --root", ["prepare-cifar", "--source", str(archive), "--root",
                                                       str(small / "datasets"), "--workers", "1"],
                        small, 64 * 1024, log)
        shutil.rmtree(small / "datasets", ignore_errors=True)
        base = fit_command(data, work / "runs", "disk-cache", small / "cache")
        check_full_disk(part, "fit --cache-dir", base, small, 64 * 1024, log)
        shutil.rmtree(small / "cache", ignore_errors=True)
        shutil.rmtree(work / "runs" / "disk-cache", ignore_errors=True)
        # Room for the file index and the pointers, not for the rows: the memory map's check.
        check_full_disk(part, "fit --cache-dir (rows)", base, small, 160 * 1024, log, need_bytes=True)
        shutil.rmtree(small / "cache", ignore_errors=True)
        shutil.rmtree(work / "runs" / "disk-cache", ignore_errors=True)
        runs_args = fit_command(data, small / "runs", "disk-runs", work / "cache-disk")
        check_full_disk(part, "fit --runs-dir", runs_args, small, 2 * 2**20, log)
        finished = small / "runs" / "disk-runs"
        if (finished / "model.keras").is_file():
            # export's turn: the finished run moves off the small disk, the output stays on it.
            shutil.move(str(finished), str(work / "runs" / "disk-runs"))
            shutil.rmtree(small / "runs", ignore_errors=True)
            check_full_disk(part, "export --output", ["export", str(work / "runs" / "disk-runs"), "--format",
                                                      "tflite", "--output", str(small / "export" / "model.tflite")],
                            small, 64 * 1024, log)
        else:
            part.record("export --output", ["no finished run to export (fit --runs-dir failed)"])
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


# --- badfiles --------------------------------------------------------------------------------

def run_badfiles(work: Path, part: Part) -> None:
    import test_hostile_files as expected
    from hostile_files import write_corpus

    root = work / "hostile"
    made = write_corpus(root)
    skipped = set(made) - expected.USED - expected.IGNORED
    log = work / "badfiles.log"

    def shown(relative: str) -> str:
        return os.fsencode(str(root / relative)).decode("utf-8", "backslashreplace")

    code, out = retrain(["check", str(root)], log)
    for relative in sorted(made):
        named = f"\n  {shown(relative)}: " in out
        want = relative in skipped
        part.record(f"check {relative}", [] if code == 0 and named == want else
                    [f"exit {code}; named unreadable: {named}, should be: {want}"], [out])
    runs = work / "hostile-runs"
    code, fit_out = retrain(["fit", "--data", str(root), "--runs-dir", str(runs), "--name", "hostile",
                             "--backbone", "tiny_cnn", "--weights", "none", "--image-size", "32", "--epochs", "1",
                             "--fine-tune-epochs", "1", "--freeze", "none", "--batch-size", "8"], log)
    facts = {}
    if (runs / "hostile" / "run.json").is_file():
        facts = json.loads((runs / "hostile" / "run.json").read_text())
    want_train = 3 * 8 + sum(f.startswith("train/") for f in expected.USED)
    count_ok = facts.get("train_images") == want_train
    told = re.search(r"skipped (\d+) unreadable image\(s\): (.*)", fit_out)
    for relative in sorted(made):
        problems = [] if code == 0 else [f"exit {code}"]
        if relative in skipped:
            if not told or int(told.group(1)) != len(skipped):
                problems.append("not counted among the skipped")
            elif shown(relative) not in told.group(2).replace("\\udc", "\\x"):
                problems.append("counted but not named (fit names the first 5 skipped files only)"
                                if " more" in told.group(2) else "not named")
        elif relative in expected.USED and not count_ok:
            problems.append(f"run.json counts {facts.get('train_images')} training images, want {want_train}")
        part.record(f"fit {relative}", problems, [fit_out])
    if code != 0:
        return
    run = runs / "hostile"
    for side in ("train", "validation"):
        code, out = retrain(["evaluate", str(run), "--data", str(root / side)], log)
        told = re.search(r"skipped (\d+) unreadable image\(s\): (.*)", out)
        listed = told.group(2).replace("\\udc", "\\x") if told else ""
        side_skipped = {f for f in skipped if f.startswith(f"{side}/")}
        for relative in sorted(f for f in made if f.startswith(f"{side}/")):
            problems = [] if code == 0 else [f"exit {code}"]
            if relative in side_skipped:
                if not told or int(told.group(1)) != len(side_skipped):
                    problems.append("not counted among the skipped")
                elif shown(relative) not in listed:
                    problems.append("counted but not named (evaluate names the first 5 skipped files only)"
                                    if " more" in listed else "not named")
            elif shown(relative) in listed:
                problems.append("named as skipped, but should be used")
            part.record(f"evaluate {relative}", problems, [out])
    code, out = retrain(["predict", str(run), str(root), "--json"], log)
    unreadable = skipped - expected.PILLOW_ONLY
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    for relative in sorted(made):
        if relative in expected.IGNORED or relative == "train/cyan/x.jpg":
            continue
        problems = [] if code == 1 else [f"exit {code} (want 1: some files are unreadable)"]
        named = sum(f"(received: {shown(relative)})" in line for line in errors)
        if named != (relative in unreadable):
            problems.append(f"{named} error lines name it, want {int(relative in unreadable)}")
        part.record(f"predict {relative}", problems, [out])


# --- main ------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=PARTS, action="append", help="Run these parts only (repeatable).")
    parser.add_argument("--points", help="kill: only these points, comma-separated (e.g. step:16,time:0.75).")
    parser.add_argument("--keep", type=Path, help="Work in this folder and keep it (default: a temporary one).")
    options = parser.parse_args()
    print(f"CPU: {cpu_model()}", flush=True)
    chosen = options.only or list(PARTS)
    results = []
    work_root = options.keep or Path(tempfile.mkdtemp(prefix="retrain-faults-"))
    try:
        for name in chosen:
            part = Part(name)
            work = work_root / name
            work.mkdir(parents=True, exist_ok=True)
            print(f"{name}:", flush=True)
            start = time.monotonic()
            if name == "kill":
                run_kill(work, part, set(options.points.split(",")) if options.points else set())
            else:
                {"disk": run_disk, "badfiles": run_badfiles}[name](work, part)
            part.seconds = time.monotonic() - start
            results.append(part)
    finally:
        if options.keep is None:
            subprocess.run(["chmod", "-R", "u+rwX", str(work_root)], capture_output=True)
            shutil.rmtree(work_root, ignore_errors=True)
    print()
    print(f"{'part':<10}{'points tried':>14}{'survived':>10}{'tracebacks':>12}{'files lost':>12}{'seconds':>9}")
    for part in results:
        if part.skipped:
            print(f"{part.name:<10}  skipped: {part.skipped}")
            continue
        print(f"{part.name:<10}{part.tried:>14}{part.survived:>10}{part.tracebacks:>12}{part.lost:>12}"
              f"{part.seconds:>9.0f}")
    failures = [f for part in results for f in part.failures]
    if failures:
        print()
        print("\n".join(f"failed: {f}" for f in failures))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
