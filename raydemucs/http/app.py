"""The ingress deployment: the `/v1` job API (upload, status, live events, stems, cancel, retry).

Every route ends in the scheduler actor; a replica keeps only a few seconds' copy of the API
keys' digests. Errors are `{"error": {"type", "message"}}` (see `raydemucs.http.errors`).
"""

import asyncio
import base64
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import ray
from fastapi import FastAPI, Request
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from ray import serve

from .. import __version__
from ..audio.checks import validate_input
from ..core.actors import as_our_error, get_scheduler
from ..core.config import Config
from ..core.errors import (
    InputTooLarge,
    InvalidInput,
    RayDemucsError,
    ServiceUnavailable,
    TaskNotFound,
    Unauthenticated,
)
from ..core.heap import FrozenHeap
from ..core.inputs import check_input
from ..core.keys import Ceilings, KeyEntry, KeyTable
from ..core.public import public_task
from ..core.task import TaskSpec, TaskState
from ..scheduler.leases import UPLOAD
from ..scheduler.supervision import Supervisor
from ..storage import nodes
from ..storage.uris import input_size, is_uri
from . import errors
from .asks import FIELDS, check_fields, presets, task_spec
from .bodies import BodyLimits, read_json
from .door import Door, allowed_hosts, came_over_loopback
from .forms import Spool, form_limits, read_form
from .leases import HeldLeases, Lease
from .peaks import PeaksCache, check_points
from .stems import MEDIA_TYPES, StemSource, attachment, byte_range, verified, zip_stream
from .streams import EventStreams, router

KEYS_TTL_S = 2.0
READY_TTL_S = 1.0  # /readyz answers from a copy this old at most
WEB = Path(__file__).resolve().parent.parent / "web"  # the page, shipped in the package
PAGE_POLICY = ("default-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
               "object-src 'none'; frame-ancestors 'none'; base-uri 'none'")

app = FastAPI(title="raydemucs", version=__version__,
              description="Separate songs into stems with Demucs on a Ray actor pool.")
errors.install(app)
app.add_middleware(Door, hosts=lambda: serve.get_replica_context().servable_object.allowed_hosts)
app.mount("/web", StaticFiles(directory=WEB), name="web")
app.include_router(router)  # the event streams (`EventStreams`)


@dataclass(frozen=True)
class Caller:
    """Who asks, and what its key allows; `Caller("")`: anyone, on a loopback service without
    keys."""

    owner: str  # the API key's id; '' on a loopback service without keys
    operator: bool = True  # sees the whole service in its status
    max_queued: int | None = None
    inputs: list[str] | None = None  # the input URI prefixes it may name (None: the service's)
    ceilings: Ceilings = Ceilings()
    sha256: str | None = None  # its key's digest: its open streams end once it is revoked

    @classmethod
    def of(cls, entry: KeyEntry) -> "Caller":
        return cls(entry.owner, entry.role == "operator", entry.max_queued, entry.inputs,
                   entry.ceilings, entry.sha256)

    @property
    def scope(self) -> str | None:
        """The owner whose view of the service it sees (None: every owner's)."""
        return None if self.operator else self.owner

    def allowed(self, spec: TaskSpec) -> TaskSpec:
        """`spec`, when its key's ceilings allow it (else `OverCeiling`)."""
        self.ceilings.check(spec)
        return spec


def _cursor(seq: int) -> str:
    """An opaque cursor for the page after the task with `seq`."""
    return base64.urlsafe_b64encode(f"before:{seq}".encode()).decode().rstrip("=")


