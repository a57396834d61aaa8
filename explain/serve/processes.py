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

The settings (the bearer tokens among them) and the model's options reach the processes in a file
only its user can read, ``DATA/processes.pickle``, whose path an environment variable names
(:data:`SETTINGS_ENV`: a process started by ``spawn`` inherits it; the settings themselves
would put the tokens in every process's environment, and a long token list over the system's
limit on one variable); it is removed when the server stops. A serving process whose parent is
gone (killed, ``kill -9`` included) stops itself within :data:`PARENT_CHECK_S`
(:func:`watch_parent`): the parent held the folder's lock for it, and a new server on the folder
would run its running jobs again.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time

from explain.serve.app import Settings
from explain.serve.collections import CollectionStore
from explain.serve.jobs import JobStore

SETTINGS_ENV = "EXPLAIN_SERVE_PROCESS"
SETTINGS_FILE = "processes.pickle"
PARENT_CHECK_S = 1.0


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
    path = store.data / SETTINGS_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an old file of other permissions is made private too
    with os.fdopen(fd, "wb") as f:
        pickle.dump((settings, model), f)
    os.environ[SETTINGS_ENV] = str(path)
    try:
        uvicorn.run(app, factory=True, workers=settings.processes,  # type: ignore[arg-type]
                    **uvicorn_options)
    finally:
        del os.environ[SETTINGS_ENV]
        path.unlink(missing_ok=True)
        store.close()


def process_settings() -> tuple[Settings, object]:
    """In a serving process: the settings and the model's description
    :func:`run_processes` passed on."""
    with open(os.environ[SETTINGS_ENV], "rb") as f:
        settings, model = pickle.load(f)  # noqa: S301 — our own parent's, private to its user
    return settings, model


def watch_parent() -> None:
    """In a serving process: stop it (SIGTERM: uvicorn's clean shutdown) once its parent is
    gone, checked every :data:`PARENT_CHECK_S` on a daemon thread."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="explain-parent-watch", daemon=True).start()
