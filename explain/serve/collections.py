"""The service's collections: a tenant's named sets of images (optionally labelled) that grid
jobs run over. All their SQL lives here, in ``data/collections.sqlite3``; their files in
``data/collections/<collection id>/<image id>``, both ids made by this store (canonical
uuid4s, :func:`~explain.serve.jobs.is_job_id`), never a client's string: a file's own name is
only a column. Each image file is written atomically before its row, so a kill leaves at most
an orphan file, which :meth:`CollectionStore.remove_orphans` deletes at start-up (the data
folder's lock, held by the :class:`~explain.serve.jobs.JobStore`, means nothing is being
written then).

A collection is the tenant's own: every read and change names the tenant, and another
tenant's collection is the same None as an unknown id (the app's 404). The limits, images per
collection and bytes per tenant, are checked in the same statement that inserts an image, so
concurrent uploads never pass them.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from explain.serve.jobs import is_job_id

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS collections_tenant ON collections (tenant, seq);
CREATE TABLE IF NOT EXISTS images (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    collection TEXT NOT NULL,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    label TEXT,
    bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS images_collection ON images (collection, seq);
CREATE INDEX IF NOT EXISTS images_tenant ON images (tenant);
"""


@dataclass(frozen=True)
class Collection:
    """One collection: ``images`` its image count, ``labelled`` how many have a label,
    ``bytes`` their size."""

    id: str
    tenant: str
    name: str
    created: float
    images: int
    labelled: int
    bytes: int


@dataclass(frozen=True)
class Member:
    """One image of a collection, in the order it was added: its file and the client's name
    and label for it."""

    id: str
    name: str
    label: str | None
    path: Path