def _cursor_seq(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, seq = text.partition(":")
        if kind == "before" and seq.isdigit():
            return int(seq)
    except (ValueError, UnicodeDecodeError):
        pass
    raise InvalidInput("cursor is not one this service gave (use the `cursor` of a page)")


TASK_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary"},
                       **{name: {"type": "string"} for name in FIELDS}}}},
    "application/json": {"schema": {
        "type": "object", "required": ["input"], "additionalProperties": False,
        "properties": {"input": {"type": "string"},
                       **{name: {"type": "string"} for name in FIELDS}}}}}},
    "responses": {"202": {"links": {  # what a client (and a stateful fuzzer) may do next
        name: {"operationRef": f"#/paths/{path.replace('/', '~1')}/{method}",
               "parameters": {"task_id": "$response.body#/task_id", **extra}}
        for name, path, method, extra in [
            ("get", "/v1/tasks/{task_id}", "get", {}),
            ("cancel", "/v1/tasks/{task_id}", "delete", {}),
            ("retry", "/v1/tasks/{task_id}/retry", "post", {}),
            ("events", "/v1/tasks/{task_id}/events", "get", {}),
            ("stem", "/v1/tasks/{task_id}/stems/{stem}", "get", {"stem": "vocals"}),
            ("peaks", "/v1/tasks/{task_id}/stems/{stem}/peaks", "get", {"stem": "vocals"}),
            ("zip", "/v1/tasks/{task_id}/stems.zip", "get", {})]}}}}


