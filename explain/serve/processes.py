"""Several serving processes over one data folder: ``explain serve --processes N``.

One process's Python work (HTTP, decoding, planning, writing) is bound by its interpreter's
lock, so past about one core a single process cannot keep a fast model fed. With N processes
each one is a whole server — the app, its workers, its own copy of the model and its share of
the connections, accepted from ONE listening socket (uvicorn's supervisor,
:class:`uvicorn.supervisors.Multiprocess`, which restarts a process that dies) — over one job
store (:mod:`explain.serve.jobs`: the SQLite table and the job folders, safe across processes).

The parent (:func:`run_processes`) holds the data folder's lock for all of them, puts back the
jobs a previous run left running and removes orphaned files once, then starts the processes;
each one opens the store as a member (no start-up clean-up of its own). A job is claimed by one
process; one that dies has its running jobs put back in the queue by the others
(:meth:`~explain.serve.jobs.JobStore.requeue_orphaned`); one process at a time deletes expired
jobs (:class:`explain.serve.app.Expiring`). A process whose own queue is empty looks at the
shared one every :data:`~explain.serve.worker.EMPTY_RECHECK_S` (a job submitted to another
process wakes that one's workers at once). ``/healthz`` answers for the process that took the
request. Cross-job batching happens within a process.

The settings and the model's options reach the processes through an environment variable
(:data:`SETTINGS_ENV`), the way a process started by ``spawn`` inherits them.
"""

from __future__ import annotations

import base64
import os
import pickle

from explain.serve.app import Settings
from explain.serve.collections import CollectionStore
from explain.serve.jobs import JobStore

SETTINGS_ENV = "EXPLAIN_SERVE_PROCESS"


def run_processes(store: JobStore, settings: Settings, model: object, app: str,
                  **uvicorn_options: object) -> None:
    """Serve with ``settings.processes`` processes until stopped: ``store`` is the folder's
    store as its owner (its lock held), ``model`` what each process needs to load the model
    (pickled to them), ``app`` the import path of the factory each process calls
    (``module:function``); ``uvicorn_options`` go to :func:`uvicorn.run` (host, port, …)."""
    import uvicorn

    store.requeue_running()
    store.remove_orphans()
    collections = CollectionStore(store.data)
    collections.remove_orphans()
    collections.close()
    os.environ[SETTINGS_ENV] = base64.b64encode(pickle.dumps((settings, model))).decode()
    try:
        uvicorn.run(app, factory=True, workers=settings.processes,  # type: ignore[arg-type]
                    **uvicorn_options)
    finally:
        del os.environ[SETTINGS_ENV]
        store.close()


def process_settings() -> tuple[Settings, object]:
    """In a serving process: the settings and the model's description
    :func:`run_processes` passed on."""
    settings, model = pickle.loads(base64.b64decode(os.environ[SETTINGS_ENV]))  # noqa: S301 — our own parent's
    return settings, model
