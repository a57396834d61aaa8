"""The service's job table: one SQLite file under the data folder, and one folder of files per job.

ALL the service's SQL lives here. A job is a row (its id, its tenant, the method and its
options as JSON, its status, progress, score and error, three times, and for an animated upload
how it was judged) and a folder
``DATA/jobs/<id>/`` holding the upload (``input``) and, once done, the results
(:data:`RESULTS`). Ids are random (uuid4) and made here; a folder name is only ever made from
such an id (:meth:`JobStore.folder` refuses anything else), never from a client's string.

Restart safety: a job's folder and input are written before its row is inserted, its results
before it is marked done, each file atomically (:mod:`explain.files`); SQLite commits each
change. :meth:`JobStore.requeue_running` at start-up puts a job that was running when the
process died (``kill -9`` included) back in the queue, in its place, so it is run again; a
job that was running through :data:`MAX_ATTEMPTS` deaths of the server is failed instead of
killing it forever (the worker's check).

One owner per data folder: the store holds an exclusive ``flock`` on ``DATA/lock`` (holding
its pid) for as long as it is open, so a second server on the same folder is refused with the
holder's pid instead of re-running the first one's jobs and deleting their results. The kernel
drops the lock when its process dies (``kill -9`` included), so a stale lock file is simply
taken over.

Several processes of ONE server (``explain serve --processes N``,
:mod:`explain.serve.processes`): the parent holds the folder's lock, requeues and cleans up
once, then starts N serving processes, each opening the store as a *member*
(``JobStore(data, member=True)``: no lock of its own, no start-up clean-up). What they share is
safe across processes: every change is one SQLite statement or transaction (a claim, an add with
its queue limits, a tick); a job's lock (:meth:`JobStore.locked`) is also a lock on one byte of
``DATA/jobs.locks``, so a DELETE in one process waits for a result being written in another;
a claim records its process (``owner``: pid and start time), and
:meth:`JobStore.requeue_orphaned` puts back the running jobs of a process that died.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import sqlite3
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from explain.errors import OptionError
from explain.files import display

STATUSES = ("queued", "running", "done", "failed")
MAX_ATTEMPTS = 3
LOCK = "lock"
RESULTS = {"overlay.png": "image/png", "side.png": "image/png", "original.png": "image/png",
           "heatmap.npy": "application/octet-stream", "heatmap.json": "application/json"}
GRID_RESULTS = {"grid.png": "image/png", "grid.json": "application/json",
                "grid.html": "text/html; charset=utf-8"}
"""A grid job's result files (those of `explain grid`); its pyramid's tiles are served too."""
AUDIT_RESULTS = {"audit.html": "text/html; charset=utf-8", "scores.csv": "text/csv",
                 "errors.csv": "text/csv", "metrics.json": "application/json",
                 "summary.md": "text/markdown; charset=utf-8", "concepts.csv": "text/csv",
                 "parts.csv": "text/csv", "cues.csv": "text/csv", "cue_patches.csv": "text/csv",
                 "slices.csv": "text/csv", "label_issues.csv": "text/csv",
                 "error_clusters.csv": "text/csv", "histogram.png": "image/png",
                 "roc.png": "image/png", "reliability.png": "image/png",
                 "grid.png": "image/png", "grid.json": "application/json"}
"""An audit job's result files, those of `explain audit` (each served once it exists)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    method TEXT NOT NULL,
    options TEXT NOT NULL,
    status TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    score REAL,
    error TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    clip TEXT,
    stage TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs (tenant, seq);
-- a tenant's pending jobs (its quota, counted at each submission) without reading its finished
-- ones: with finished jobs kept, the count would otherwise grow with the table
CREATE INDEX IF NOT EXISTS jobs_tenant_status ON jobs (tenant, status);
"""
_COLUMNS = "seq, id, tenant, method, options, status, done, total, score, error, created, " \
           "started, finished, attempts, clip, stage"


@dataclass(frozen=True)
class Job:
    """One row of the job table; ``options`` are the method's validated options."""

    seq: int
    id: str
    tenant: str
    method: str
    options: dict
    status: str
    done: int
    total: int
    score: float | None
    error: str | None
    created: float
    started: float | None
    finished: float | None
    attempts: int
    clip: dict | None = None
    stage: str | None = None


