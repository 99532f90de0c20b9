"""What the web page needs beyond the API: its static files at / and /static/, the backbone
catalog, what `--freeze auto` would choose, the folders under the data roots, and a
published version's files and misclassified images.

    GET  /, /static/{file}                        the page (no token: it holds no secret)
    GET  /v1/backbones                            catalog.py's table
    GET  /v1/freeze?backbone=B&dataset=ID|data=F[&weights=none]  {"freeze", "why"}
    GET  /v1/data                                 {"roots": [{"root", "folders"}]}
    POST /v1/data/check {"data": F}               a data-root folder's check report
    GET  /v1/models/{name}/versions/{v}/files/{file}
    GET  /v1/models/{name}/versions/{v}/misclassified[/{index}]
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from retrain.backbones import auto_freeze, get_spec
from retrain.errors import ConfigError, NotFoundError
from retrain.serve import registry, specs

STATIC = Path(__file__).with_name("static")
VERSION_FILES = {"confusion_matrix.png": "image/png", "metrics.json": "application/json",
                 "misclassified.csv": "text/csv", "labels.txt": "text/plain"}
SHOWN_MISCLASSIFIED = 12


def routes(s) -> list:
    """The page's routes on the service `s` (app.Service)."""
    from retrain.serve.app import checked

    async def index(request: Request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def backbones(request: Request):
        return JSONResponse(s.catalog.table())

    async def freeze(request: Request):
        spec = get_spec(request.query_params.get("backbone", "mobilenet_v2"))
        counts = await run_in_threadpool(_train_counts, s, request.query_params)
        choice, why = auto_freeze(spec, min(counts.values()), request.query_params.get("weights", "imagenet"))
        return JSONResponse({"freeze": choice, "why": why})

    async def data_roots(request: Request):
        return JSONResponse({"roots": [{"root": str(root), "folders": sorted(
            p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))}
            for root in s.config.data_roots]})

    async def data_check(request: Request):
        from retrain.serve.app import read_json

        body = await read_json(request, s.config.size("max_request"))
        folder = specs.allowed(body.get("data") if isinstance(body, dict) else None, s.data_roots, "data")
        return JSONResponse({"data": str(folder), **await run_in_threadpool(checked, folder)})

    async def version_file(request: Request):
        _, folder = registry.resolve(s.home.models, request.path_params["name"], request.path_params["version"])
        name = request.path_params["file"]
        if name not in VERSION_FILES or not (folder / name).is_file():
            raise NotFoundError("no such file in this version", name, f"ask for one of {', '.join(VERSION_FILES)}")
        return FileResponse(folder / name, media_type=VERSION_FILES[name])

    async def misclassified(request: Request):
        _, folder = registry.resolve(s.home.models, request.path_params["name"], request.path_params["version"])
        rows = _misclassified(folder)
        return JSONResponse({"images": [{"index": i, "file": Path(r["file"]).name, "true_label": r["true_label"],
                                         "predicted_label": r["predicted_label"],
                                         "probability": float(r["probability"])}
                                        for i, r in enumerate(rows[:SHOWN_MISCLASSIFIED])]})

    async def misclassified_image(request: Request):
        _, folder = registry.resolve(s.home.models, request.path_params["name"], request.path_params["version"])
        rows, index = _misclassified(folder), request.path_params["index"]
        if not index.isdigit() or int(index) >= min(len(rows), SHOWN_MISCLASSIFIED):
            raise NotFoundError("no such misclassified image", index, "GET .../misclassified lists them")
        # The file the evaluation read: served only from where jobs may read (the data roots, the home).
        path = specs.allowed(rows[int(index)]["file"], s.roots, "file")
        if not path.is_file():
            raise NotFoundError("the image is no longer there", path.name, "it was moved or deleted")
        return Response(path.read_bytes(), media_type=_image_type(path))

    v = "/v1/models/{name:plain}/versions/{version:plain}"
    return [
        Route("/", index, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        Route("/v1/backbones", backbones, methods=["GET"]),
        Route("/v1/freeze", freeze, methods=["GET"]),
        Route("/v1/data", data_roots, methods=["GET"]),
        Route("/v1/data/check", data_check, methods=["POST"]),
        Route(v + "/files/{file}", version_file, methods=["GET"]),
        Route(v + "/misclassified", misclassified, methods=["GET"]),
        Route(v + "/misclassified/{index}", misclassified_image, methods=["GET"]),
    ]


def _train_counts(s, query) -> dict[str, int]:
    """Training images per class of `dataset=ID` or of the data-root folder `data=F`."""
    from retrain.data import load_folders

    if "dataset" in query:
        row = s.store.dataset(query["dataset"])
        if row is None:
            raise NotFoundError("no such dataset", query["dataset"], "GET /v1/datasets lists them")
        return row["report"]["counts"]["train"]
    if "data" not in query:
        raise ConfigError("say which images", "neither dataset nor data", "pass ?dataset=ID or ?data=FOLDER")
    folders = load_folders(specs.allowed(query["data"], s.data_roots, "data"), 0.1)
    counts = folders.train.counts(folders.num_classes)
    return {name: int(n) for name, n in zip(folders.class_names, counts)}


def _misclassified(folder: Path) -> list[dict]:
    path = folder / "misclassified.csv"
    if not path.is_file():
        return []
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    return list(csv.DictReader(io.StringIO(text)))


def _image_type(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    return {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif",
            "bmp": "image/bmp", "webp": "image/webp"}.get(suffix, "application/octet-stream")

