"""The FastAPI application of ``explain serve``: the versioned API, the page, the docs.

:func:`create_app` builds it over a :class:`Settings` and a loaded :class:`Served` model; the
workers (:mod:`explain.serve.worker`) start and stop with the app. Every upload is checked
before it is queued, each failure its own status: over the size limit 413 (:class:`~explain.
serve.security.BodyLimit`), over the pixel limit or a decompression bomb 413, not an image 415
(both by :func:`explain.images.probe_image`, the checks of ``load_image``), a bad option 422
naming the field, a full queue, or a tenant's full share of it (``tenant_queue``: one
tenant cannot fill the queue for the others), 429 with ``Retry-After``; a full disk 507 with
the reason and ``Retry-After`` (submit, DELETE, a picture's first render), never a bare 500. An
upload not received within ``upload_timeout`` seconds is 408. ``/healthz`` answers 503 while no
worker is alive; a supervisor thread restarts a dead worker (its jobs go back to the queue) and
deletes finished jobs older than ``retain_days``. With tokens, every ``/v1`` request
needs ``Authorization: Bearer TOKEN`` (401 without a valid one) and sees only its tenant's
jobs: another tenant's id is 404, as an unknown one. The page, its assets, ``/docs`` and
``/healthz`` hold no data and are open (the page asks for the token and sends it with each
API request). No CORS header unless ``cors`` origins are given. A client's string never
becomes a path: job folders are named by the ids the store makes, result files by the fixed
table :data:`~explain.serve.jobs.RESULTS` (a grid job's by
:data:`~explain.serve.jobs.GRID_RESULTS`, its tiles by a fixed pattern).

Collections (``/v1/collections``, :mod:`explain.serve.collections`): a tenant's images, each
file through the very checks of a job's upload (:func:`_receive`, :func:`_probe`), a bad one
rejected by name while the rest are added; another tenant's collection is 404 like an unknown
one. ``method=grid`` queues a grid job over one (:class:`~explain.serve.worker.Worker`, which
writes the files of ``explain grid`` through its own writer), ``method=audit`` an audit job
(the files of ``explain audit``).
"""

from __future__ import annotations

import fcntl
import inspect
import json
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    UploadFile,
)
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from explain.choices import (
    COLOR_BY,
    DEFAULT_MAX_PIXELS,
    EMBED_MODES,
    LAYOUTS,
    OCCLUSION_FILLS,
)
from explain.errors import ExplainError, ImageError, ImageTooLargeError, OptionError
from explain.files import atomic_write, write_text
from explain.grid import MIN_IMAGES, NO_LABEL, check_grid_memory
from explain.images import probe_image
from explain.methods import METHODS, SERVICE_OPTIONS, Option
from explain.models.base import resolve_target
from explain.render import save_png
from explain.serve.assets import Assets
from explain.serve.collections import CollectionStore, link_or_copy
from explain.serve.jobs import (
    AUDIT_RESULTS,
    GRID_RESULTS,
    RESULTS,
    Job,
    JobStore,
    is_disk_full,
    is_job_id,
)
from explain.serve.schemas import (
    Accepted,
    Added,
    CollectionInfo,
    CollectionPage,
    Created,
    Health,
    MethodInfo,
    ModelInfo,
    NewCollection,
    OptionInfo,
    Rejected,
    Visualization,
    VisualizationPage,
    collection_info,
    visualization,
)
from explain.serve.security import BodyLimit, Tokens
from explain.serve.served import Served
from explain.serve.worker import (
    AUDIT_FOLDER,
    AUDIT_LABELS,
    GRID_IMAGES,
    GRID_MEMBERS,
    INPUT,
    PICTURES,
    PREPARE,
    Worker,
    draw,
)
from explain.windows import window_grid

MAX_WINDOWS = 20_000
MAX_MASKS = 50_000
RETRY_AFTER_S = 10
SUPERVISE_S = 1.0
CHUNK = 1 << 20
FORM_SLACK = 64 * 1024  # the multipart framing and the other fields around the image
TILE = re.compile(r"[0-9]{1,6}_[0-9]{1,6}\.jpg")
GRID_PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                    "img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                    "frame-ancestors 'self'")
AUDIT_PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src "
                     "'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; "
                     "frame-ancestors 'self'")
MAX_AUDIT_TOP = 1000
MAX_NAME = 1000  # characters of an image's name kept in a collection

