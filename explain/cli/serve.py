"""`explain serve`: the visualization service and its web page (FastAPI + uvicorn, in-process
workers; see :mod:`explain.serve`). Needs the ``serve`` extra; the command imports it, and the
library, only when it runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from explain.choices import DEFAULT_MAX_PIXELS, WHITE_BOX_MODEL
from explain.cli.common import (
    BatchOpt,
    ModelOptions,
    console,
    user_errors,
    with_model_options,
)
from explain.errors import OptionError
from explain.files import check_output_dir, display

SERVE_PACKAGES = ("fastapi", "uvicorn", "python_multipart", "fastapi_offline")

HostOpt = Annotated[str, typer.Option("--host", help="Address to listen on. Any address but "
                                      "loopback needs --tokens.")]
PortOpt = Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")]
DataOpt = Annotated[Path, typer.Option("--data", help="Folder of the job table (SQLite) and the "
                                       "result files; kept across restarts.")]
TokensOpt = Annotated[Path | None, typer.Option(
    "--tokens", help="File of bearer tokens, one per line (# comments); each token is a tenant "
    "that sees only its own jobs. Without it, no authentication (loopback only).",
    show_default=False)]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, help="Worker threads running jobs.")]
InterleaveOpt = Annotated[int, typer.Option(
    "--interleave", min=1, help="Occlusion jobs a worker holds at once, their windows sharing "
    "model batches (1: no cross-job batching).")]
PrepareOpt = Annotated[int, typer.Option(
    "--prepare", min=0, help="Preparation threads per worker: they decode and plan occlusion "
    "jobs, build the next batch's copies and write the maps, so the worker's thread only "
    "runs the model (0: the worker does it all).")]
UploadOpt = Annotated[float, typer.Option("--max-upload-mb", min=0.001, help="Largest upload "
                                          "(MB); larger ones are refused with 413.")]
PixelsOpt = Annotated[int, typer.Option("--max-pixels", min=1, help="Largest image (pixels); "
                                        "larger ones and decompression bombs get 413.")]
QueueOpt = Annotated[int, typer.Option("--max-queue", min=1, help="Jobs queued or running at "
                                       "most; past it 429 with Retry-After.")]
TenantQueueOpt = Annotated[int | None, typer.Option(
    "--max-queue-per-tenant", min=1, help="Jobs of one tenant (token) queued or running at most; "
    "past it 429, so one tenant cannot fill the queue. Default: a quarter of --max-queue with "
    "--tokens, all of it without.", show_default=False)]
RetainOpt = Annotated[float | None, typer.Option(
    "--retain", min=0.0, help="Delete finished jobs (done or failed) and their files this many "
    "days after they finished. Default: keep them.", show_default=False)]
UploadTimeoutOpt = Annotated[float, typer.Option(
    "--upload-timeout", min=0.1, help="Seconds an upload may take to arrive in full; past it "
    "408 (a dripping client cannot hold a connection).")]
ConnectionsOpt = Annotated[int, typer.Option(
    "--max-connections", min=1, help="Connections and requests at once; past it 503.")]
CollectionOpt = Annotated[int, typer.Option(
    "--max-collection", min=1, help="Images in one collection at most; past it each one more "
    "is rejected by name.")]
TenantBytesOpt = Annotated[float, typer.Option(
    "--max-tenant-mb", min=0.001, help="Bytes (MB) of all one tenant's collection images at "
    "most; past it each one more is rejected by name.")]
BatchMbOpt = Annotated[float, typer.Option(
    "--max-batch-mb", min=0.001, help="Largest request adding images to a collection (MB); "
    "each file in it is still held to --max-upload-mb.")]
ProcessesOpt = Annotated[int, typer.Option(
    "--processes", min=1, help="Serving processes over the one data folder, each with its own "
    "copy of the model, its workers and its share of the connections (on one port), so that "
    "decoding, HTTP and the model's batches use several cores. --workers, --prepare and "
    "--max-connections are per process.")]
CorsOpt = Annotated[list[str] | None, typer.Option(
    "--cors", help="An origin allowed to call the API from a browser (repeatable); none by "
    "default.", show_default=False)]


def _require_extra() -> None:
    import importlib

    for name in SERVE_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            raise OptionError(f"explain serve needs the 'serve' extra ({name} is not installed): "
                              "pip install 'explain[serve]'") from None


@user_errors
@with_model_options(WHITE_BOX_MODEL)
def serve(models: ModelOptions, host: HostOpt = "127.0.0.1", port: PortOpt = 8000,
          data: DataOpt = Path("explain-serve"), tokens: TokensOpt = None,
          workers: WorkersOpt = 1, interleave: InterleaveOpt = 16, prepare: PrepareOpt = 2,
          batch_size: BatchOpt = None,
          max_upload_mb: UploadOpt = 20.0, max_pixels: PixelsOpt = DEFAULT_MAX_PIXELS,
          max_queue: QueueOpt = 1000, max_queue_per_tenant: TenantQueueOpt = None,
          retain: RetainOpt = None, upload_timeout: UploadTimeoutOpt = 60.0,
          max_connections: ConnectionsOpt = 256, cors: CorsOpt = None,
          max_collection: CollectionOpt = 10_000, max_tenant_mb: TenantBytesOpt = 2000.0,
          max_batch_mb: BatchMbOpt = 200.0, processes: ProcessesOpt = 1) -> None:
    """Serve explanations over HTTP: POST /v1/visualizations, poll the job, fetch the pictures;
    the web page at /, the API docs at /docs."""
    _require_extra()
    import uvicorn

    from explain.models.specs import DEFAULT_MODELS
    from explain.serve.app import Settings, create_app
    from explain.serve.jobs import JobStore
    from explain.serve.security import RateLimitedLog, check_bind, load_tokens
    from explain.serve.served import serve_models

    known = load_tokens(tokens) if tokens is not None else None
    check_bind(host, known)
    check_output_dir(data, "--data")
    store = JobStore(data)  # the folder's lock: a second server is refused before loading
    spec: object = models.model
    if models.model not in DEFAULT_MODELS or not models.plain:
        spec = models.load()
    served = serve_models(spec, models.describe(), models.device)
    settings = Settings(data=str(data), tokens=known, max_upload=int(max_upload_mb * 1e6),
                        max_pixels=max_pixels, max_queue=max_queue,
                        tenant_queue=max_queue_per_tenant, cors=list(cors or []),
                        workers=workers, interleave=interleave, prepare=prepare,
                        batch_size=batch_size,
                        retain_days=retain, upload_timeout=upload_timeout,
                        max_collection=max_collection, tenant_bytes=int(max_tenant_mb * 1e6),
                        max_batch=int(max_batch_mb * 1e6), processes=processes)
    shown = f"[{host}]" if ":" in host else host
    console.print(f"explain serve: http://{shown}:{port}/ (API docs /docs), data in "
                  f"{display(data)}, model {display(served.name)}"
                  + (f", {processes} processes" if processes > 1 else ""), markup=False,
                  highlight=False, soft_wrap=True)
    console.file.flush()  # a log file sees it at once (stdout is block-buffered there)
    if processes > 1:
        from explain.serve.processes import run_processes

        # each process loads its own: this one proved the model loads, and lets go of it (on a
        # GPU it would hold the device's memory while the processes run)
        spec = spec if isinstance(spec, str) else None
        del served
        run_processes(store, settings, (models, spec),
                      f"{__name__}:{process_app.__name__}", host=host, port=port,
                      log_level="warning", limit_concurrency=max_connections,
                      timeout_keep_alive=5)
        return
    app = create_app(settings, served, store)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            limit_concurrency=max_connections, timeout_keep_alive=5)
    for handler in logging.getLogger("uvicorn").handlers:  # set up by Config
        handler.addFilter(RateLimitedLog())
    uvicorn.Server(config).run()


def process_app() -> object:
    """The app of one serving process of ``explain serve --processes N`` (uvicorn calls it in
    each process it starts): the model loaded from the command's options as the command loaded
    it, over the data folder as a member of its store (:mod:`explain.serve.processes`)."""
    from explain.serve.app import create_app
    from explain.serve.jobs import JobStore
    from explain.serve.processes import process_settings, watch_parent
    from explain.serve.security import RateLimitedLog
    from explain.serve.served import serve_models

    watch_parent()
    settings, (models, spec) = process_settings()
    for handler in logging.getLogger("uvicorn").handlers:
        handler.addFilter(RateLimitedLog())
    served = serve_models(spec if spec is not None else models.load(), models.describe(),
                          models.device)
    return create_app(settings, served, JobStore(Path(settings.data), member=True))