# Every route awaits the scheduler or a stream (events, stems, uploads): a replica serves many at
# once, where Serve's default (5) would queue the 6th open event stream behind the others.
MAX_ONGOING_REQUESTS = 1000


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=MAX_ONGOING_REQUESTS)
@serve.ingress(app)
class Ingress(EventStreams):
    """The front door of one raydemucs service (its scheduler named `SERVICE:scheduler`)."""

    def __init__(self, config: dict):
        self.config = Config.from_dict(config)
        self.allowed_hosts = allowed_hosts(self.config.http.allowed_hosts, self.config.http.host)
        self._scheduler, self._background = None, Supervisor()
        self.leases = HeldLeases(self.call)  # every lease this replica holds, renewed together
        self._keys, self._keys_at, self._keys_read = KeyTable([]), float("-inf"), asyncio.Lock()
        self._ready: bool | None = None  # the last answer of the scheduler's `ready` (None: none)
        self._ready_at, self._service_config = float("-inf"), None
        self._peaks = PeaksCache()

    # -- the scheduler, the keys ---------------------------------------------------------------
    async def call(self, method: str, *args, **kwargs):
        if self._scheduler is None:
            self._scheduler = get_scheduler(self.config.service.name)
            self._background.forever("frozen_heap", FrozenHeap().step)  # see core.heap
        try:
            return await getattr(self._scheduler, method).remote(*args, **kwargs)
        except ray.exceptions.RayError as error:
            raise as_our_error(error) from None

    async def service_config(self) -> Config:
        if self._service_config is None:
            self._service_config = Config.from_dict((await self.call("ping"))["config"])
        return self._service_config

    async def keys(self) -> KeyTable:
        """The API keys, as the scheduler read them at most KEYS_TTL_S ago."""
        async with self._keys_read:  # one read at a time: streams that wake together share it
            if time.monotonic() - self._keys_at > KEYS_TTL_S:
                self._keys = KeyTable.from_list((await self.call("api_keys"))["keys"])
                self._keys_at = time.monotonic()
        return self._keys

    async def caller(self, request: Request) -> Caller:
        """Who asks: the owner of the request's API key (none needed without keys, over
        loopback only). A missing or unknown key is one answer, with no hint which."""
        keys = await self.keys()
        if not keys and came_over_loopback(request.scope):
            return Caller("")
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        entry = keys.owner_of(key.strip()) if scheme.lower() == "bearer" else None
        if entry is None:
            raise Unauthenticated("this service needs an API key: Authorization: Bearer KEY")
        return Caller.of(entry)

    async def task_of(self, caller: Caller, task_id: str) -> dict:
        """A task the caller may see (another key's is as unknown as a missing one; an
        operator's key sees its own tasks alone here too)."""
        view = await self.call("get_task", task_id)
        if view["owner"] != caller.owner:
            raise TaskNotFound(f"no task with id {task_id!r}")
        return view

    @staticmethod
    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    # -- tasks ---------------------------------------------------------------------------------
    @app.post("/v1/tasks", status_code=202, openapi_extra=TASK_BODY,
              summary="Create a task from an uploaded file (multipart) or an input URI (JSON)")
    async def create_task(self, request: Request):
        caller = await self.caller(request)
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            view = await self._from_upload(request, caller, kind)
        elif kind.split(";")[0].strip() == "application/json":
            view = await self._from_input(request, caller)
        else:
            raise InvalidInput("send multipart/form-data with a `file` part, or JSON with `input`")
        body = public_task(view, self.base(request))
        return JSONResponse(body, status_code=202, headers={"Location": body["links"]["self"]})

    async def _from_upload(self, request: Request, caller: Caller, kind: str) -> dict:
        """An uploaded file's task: the caller's cap on uploads at once and its quota are
        checked before a byte of the body is read."""
        config = await self.service_config()
        max_bytes = int(config.input.max_file_mb * 2**20)
        limits = form_limits(max_bytes, config.http)
        limits.check_declared(request.headers.get("content-length"))
        lease = await self.leases.take(UPLOAD, caller.owner, caller.max_queued)
        async with lease.held():
            return await self._upload(request, caller, kind, lease, limits)

    async def _upload(self, request: Request, caller: Caller, kind: str, lease: Lease,
                      limits: BodyLimits) -> dict:
        config = await self.service_config()
        max_bytes = int(config.input.max_file_mb * 2**20)
        chunk_bytes = int(config.http.chunk_mb * 2**20)
        with tempfile.TemporaryDirectory(prefix="raydemucs-upload-") as work:
            spool = Spool(Path(work))
            form = await read_form(request.stream(), kind, max_bytes, limits, spool.write,
                                   chunk_bytes)
            if form.file_name is None:
                raise InvalidInput("the form has no `file` part (the audio file to separate)")
            if spool.size == 0:
                raise InvalidInput("the uploaded file is empty")
            name = PurePosixPath(form.file_name).name or "upload"
            duration_s = await asyncio.to_thread(spool.validate, name, config.input)
            served = {model["name"]: model for model in await self.call("models")}
            spec = caller.allowed(task_spec(form.fields, config, served, caller.owner,
                                            input_path=name, sha256=form.sha256, uploaded=True,
                                            duration_s=duration_s)).to_dict()
            # before the bytes travel
            await self.call("check_tasks", [spec], caller.max_queued, lease.id)
            upload = await self.call("upload_open", name)
            try:
                async for chunk in spool.chunks(chunk_bytes):  # to the scheduler's node, not actor
                    await nodes.append(upload["path"], upload["node"], chunk)
                return await self.call("submit_upload", spec, upload["id"], caller.max_queued,
                                       lease.id)
            except BaseException:
                await self.call("upload_abort", upload["id"])
                raise

    async def _from_input(self, request: Request, caller: Caller) -> dict:
        config = await self.service_config()
        limits = BodyLimits.json(config.http)
        limits.check_declared(request.headers.get("content-length"))
        fields = await read_json(request.stream(), limits)
        if not isinstance(fields, dict):
            raise InvalidInput("the body must be a JSON object with `input`")
        check_fields(fields)
        allowed = config.http.inputs if caller.inputs is None else caller.inputs
        location, duration_s = await asyncio.to_thread(self._check_input, fields.get("input"),
                                                       allowed, config)
        served = {model["name"]: model for model in await self.call("models")}
        spec = caller.allowed(task_spec({k: v for k, v in fields.items() if k != "input"},
                                        config, served, caller.owner,
                                        input_path=location, duration_s=duration_s))
        records = await self.call("submit", [spec.to_dict()], caller.max_queued)
        return await self.call("get_task", records[0]["task_id"])

    @staticmethod
    def _check_input(value, allowed: Sequence[str], config: Config) -> tuple[str, float | None]:
        """The input a request names, if it may (`allowed`: the storage prefixes it may read;
        `http.allow_paths`: the roots), checked short of decoding it all: its size (a URI) or
        the whole set of submit's checks (a shared path); with its duration when known."""
        location = check_input(value, allowed, config.http.allow_paths,
                               private=(str(config.state_path), config.service.output_dir))
        if is_uri(location):
            size = input_size(location, config.storage)
            if size > config.input.max_file_mb * 2**20:
                raise InputTooLarge(f"input {location} is {size / 2**20:.1f} MB, over the "
                                           f"{config.input.max_file_mb:g} MB limit")
            return location, None
        return location, validate_input(location, config.input)

    @app.get("/v1/tasks/{task_id}", summary="A task: state, progress, queue position, stems")
    async def get_task(self, task_id: str, request: Request):
        caller = await self.caller(request)
        return public_task(await self.task_of(caller, task_id), self.base(request))

    @app.get("/v1/tasks", summary="Tasks, newest first, a page at a time")
    async def list_tasks(self, request: Request, state: str | None = None,
                         project: str | None = None, batch_id: str | None = None,
                         limit: int = 50, cursor: str | None = None):
        caller = await self.caller(request)
        if state is not None and state not in {s.value for s in TaskState}:
            raise InvalidInput(f"state {state!r}; allowed: {', '.join(s.value for s in TaskState)}")
        if not 1 <= limit <= 500:
            raise InvalidInput(f"limit {limit} must be between 1 and 500")
        before = _cursor_seq(cursor)
        views = await self.call("list_tasks", state, limit + 1, project, caller.owner, before,
                                batch_id)
        page = views[:limit]
        following = _cursor(page[-1]["seq"]) if len(views) > limit else None
        return {"tasks": [public_task(view, self.base(request)) for view in page],
                "cursor": following}

    @app.delete("/v1/tasks/{task_id}", summary="Cancel a queued or running task; with "
                "purge=true, delete a finished task's stored input and stems now (it stays "
                "listed, expired; 409 for an unfinished one)")
    async def cancel_task(self, task_id: str, request: Request, purge: bool = False):
        caller = await self.caller(request)
        await self.task_of(caller, task_id)
        await self.call("purge" if purge else "cancel", task_id)  # purge refuses unfinished ones
        return public_task(await self.call("get_task", task_id), self.base(request))

    @app.post("/v1/tasks/{task_id}/retry", status_code=202,
              summary="Run a failed or cancelled task again")
    async def retry_task(self, task_id: str, request: Request):
        caller = await self.caller(request)
        await self.task_of(caller, task_id)
        await self.call("retry", task_id)
        return public_task(await self.call("get_task", task_id), self.base(request))

    # -- stems ---------------------------------------------------------------------------------
    async def _stems(self, caller: Caller, task_id: str) -> tuple[dict, StemSource, dict]:
        view = await self.task_of(caller, task_id)
        if view["state"] != TaskState.SUCCEEDED.value:
            raise InvalidInput(f"task {task_id} is {view['state']}; its stems come when it succeeds")
        place = await self.call("stems_place", task_id)
        source = StemSource(place["location"], place["node"], place["remote"],
                            (await self.service_config()).storage)
        return view, source, await source.manifest()

    @app.get("/v1/tasks/{task_id}/stems/{stem}", summary="One stem file (Range requests answered)")
    async def get_stem(self, task_id: str, stem: str, request: Request):
        caller = await self.caller(request)
        _, source, manifest = await self._stems(caller, task_id)
        entry = manifest["stems"].get(stem)
        if entry is None:
            raise TaskNotFound(f"task {task_id} has no stem {stem!r}; it has "
                               f"{', '.join(manifest['stems'])}")
        signed = source.signed_url(entry["file"])
        if signed is not None:
            return RedirectResponse(signed, status_code=307)
        size, etag = entry["bytes"], f'"{entry["sha256"]}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes",
                   "Content-Disposition": attachment(entry["file"])}
        media = MEDIA_TYPES.get(entry["file"].rsplit(".", 1)[-1], "application/octet-stream")
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        span = byte_range(request.headers.get("range"), size)
        start, stop = span or (0, size)
        headers["Content-Length"] = str(stop - start)
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        chunks = source.chunks(entry["file"], start, stop)
        if span is None:
            chunks = verified(chunks, entry["sha256"], f"{task_id}/{stem}")
        return StreamingResponse(chunks, media_type=media, status_code=206 if span else 200,
                                 headers=headers)

    @app.get("/v1/tasks/{task_id}/stems/{stem}/peaks",
              summary="A stem's waveform: the lowest and highest sample of each of `points` spans")
    async def get_peaks(self, task_id: str, stem: str, request: Request, points: int = 1000):
        caller = await self.caller(request)
        check_points(points)
        _, source, manifest = await self._stems(caller, task_id)
        entry = manifest["stems"].get(stem)
        if entry is None:
            raise TaskNotFound(f"task {task_id} has no stem {stem!r}; it has "
                               f"{', '.join(manifest['stems'])}")
        etag = f'"{entry["sha256"]}-{points}"'
        headers = {"ETag": etag, "Cache-Control": "private, max-age=86400"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        key = (entry["sha256"], points)
        summary = self._peaks.get(key)
        if summary is None:
            summary = {"stem": stem, **await source.peaks(entry["file"], points)}
            self._peaks.put(key, summary)
        return JSONResponse(summary, headers=headers)

    @app.get("/v1/tasks/{task_id}/stems.zip", summary="Every stem and manifest.json, one zip")
    async def get_zip(self, task_id: str, request: Request):
        caller = await self.caller(request)
        view, source, manifest = await self._stems(caller, task_id)
        name = f"{view['project']}-{view['file_id']}.zip"
        return StreamingResponse(zip_stream(source, manifest, view["file_id"]),
                                 media_type="application/zip",
                                 headers={"Content-Disposition": attachment(name)})

    # -- the service ---------------------------------------------------------------------------
    @app.get("/v1/webhooks/secret", summary="The secret the caller's tasks' webhooks are signed "
             "with (Standard Webhooks, `whsec_...`): each key has its own")
    async def webhook_secret(self, request: Request):
        caller = await self.caller(request)
        return {"secret": await self.call("webhook_secret", caller.owner)}

    @app.get("/v1/models", summary="The models this service serves")
    async def models(self, request: Request):
        await self.caller(request)
        return {"models": await self.call("models")}

    @app.get("/v1/presets", summary="The ensemble presets a task may name (field `preset`)")
    async def presets(self, request: Request):
        await self.caller(request)
        return {"presets": presets(await self.service_config())}

    @app.get("/v1/status", summary="The service: queue counts, pools, workers (a tenant key: "
             "its own counts and running tasks, the pools' sizes, the workers' states)")
    async def status(self, request: Request):
        caller = await self.caller(request)
        return await self.call("status", caller.scope)

    @app.get("/", include_in_schema=False)
    async def page(self):
        """The page for people: upload, the live task list, the player, the operator view."""
        return FileResponse(WEB / "index.html", headers={"Content-Security-Policy": PAGE_POLICY,
                                                         "Cache-Control": "no-cache"})

    @app.get("/healthz", summary="This replica answers")
    async def healthz(self):
        return {"ok": True}

    @app.get("/readyz", summary="The scheduler answers and a worker is ready (no key needed)")
    async def readyz(self):
        """From the scheduler's `ready` (memory only), asked at most every READY_TTL_S."""
        if time.monotonic() - self._ready_at > READY_TTL_S:
            try:
                self._ready = await asyncio.wait_for(self.call("ready"), 5.0)
            except (RayDemucsError, asyncio.TimeoutError):
                self._ready = None
            self._ready_at = time.monotonic()
        if self._ready is None:
            return errors.error_response(ServiceUnavailable("the scheduler does not answer"))
        if not self._ready:
            return errors.error_response(ServiceUnavailable("no worker is ready yet"))
        return {"ok": True}