MAX_GRID_SIDE = 128  # 128 cells of 64 px: the mosaic still fits one PNG (8192 px a side)
GRID_CELL_PX = 64  # the cell side of `explain grid`'s default, which grid jobs use

MethodName = Enum("MethodName",  # type: ignore[misc]
                  {name: name for name in (*METHODS, "grid", "audit")},
                  type=str)
EmbedName = Enum("EmbedName", {name: name for name in EMBED_MODES}, type=str)  # type: ignore[misc]
LayoutName = Enum("LayoutName", {name: name for name in LAYOUTS}, type=str)  # type: ignore[misc]
ColorName = Enum("ColorName", {name: name for name in COLOR_BY}, type=str)  # type: ignore[misc]
F = TypeVar("F")
FORM_HIGH = {"masks": MAX_MASKS}
"""The service's own caps on method options (on top of their declared range)."""


def form_parameter(option: Option) -> inspect.Parameter:
    """The form field of a method :class:`~explain.methods.Option` (its declaration: type,
    default, range, help; a choice is an Enum the form refuses others of), for
    ``POST /v1/visualizations``."""
    kind: object = option.kind
    default = option.default
    if option.choices:
        kind = Enum(f"{option.title}Name", {c: c for c in option.choices}, type=str)
        default = kind(default)  # type: ignore[operator]
    if option.optional:
        kind = kind | None  # type: ignore[operator]
    high = FORM_HIGH.get(option.name, option.high)
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[kind, Form(ge=option.low, le=high,
                                                             description=option.help)])


def with_form_options(endpoint: F) -> F:
    """``endpoint`` with the form fields of the methods' options in place of its ``**given``
    (FastAPI reads the signature; the fields arrive in ``given``)."""
    params = [p for p in inspect.signature(endpoint).parameters.values()
              if p.kind is not inspect.Parameter.VAR_KEYWORD]
    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        params + [form_parameter(o) for o in SERVICE_OPTIONS])
    return endpoint


def form_options(given: dict[str, object]) -> dict[str, object]:
    """The method options of a form (:data:`explain.methods.SERVICE_OPTIONS`), each checked by
    its declaration; a refused one is a 422 naming its field."""
    checked: dict[str, object] = {}
    for option in SERVICE_OPTIONS:
        value = given[option.name]
        try:
            checked[option.name] = option.checked(
                value.value if isinstance(value, Enum) else value, option.name, checked)
        except OptionError as exc:
            raise invalid(option.name, str(exc)) from None
    return checked


def option_info(option: Option) -> OptionInfo:
    """A form option as ``GET /v1/models`` describes it (the page builds its fields from it)."""
    return OptionInfo(name=option.name, title=option.title, type=option.kind.__name__,
                      default=option.default, help=option.help, choices=list(option.choices),
                      low=option.low, high=FORM_HIGH.get(option.name, option.high))


@dataclass
class Settings:
    """How the service runs: where its data lives and its limits (see ``explain serve --help``).
    """

    data: str = "explain-serve"
    tokens: Tokens | None = None
    max_upload: int = 20_000_000
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_queue: int = 1000
    tenant_queue: int | None = None
    cors: list[str] = field(default_factory=list)
    workers: int = 1
    interleave: int = 16
    prepare: int = PREPARE
    batch_size: int | None = None
    retain_days: float | None = None
    upload_timeout: float = 60.0
    max_collection: int = 10_000
    tenant_bytes: int = 2_000_000_000
    max_batch: int = 200_000_000
    processes: int = 1
    """Serving processes over the data folder (:mod:`explain.serve.processes`): above 1 this
    app is one of them, a member of its store; its parent requeued and cleaned up at start."""

    @property
    def tenant_limit(self) -> int:
        """A tenant's quota of the queue: ``tenant_queue``, else the whole queue without
        tokens (one tenant) and a quarter of it with them."""
        if self.tenant_queue is not None:
            return self.tenant_queue
        return self.max_queue if self.tokens is None else max(1, self.max_queue // 4)


class Expiring:
    """Which one of a server's processes deletes expired jobs (``--retain``): the one holding
    the ``flock`` of ``DATA/expiring.lock``; when it dies the kernel frees the lock and the
    next one to ask takes it over."""

    def __init__(self, data: Path) -> None:
        self._fd = os.open(Path(data) / "expiring.lock", os.O_RDWR | os.O_CREAT, 0o644)
        self._held = False

    def mine(self) -> bool:
        if not self._held:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._held = True
            except BlockingIOError:
                pass
        return self._held

    def close(self) -> None:
        os.close(self._fd)


def invalid(field_name: str, message: str) -> HTTPException:
    """A 422 naming the form field, shaped like FastAPI's own validation errors."""
    return HTTPException(422, detail=[{"loc": ["body", field_name], "msg": message,
                                       "type": "value_error"}])


BEARER = HTTPBearer(auto_error=False, description="One of the tokens of --tokens.")


def tenant(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None,
                                                    Depends(BEARER)]) -> str:
    """The caller's tenant id ("" without tokens); 401 without a valid token."""
    tokens: Tokens | None = request.app.state.tokens
    if tokens is None:
        return ""
    found = None if credentials is None else tokens.tenant(credentials.credentials)
    if found is None:
        raise HTTPException(401, "a valid token is needed: Authorization: Bearer TOKEN",
                            headers={"WWW-Authenticate": "Bearer"})
    return found