def _job(row: tuple) -> Job:
    values = list(row)
    values[4] = json.loads(values[4])
    values[14] = None if values[14] is None else json.loads(values[14])
    return Job(*values)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full: an OSError ENOSPC/EDQUOT, or
    SQLite's "database or disk is full"."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc)


def _own(data: Path) -> int:
    """Take the data folder's lock (see the module docstring): the open descriptor holding it,
    or an OptionError naming the folder and the pid of the server that holds it."""
    fd = os.open(data / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode("ascii", errors="replace").strip() or "unknown"
        os.close(fd)
        raise OptionError(f"the data folder {display(data)} is in use by another explain serve "
                          f"(pid {holder}); stop that one, or give this one another --data "
                          "folder") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


@contextmanager
def _byte_lock(path: Path, offset: int) -> Iterator[None]:
    """An exclusive lock on byte ``offset`` of the file at ``path``, held in the block. On Linux
    an open-file-description lock (``F_OFD_SETLKW``) on a descriptor of its own: it belongs to
    that descriptor, not to the process, so the kernel's deadlock check does not see two
    processes' threads waiting on each other's other jobs as a deadlock (``EDEADLK``, which
    plain POSIX record locks gave), and closing another descriptor of the file releases
    nothing. Elsewhere a POSIX record lock (``lockf``)."""
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(fcntl, "F_OFD_SETLKW"):
            fcntl.fcntl(fd, fcntl.F_OFD_SETLKW,
                        struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0))
        else:
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, offset)
        yield
    finally:
        os.close(fd)  # the lock goes with its descriptor


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command's name (state first), or None where
    /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return fields if len(fields) > 19 else None


def process_key(pid: int | None = None) -> str:
    """``pid:start`` of process ``pid`` (this one by default): its pid and its start time in
    clock ticks since boot (``/proc/PID/stat``), so a pid the system reused is not taken for
    the process that claimed a job; ``pid:?`` where /proc cannot tell."""
    pid = os.getpid() if pid is None else pid
    fields = _stat(pid)
    return f"{pid}:{'?' if fields is None else fields[19]}"


