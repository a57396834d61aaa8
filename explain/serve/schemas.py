"""The shapes of the service's answers (pydantic models: they are the OpenAPI schema at /docs)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from explain.serve.collections import Collection
from explain.serve.jobs import AUDIT_RESULTS, GRID_RESULTS, RESULTS, Job


class Accepted(BaseModel):
    """A queued job: its id and where to poll it."""

    id: str = Field(description="The job id (a random uuid4).")
    status_url: str = Field(description="GET it for the job's status.")


class JobProgress(BaseModel):
    done: int = Field(description="Units done: masked copies scored (occlusion), images "
                                  "embedded then t-SNE iterations (grid), else 0 or 1.")
    total: int = Field(description="Units in all; 0 until the job starts.")
    stage: str | None = Field(default=None, description="The step counted, for a job of "
                              "several: a grid's embedding, t-SNE; an audit's scoring, "
                              "heatmaps, cues, … (null for the others).")


class Visualization(BaseModel):
    """One job as the API shows it."""

    id: str
    method: str
    options: dict = Field(description="The method's options as validated (box/stride in "
                                      "pixels or fractions of the shorter side, …).")
    status: str = Field(description="queued | running | done | failed")
    progress: JobProgress
    score: float | None = Field(description="p(target) of the intact image, once done.")
    error: str | None = Field(description="Why the job failed (a failed job only).")
    created: str = Field(description="ISO 8601, UTC.")
    finished: str | None = Field(description="ISO 8601, UTC; null until done or failed.")
    results: dict[str, str] = Field(description="Result file name → URL, once done: "
                                                + ", ".join(RESULTS) + "; a grid job's: "
                                                + ", ".join(GRID_RESULTS) + " (the files "
                                                "of `explain grid`; grid.html loads its tiles "
                                                "from grid_tiles/ beside it); an audit job's: "
                                                "those of `explain audit` it wrote, of "
                                                + ", ".join(AUDIT_RESULTS) + ".")
    clip: dict | None = Field(default=None, description=(
        "An animated upload (GIF, WebP, APNG), once done: every frame was scored and the clip "
        "is judged and explained by its max frame, as the CLI does (``score`` and the pictures "
        "are that frame's): ``sentence`` says which, with ``frame`` (its index), ``time`` (s), "
        "``frames_scored``, ``source_frames``, ``max`` and ``mean`` p(target) over frames, "
        "``notes``. Null for a still image."))


class VisualizationPage(BaseModel):
    """A page of the caller's jobs, newest first."""

    items: list[Visualization]
    next: str | None = Field(description="URL of the next (older) page; null on the last.")


class MethodInfo(BaseModel):
    name: str
    title: str
    white_box: bool = Field(description="Needs a torch model (gradients).")
    available: bool = Field(description="The served model can run it.")
    why_not: str | None = Field(description="Why not, when it cannot.")
    options: list[str] = Field(description="The form options it takes (see ModelInfo.options).")


class OptionInfo(BaseModel):
    """A method option of ``POST /v1/visualizations``, as the registry declares it."""

    name: str = Field(description="The form field.")
    title: str
    type: str = Field(description="str, int, float or bool.")
    default: str | int | float | bool | None
    help: str
    choices: list[str] = Field(description="The values it may take (empty: any).")
    low: float | None = Field(description="The least value of a number.")
    high: float | None = Field(description="The greatest value of a number.")


class ModelInfo(BaseModel):
    """The served model and what can be asked of it."""

    model: str
    classes: list[str]
    input_size: list[int] | None
    device: str
    methods: list[MethodInfo]
    fills: list[str]
    options: list[OptionInfo] = Field(description="The methods' options (form fields).")
    defaults: dict


class Health(BaseModel):
    status: str
    pending: int = Field(description="Jobs queued or running.")
    workers: int = Field(description="Worker threads alive.")
    auth: bool = Field(description="Whether /v1 needs a bearer token.")


def iso(t: float | None) -> str | None:
    """A time.time() value as ISO 8601 UTC text (milliseconds), None as None."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def visualization(job: Job, base: str, written: list[str] | None = None) -> Visualization:
    """The API's view of ``job``; ``base`` is the job's URL; ``written``: the result files of
    an audit job that exist (an audit writes some only when they apply)."""
    names = {"grid": list(GRID_RESULTS), "audit": written or []}.get(job.method, list(RESULTS))
    results = {name: f"{base}/{name}" for name in names} if job.status == "done" else {}
    return Visualization(id=job.id, method=job.method, options=job.options, status=job.status,
                         progress=JobProgress(done=job.done, total=job.total,
                                                             stage=job.stage), score=job.score,
                         error=job.error, created=iso(job.created) or "",
                         finished=iso(job.finished), results=results,
                         clip=job.clip if job.status == "done" else None)


class NewCollection(BaseModel):
    name: str = Field(min_length=1, max_length=200, description="What to call it.")


class Created(BaseModel):
    """A new collection: its id and its URL."""

    id: str = Field(description="The collection id (a random uuid4).")
    url: str


class Rejected(BaseModel):
    name: str = Field(description="The file's name as uploaded.")
    reason: str = Field(description="Why it was not added.")


class Added(BaseModel):
    """What a batch of images did to a collection."""

    added: int
    rejected: list[Rejected] = Field(description="The files not added, each with the reason; "
                                                 "the others were added.")


class CollectionInfo(BaseModel):
    """One collection as the API shows it."""

    id: str
    name: str
    images: int
    labelled: int = Field(description="How many of its images have a label.")
    bytes: int
    created: str = Field(description="ISO 8601, UTC.")
    url: str


class CollectionPage(BaseModel):
    """A page of the caller's collections, newest first."""

    items: list[CollectionInfo]
    next: str | None = Field(description="URL of the next (older) page; null on the last.")


def collection_info(found: Collection, url: str) -> CollectionInfo:
    """The API's view of a collection; ``url`` is its URL."""
    return CollectionInfo(id=found.id, name=found.name, images=found.images,
                          labelled=found.labelled, bytes=found.bytes,
                          created=iso(found.created) or "", url=url)