Tenant = Annotated[str, Depends(tenant)]


def create_app(settings: Settings, served: Served, store: JobStore | None = None) -> FastAPI:
    """The application (see the module docstring); its workers run while it is served.
    ``store``: the job store of ``settings.data``, when the caller opened it already (the CLI
    does, to take the folder's lock before it loads the model)."""
    store = store or JobStore(settings.data)
    collections = CollectionStore(store.data)
    wake = threading.Event()
    workers: list[Worker] = []
    stopping = threading.Event()
    assets = Assets()

    def new_worker(i: int) -> Worker:
        worker = Worker(store, served.models, wake, interleave=settings.interleave,
                        batch_size=settings.batch_size, max_pixels=settings.max_pixels,
                        prepare=settings.prepare, name=f"explain-worker-{i}")
        worker.start()
        return worker

    member = settings.processes > 1
    expiring = Expiring(store.data) if member else None

    def supervise() -> None:
        """Every SUPERVISE_S: a dead worker's jobs go back to the queue and a new worker takes
        its place (with several processes, a dead process's jobs too); finished jobs older
        than ``--retain`` days are deleted (by one of the processes)."""
        while not stopping.wait(SUPERVISE_S):
            try:
                for i, worker in enumerate(workers):
                    if not worker.is_alive() and not stopping.is_set():
                        store.requeue(worker.held())
                        workers[i] = new_worker(i)
                        wake.set()
                if member and store.requeue_orphaned():
                    wake.set()
                if settings.retain_days is not None and (expiring is None or expiring.mine()):
                    store.expire(time.time() - settings.retain_days * 86400)
            except Exception:  # noqa: BLE001 — a full disk, say: tried again next time
                continue

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not member:  # else the parent did, once, before it started the processes
            store.requeue_running()
            store.remove_orphans()
            collections.remove_orphans()
        workers.extend(new_worker(i) for i in range(settings.workers))
        supervisor = threading.Thread(target=supervise, name="explain-supervisor", daemon=True)
        supervisor.start()
        wake.set()
        try:
            yield
        finally:
            stopping.set()
            supervisor.join(timeout=30)
            for worker in workers:
                worker.stop()
            for worker in workers:
                worker.join(timeout=30)
            store.close()
            collections.close()
            if expiring is not None:
                expiring.close()

    app = FastAPI(title="explain", version="1",
                  description="Why does an image classifier score an image the way it does? "
                              "POST an image, poll the job, fetch the pictures; or make "
                              "a collection of images and map it with a grid job.",
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limit=settings.max_upload + FORM_SLACK,
                       timeout=settings.upload_timeout, batch=settings.max_batch)
    if settings.cors:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization"])
    app.state.tokens = settings.tokens
    api = APIRouter(prefix="/v1")

    def job_url(request: Request, job_id: str) -> str:
        return str(request.url_for("get_visualization", job_id=job_id).path)

    def queue_full(who: str) -> HTTPException:
        if store.pending(who) >= settings.tenant_limit:
            why = (f"you have {settings.tenant_limit} jobs queued or running, your share of the "
                   "queue")
        else:
            why = f"the queue is full ({settings.max_queue} jobs)"
        return HTTPException(429, f"{why}; retry later",
                             headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(OSError)
    @app.exception_handler(sqlite3.OperationalError)
    def disk_full(_: Request, exc: Exception) -> JSONResponse:
        """A full disk is 507 with the reason (the request can be retried once there is
        room), never a bare 500; any other fault stays a 500."""
        if not is_disk_full(exc):
            raise exc
        return JSONResponse({"detail": f"the server's disk is full ({exc}); retry later"},
                            status_code=507, headers={"Retry-After": str(RETRY_AFTER_S)})

    def owned(job_id: str, who: str) -> Job:
        job = store.get(job_id, who) if is_job_id(job_id) else None
        if job is None:
            raise HTTPException(404, "no such visualization")
        return job

    @api.post("/visualizations", status_code=202, response_model=Accepted,
              responses={413: {"description": "The upload, or its pixel count, is over the "
                                               "limit (or a decompression bomb)."},
                         415: {"description": "Not an image (the reason is given)."},
                         429: {"description": "The queue, or the caller's share of it, is "
                                              "full; retry after Retry-After seconds."},
                         507: {"description": "The server's disk is full; retry after "
                                              "Retry-After seconds."}})
    @with_form_options
    def submit(request: Request, response: Response, who: Tenant,
               image: Annotated[UploadFile | None, File(description="The image file (not "
                                                              "for method=grid).")] = None,
               method: Annotated[MethodName, Form()] = MethodName.occlusion,
               target: Annotated[str, Form(description="The class, by name or index.")] = "nsfw",
               collection: Annotated[str | None, Form(description="method=grid: the id of "
                                                      "one of your collections.")] = None,
               embed: Annotated[EmbedName, Form(description="method=grid: features (the "
                                                "model's penultimate layer) or pixels."
                                                )] = EmbedName.features,
               layout: Annotated[LayoutName, Form(description="method=grid: as `explain grid "
                                                  "--layout`.")] = LayoutName.auto,
               size: Annotated[int | None, Form(ge=1, le=MAX_GRID_SIDE, description=(
                   "method=grid: a SIZE x SIZE grid (images beyond SIZE² sampled); default "
                   "the smallest near-square grid holding all."))] = None,
               color_by: Annotated[ColorName, Form(description="method=grid: thumbnail "
                                                   "border, as `explain grid --color-by`."
                                                   )] = ColorName.score,
               threshold: Annotated[float, Form(ge=0.0, le=1.0, description=(
                   "method=audit: the score at or above which an image counts as the "
                   "target."))] = 0.5,
               top: Annotated[int, Form(ge=0, le=MAX_AUDIT_TOP, description=(
                   "method=audit: heatmaps for this many false positives and as many false "
                   "negatives."))] = 50,
               concepts: Annotated[bool, Form(description="method=audit: run the NudeNet part "
                                              "detector and measure each part's effect."
                                              )] = True,
               cues: Annotated[bool, Form(description="method=audit: discover the cues the "
                                          "model reacts to in its false positives.")] = True,
               **given: object) -> Accepted:
        """Queue a visualization of ``image``, or with ``method=grid`` a similarity grid of a
        collection (the files of `explain grid`); poll ``status_url`` until it is done. The
        methods' options are form fields generated from their declarations
        (:data:`explain.methods.SERVICE_OPTIONS`)."""
        name = method.value
        if name == "grid":
            return submit_grid(request, response, who, collection, target, embed.value,
                               layout.value, size, color_by.value)
        if name == "audit":
            return submit_audit(request, response, who, collection, target,
                                {"threshold": threshold, "top": top, "concepts": concepts,
                                 "cues": cues})
        if image is None:
            raise invalid("image", f"method={name} explains one image: send it as the "
                          "field image")
        options = {**form_options(given), "target": target}
        if METHODS[name].white_box and served.white_error:
            raise invalid("method", served.white_error)
        try:
            resolve_target(served.models.white if METHODS[name].white_box
                           else served.models.black, target)
        except ExplainError as exc:
            raise invalid("target", str(exc)) from None
        # refused before the upload is read; add() decides for good
        if store.full(who, settings.max_queue, settings.tenant_limit):
            raise queue_full(who)
        job_id = store.new_id()
        folder = store.folder(job_id)
        try:
            _receive(image, folder / INPUT, settings.max_upload)
            width, height = _probe(folder / INPUT, settings.max_pixels)
            if name in ("occlusion", "sliding"):
                _check_windows((height, width), options["box"], options["stride"])
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return enqueue(request, response, job_id, folder, who, name, options)

    def enqueue(request: Request, response: Response, job_id: str, folder: Path, who: str,
                method: str, options: dict) -> Accepted:
        """Add the job whose files ``folder`` holds to the queue (the one place a job is
        queued): a refusal (a full queue, a fault of the table) removes its folder."""
        try:
            queued = store.add(job_id, who, method, options, settings.max_queue,
                               settings.tenant_limit)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if not queued:
            shutil.rmtree(folder, ignore_errors=True)
            raise queue_full(who)
        wake.set()
        url = job_url(request, job_id)
        response.headers["Location"] = url
        return Accepted(id=job_id, status_url=url)

    def submit_grid(request: Request, response: Response, who: str, collection: str | None,
                    target: str, embed: str, layout: str, size: int | None,
                    color_by: str) -> Accepted:
        """Queue a grid job over the caller's collection (:func:`queue_collection_job`)."""
        found = None if collection is None else collections.get(collection, who)
        if found is None:
            raise invalid("collection", "no such collection" if collection else
                          "method=grid needs collection: the id of one of your collections")
        members = collections.members(found.id, who)
        if len(members) < MIN_IMAGES:
            raise invalid("collection", f"the collection has {len(members)} image(s); a grid "
                          f"needs at least {MIN_IMAGES}")
        labelled = any(m.label is not None for m in members)
        if color_by == "label" and not labelled:
            raise invalid("color_by", "color_by=label needs a labelled collection")
        if color_by == "score":
            try:
                resolve_target(served.models.black, target)
            except ExplainError as exc:
                raise invalid("target", str(exc)) from None
        try:
            check_grid_memory(len(members), size, GRID_CELL_PX, layout)
        except OptionError as exc:
            raise invalid("size", str(exc)) from None
        options = {"collection": found.id, "embed": embed, "layout": layout, "size": size,
                   "color_by": color_by, "target": target}
        labels = [m.label or NO_LABEL for m in members] if labelled else None
        return queue_collection_job(request, response, who, "grid", options, members, labels)

    def submit_audit(request: Request, response: Response, who: str, collection: str | None,
                     target: str, options: dict) -> Accepted:
        """Queue an audit job over the caller's collection (as :func:`submit_grid`); its
        labels must be classes of the model (case-insensitive), an image without one is
        unlabelled; the job writes a ``path,label`` manifest of its own links
        (:data:`~explain.serve.worker.AUDIT_LABELS`) for :func:`explain.audit.audit`."""
        found = None if collection is None else collections.get(collection, who)
        if found is None:
            raise invalid("collection", "no such collection" if collection else
                          "method=audit needs collection: the id of one of your collections")
        members = collections.members(found.id, who)
        if not members:
            raise invalid("collection", "the collection has no images")
        classes = {c.lower(): c for c in served.models.black.class_names}
        for member in members:
            if member.label is not None and member.label.lower() not in classes:
                raise invalid("collection", f"image {member.name!r} is labelled "
                              f"{member.label!r}, not a class of the model "
                              f"({', '.join(classes.values())}); an audit needs those labels")
        try:
            resolve_target(served.models.black, target)
        except ExplainError as exc:
            raise invalid("target", str(exc)) from None
        labels = [classes[m.label.lower()] if m.label is not None else "" for m in members]
        return queue_collection_job(request, response, who, "audit",
                                    {"collection": found.id, "target": target, **options},
                                    members, labels)

    def queue_collection_job(request: Request, response: Response, who: str, method: str,
                             options: dict, members: list, labels: list[str] | None
                             ) -> Accepted:
        """Queue a job over a collection's ``members``: they are linked into the job's folder
        (:data:`~explain.serve.worker.GRID_IMAGES`, named by their index) with their names and
        ``labels`` (:data:`~explain.serve.worker.GRID_MEMBERS`), so deleting the collection
        later does not change the job, and a restart runs it again from its own files."""
        if store.full(who, settings.max_queue, settings.tenant_limit):
            raise queue_full(who)
        job_id = store.new_id()
        folder = store.folder(job_id)
        try:
            (folder / GRID_IMAGES).mkdir(parents=True)
            for i, member in enumerate(members):
                link_or_copy(member.path, folder / GRID_IMAGES / f"{i:05d}")
            write_text(folder / GRID_MEMBERS, json.dumps({
                "names": [m.name for m in members], "labels": labels}))
            if method == "audit":
                write_text(folder / AUDIT_LABELS, "path,label\n" + "".join(
                    f"{GRID_IMAGES}/{i:05d},{label}\n" for i, label in enumerate(labels or [])))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return enqueue(request, response, job_id, folder, who, method, options)

    def owned_collection(collection_id: str, who: str) -> str:
        found = collections.get(collection_id, who)
        if found is None:
            raise HTTPException(404, "no such collection")
        return found.id

    def collection_url(request: Request, collection_id: str) -> str:
        return str(request.url_for("get_collection", collection_id=collection_id).path)

    @api.post("/collections", status_code=201, response_model=Created)
    def create_collection(request: Request, response: Response, who: Tenant,
                          body: NewCollection) -> Created:
        """Make an empty collection; add images to it with POST .../images."""
        collection_id = collections.create(who, body.name)
        url = collection_url(request, collection_id)
        response.headers["Location"] = url
        return Created(id=collection_id, url=url)

    @api.post("/collections/{collection_id}/images", status_code=201, response_model=Added,
              responses={404: {"description": "No such collection (or another tenant's)."},
                         413: {"description": "The request is over the limit of one batch "
                                              "of images."},
                         507: {"description": "The server's disk is full; retry after "
                                              "Retry-After seconds."}})
    def add_images(collection_id: str, who: Tenant,
                   image: Annotated[list[UploadFile], File(description="The image files "
                                                           "(repeat the field).")],
                   label: Annotated[list[str] | None, Form(description="Optional: one label "
                                                           "per image, in the same order "
                                                           "(empty: none).")] = None) -> Added:
        """Add images to a collection. Each one passes the checks of a job's upload (bytes,
        pixels, bombs, types) and the limits (images per collection, bytes per tenant); a
        file that does not is rejected by name with the reason, and the others are added."""
        found = owned_collection(collection_id, who)
        if label is not None and len(label) != len(image):
            raise invalid("label", f"{len(label)} labels for {len(image)} images: give one "
                          "per image, in the same order, or none")
        added, rejected = 0, []
        for i, upload in enumerate(image):
            name = (upload.filename or f"image {i + 1}")[:MAX_NAME]
            image_id, path = collections.new_image(found)
            try:
                _receive(upload, path, settings.max_upload)
                _probe(path, settings.max_pixels)
            except HTTPException as exc:
                path.unlink(missing_ok=True)
                rejected.append(Rejected(name=name, reason=str(exc.detail)))
                continue
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            tag = (label[i].strip() or None) if label is not None else None
            why = collections.add(found, who, image_id, name, tag, path.stat().st_size,
                                  settings.max_collection, settings.tenant_bytes)
            if why is not None:
                rejected.append(Rejected(name=name, reason=why))
                continue
            added += 1
        return Added(added=added, rejected=rejected)

    @api.get("/collections/{collection_id}", response_model=CollectionInfo,
             responses={404: {"description": "No such collection (or another tenant's)."}})
    def get_collection(request: Request, collection_id: str, who: Tenant) -> CollectionInfo:
        """A collection: its name, how many images and how many of them labelled."""
        found = collections.get(collection_id, who)
        if found is None:
            raise HTTPException(404, "no such collection")
        return collection_info(found, collection_url(request, found.id))

    @api.get("/collections", response_model=CollectionPage)
    def list_collections(request: Request, who: Tenant,
                         limit: Annotated[int, Query(ge=1, le=100)] = 20,
                         before: Annotated[str | None, Query(
                             description="A collection id: list the ones older than it.")
                             ] = None) -> CollectionPage:
        """The caller's collections, newest first, a page at a time."""
        if before is not None and not is_job_id(before):
            raise HTTPException(422, detail=[{"loc": ["query", "before"],
                                              "msg": "not a collection id",
                                              "type": "value_error"}])
        found = collections.page(who, limit, before)
        items = [collection_info(c, collection_url(request, c.id)) for c in found]
        following = None
        if len(found) == limit:
            following = f"{request.url.path}?limit={limit}&before={found[-1].id}"
        return CollectionPage(items=items, next=following)

    @api.delete("/collections/{collection_id}", status_code=204,
                responses={404: {"description": "No such collection (or another tenant's)."}})
    def delete_collection(collection_id: str, who: Tenant) -> Response:
        """Delete a collection and its files (grid jobs made from it keep theirs)."""
        if not collections.delete(collection_id, who):
            raise HTTPException(404, "no such collection")
        return Response(status_code=204)

    @api.get("/visualizations/{job_id}", response_model=Visualization)
    def get_visualization(request: Request, job_id: str, who: Tenant) -> Visualization:
        """A job's status, progress and, once done, the links to its results."""
        job = owned(job_id, who)
        return visualization(job, job_url(request, job_id), audit_written(job))

    @api.get("/visualizations/{job_id}/{name}", response_class=Response,
             responses={200: {"content": {t: {} for t in {*RESULTS.values(),
                                                          *GRID_RESULTS.values()}}},
                        507: {"description": "The server's disk is full (a picture not yet "
                                             "rendered cannot be kept)."}})
    def get_result(job_id: str, name: str, who: Tenant) -> Response:
        """One result file of a done job: ``overlay.png``, ``side.png``, ``original.png``,
        ``heatmap.npy`` or ``heatmap.json``; of a grid job ``grid.png``, ``grid.json`` or
        ``grid.html`` (the page that pans and zooms over its tiles)."""
        job = owned(job_id, who)
        if job.method == "grid":
            return job_file(job, GRID_RESULTS, name, who)
        if job.method == "audit":
            return job_file(job, AUDIT_RESULTS, name, who, AUDIT_FOLDER)
        known = next((k for k in RESULTS if k == name), None)
        if known is None or job.status != "done":
            raise HTTPException(404, "no such result" if known is None else
                                f"the visualization is {job.status}, not done")
        path = store.folder(job.id) / known
        with store.locked(job.id):  # one render per picture; a DELETE removes files after it
            if known in PICTURES and not path.exists() and store.get(job.id, who) is not None:
                try:  # rendered on the first request, then kept
                    drawn = draw(store.folder(job.id), known, settings.max_pixels)
                except ExplainError as exc:
                    raise HTTPException(500, f"the picture cannot be drawn: {exc}") from None
                if store.get(job.id, who) is not None:  # not deleted while it was drawn
                    save_png(drawn, path)
            if store.get(job.id, who) is None:
                raise HTTPException(404, "no such visualization")
            body = path.read_bytes()
        return Response(body, media_type=RESULTS[known],
                        headers={"Cache-Control": "private, max-age=3600"})

    def audit_written(job: Job) -> list[str] | None:
        """The result files a done audit job wrote (None for any other job)."""
        if job.method != "audit" or job.status != "done":
            return None
        folder = store.folder(job.id) / AUDIT_FOLDER
        return [name for name in AUDIT_RESULTS if (folder / name).is_file()]

    def job_file(job: Job, names: dict[str, str], name: str, who: str,
                  *folders: str) -> Response:
        """File ``name`` of a done grid or audit job, ``folders`` below its folder (fixed
        names, or items of a fixed pattern checked by the caller), if ``name`` is one of
        ``names`` (file name → type); 404 otherwise."""
        if name not in names or job.status != "done":
            raise HTTPException(404, "no such result" if name not in names else
                                f"the visualization is {job.status}, not done")
        path = store.folder(job.id).joinpath(*folders, name)
        with store.locked(job.id):  # a DELETE removes the files after it
            if store.get(job.id, who) is None or not path.is_file():
                raise HTTPException(404, "no such result")
            body = path.read_bytes()
        headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
        if name == "grid.html":  # its own inline script and style; tiles from this service
            headers["Content-Security-Policy"] = GRID_PAGE_POLICY
        elif name == "audit.html":  # self-contained: its pictures are data: URIs
            headers["Content-Security-Policy"] = AUDIT_PAGE_POLICY
        return Response(body, media_type=names[name], headers=headers)

    @api.get("/visualizations/{job_id}/grid_tiles/{level}/{tile}", response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}})
    def get_tile(job_id: str, level: int, tile: str, who: Tenant) -> Response:
        """A tile of a grid job's pyramid (what its grid.html loads)."""
        job = owned(job_id, who)
        if job.method != "grid" or not 0 <= level < 64 or TILE.fullmatch(tile) is None:
            raise HTTPException(404, "no such result")
        return job_file(job, {tile: "image/jpeg"}, tile, who, "grid_tiles", str(level))

    @api.delete("/visualizations/{job_id}", status_code=204,
                responses={507: {"description": "The server's disk is full; retry after "
                                                "Retry-After seconds."}})
    def delete_visualization(job_id: str, who: Tenant) -> Response:
        """Delete a job and its files (a running job stops within one batch)."""
        if not (is_job_id(job_id) and store.delete(job_id, who)):
            raise HTTPException(404, "no such visualization")
        return Response(status_code=204)

    @api.get("/visualizations", response_model=VisualizationPage)
    def list_visualizations(request: Request, who: Tenant,
                            limit: Annotated[int, Query(ge=1, le=100)] = 20,
                            before: Annotated[str | None, Query(
                                description="A job id: list the jobs older than it.")] = None
                            ) -> VisualizationPage:
        """The caller's jobs, newest first, a page at a time."""
        if before is not None and not is_job_id(before):
            raise HTTPException(422, detail=[{"loc": ["query", "before"], "msg": "not a job id",
                                              "type": "value_error"}])
        jobs = store.page(who, limit, before)
        items = [visualization(j, job_url(request, j.id), audit_written(j)) for j in jobs]
        following = None
        if len(jobs) == limit:
            following = f"{request.url.path}?limit={limit}&before={jobs[-1].id}"
        return VisualizationPage(items=items, next=following)

    @api.get("/models", response_model=ModelInfo)
    def models(who: Tenant) -> ModelInfo:
        """The served model, its classes and the methods it can run."""
        black = served.models.black
        methods = [MethodInfo(name=m.name, title=m.title, white_box=m.white_box,
                              available=not (m.white_box and served.white_error),
                              why_not=served.white_error if m.white_box else None,
                              options=[o.name for o in m.options if o.service])
                   for m in METHODS.values()]
        size = list(black.input_size) if black.input_size else None
        return ModelInfo(model=served.name, classes=list(black.class_names), input_size=size,
                         device=str(black.device), methods=methods, fills=list(OCCLUSION_FILLS),
                         options=[option_info(o) for o in SERVICE_OPTIONS],
                         defaults={"target": "nsfw",
                                   **{o.name: o.default for o in SERVICE_OPTIONS}})

    app.include_router(api)

    @app.get("/healthz", response_model=Health,
             responses={503: {"model": Health, "description": "No worker is alive: jobs are "
                                                              "accepted but none runs."}})
    def healthz(response: Response) -> Health:
        """Liveness: the queue and the workers; 503 while no worker is alive (the server
        restarts a dead one within a few seconds)."""
        alive = sum(w.is_alive() for w in workers)
        if alive == 0:
            response.status_code = 503
        return Health(status="ok" if alive else "unhealthy", pending=store.pending(),
                      workers=alive, auth=settings.tokens is not None)

    assets.mount(app)
    return app