class CollectionStore:
    """The collections of the service's data folder (see the module docstring); safe to use
    from several threads (one connection behind a lock)."""

    def __init__(self, data: Path) -> None:
        self.data = Path(data)
        (self.data / "collections").mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.data / "collections.sqlite3", check_same_thread=False,
                                   isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: tuple = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def folder(self, collection_id: str) -> Path:
        """The folder of collection ``collection_id`` (an id this store made, else a
        ValueError)."""
        if not is_job_id(collection_id):
            raise ValueError(f"not a collection id: {collection_id!r}")
        return self.data / "collections" / collection_id

    def create(self, tenant: str, name: str) -> str:
        """A new empty collection of ``tenant`` named ``name``; its id."""
        collection_id = str(uuid.uuid4())
        self.folder(collection_id).mkdir()
        self._run("INSERT INTO collections (id, tenant, name, created) VALUES (?, ?, ?, ?)",
                  (collection_id, tenant, name, time.time()))
        return collection_id

    _SELECT = ("SELECT c.id, c.tenant, c.name, c.created, COUNT(i.id), COUNT(i.label), "
               "COALESCE(SUM(i.bytes), 0) FROM collections c LEFT JOIN images i ON "
               "i.collection = c.id")

    def get(self, collection_id: str, tenant: str) -> Collection | None:
        """Collection ``collection_id`` of ``tenant``; None when there is none, or it is
        another tenant's."""
        if not is_job_id(collection_id):
            return None
        rows = self._rows(f"{self._SELECT} WHERE c.id = ? AND c.tenant = ? GROUP BY c.id",
                          (collection_id, tenant))
        return Collection(*rows[0]) if rows else None

    def page(self, tenant: str, limit: int, before: str | None = None) -> list[Collection]:
        """The tenant's collections, newest first, at most ``limit``, older than collection
        ``before`` when given (another tenant's id gives an empty page)."""
        if before is None:
            rows = self._rows(f"{self._SELECT} WHERE c.tenant = ? GROUP BY c.id "
                              "ORDER BY c.seq DESC LIMIT ?", (tenant, limit))
        else:
            rows = self._rows(f"{self._SELECT} WHERE c.tenant = ? AND c.seq < (SELECT seq FROM "
                              "collections WHERE id = ? AND tenant = ?) GROUP BY c.id "
                              "ORDER BY c.seq DESC LIMIT ?", (tenant, before, tenant, limit))
        return [Collection(*row) for row in rows]

    def used(self, tenant: str) -> int:
        """The bytes of all the tenant's images (what its quota counts)."""
        return self._rows("SELECT COALESCE(SUM(bytes), 0) FROM images WHERE tenant = ?",
                          (tenant,))[0][0]

    def new_image(self, collection_id: str) -> tuple[str, Path]:
        """An id and the path its file is to be written at, before :meth:`add`."""
        image_id = str(uuid.uuid4())
        return image_id, self.folder(collection_id) / image_id

    def add(self, collection_id: str, tenant: str, image_id: str, name: str,
            label: str | None, size: int, max_images: int, max_bytes: int) -> str | None:
        """Record image ``image_id`` (its file, ``size`` bytes, already written) in the
        tenant's collection, unless that would pass ``max_images`` in the collection or
        ``max_bytes`` of the tenant's, or add a second image of the same ``name`` (one
        statement: concurrent adds never pass these);
        None when added, else why not (the file is then removed)."""
        changed = self._run(
            "INSERT INTO images (id, collection, tenant, name, label, bytes) SELECT ?, ?, ?, ?, "
            "?, ? WHERE EXISTS (SELECT 1 FROM collections WHERE id = ? AND tenant = ?) AND "
            "NOT EXISTS (SELECT 1 FROM images WHERE collection = ? AND name = ?) AND "
            "(SELECT COUNT(*) FROM images WHERE collection = ?) < ? AND "
            "(SELECT COALESCE(SUM(bytes), 0) FROM images WHERE tenant = ?) + ? <= ?",
            (image_id, collection_id, tenant, name, label, size, collection_id, tenant,
             collection_id, name, collection_id, max_images, tenant, size, max_bytes))
        if changed:
            return None
        (self.folder(collection_id) / image_id).unlink(missing_ok=True)
        collection = self.get(collection_id, tenant)
        if collection is None:
            return "the collection was deleted"
        if any(m.name == name for m in self.members(collection_id, tenant)):
            return "the collection already has an image of this name"
        if collection.images >= max_images:
            return f"the collection is full ({max_images:,} images at most)"
        return (f"over your storage quota ({max_bytes:,} bytes for all your collections; "
                f"{self.used(tenant):,} used)")

    def members(self, collection_id: str, tenant: str) -> list[Member]:
        """The images of the tenant's collection, in the order they were added."""
        folder = self.folder(collection_id)
        rows = self._rows("SELECT i.id, i.name, i.label FROM images i JOIN collections c ON "
                          "c.id = i.collection WHERE i.collection = ? AND c.tenant = ? "
                          "ORDER BY i.seq", (collection_id, tenant))
        return [Member(image_id, name, label, folder / image_id)
                for image_id, name, label in rows]

    def delete(self, collection_id: str, tenant: str) -> bool:
        """Delete the tenant's collection, its images' rows, then its files; False when the
        tenant has no such collection. (A grid job over it keeps its own links to the files,
        so it is not affected.)"""
        if not is_job_id(collection_id):
            return False
        with self._lock:  # one transaction: no image row outlives its collection's
            self._db.execute("BEGIN IMMEDIATE")
            try:
                gone = self._db.execute("DELETE FROM collections WHERE id = ? AND tenant = ?",
                                        (collection_id, tenant)).rowcount
                self._db.execute("DELETE FROM images WHERE collection = ? AND tenant = ?",
                                 (collection_id, tenant))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if gone:
            shutil.rmtree(self.folder(collection_id), ignore_errors=True)
        return gone > 0

    def remove_orphans(self) -> int:
        """At start-up: collection folders without a row, image files without a row (an
        upload or a delete cut short by a kill) and ``.part`` files; how many were removed."""
        known = {row[0] for row in self._rows("SELECT id FROM collections")}
        images = {row[0] for row in self._rows("SELECT id FROM images")}
        removed = 0
        for entry in (self.data / "collections").iterdir():
            if entry.name not in known or not entry.is_dir():
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()
                removed += 1
                continue
            for file in entry.iterdir():
                if file.name not in images:
                    file.unlink(missing_ok=True)
                    removed += 1
        return removed


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (a grid job's own reference to a collection's
    file: deleting the collection leaves it), or a copy where links are not possible."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
