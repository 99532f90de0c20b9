"""retrain serve end to end: the real server on a loopback port, driven over HTTP.

Upload a zip of tiny generated images -> a job -> its progress as server-sent events ->
succeeded -> version 1 -> predictions in TF Serving's forms; a second job -> version 2, both
queryable; the registry on disk in TF Serving's layout.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from serve_fixtures import Server, b64, colour_zip, kill_workers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    server = Server(folder / "home").start()
    dataset = server.upload(colour_zip(folder))
    yield server, dataset, folder
    server.stop()
    kill_workers(server.home)


@pytest.fixture(scope="module")
def first_job(served):
    server, dataset, _ = served
    job = server.submit(dataset["id"])
    return job, server.wait(job)


def test_upload_answers_the_check_report(served):
    _, dataset, _ = served
    assert dataset["classes"] == ["cyan", "magenta", "yellow"]
    assert dataset["layout"].startswith("train/ + validation/")
    assert dataset["counts"]["train"] == {"cyan": 8, "magenta": 8, "yellow": 8}
    assert dataset["files"] == 36 and dataset["skipped"] == [] and dataset["unreadable"] == []


def test_job_streams_progress_and_publishes_version_1(served, first_job):
    server, dataset, _ = served
    job, done = first_job
    assert done["state"] == "succeeded", done
    assert done["version"] == 1 and done["metrics"]["accuracy"] == 1.0
    assert done["progress"]["epoch"] == done["progress"]["epochs"] == 4
    # The event stream replays the whole job (from offset 0) and ends since the job has ended.
    with urllib.request.urlopen(f"{server.url}/v1/jobs/{job}/events", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = response.read().decode()
    data = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    kinds = [d["event"] for d in data]
    assert kinds[0] == "state" and "started" in kinds and kinds[-1] == "state"
    progress = [d for d in data if d["event"] == "progress"]
    assert {p["phase"] for p in progress} == {1, 2}
    assert progress[-1]["epoch"] == 4 and progress[-1]["val_accuracy"] == 1.0
    assert data[-1] == {**data[-1], "state": "succeeded", "version": 1}
    # Going on from an event id sends only what follows it.
    ids = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
    request = urllib.request.Request(f"{server.url}/v1/jobs/{job}/events", headers={"Last-Event-ID": str(ids[-2])})
    with urllib.request.urlopen(request, timeout=30) as response:
        rest = [json.loads(line[6:]) for line in response.read().decode().splitlines() if line.startswith("data: ")]
    assert rest == data[-1:]
    status, log = server.get(f"/v1/jobs/{job}/log?tail=50")
    assert status == 200 and "done: best epoch" in log


def test_events_arrive_live_while_the_job_trains(served, first_job):
    server, dataset, _ = served
    job = server.submit(dataset["id"], model="live", epochs=3, fine_tune_epochs=0)
    seen = []
    with urllib.request.urlopen(f"{server.url}/v1/jobs/{job}/events", timeout=120) as response:
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("data: "):
                event = json.loads(line[6:])
                state = server.get(f"/v1/jobs/{job}")[1]["state"]
                seen.append((event["event"], state))
    assert ("progress", "running") in seen  # a progress event read while the job still ran
    assert seen[-1][0] == "state"
    assert server.get(f"/v1/jobs/{job}")[1]["state"] == "succeeded"


def test_predict_speaks_tf_serving_forms(served, first_job):
    server, _, folder = served
    files = sorted((folder / "colours" / "validation").glob("*/*.png"))
    truth = [f.parent.name for f in files]
    status, answer = server.post("/v1/models/colours:predict", {"instances": [b64(f) for f in files]})
    assert status == 200, answer
    assert [p["classes"][0] for p in answer["predictions"]] == truth
    first = answer["predictions"][0]
    assert set(first) == {"probabilities", "classes", "scores"}
    assert len(first["probabilities"]) == 3 and abs(sum(first["probabilities"]) - 1) < 1e-4
    assert first["scores"] == sorted(first["scores"], reverse=True)
    # The named input, a version in the path, and the columnar form give the same answer.
    status, named = server.post("/v1/models/colours/versions/1:predict",
                                {"signature_name": "serving_default",
                                 "instances": [{"image_bytes": b64(f)} for f in files]})
    assert status == 200 and named == answer
    status, columnar = server.post("/v1/models/colours:predict", {"inputs": {"image_bytes": [b64(f) for f in files]}})
    assert status == 200
    assert columnar["outputs"]["classes"] == [p["classes"] for p in answer["predictions"]]


def test_second_job_publishes_version_2_and_both_answer(served, first_job):
    server, dataset, folder = served
    second = server.submit(dataset["id"], seed=1)
    third = server.submit(dataset["id"], model="after", epochs=1, fine_tune_epochs=0)
    assert server.get(f"/v1/jobs/{third}")[1]["state"] == "queued"  # --max-jobs 1: one at a time, FIFO
    done = server.wait(second)
    assert done["state"] == "succeeded" and done["version"] == 2
    after = server.wait(third)
    assert after["state"] == "succeeded" and after["started"] >= done["finished"]
    status, models = server.get("/v1/models")
    assert {"name": "colours", "versions": ["1", "2"]} in models["models"]
    status, answer = server.get("/v1/models/colours")
    assert [s["version"] for s in answer["model_version_status"]] == ["2", "1"]
    assert answer["model_version_status"][0]["status"] == {"error_code": "OK", "error_message": ""}
    image = sorted((folder / "colours" / "validation" / "magenta").glob("*.png"))[0]
    for version in ("1", "2"):
        status, answer = server.post(f"/v1/models/colours/versions/{version}:predict", {"instances": [b64(image)]})
        assert status == 200 and answer["predictions"][0]["classes"][0] == "magenta"
    status, meta = server.get("/v1/models/colours/versions/2/metadata")
    assert meta["model_spec"] == {"name": "colours", "signature_name": "", "version": "2"}
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert meta["metadata"]["labels"] == ["cyan", "magenta", "yellow"]
    assert meta["metadata"]["metrics"]["accuracy"] == 1.0
    # TF Serving's model-base-path layout: integer folders holding a SavedModel.
    base = server.home / "models" / "colours"
    assert sorted(p.name for p in base.iterdir() if not p.name.startswith(".")) == ["1", "2"]
    for version in ("1", "2"):
        assert (base / version / "saved_model.pb").is_file() and (base / version / "variables").is_dir()
        assert (base / version / "labels.txt").read_text().split() == ["cyan", "magenta", "yellow"]
        assert (base / version / "confusion_matrix.png").is_file()


def test_what_the_page_asks_for(served, first_job, tmp_path):
    server, dataset, folder = served
    status, freeze = server.get(f"/v1/freeze?backbone=mobilenet_v2&dataset={dataset['id']}")
    assert status == 200 and freeze["freeze"] == "all" and "8 training images" in freeze["why"]
    assert server.get("/v1/freeze?backbone=nope&dataset=" + dataset["id"])[0] == 400
    status, page = server.get("/")
    assert status == 200 and "<html" in page.lower()
    status, table = server.get("/v1/backbones")
    assert status == 200 and "mobilenet_v2" in [b["name"] for b in table["backbones"]]
    status, image = server.get("/v1/models/colours/versions/1/files/confusion_matrix.png")
    assert status == 200
    assert server.get("/v1/models/colours/versions/1/files/saved_model.pb")[0] == 404
    # Misclassified images are served only from where jobs may read: a row naming a file
    # outside the data roots and the home is refused, whatever the csv says.
    from retrain.serve import registry

    inside = sorted((server.home / "datasets").rglob("*.png"))[0]
    rows = tmp_path / "misclassified.csv"
    rows.write_text("file,true_label,predicted_label,probability\n"
                    f"{inside},cyan,magenta,0.6\n/etc/passwd,cyan,yellow,0.5\n")
    version = registry.publish(server.home / "models", "hand", server.home / "models" / "colours" / "1",
                               {"misclassified.csv": rows}, {"job": "by-hand"})
    status, listed = server.get(f"/v1/models/hand/versions/{version}/misclassified")
    assert status == 200 and [i["file"] for i in listed["images"]] == [inside.name, "passwd"]
    status, raw = server.get(f"/v1/models/hand/versions/{version}/misclassified/0")
    assert status == 200
    status, answer = server.get(f"/v1/models/hand/versions/{version}/misclassified/1")
    assert status == 400 and "outside the folders" in answer["error"]
    assert server.get(f"/v1/models/hand/versions/{version}/misclassified/9")[0] == 404
