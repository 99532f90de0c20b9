"""retrain serve refuses what it must: every bad upload, job spec, path, predict request, route
and credential gets its 4xx with a one-line JSON `{"error": ...}`, and leaves nothing behind.

One server (module-scoped, small limits) takes most of the requests; no test trains: a job spec
is refused before a job exists, and a spec that could pass names an empty data folder so fit's
own check refuses it. The model the predict tests query is an untrained two-class net exported
as `retrain export` exports and published with the registry's own `publish`.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from fit_fixtures import make_colour_data, noisy_colour, subprocess_env
from serve_fixtures import TOY_JOB, Server, colour_zip, kill_workers, png_bytes

pytestmark = pytest.mark.slow

UPLOAD, UNPACKED, FILES, REQUEST = 200 << 10, 1 << 20, 100, 100 << 10
LIMITS = ("--max-upload", "200K", "--max-unpacked", "1M", "--max-upload-files", str(FILES),
          "--max-request", "100K",
          "--batch-wait-ms", "200")  # requests sent together are run as one batch
TOKEN = "0123456789abcdef0123456789abcdef"
XSS = "<img src=x onerror=alert(1)>"
LABELS = ("cyan", "magenta")
OUTSIDE = "outside the folders this server may read"
PNG = png_bytes(noisy_colour((0, 255, 255), np.random.default_rng(0)))  # a 32 px cyan image


def image(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


# --- the server and its folders ------------------------------------------------------------

@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    """root/ (the --data-root: colours/, a dataset; empty/, a folder that is none; escape, a
    symlink to outside/), outside/ (a dataset beyond the root)."""
    folder = tmp_path_factory.mktemp("safety")
    make_colour_data(folder / "root" / "colours")
    (folder / "root" / "empty").mkdir()
    make_colour_data(folder / "outside")
    os.symlink(folder / "outside", folder / "root" / "escape")
    return folder


@pytest.fixture(scope="module")
def served(place):
    server = Server(place / "home", "--data-root", str(place / "root"), *LIMITS).start()
    yield server
    server.stop()
    kill_workers(server.home)


def publish_toy(server: Server, folder: Path) -> str:
    """HOME/models/toy/1: an untrained net (mean colour -> 2 classes) with the serving_default
    and pixels signatures `retrain export` writes, asked once so the server has loaded it, while
    another client lists the models; -> its name."""
    import keras

    from retrain.exports import write_savedmodel
    from retrain.runs import LoadedRun
    from retrain.serve import registry

    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(len(LABELS), activation="softmax")(pooled))
    write_savedmodel(LoadedRun(folder, None, LABELS, 32, 3, "", model), folder / "sm")
    registry.publish(server.home / "models", "toy", folder / "sm", {}, {"job": "test", "labels": list(LABELS)})
    answers = {}
    first = threading.Thread(target=lambda: answers.update(
        first=server.post("/v1/models/toy:predict", {"instances": [image(PNG)]})))
    first.start()
    while first.is_alive():  # the server answers others while it loads TensorFlow and the model
        assert server.get("/v1/models")[0] == 200
        time.sleep(0.1)
    status, answer = answers["first"]
    assert status == 200, answer
    return {"name": "toy"}


@pytest.fixture(scope="module", autouse=True)
def toy_model_meanwhile(request, served, tmp_path_factory):
    """When a test of the run asks for the toy model, TensorFlow loads (here, then in the server)
    from the start, while the other tests run: -> the future of publish_toy."""
    if not any("toy_model" in item.fixturenames for item in request.session.items if item.module is request.module):
        yield None
        return
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        yield pool.submit(publish_toy, served, tmp_path_factory.mktemp("toy-model"))


@pytest.fixture
def toy_model(toy_model_meanwhile) -> str:
    return toy_model_meanwhile.result(timeout=300)["name"]


def refused(answer: tuple[int, object], status: int, *words: str) -> str:
    """The answer is `status` with a JSON body {"error": <one line holding every word>}; -> it."""
    code, body = answer
    assert code == status, answer
    assert isinstance(body, dict) and set(body) == {"error"}, answer
    message = body["error"]
    assert isinstance(message, str) and message and "\n" not in message and "Traceback" not in message, message
    for word in words:
        assert word in message, message
    return message


def call(url: str, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, Message, object]:
    """-> (status, the answer's headers, its JSON or its text)."""
    request = urllib.request.Request(url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, head, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        status, head, raw = err.code, err.headers, err.read()
    try:
        return status, head, json.loads(raw)
    except ValueError:
        return status, head, raw.decode(errors="replace")


def send(url: str, path: str, headers: dict, pieces) -> tuple[int, object]:
    """POST `pieces` as they are (the caller frames them) -> (status, JSON answer). A server
    that answers before the body has all arrived may close on the rest: its answer is read."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.putrequest("POST", path)
        for key, value in headers.items():
            connection.putheader(key, value)
        connection.endheaders()
        try:
            for piece in pieces:
                connection.send(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def datasets_on_disk(server: Server) -> set[str]:
    return set(os.listdir(server.home / "datasets"))


def assert_nothing_left(server: Server, before: set[str], name: str) -> None:
    """No dataset folder (nor hidden .tmp unpack folder) was added, no upload remains, and
    GET /v1/datasets does not list `name`."""
    after = datasets_on_disk(server)
    assert after == before, after - before
    assert not [n for n in after if n.endswith(".tmp")], after
    assert os.listdir(server.home / "uploads") == []
    status, answer = server.get("/v1/datasets")
    assert status == 200 and name not in [d["name"] for d in answer["datasets"]], answer


def assert_no_jobs(server: Server) -> None:
    assert server.get("/v1/jobs") == (200, {"jobs": []})
    assert os.listdir(server.home / "jobs") == []


# --- archives --------------------------------------------------------------------------------

def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def _tar(infos: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as t:
        for info, data in infos:
            if data is not None:
                info.size = len(data)
            t.addfile(info, None if data is None else io.BytesIO(data))
    return out.getvalue()


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
    return info, None


def _images(count: int = 2) -> dict[str, bytes]:
    """A valid two-class tree, so only the member under test can make the archive bad."""
    return {f"colours/{label}/{label}_{i}.png": PNG for label in LABELS for i in range(count)}


def _zip_symlink() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in _images().items():
            z.writestr(name, data)
        info = zipfile.ZipInfo("colours/cyan/link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    return out.getvalue()


def _tar_with(*specials) -> bytes:
    return _tar([(tarfile.TarInfo(n), d) for n, d in _images().items()] + list(specials))


def _one_class(folder: Path) -> bytes:
    root = make_colour_data(folder / "one", classes=("cyan",))
    return _zip({str(f.relative_to(folder)): f.read_bytes() for f in sorted(root.rglob("*.png"))})


BAD_ARCHIVES = {
    # id: (archive bytes from a scratch folder, words the refusal holds)
    "random_bytes": (lambda f: np.random.default_rng(1).bytes(5000), ("not a .zip or .tar",)),
    "truncated_zip": (lambda f: _zip(_images())[:700], ("damaged or cut short",)),
    "dotdot_member": (lambda f: _zip({**_images(), "../evil.png": PNG}), ("`..`", "../evil.png")),
    "deep_dotdot_member": (lambda f: _zip({**_images(), "colours/../../../evil.png": PNG}), ("`..`",)),
    "absolute_member": (lambda f: _zip({**_images(), f"{f}/abs-evil.png": PNG}), ("absolute name",)),
    "tar_absolute_member": (lambda f: _tar([(tarfile.TarInfo(n), d) for n, d in
                                            {**_images(), f"{f}/abs-evil.png": PNG}.items()]), ("absolute name",)),
    "windows_drive_member": (lambda f: _zip({**_images(), "C:\\evil.png": PNG}), ("absolute name",)),
    "zip_symlink": (lambda f: _zip_symlink(), ("symbolic link",)),
    "tar_symlink": (lambda f: _tar_with(_special("colours/cyan/link.png", tarfile.SYMTYPE, "/etc/passwd")),
                    ("a link",)),
    "tar_hardlink": (lambda f: _tar_with(_special("colours/cyan/hard.png", tarfile.LNKTYPE, "/etc/passwd")),
                     ("a link",)),
    "tar_fifo": (lambda f: _tar_with(_special("colours/cyan/pipe.png", tarfile.FIFOTYPE)), ("pipe",)),
    "tar_device": (lambda f: _tar_with(_special("colours/cyan/null.png", tarfile.CHRTYPE)), ("device",)),
    "zip_bomb": (lambda f: _zip({**_images(), "colours/cyan/zeros.png": bytes(4 * UNPACKED)}),
                 ("unpacks to more than 1,048,576 bytes", "--max-unpacked")),
    "zip_bomb_of_many_members": (lambda f: _zip({**_images(), **{f"colours/cyan/z{i}.png": bytes(UNPACKED // 3)
                                                                 for i in range(4)}}),
                                 ("unpacks to more than", "--max-unpacked")),
    "tar_bomb": (lambda f: _tar([(tarfile.TarInfo("colours/cyan/zeros.png"), bytes(4 * UNPACKED))], "w:xz"),
                 ("unpacks to more than", "--max-unpacked")),
    "too_many_files": (lambda f: _zip({**_images(), **{f"colours/cyan/{i}.png": b"x" for i in range(FILES)}}),
                       (f"more than {FILES} files", "--max-upload-files")),
    "two_files_one_name": (lambda f: _zip({"colours/cyan/a.png": PNG, "colours//cyan/./a.png": PNG}),
                           ("two files of the same name",)),
    "file_and_folder_one_name": (lambda f: _zip({"colours/cyan.png": PNG, "colours/cyan.png/a.png": PNG}),
                                 ("a file and a folder of the same name",)),
    "one_class": (_one_class, ("fit would refuse this dataset", "at least 2 class folders")),
    "empty_zip": (lambda f: _zip({}), ("fit would refuse this dataset",)),
}


@pytest.mark.parametrize("case", list(BAD_ARCHIVES))
def test_bad_archive_is_refused_and_leaves_nothing(served, tmp_path, tmp_path_factory, case):
    make, words = BAD_ARCHIVES[case]
    archive = make(tmp_path)
    assert len(archive) < UPLOAD  # refused for what it holds, not for its size
    before = datasets_on_disk(served)
    refused(served.post(f"/v1/datasets?name=bad-{case}", archive), 400, *words)
    assert_nothing_left(served, before, f"bad-{case}")
    # nothing was written where a member's name pointed
    assert not list(tmp_path_factory.getbasetemp().rglob("evil.png"))
    assert not (Path(tempfile.gettempdir()) / "evil.png").exists()
    assert not list(tmp_path_factory.getbasetemp().rglob("abs-evil.png"))


def _chunked(data: bytes, size: int = 16 << 10):
    for start in range(0, len(data), size):
        piece = data[start:start + size]
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


@pytest.mark.parametrize("path, limit", [("/v1/datasets?name=too-big", UPLOAD), ("/v1/jobs", REQUEST)],
                         ids=["upload", "job"])
@pytest.mark.parametrize("how", ["length_and_body", "chunked_body", "length_only"])
def test_body_over_its_limit_is_413(served, path, limit, how):
    data = b'{"model": "' + b"x" * (limit + 1000) + b'"}'
    before = datasets_on_disk(served)
    if how == "length_and_body":
        answer = send(served.url, path, {"Content-Length": str(len(data))}, [data])
    elif how == "chunked_body":  # no length to refuse early: refused as the bytes arrive
        answer = send(served.url, path, {"Transfer-Encoding": "chunked"}, _chunked(data))
    else:  # a header claiming a gigabyte, with no body sent: refused before waiting for it
        answer = send(served.url, path, {"Content-Length": str(1 << 30)}, [])
    refused(answer, 413, "too large", f"at most {limit:,} bytes")
    assert_nothing_left(served, before, "too-big")
    assert_no_jobs(served)


def test_non_images_are_skipped_and_listed(served, tmp_path):
    archive = colour_zip(tmp_path)
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("colours/notes.txt", "taken on a Tuesday")
        z.writestr("colours/train/cyan/readme.md", "# cyan")
    status, answer = served.post("/v1/datasets?name=with-notes", archive.read_bytes())
    assert status == 201, answer
    assert answer["skipped"] == ["colours/notes.txt", "colours/train/cyan/readme.md"]
    assert answer["classes"] == ["cyan", "magenta", "yellow"] and answer["files"] == 36
    assert not list((served.home / "datasets" / answer["id"]).rglob("*.txt"))


def test_a_class_named_like_html_comes_back_verbatim(served, tmp_path):
    root = make_colour_data(tmp_path / "x", classes=LABELS)
    for split in ("train", "validation"):
        (root / split / "magenta").rename(root / split / XSS)
    members = {str(f.relative_to(tmp_path)): f.read_bytes() for f in sorted(root.rglob("*.png"))}
    status, head, answer = call(served.url, "POST", "/v1/datasets?name=html", _zip(members))
    assert status == 201, answer
    assert head["Content-Type"] == "application/json"  # a browser never renders it as HTML
    assert answer["classes"] == sorted(["cyan", XSS])
    assert answer["counts"]["train"] == {"cyan": 8, XSS: 8}
    assert (served.home / "datasets" / answer["id"] / "x" / "train" / XSS).is_dir()
    status, again = served.get(f"/v1/datasets/{answer['id']}")
    assert status == 200 and again["classes"] == answer["classes"]


@pytest.mark.parametrize("name", ["colours/cyan/" + "x" * 300 + ".png",
                                  "/".join(["d" * 200] * 25) + "/a.png"], ids=["long_part", "long_path"])
def test_member_name_too_long_for_the_disk_is_a_400(served, name):
    before = datasets_on_disk(served)
    try:
        refused(served.post("/v1/datasets?name=long-name", _zip({**_images(), name: PNG})), 400, "name")
    finally:
        assert_nothing_left(served, before, "long-name")


def _junk_tar(folder: Path, members: dict[str, bytes]) -> bytes:
    """A tar.bz2 of a dataset fit takes, and `members`."""
    root = make_colour_data(folder / "colours", classes=LABELS)
    images = {str(f.relative_to(folder)): f.read_bytes() for f in sorted(root.rglob("*.png"))}
    return _tar([(tarfile.TarInfo(n), d) for n, d in {**images, **members}.items()], "w:bz2")


@pytest.mark.parametrize("junk", [{"__MACOSX/colours/._pad.png": bytes(8 * UNPACKED)},
                                  {f"__MACOSX/._{i}": b"" for i in range(3 * FILES)}],
                         ids=["bytes", "files"])
def test_junk_members_count_toward_the_limits(served, tmp_path, junk):
    archive = _junk_tar(tmp_path, junk)
    assert len(archive) < UPLOAD
    before = datasets_on_disk(served)
    refused(served.post("/v1/datasets?name=junk", archive), 400, "--max-")
    assert_nothing_left(served, before, "junk")


# --- job specs ---------------------------------------------------------------------------------

def spec(**values) -> dict:
    """A spec fit would take but for its data (the empty folder under the root, which fit's own
    check refuses): a check that should refuse and does not gets that refusal, never a job."""
    return {"model": "m", "data": "empty", **TOY_JOB, **values}


def drop(values: dict, *keys: str) -> dict:
    return {k: v for k, v in values.items() if k not in keys}


BAD_SPECS = {
    # id: (body, status, words)
    "not_json": (b"{model: m}", 400, ("not JSON",)),
    "not_utf8": (b'{"model": "\xff"}', 400, ("not JSON",)),
    "array": ([spec()], 400, ("a job spec is a JSON object", "list")),
    "string": ("flowers", 400, ("JSON object", "str")),
    "missing_model": (drop(spec(), "model"), 400, ("model name", "None")),
    "model_dotdot": (spec(model="../x"), 400, ("model name", "'../x'")),
    "model_space": (spec(model="a b"), 400, ("model name",)),
    "model_70_chars": (spec(model="m" * 70), 400, ("1-64",)),
    "model_hidden": (spec(model=".m"), 400, ("model name",)),
    "model_number": (spec(model=7), 400, ("model name",)),
    "dataset_and_data": (spec(dataset="abc"), 400, ("exactly one",)),
    "neither_dataset_nor_data": (drop(spec(), "data"), 400, ("exactly one",)),
    "unknown_dataset": (drop(spec(dataset="0123456789ab"), "data"), 404, ("no such dataset", "0123456789ab")),
    "unknown_setting": (spec(foo=1), 400, ("settings the service does not take", "foo")),
    "epochs_negative": (spec(epochs=-1), 400, ("--epochs", "-1")),
    "epochs_text": (spec(epochs="5"), 400, ("`epochs`", "whole number")),
    "nothing_to_train": (spec(epochs=0, fine_tune_epochs=0), 400, ("nothing to train",)),
    "image_size_word": (spec(image_size="big"), 400, ("`image_size`", "big")),
    "image_size_too_small": (spec(image_size=4), 400, ("minimum",)),
    "backbone_unknown": (spec(backbone="nope"), 400, ("unknown backbone", "nope")),
    "alpha_without_width": (spec(alpha=0.5), 400, ("no width multiplier",)),
    "imagenet_on_tiny_cnn": (spec(weights="imagenet"), 400, ("no ImageNet weights",)),
    "dropout_text": (spec(dropout_rate="high"), 400, ("`dropout_rate`", "a number")),
    "augment_unknown": (spec(augment=["spin"]), 400, ("spin",)),
    "schedule_unknown": (spec(schedule="sawtooth"), 400, ("sawtooth",)),
    "validation_split_one": (spec(validation_split=1), 400, ("--validation-split",)),
    "time_budget_word": (spec(time_budget="soon"), 400, ("soon",)),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_job_spec_is_refused(served, case):
    body, status, words = BAD_SPECS[case]
    refused(served.post("/v1/jobs", body if isinstance(body, bytes) else json.dumps(body).encode()),
            status, *words)
    assert_no_jobs(served)


@pytest.mark.parametrize("setting", ["runs_dir", "name", "cache_dir", "distribute"])
def test_settings_the_server_decides_are_refused_by_name(served, setting):
    message = refused(served.post("/v1/jobs", spec(**{setting: "x"})), 400, "the service decides", setting)
    assert f"(received: {setting})" in message
    assert_no_jobs(served)


@pytest.mark.parametrize("values, words", [({"freeze": 5}, ("`freeze`", "a string")),
                                           ({"backbone": 5}, ("`backbone`",)),
                                           ({"augment": ["flip", 3]}, ("`augment`", "list of strings")),
                                           ({"cache_budget": float("nan")}, ("not JSON", "NaN"))],
                         ids=["freeze_number", "backbone_number", "augment_number", "cache_budget_nan"])
def test_setting_of_the_wrong_type_is_a_400(served, values, words):
    try:
        refused(served.post("/v1/jobs", spec(**values)), 400, *words)
    finally:
        assert_no_jobs(served)


def test_paths_outside_the_roots_are_refused(served, place):
    root = place / "root"
    for values in ({"data": "/etc"}, {"data": f"{root}/../"}, {"data": "../outside"},
                   {"data": str(root / "escape")}, {"data": f"{root}/colours/../../outside"},
                   {"data": str(place / "outside")},
                   {"weights": "/etc/passwd"}, {"weights": "../" * 12 + "etc/passwd"},
                   {"init_from": "/root"}, {"init_from": str(root / "escape")},
                   {"backbone": "hub:/etc"}, {"backbone": "hub:../outside"}):
        setting = next(iter(values))
        refused(served.post("/v1/jobs", spec(**values)), 400, f"`{setting}` names a path {OUTSIDE}")
    assert_no_jobs(served)


def test_a_relative_symlink_out_of_the_root_is_refused_as_outside(served):
    message = refused(served.post("/v1/jobs", spec(data="escape")), 400)
    try:
        assert OUTSIDE in message, message
    finally:
        assert_no_jobs(served)


def test_a_hub_file_url_outside_the_roots_is_refused(served, place):
    message = refused(served.post("/v1/jobs", spec(backbone=f"hub:file://{place / 'outside'}")), 400)
    try:
        assert OUTSIDE in message, message
    finally:
        assert_no_jobs(served)


def test_the_pages_folder_questions_keep_to_the_roots(served, place):
    for data in ("/etc", "../outside", "escape", str(place / "root" / "escape"), str(place / "home")):
        refused(served.post("/v1/data/check", {"data": data}), 400, f"`data` names a path {OUTSIDE}")
        refused(served.get(f"/v1/freeze?backbone=tiny_cnn&data={data}"), 400, OUTSIDE)
    refused(served.post("/v1/data/check", [1]), 400, "`data` must be a path")
    refused(served.post("/v1/data/check", b"{"), 400, "not JSON")
    refused(served.get("/v1/freeze?backbone=tiny_cnn"), 400, "pass ?dataset=ID or ?data=FOLDER")
    refused(served.get("/v1/freeze?backbone=tiny_cnn&dataset=0123456789ab"), 404, "no such dataset")


def test_paths_that_are_not_strings_are_refused(served):
    for values in ({"data": 5}, {"data": ""}, {"data": ["colours"]}, {"data": "col\0ours"},
                   {"weights": {"path": "/etc/passwd"}}, {"init_from": 1}):
        setting = next(iter(values))
        refused(served.post("/v1/jobs", spec(**values)), 400, f"`{setting}` must be a path")
    assert_no_jobs(served)


def test_a_folder_inside_the_root_that_is_no_dataset_gets_fits_refusal(served, place):
    refused(served.post("/v1/jobs", spec()), 400, "at least 2 class folders")
    refused(served.post("/v1/jobs", spec(data="missing")), 400, "does not exist")
    assert_no_jobs(served)


# --- routes --------------------------------------------------------------------------------

def test_unknown_routes_and_methods_answer_json(served):
    refused(served.get("/nope"), 404, "no such endpoint", "/nope")
    refused(served.get("/v1/job"), 404, "no such endpoint")
    refused(served.request("DELETE", "/v1/jobs"), 405, "DELETE", "/v1/jobs")
    refused(served.request("PUT", "/v1/datasets", b"x"), 405, "PUT")
    refused(served.post("/v1/jobs/0123456789ab:cancel"), 404, "no such job", "0123456789ab")
    refused(served.post("/v1/jobs/0123456789ab:resume"), 404, "no such job")
    refused(served.get("/v1/jobs/0123456789ab"), 404, "no such job")
    refused(served.get("/v1/jobs/0123456789ab/log"), 404, "no such job")
    refused(served.get("/v1/jobs/0123456789ab/events"), 404, "no such job")
    refused(served.get("/v1/datasets/0123456789ab"), 404, "no such dataset")
    refused(served.get("/v1/models/nope"), 404, "no such model")
    refused(served.get("/v1/models/nope/metadata"), 404, "no such model")
    refused(served.get("/v1/models/..%2F..%2Fetc"), 404)


def test_get_on_a_post_only_action_is_405(served):
    refused(served.get("/v1/jobs/x:cancel"), 405, "GET")


# --- who may start and call a server ---------------------------------------------------------

def serve_refused(*flags: str, token: str | None = None) -> str:
    """`retrain serve --port 0 FLAGS` (RETRAIN_TOKEN set to `token`, or unset) exits non-zero at
    once, printing one `error:` line and nothing else to stderr; -> that line."""
    env = {k: v for k, v in subprocess_env().items() if k != "RETRAIN_TOKEN"}
    if token is not None:
        env["RETRAIN_TOKEN"] = token
    proc = subprocess.Popen([sys.executable, "-m", "retrain", "serve", "--port", "0", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # it started after all: stop it
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and b"listening" not in out, (proc.returncode, out, err)
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_serving_beyond_loopback_needs_a_token(tmp_path):
    line = serve_refused("--host", "0.0.0.0", "--home", str(tmp_path / "home"))
    assert "needs a token" in line and "--token-file" in line
    assert not (tmp_path / "home").exists()


def test_a_short_token_is_refused(tmp_path):
    (tmp_path / "token").write_text("short-token\n")
    line = serve_refused("--host", "0.0.0.0", "--token-file", str(tmp_path / "token"),
                         "--home", str(tmp_path / "home"))
    assert "token is too short" in line and "11 characters" in line
    line = serve_refused("--home", str(tmp_path / "home"), token="x" * 15)
    assert "token is too short" in line and "15 characters" in line
    assert not (tmp_path / "home").exists()


def test_a_second_server_on_one_home_is_refused(served):
    line = serve_refused("--home", str(served.home))
    assert "another retrain serve is using this home" in line and str(served.proc.pid) in line
    assert served.get("/v1/models")[0] == 200  # the first goes on


def test_a_server_beyond_loopback_wants_the_token(tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    server = Server(tmp_path / "home", "--host", "0.0.0.0", "--token-file", str(tmp_path / "token"),
                    token=TOKEN).start()
    try:
        url = server.url.replace("0.0.0.0", "127.0.0.1")
        wrong = [None, "", "Bearer", "Bearer ", f"Bearer {TOKEN[:-1]}x", f"Bearer {TOKEN[:-1]}",
                 f"Bearer {TOKEN}{TOKEN}", f"Basic {TOKEN}", TOKEN, f"Bearer  {TOKEN}"]
        for authorization in wrong:
            headers = {} if authorization is None else {"Authorization": authorization}
            for method, path in (("GET", "/v1/models"), ("POST", "/v1/jobs"), ("GET", "/v1/nope")):
                status, head, answer = call(url, method, path, b"{}" if method == "POST" else None, headers)
                refused((status, answer), 401, "needs a token", "Authorization: Bearer")
                assert head["WWW-Authenticate"] == "Bearer", (authorization, dict(head))
        status, _, answer = call(url, "GET", "/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})
        assert (status, answer) == (200, {"models": []})
        server.url = url
        assert server.get("/v1/jobs") == (200, {"jobs": []})  # the fixture's client sends the token
        assert server.post("/v1/jobs", {"model": "m"})[0] == 400  # past the guard, to the checks
    finally:
        server.stop()


# --- predict -------------------------------------------------------------------------------

def test_predict_refuses_bad_requests_and_still_answers(served, toy_model, tmp_path):
    predict = f"/v1/models/{toy_model}:predict"
    good = {"instances": [image(PNG)]}
    refused(served.post("/v1/models/nope:predict", good), 404, "no such model", "nope")
    refused(served.post(f"/v1/models/{toy_model}/versions/9:predict", good), 404, "no such version", "9")
    refused(served.post(f"/v1/models/{toy_model}/versions/one:predict", good), 404, "no such version")
    refused(served.post(predict, {"instances": [image(PNG)], "inputs": [image(PNG)]}), 400, "exactly one")
    refused(served.post(predict, {"images": [image(PNG)]}), 400, "exactly one")
    refused(served.post(predict, {"instances": []}), 400, "no image")
    refused(served.post(predict, {"inputs": {"image_bytes": []}}), 400, "no image")
    refused(served.post(predict, {"instances": image(PNG)}), 400, "`instances` must be a list")
    standard = base64.b64encode(PNG).decode()
    assert "+" in standard or "/" in standard
    urlsafe = base64.urlsafe_b64encode(PNG).decode()
    refused(served.post(predict, {"instances": [{"b64": urlsafe}]}), 400, "image 0", "base64")
    text = tmp_path / "notes.txt"
    text.write_text("not a picture\n" * 20)
    refused(served.post(predict, {"instances": [image(PNG), image(text.read_bytes())]}), 400,
            "image 1", "JPEG, PNG")
    refused(served.post(predict, {"instances": [[0.1, 0.2, 0.3]]}), 400, "image 0", '{"b64"')
    refused(served.post(predict, {"instances": [{"b64": standard, "x": 1}]}), 400, "image 0")
    refused(served.post(predict, {"signature_name": "pixels", **good}), 400, "serving_default", "pixels")
    refused(served.post(predict, b"instances=..."), 400, "not JSON")
    refused(served.post(predict, [good]), 400, "not a JSON object")
    refused(send(served.url, predict, {"Content-Length": str(1 << 30)}, []), 413, "too large")
    status, answer = served.post(predict, {"instances": [image(PNG)] * 3})
    assert status == 200, answer
    assert len(answer["predictions"]) == 3
    assert all(len(p["probabilities"]) == 2 and sorted(p["classes"]) == list(LABELS)
               for p in answer["predictions"])


def test_a_truncated_png_is_a_400_and_spoils_no_other_request(served, toy_model):
    """Pillow reads a cut PNG's header and lets it through; the graph's decoder then fails. The
    batch it shared with a good request is run again request by request."""
    predict = f"/v1/models/{toy_model}:predict"
    cut = PNG[:int(len(PNG) * 0.6)]
    from PIL import Image

    assert Image.open(io.BytesIO(cut)).format == "PNG"
    start = threading.Barrier(2)
    answers: dict[str, tuple] = {}

    def ask(name: str, instances: list) -> None:
        start.wait()
        answers[name] = served.post(predict, {"instances": instances})

    threads = [threading.Thread(target=ask, args=("cut", [image(cut)])),
               threading.Thread(target=ask, args=("good", [image(PNG)] * 2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    refused(answers["cut"], 400, "could not be decoded")
    status, good = answers["good"]
    assert status == 200, good
    assert len(good["predictions"]) == 2 and len(good["predictions"][0]["probabilities"]) == 2
    assert served.post(predict, {"instances": [image(PNG)]})[0] == 200


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/data/check", "/v1/models/toy:predict"],
                         ids=["job", "data_check", "predict"])
def test_deeply_nested_json_is_a_400(served, toy_model, path):
    refused(served.post(path, b"[" * 5000 + b"]" * 5000), 400, "JSON")
    assert_no_jobs(served)