def process_alive(key: str) -> bool:
    """Whether the process of ``key`` (:func:`process_key`) still runs: it exists, is not a
    zombie (dead, not yet reaped by its parent) and started when the key says."""
    pid = int(key.partition(":")[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)  # read once: its state and its start time
    if fields is None:  # gone meanwhile, or no /proc: only a key without a start time holds
        return key.endswith(":?")
    return fields[0] not in "ZX" and (key.endswith(":?") or key == f"{pid}:{fields[19]}")


def is_job_id(text: str) -> bool:
    """Whether ``text`` is an id this store makes (a canonical uuid4): the only strings that
    ever name a job's folder."""
    try:
        return str(uuid.UUID(text, version=4)) == text
    except (ValueError, TypeError, AttributeError):
        return False


class JobStore:
    """The job table in ``data/jobs.sqlite3`` and the job folders in ``data/jobs/``; safe to use
    from several threads (one connection behind a lock; each change is committed)."""

    def __init__(self, data: Path, member: bool = False) -> None:
        self.data = Path(data)
        self.data.mkdir(parents=True, exist_ok=True)
        # a member process of a server whose parent holds the folder's lock takes none
        self._owner = None if member else _own(self.data)
        self.me = process_key()
        (self.data / "jobs").mkdir(exist_ok=True)
        # the jobs' locks across processes: one byte of this file per job (see locked())
        self._job_bytes = self.data / "jobs.locks"
        self._job_bytes.touch(0o644)
        self._db = sqlite3.connect(self.data / "jobs.sqlite3", check_same_thread=False,
                                   isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        self._job_locks: dict[str, tuple[threading.Lock, list[int]]] = {}
        self._job_locks_guard = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # each commit survives a killed process (kill -9); only a power cut may lose the last
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            if "clip" not in columns:  # a table made before animated uploads were judged
                self._db.execute("ALTER TABLE jobs ADD COLUMN clip TEXT")
            if "stage" not in columns:  # a table made before grid and audit jobs
                self._db.execute("ALTER TABLE jobs ADD COLUMN stage TEXT")
            if "owner" not in columns:  # a table made before several serving processes
                self._db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self._owner is not None:
            os.close(self._owner)  # the folder's lock goes with it

    def _run(self, sql: str, args: tuple = ()) -> int:
        """Run a change; the number of rows it changed (read under the lock: a cursor of the
        shared connection must not be read while another thread runs a statement on it)."""
        with self._lock:
            return self._db.execute(sql, args).rowcount

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Run a query; all its rows, fetched under the lock (see :meth:`_run`)."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    @contextmanager
    def locked(self, job_id: str) -> Iterator[None]:
        """Hold job ``job_id``'s own lock: what writes or removes its files (the worker's
        results, a picture's first render, a DELETE) holds it, so none of them sees the others
        half done, and concurrent first requests of one picture render it once. Across the
        processes of one server (:mod:`explain.serve.processes`) it is also a lock on one byte
        of ``DATA/jobs.locks`` (at an offset made from the job's random id), taken once this
        process's own lock for the job is held (:func:`_byte_lock`)."""
        with self._job_locks_guard:
            lock, users = self._job_locks.setdefault(job_id, (threading.Lock(), [0]))
            users[0] += 1
        offset = int(job_id.replace("-", "")[:15], 16)  # a uuid4's random bits: < 2**60
        try:
            with lock, _byte_lock(self._job_bytes, offset):
                yield
        finally:
            with self._job_locks_guard:
                users[0] -= 1
                if users[0] == 0:
                    del self._job_locks[job_id]

    def folder(self, job_id: str) -> Path:
        """The folder of job ``job_id`` (an id made by :meth:`new_id`, else a ValueError)."""
        if not is_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.data / "jobs" / job_id

    @staticmethod
    def new_id() -> str:
        return str(uuid.uuid4())

    def add(self, job_id: str, tenant: str, method: str, options: dict,
            limit: int | None = None, tenant_limit: int | None = None) -> bool:
        """Queue job ``job_id`` (its folder and input already written), unless ``limit`` jobs
        in all, or ``tenant_limit`` of this tenant's, are already pending (checked in the same
        statement, so concurrent adds never pass either); returns whether it was queued."""
        changed = self._run("INSERT INTO jobs (id, tenant, method, options, status, created) "
                            "SELECT ?, ?, ?, ?, 'queued', ? WHERE (SELECT COUNT(*) FROM jobs "
                            "WHERE status IN ('queued', 'running')) < ? AND (SELECT COUNT(*) "
                            "FROM jobs WHERE tenant = ? AND status IN ('queued', 'running')) < ?",
                            (job_id, tenant, method, json.dumps(options), time.time(),
                             2**62 if limit is None else limit, tenant,
                             2**62 if tenant_limit is None else tenant_limit))
        return changed > 0

    def get(self, job_id: str, tenant: str | None = None) -> Job | None:
        """Job ``job_id``; None when there is none, or when it belongs to another tenant than
        ``tenant`` (None: any tenant)."""
        rows = self._rows(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        row = rows[0] if rows else None
        if row is None or (tenant is not None and row[2] != tenant):
            return None
        return _job(row)

    def page(self, tenant: str, limit: int, before: str | None = None) -> list[Job]:
        """The tenant's jobs, newest first, at most ``limit``, older than job ``before`` when
        given (an id of this tenant's; another one gives an empty page)."""
        if before is None:
            rows = self._rows(f"SELECT {_COLUMNS} FROM jobs WHERE tenant = ? ORDER BY seq DESC "
                             "LIMIT ?", (tenant, limit))
        else:
            rows = self._rows(f"SELECT {_COLUMNS} FROM jobs WHERE tenant = ? AND seq < "
                             "(SELECT seq FROM jobs WHERE id = ? AND tenant = ?) "
                             "ORDER BY seq DESC LIMIT ?", (tenant, before, tenant, limit))
        return [_job(row) for row in rows]

    def pending(self, tenant: str | None = None) -> int:
        """Jobs queued or running (what the queue limit counts), of ``tenant`` only when given
        (what its quota counts)."""
        if tenant is None:
            return self._rows("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', "
                              "'running')")[0][0]
        return self._rows("SELECT COUNT(*) FROM jobs WHERE tenant = ? AND status IN "
                          "('queued', 'running')", (tenant,))[0][0]

    def full(self, tenant: str, limit: int, tenant_limit: int) -> bool:
        """Whether ``limit`` jobs in all, or ``tenant_limit`` of ``tenant``'s, are pending (what
        :meth:`add` refuses), counted in one query: a submission asks before it reads its
        upload."""
        pending, theirs = self._rows("SELECT COUNT(*), COALESCE(SUM(tenant = ?), 0) FROM jobs "
                                     "WHERE status IN ('queued', 'running')", (tenant,))[0]
        return pending >= limit or theirs >= tenant_limit

    def claim(self) -> Job | None:
        """The oldest queued job, now marked running (its ``attempts`` counted); None when none
        is queued."""
        with self._lock:
            row = self._db.execute("UPDATE jobs SET status = 'running', started = ?, "
                                   "attempts = attempts + 1, owner = ? WHERE seq = "
                                   "(SELECT seq FROM jobs WHERE status = 'queued' ORDER BY seq "
                                   f"LIMIT 1) RETURNING {_COLUMNS}",
                                   (time.time(), self.me)).fetchone()
        return None if row is None else _job(row)

    def progress(self, job_id: str, done: int, total: int, stage: str | None = None) -> bool:
        """Record a running job's progress (``stage``: the step it counts, for a job of several
        steps); False when the job is gone (deleted)."""
        return self._run("UPDATE jobs SET done = ?, total = ?, stage = ? WHERE id = ? AND "
                         "status = 'running'", (done, total, stage, job_id)) > 0

    def finish(self, job_id: str, score: float | None, clip: dict | None = None) -> bool:
        """Mark a running job done (its results written; ``clip``: how an animated upload was
        judged); False when it was deleted meanwhile (its folder is then removed)."""
        changed = self._run("UPDATE jobs SET status = 'done', done = total, score = ?, "
                            "finished = ?, clip = ? WHERE id = ? AND status = 'running'",
                            (score, time.time(), None if clip is None else json.dumps(clip),
                             job_id))
        if changed == 0:
            shutil.rmtree(self.folder(job_id), ignore_errors=True)
        return changed > 0

    def tick(self, progress: dict[str, tuple[int, int]],
             finished: dict[str, tuple[float | None, dict | None]]) -> set[str]:
        """One worker tick in ONE transaction: the progress ``(done, total)`` of every running
        job of ``progress``, then the jobs of ``finished`` marked done (``(score, clip)``, as
        :meth:`finish`: a job deleted meanwhile has its folder removed; give its progress too,
        so its total is recorded); returns the ids of ``progress`` not in ``finished`` that are
        no longer running (deleted)."""
        now = time.time()
        ids = list(progress)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("UPDATE jobs SET done = ?, total = ?, stage = NULL WHERE "
                                     "id = ? AND status = 'running'",
                                     [(d, t, i) for i, (d, t) in progress.items()])
                gone = [job_id for job_id, (score, clip) in finished.items()
                        if self._db.execute(
                            "UPDATE jobs SET status = 'done', done = total, score = ?, "
                            "finished = ?, clip = ? WHERE id = ? AND status = 'running'",
                            (score, now, None if clip is None else json.dumps(clip), job_id)
                        ).rowcount == 0]
                running = self._running(ids)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        for job_id in gone:
            shutil.rmtree(self.folder(job_id), ignore_errors=True)
        return {i for i in ids if i not in running and i not in finished}

    def gone(self, ids: list[str]) -> set[str]:
        """The jobs of ``ids`` that are no longer running (deleted): a read, no transaction
        (what a worker asks after each model batch between two ticks)."""
        if not ids:
            return set()  # nothing held: the lock the HTTP threads share is not taken
        with self._lock:
            running = self._running(ids)
        return {i for i in ids if i not in running}

    def _running(self, ids: list[str]) -> set[str]:
        """The jobs of ``ids`` that are running (under the store's lock)."""
        running: set[str] = set()
        for lo in range(0, len(ids), 500):  # SQLite's limit of bound variables
            chunk = ids[lo:lo + 500]
            running.update(row[0] for row in self._db.execute(
                f"SELECT id FROM jobs WHERE status = 'running' AND id IN "
                f"({', '.join('?' * len(chunk))})", chunk))
        return running

    def fail(self, job_id: str, error: str) -> None:
        """Mark a running job failed with ``error`` (a reason a user can read)."""
        self._run("UPDATE jobs SET status = 'failed', error = ?, finished = ? WHERE id = ? AND "
                  "status = 'running'", (error, time.time(), job_id))

    def delete(self, job_id: str, tenant: str) -> bool:
        """Delete the tenant's job ``job_id``, then its files under the job's lock: a result or
        picture being made sees the row gone and writes nothing (a running job stops at its next
        batch); False when the tenant has no such job."""
        if self._run("DELETE FROM jobs WHERE id = ? AND tenant = ?", (job_id, tenant)) == 0:
            return False
        with self.locked(job_id):
            shutil.rmtree(self.folder(job_id), ignore_errors=True)
        return True

    def requeue(self, job_ids: list[str]) -> int:
        """Put running jobs ``job_ids`` back in the queue, in their place (a worker that held
        them died); returns how many."""
        return sum(self._run("UPDATE jobs SET status = 'queued', started = NULL, done = 0 "
                             "WHERE id = ? AND status = 'running'", (job_id,))
                   for job_id in job_ids)

    def expire(self, before: float) -> int:
        """Delete the jobs that finished (done or failed) before time ``before`` and their
        files (``--retain``); returns how many."""
        ids = [row[0] for row in self._rows("SELECT id FROM jobs WHERE status IN ('done', "
                                            "'failed') AND finished < ?", (before,))]
        for job_id in ids:
            self._run("DELETE FROM jobs WHERE id = ?", (job_id,))
            with self.locked(job_id):
                shutil.rmtree(self.folder(job_id), ignore_errors=True)
        return len(ids)

    def requeue_orphaned(self) -> int:
        """Running jobs claimed by another process of this server that is gone (killed, say)
        go back to the queue, in their place (:func:`process_alive`); returns how many."""
        owners = [row[0] for row in self._rows("SELECT DISTINCT owner FROM jobs WHERE status = "
                                               "'running' AND owner IS NOT NULL AND owner != ?",
                                               (self.me,))]
        return sum(self._run("UPDATE jobs SET status = 'queued', started = NULL, done = 0 "
                             "WHERE status = 'running' AND owner = ?", (key,))
                   for key in owners if not process_alive(key))

    def requeue_running(self) -> int:
        """At start-up: jobs left running by a process that died go back to the queue (keeping
        their place); returns how many."""
        return self._run("UPDATE jobs SET status = 'queued', started = NULL, done = 0 "
                         "WHERE status = 'running'")

    def remove_orphans(self) -> int:
        """At start-up (the folder's lock held, so nothing is being written): job folders
        without a row (an upload cut short by a crash before its row was written, or a delete
        cut short), and the temporary ``.part`` files of writes cut short by a kill
        (:func:`explain.files.atomic_write`); returns how many were removed."""
        known = {row[0] for row in self._rows("SELECT id FROM jobs")}
        removed = 0
        for entry in (self.data / "jobs").iterdir():
            if entry.name not in known:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()
                removed += 1
            elif entry.is_dir():
                for part in entry.glob("*.part"):
                    part.unlink(missing_ok=True)
                    removed += 1
        return removed