def _check_windows(shape: tuple[int, int], box: object, stride: object) -> None:
    try:
        count = len(window_grid(shape, box, stride))  # type: ignore[arg-type]
    except OptionError as exc:
        raise invalid("stride", str(exc)) from None
    if count > MAX_WINDOWS:
        raise invalid("box", f"{count:,} windows on this {shape[1]}x{shape[0]} image, over the "
                      f"limit of {MAX_WINDOWS:,}; use a larger box and stride")


def _receive(upload: UploadFile, path: Path, limit: int) -> None:
    """Copy the upload to ``path`` atomically, refusing it (413) past ``limit`` bytes, and an
    empty one (415)."""
    size = 0
    with atomic_write(path) as out:
        while chunk := upload.file.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"the upload is over the limit of {limit:,} bytes")
            out.write(chunk)
    if size == 0:
        raise HTTPException(415, "the upload is empty (0 bytes), not an image")


def _probe(path: Path, max_pixels: int) -> tuple[int, int]:
    """The image intake's checks before decoding (:func:`explain.images.probe_image`): too many
    pixels or a bomb 413, not an image 415, each with the reason."""
    try:
        return probe_image(path, max_pixels=max_pixels)
    except ImageTooLargeError as exc:
        raise HTTPException(413, exc.reason) from None
    except ImageError as exc:
        raise HTTPException(415, exc.reason) from None
