"""The HTTP API: a Starlette app whose routes turn requests into calls on the scheduler, the
registry and the predictor, and every RetrainError into a 4xx `{"error": "..."}`.

    POST /v1/datasets                       an archive of <label>/<image> folders -> its report
    GET  /v1/datasets[/{id}]
    POST /v1/jobs                           a fit spec -> 202 {id, state}
    GET  /v1/jobs[/{id}], /v1/jobs/{id}/events (server-sent events), /v1/jobs/{id}/log
    POST /v1/jobs/{id}:cancel, /v1/jobs/{id}:resume
    GET  /v1/models, /v1/models/{name}[/versions/{v}][/metadata]     (TF Serving's forms)
    POST /v1/models/{name}[/versions/{v}]:predict                     (TF Serving's forms)
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import shutil
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.convertors import Convertor, register_url_convertor
from starlette.routing import Route

from retrain.config import CheckConfig, ServeConfig
from retrain.errors import ConfigError, ConflictError, NotFoundError, RetrainError
from retrain.serve import events, registry, rest, specs
from retrain.serve.archive import UnpackLimits, unpack
from retrain.serve.batching import Predictor
from retrain.serve.catalog import Catalog
from retrain.serve.home import Home
from retrain.serve.jobs import Scheduler
from retrain.serve.store import FINAL, Store

log = logging.getLogger("retrain.serve")


class TooLarge(RetrainError):
    """A request body past its limit (HTTP 413)."""


class _Plain(Convertor):
    """A path part without ':': `/v1/jobs/ID:cancel` is never read as a job named `ID:cancel`."""

    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("plain", _Plain())
INLINE_PARSE = 256 * 1024  # predict bodies smaller than this are parsed on the event loop
STATUS = {NotFoundError: 404, ConflictError: 409, TooLarge: 413}


@dataclass
class Service:
    """What the routes work on."""

    config: ServeConfig
    home: Home
    store: Store
    scheduler: Scheduler
    predictor: Predictor

    catalog: "Catalog"

    @property
    def data_roots(self) -> tuple[Path, ...]:
        return tuple(Path(r) for r in self.config.data_roots)

    @property
    def roots(self) -> tuple[Path, ...]:
        """Where a job may read: the data roots and the home."""
        return self.data_roots + (self.home.root,)


def create_app(service: Service) -> Starlette:
    s = service

    # --- datasets -----------------------------------------------------------------------------

    async def add_dataset(request: Request):
        name = request.query_params.get("name", "dataset")[:100]
        id = secrets.token_hex(6)
        part = s.home.uploads / f"{id}.part"
        limit = s.config.size("max_upload")
        try:
            with open(part, "wb") as out:
                async for chunk in body_chunks(request, limit, "the archive is too large",
                                               "or ask the operator to raise --max-upload"):
                    out.write(chunk)
            report = await run_in_threadpool(_unpack_and_check, s, part, s.home.datasets / id)
        finally:
            part.unlink(missing_ok=True)
        row = s.store.add_dataset(id, name, s.home.datasets / id, report)
        return JSONResponse(_dataset_view(row), status_code=201)

    async def list_datasets(request: Request):
        return JSONResponse({"datasets": [_dataset_view(r) for r in s.store.datasets()]})

    async def get_dataset(request: Request):
        row = s.store.dataset(request.path_params["id"])
        if row is None:
            raise NotFoundError("no such dataset", request.path_params["id"], "GET /v1/datasets lists them")
        return JSONResponse(_dataset_view(row))

    # --- jobs ---------------------------------------------------------------------------------

    async def add_job(request: Request):
        spec = specs.parse(await read_json(request, s.config.size("max_request")), s.store.dataset, s.roots)
        if spec.dataset is None:  # a data-root folder: refused now, as fit would refuse it
            from retrain.data import load_folders

            await run_in_threadpool(load_folders, spec.fit["data"], spec.fit.get("validation_split", 0.1))
        job = s.scheduler.submit(spec)
        return JSONResponse({"id": job["id"], "state": job["state"]}, status_code=202,
                            headers={"Location": f"/v1/jobs/{job['id']}"})

    async def list_jobs(request: Request):
        return JSONResponse({"jobs": [_job_view(j) for j in s.store.jobs()]})

    async def get_job(request: Request):
        return JSONResponse(_job_view(s.scheduler.job(request.path_params["id"])))

    async def cancel_job(request: Request):
        return JSONResponse(_job_view(s.scheduler.cancel(request.path_params["id"])))

    async def resume_job(request: Request):
        return JSONResponse(_job_view(s.scheduler.resume(request.path_params["id"])))

    async def job_log(request: Request):
        job = s.scheduler.job(request.path_params["id"])
        path = s.home.job(job["id"]).log
        text = path.read_text(errors="replace") if path.is_file() else ""
        tail = request.query_params.get("tail", "")
        if tail.isdigit():
            text = "".join(text.splitlines(keepends=True)[-int(tail):])
        return PlainTextResponse(text)

    async def job_events(request: Request):
        """Server-sent events: each line of the job's events.jsonl as it arrives; the event id
        is the byte offset after it, so a client that reconnects (Last-Event-ID) goes on where
        it stopped. The stream ends once the job has ended and every event was sent."""
        id = s.scheduler.job(request.path_params["id"])["id"]
        last = request.headers.get("last-event-id", "")
        offset = int(last) if last.isdigit() else 0
        path = s.home.job(id).events

        async def stream():
            nonlocal offset
            while True:
                ended = s.store.job(id)["state"] in FINAL  # read before the file: no event is missed
                found, offset = events.read(path, offset)
                for end, event in found:
                    yield {"id": str(end), "event": event["event"], "data": json.dumps(event)}
                if ended:
                    return
                await asyncio.sleep(0.2)

        return EventSourceResponse(stream(), ping=15)

    # --- models -------------------------------------------------------------------------------

    async def list_models(request: Request):
        return JSONResponse({"models": [{"name": n, "versions": [str(v) for v in registry.versions(s.home.models, n)]}
                                        for n in registry.names(s.home.models)]})

    async def model_status(request: Request):
        name, version = request.path_params["name"], request.path_params.get("version")
        if version is None:
            registry.resolve(s.home.models, name, None)
            shown = sorted(registry.versions(s.home.models, name), reverse=True)
        else:
            shown = [registry.resolve(s.home.models, name, version)[0]]
        return JSONResponse({"model_version_status": [
            {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for v in shown]})

    async def model_metadata(request: Request):
        name = request.path_params["name"]
        version, folder = registry.resolve(s.home.models, name, request.path_params.get("version"))
        about = registry.info(folder)
        return JSONResponse({
            "model_spec": {"name": name, "signature_name": "", "version": str(version)},
            "metadata": {"signature_def": {"signature_def": about.get("signature_def", {})},
                         "labels": about.get("labels", []), "metrics": about.get("metrics", {}),
                         "retrain": {k: about.get(k) for k in ("job", "backbone", "image_size", "created")}}})

    async def predict(request: Request):
        name = request.path_params["name"]
        _, folder = registry.resolve(s.home.models, name, request.path_params.get("version"))
        s.predictor.arriving += 1  # a batch being gathered waits for this one
        try:
            data = await read_body(request, s.config.size("max_request"))
            # A small body parses in a fraction of a millisecond: less than a hand-off to a thread.
            parsed = rest.parse(data) if len(data) < INLINE_PARSE else await run_in_threadpool(rest.parse, data)
            future = s.predictor.predict(folder, parsed.images)
        finally:
            s.predictor.arriving -= 1
        outputs = await asyncio.wrap_future(future)
        return JSONResponse(rest.answer(outputs, parsed.columnar))

    routes = [
        Route("/v1/datasets", add_dataset, methods=["POST"]),
        Route("/v1/datasets", list_datasets, methods=["GET"]),
        Route("/v1/datasets/{id:plain}", get_dataset, methods=["GET"]),
        Route("/v1/jobs", add_job, methods=["POST"]),
        Route("/v1/jobs", list_jobs, methods=["GET"]),
        Route("/v1/jobs/{id:plain}:cancel", cancel_job, methods=["POST"]),
        Route("/v1/jobs/{id:plain}:resume", resume_job, methods=["POST"]),
        Route("/v1/jobs/{id:plain}/events", job_events, methods=["GET"]),
        Route("/v1/jobs/{id:plain}/log", job_log, methods=["GET"]),
        Route("/v1/jobs/{id:plain}", get_job, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{name:plain}:predict", predict, methods=["POST"]),
        Route("/v1/models/{name:plain}/versions/{version:plain}:predict", predict, methods=["POST"]),
        Route("/v1/models/{name:plain}/metadata", model_metadata, methods=["GET"]),
        Route("/v1/models/{name:plain}/versions/{version:plain}/metadata", model_metadata, methods=["GET"]),
        Route("/v1/models/{name:plain}", model_status, methods=["GET"]),
        Route("/v1/models/{name:plain}/versions/{version:plain}", model_status, methods=["GET"]),
    ]

    @asynccontextmanager
    async def lifespan(app):
        s.scheduler.start()
        yield
        s.scheduler.stop()
        s.predictor.close()
        s.catalog.stop()

    from retrain.serve import page

    app = Starlette(routes=routes + page.routes(s), lifespan=lifespan, exception_handlers={
        RetrainError: _retrain_error, HTTPException: _http_error, ClientDisconnect: _gone, Exception: _internal})
    if s.config.token is not None:
        app.add_middleware(BearerToken, token=s.config.token)
    return app


async def body_chunks(request: Request, limit: int, what: str = "the request body is too large",
                      also: str = ""):
    """The request's body as it arrives, refused (413) past `limit` bytes: by its
    Content-Length at once, else when the bytes pass it."""
    todo = f"send at most {limit:,} bytes" + (f", {also}" if also else "")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(what, f"{int(declared):,} bytes", todo)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(what, f"more than {limit:,} bytes", todo)
        yield chunk


async def read_body(request: Request, limit: int) -> bytes:
    return b"".join([chunk async for chunk in body_chunks(request, limit)])


async def read_json(request: Request, limit: int):
    return parse_json(await read_body(request, limit))


def parse_json(data: bytes):
    """JSON as the service takes it: no NaN or Infinity (not JSON, though Python reads them),
    and nesting Python can follow."""
    try:
        return json.loads(data, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        why = "nested too deeply" if isinstance(err, RecursionError) else str(err).splitlines()[0][:80]
        raise ConfigError("the request body is not JSON", f"{len(data):,} bytes: {why}",
                          "send a JSON object with Content-Type: application/json") from None


def _not_json(name: str):
    raise ValueError(f"{name} is not JSON")


def _unpack_and_check(s: Service, part: Path, dest: Path) -> dict:
    """Unpack an upload and run `retrain check` on it; a refused dataset is removed."""
    limits = UnpackLimits(s.config.size("max_unpacked"), s.config.max_upload_files)
    unpacked = unpack(part, dest, limits)
    try:
        report = checked(unpacked.root)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return {**report, "files": unpacked.files, "bytes": unpacked.bytes, "skipped": list(unpacked.skipped)}


def checked(root: Path) -> dict:
    """`retrain check` on a folder -> the report as JSON, or a ConfigError when fit would refuse it."""
    from retrain.check import check

    report = check(CheckConfig(data=str(root)))
    if report.refusal is not None:
        raise ConfigError("fit would refuse this dataset", report.refusal,
                          "fix it (<label>/<image> folders, 2 classes or more) and try again")
    return {"root": str(root), "layout": report.layout, "classes": list(report.classes), "counts": report.counts,
            "unreadable": [str(Path(f).relative_to(root)) for f in report.unreadable],
            "warnings": report.warnings, "skipped": []}


def _dataset_view(row: dict) -> dict:
    report = {k: v for k, v in row["report"].items() if k != "root"}
    return {"id": row["id"], "name": row["name"], "created": _iso(row["created"]), **report}


def _job_view(job: dict) -> dict:
    return {"id": job["id"], "model": job["model"], "state": job["state"], "dataset": job["dataset"],
            "progress": job["progress"], "error": job["error"], "version": job["version"],
            "metrics": job["metrics"], "attempts": job["attempts"], "settings": job["settings"],
            **{k: _iso(job[k]) for k in ("created", "started", "finished")}}


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _retrain_error(request: Request, err: RetrainError):
    return _error(next((code for kind, code in STATUS.items() if isinstance(err, kind)), 400), str(err))


async def _http_error(request: Request, err: HTTPException):
    messages = {404: f"no such endpoint: {request.method} {request.url.path}; see the README for the API",
                405: f"{request.method} is not allowed on {request.url.path}"}
    return _error(err.status_code, messages.get(err.status_code, str(err.detail)))


async def _gone(request: Request, err: ClientDisconnect):
    return _error(400, "the client went away before the request body arrived")


async def _internal(request: Request, err: Exception):
    from retrain.diskspace import as_disk_full

    full = as_disk_full(err)
    if full is not None:
        log.error("%s %s: %s", request.method, request.url.path, full)
        return _error(507, str(full))
    log.error("%s %s failed", request.method, request.url.path, exc_info=err)
    return _error(500, f"internal error ({type(err).__name__}); the server's log has the details")


class BearerToken:
    """Every API request (/v1/...) needs `Authorization: Bearer <token>` (401 otherwise), compared in
    constant time."""

    def __init__(self, app, token: str):
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):  # the page itself holds no secret
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = JSONResponse({"error": "this server needs a token: send Authorization: Bearer <token>"},
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
