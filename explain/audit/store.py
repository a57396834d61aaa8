"""The audit's SQLite store: every result is written as soon as it is computed.

One database per output folder (``audit.sqlite``) holds any number of runs. A run is identified
by its *key*: a hash of everything that changes the scores and maps (model, data, target,
occlusion box/stride/fill, concept detection, code version). Re-running with the same key
resumes that run; a different key starts a new run next to the old one, so results computed
under different settings are never mixed. The threshold is not in the key: it only sorts stored
scores into errors, so a new threshold reuses the run.

Tables (:mod:`explain.audit.schema`): ``runs`` (key, parameters, stage timestamps), ``images``
(one row per image: label, score, error, the warnings its decoding raised, the properties its
slices are decided on, timestamps of each stage), ``parts`` (one row per detected body part:
box, score drop, heat share), ``heatmaps`` (one row per top-k heatmap, with its files),
``embeddings`` (one vector per labeled image and embedder, for the label issues and error
clusters) and the cue discovery's (:mod:`explain.audit.cues`): ``cue_images`` (one row per image
harvested, under a *setting*, the hash of the cue options), ``cue_patches`` (its patches with
their embeddings) and ``cue_pastes`` (each cluster's paste test). Each batch of images is
committed in one short transaction together with its stage marks, so a kill at any moment loses
at most the batch in flight and never leaves half of one. WAL journaling keeps readers (a
progress poller, a test) from blocking the writer.

:class:`MiningStore` is the counter-example mining's database (``counterexamples.sqlite`` in its
output folder, :mod:`explain.audit.mining`): each pool image scanned, with its top windows.

Paths are stored in the strict-UTF-8 form of :func:`explain.files.to_storable`, so any byte file
name (``caf\xe9.jpg``) is kept losslessly; ``ImageRow.file`` gives the path to open.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from explain.audit.schema import MINING_SCHEMA, SCHEMA, SELECTIONS, STAGES
from explain.errors import OptionError
from explain.files import display, from_storable, to_storable

DB_NAME = "audit.sqlite"
MINING_DB = "counterexamples.sqlite"


def _stage(stage: str) -> str:
    """``stage`` when it is one of :data:`STAGES` (it becomes a column name); ValueError
    otherwise."""
    if stage not in STAGES:
        raise ValueError(f"unknown audit stage {stage!r}; use one of {', '.join(STAGES)}")
    return stage


def _where(selection: str, args: tuple) -> str:
    """The condition of ``selection`` (a name of :data:`SELECTIONS`), checked against the number
    of ``args`` it takes; ValueError otherwise."""
    where = SELECTIONS.get(selection)
    if where is None:
        raise ValueError(f"unknown image selection {selection!r}; use one of "
                         f"{', '.join(SELECTIONS)}")
    if where.count("?") != len(args):
        raise ValueError(f"image selection {selection!r} takes {where.count('?')} parameter(s), "
                         f"got {len(args)}")
    return where


def _pending(concepts: bool) -> str:
    """The condition of the images still to score (or, with ``concepts``, to detect parts in)."""
    return "error IS NULL AND (score IS NULL" + (" OR concepts_at IS NULL)" if concepts else ")")


def run_key(params: dict) -> str:
    """A short stable hash of the parameters that define a run's results."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _connect(path: Path, schema: str = SCHEMA) -> sqlite3.Connection:
    """The database at ``path`` (created when absent) with the current ``schema``."""
    try:
        db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(schema)
        if schema is not SCHEMA:
            return db
        columns = {r[1] for r in db.execute("PRAGMA table_info(images)")}
        for column in ("notes", "props", "sha256"):  # a database written before they were kept
            if column not in columns:
                db.execute(f"ALTER TABLE images ADD COLUMN {column} TEXT")
    except sqlite3.DatabaseError as exc:
        raise OptionError(f"{path} is not a usable audit database ({exc}); choose "
                          "another output folder or remove the file") from exc
    return db


@dataclass
class ImageRow:
    """One image of the run; ``path`` is the stored (strict UTF-8) form, ``file`` the path."""

    id: int
    path: str
    label: str | None
    score: float | None
    height: int | None
    width: int | None

    @property
    def file(self) -> str:
        return from_storable(self.path)


class Store:
    """An open audit database, bound to one run (found by its key or created). Its connection
    is private: every query is one of its methods."""

    def __init__(self, folder: str | os.PathLike, params: dict) -> None:
        self.path = Path(folder) / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = _connect(self.path)
        self.params = params
        self.key = run_key(params)
        row = self._db.execute("SELECT id, created FROM runs WHERE key = ?", (self.key,)).fetchone()
        self.resumed = row is not None
        if row is None:
            with self.transaction():
                cur = self._db.execute("INSERT INTO runs (key, params, created) VALUES (?, ?, ?)",
                                      (self.key, json.dumps(params, sort_keys=True, default=str),
                                       time.time()))
            self.run = int(cur.lastrowid)
        else:
            self.run = int(row[0])

    @classmethod
    def finished(cls, folder: str | os.PathLike) -> Store:
        """The store of ``folder``'s audit, opened read-only and bound to its run finished last
        (what the folder's ``metrics.json`` and page describe); :class:`~explain.errors.OptionError`
        when the folder holds no audit or no finished run."""
        path = Path(folder) / DB_NAME
        if not path.is_file():
            raise OptionError(f"{display(folder)} holds no audit ({DB_NAME}); give the output "
                              "folder of an `explain audit` run")
        store = cls.__new__(cls)
        try:  # read-only: comparing audits never changes them
            db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30.0,
                                 isolation_level=None)
            db.execute("SELECT id FROM runs LIMIT 1")
        except sqlite3.DatabaseError as exc:
            raise OptionError(f"{display(path)} is not a readable audit database ({exc})"
                              ) from None
        store.path, store._db = path, db
        row = store._db.execute("SELECT id, key, params FROM runs WHERE finished IS NOT NULL "
                                "ORDER BY finished DESC, id DESC LIMIT 1").fetchone()
        if row is None:
            store.close()
            raise OptionError(f"the audit in {display(folder)} has no finished run; run the same "
                              "`explain audit` command again to finish it")
        store.run, store.key, store.params = int(row[0]), row[1], json.loads(row[2])
        store.resumed = True
        return store

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE … COMMIT``; rolled back if anything in it fails."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def previous_runs(self) -> list[dict]:
        """The other runs in this database (their key, creation time and image count)."""
        rows = self._db.execute(
            "SELECT r.id, r.key, r.created, COUNT(i.id) FROM runs r LEFT JOIN images i "
            "ON i.run = r.id WHERE r.id != ? GROUP BY r.id ORDER BY r.id", (self.run,))
        return [{"id": r[0], "key": r[1], "created": r[2], "images": r[3]} for r in rows]

    def created(self) -> float:
        """When this run was first created (seconds since the epoch)."""
        return self._db.execute("SELECT created FROM runs WHERE id = ?",
                               (self.run,)).fetchone()[0]

    # stages of the run as a whole
    def stage_done(self, stage: str) -> bool:
        """Whether ``stage`` (one of :data:`STAGES`) was marked done for this run."""
        return self._db.execute(f"SELECT {_stage(stage)} FROM runs WHERE id = ?",
                               (self.run,)).fetchone()[0] is not None

    def mark_stage(self, stage: str) -> None:
        """Record now as the time ``stage`` (one of :data:`STAGES`) was done."""
        with self.transaction():
            self._db.execute(f"UPDATE runs SET {_stage(stage)} = ? WHERE id = ?",
                            (time.time(), self.run))

    # listing
    def add_items(self, items: Iterable[tuple[str | os.PathLike, str | None]],
                  chunk: int = 1000) -> int:
        """Insert (path, label) rows, ignoring paths already there; returns how many were new."""
        added, buffer = 0, []
        for path, label in items:
            buffer.append((self.run, to_storable(path), label))
            if len(buffer) >= chunk:
                added += self._insert(buffer)
                buffer = []
        if buffer:
            added += self._insert(buffer)
        return added

    def _insert(self, rows: list[tuple]) -> int:
        with self.transaction():
            before = self._db.total_changes
            self._db.executemany("INSERT OR IGNORE INTO images (run, path, label) VALUES (?, ?, ?)",
                                rows)
            return self._db.total_changes - before

    # scoring (+ concepts) stage
    def count(self, selection: str = "all", args: tuple = ()) -> int:
        """How many images of this run are in ``selection`` (a name of :data:`SELECTIONS`,
        ``args`` its parameters)."""
        return self._db.execute(f"SELECT COUNT(*) FROM images WHERE run = ? AND "
                               f"({_where(selection, args)})", (self.run, *args)).fetchone()[0]

    def pending_count(self, *, concepts: bool) -> int:
        """How many images :meth:`pending` will give."""
        return self._db.execute(f"SELECT COUNT(*) FROM images WHERE run = ? AND "
                               f"{_pending(concepts)}", (self.run,)).fetchone()[0]

    def pending(self, *, concepts: bool, chunk: int = 256) -> Iterator[ImageRow]:
        """Images still to score (or, with ``concepts``, still to run the part detector on),
        in id order, read ``chunk`` rows at a time so the cursor never holds the whole table."""
        todo = _pending(concepts)
        last = 0
        while True:
            rows = self._db.execute(
                f"SELECT id, path, label, score, height, width FROM images WHERE run = ? AND "
                f"id > ? AND {todo} ORDER BY id LIMIT ?", (self.run, last, chunk)).fetchall()
            if not rows:
                return
            for row in rows:
                yield ImageRow(*row)
            last = rows[-1][0]

    def save_scores(self, results: list[dict]) -> None:
        """One transaction for a batch: scores or errors, and the detected parts."""
        now = time.time()
        with self.transaction():
            for r in results:
                if r.get("notes"):
                    self._db.execute("UPDATE images SET notes = ? WHERE id = ?",
                                    ("; ".join(r["notes"]), r["id"]))
                if r.get("error") is not None:
                    self._db.execute("UPDATE images SET error = ?, scored_at = ? WHERE id = ?",
                                    (r["error"], now, r["id"]))
                    continue
                if r.get("props") is not None:
                    self._db.execute("UPDATE images SET props = ? WHERE id = ?",
                                    (json.dumps(r["props"]), r["id"]))
                if r.get("sha256") is not None:
                    self._db.execute("UPDATE images SET sha256 = ? WHERE id = ?",
                                    (r["sha256"], r["id"]))
                if "score" in r:
                    self._db.execute(
                        "UPDATE images SET score = ?, probs = ?, height = ?, width = ?, "
                        "scored_at = ? WHERE id = ?",
                        (r["score"], json.dumps(r["probs"]), r["height"], r["width"], now,
                         r["id"]))
                if "parts" in r:
                    self._db.execute("DELETE FROM parts WHERE image = ?", (r["id"],))
                    self._db.executemany(
                        "INSERT INTO parts (image, n, concept, confidence, top, left, bottom, "
                        "right, area_share, score_drop) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [(r["id"], n, p["concept"], p["confidence"], *p["box"], p["area_share"],
                          p["score_drop"]) for n, p in enumerate(r["parts"])])
                    self._db.execute("UPDATE images SET concepts_at = ? WHERE id = ?",
                                    (now, r["id"]))

    # results
    def scored(self) -> Iterator[tuple[int, str, str | None, float]]:
        """(id, path, label, score) of every scored image, streamed in id order."""
        yield from self._db.execute(
            "SELECT id, path, label, score FROM images WHERE run = ? AND score IS NOT NULL "
            "ORDER BY id", (self.run,))

    def ranked(self, selection: str, args: tuple, *, descending: bool, limit: int
               ) -> list[ImageRow]:
        """At most ``limit`` scored images of ``selection`` (a name of :data:`SELECTIONS`,
        ``args`` its parameters), highest score first when ``descending`` (ties: lower id
        first)."""
        order = "DESC" if descending else "ASC"
        rows = self._db.execute(
            f"SELECT id, path, label, score, height, width FROM images WHERE run = ? AND "
            f"score IS NOT NULL AND ({_where(selection, args)}) ORDER BY score {order}, id "
            "LIMIT ?", (self.run, *args, limit)).fetchall()
        return [ImageRow(*r) for r in rows]

    def content_rows(self) -> Iterator[tuple[int, str, str | None, float, str | None]]:
        """(id, stored path, label, score, SHA-256 of the file or None when scored before it was
        kept) of every scored image, in id order."""
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(images)")}
        digest = "sha256" if "sha256" in columns else "NULL"  # a database from before it
        yield from self._db.execute(
            f"SELECT id, path, label, score, {digest} FROM images WHERE run = ? AND score IS NOT "
            "NULL ORDER BY id", (self.run,))

    def labels(self) -> list[str]:
        """The distinct true labels of this run's images, sorted (empty for unlabeled data)."""
        return [r[0] for r in self._db.execute(
            "SELECT DISTINCT label FROM images WHERE run = ? AND label IS NOT NULL ORDER BY "
            "label", (self.run,))]

    def score_rows(self) -> Iterator[tuple[str, str | None, float, str, int, int, str | None]]:
        """(stored path, label, score, probabilities as JSON, height, width, warnings) of every
        scored image, streamed in id order."""
        yield from self._db.execute(
            "SELECT path, label, score, probs, height, width, notes FROM images WHERE run = ? "
            "AND score IS NOT NULL ORDER BY id", (self.run,))

    def slice_rows(self) -> Iterator[tuple[int, str, str, float, int, int, str | None]]:
        """(id, stored path, label, score, height, width, properties as JSON or None) of every
        labeled scored image, in id order."""
        yield from self._db.execute(
            "SELECT id, path, label, score, height, width, props FROM images WHERE run = ? AND "
            "score IS NOT NULL AND label IS NOT NULL ORDER BY id", (self.run,))

    def part_concepts(self) -> Iterator[tuple[int, str]]:
        """(image id, concept) of every part found, once per image and concept."""
        yield from self._db.execute(
            "SELECT DISTINCT p.image, p.concept FROM parts p JOIN images i ON i.id = p.image "
            "WHERE i.run = ? ORDER BY p.image, p.concept", (self.run,))

    def embeddings(self, embedder: str) -> dict[int, bytes]:
        """The stored vectors (float32 bytes) of this run's images under ``embedder``."""
        return dict(self._db.execute(
            "SELECT e.image, e.vector FROM embeddings e JOIN images i ON i.id = e.image WHERE "
            "i.run = ? AND e.embedder = ?", (self.run, embedder)))

    def save_embeddings(self, embedder: str, rows: list[tuple[int, bytes]]) -> None:
        """One batch of (image id, float32 vector bytes), in one transaction."""
        with self.transaction():
            self._db.executemany("INSERT OR REPLACE INTO embeddings (image, embedder, vector) "
                                "VALUES (?, ?, ?)", [(i, embedder, v) for i, v in rows])

    def part_rows(self) -> Iterator[tuple]:
        """(stored path, label, score, n, concept, confidence, top, left, bottom, right,
        area_share, score_drop, heat_share) of every detected part, in image then part order."""
        yield from self._db.execute(
            "SELECT i.path, i.label, i.score, p.n, p.concept, p.confidence, p.top, p.left, "
            "p.bottom, p.right, p.area_share, p.score_drop, p.heat_share FROM parts p JOIN "
            "images i ON i.id = p.image WHERE i.run = ? ORDER BY i.id, p.n", (self.run,))

    def concept_stats(self, selection: str, args: tuple) -> tuple[int, list[tuple]]:
        """Over the scored images of ``selection`` (a name of :data:`SELECTIONS`) that went
        through the part detector: (their number, one row per concept of (concept, parts,
        images, mean score drop, mean heat share, parts with a heat share, mean area share, mean
        confidence), highest mean score drop first)."""
        where = (f"i.run = ? AND i.score IS NOT NULL AND i.concepts_at IS NOT NULL AND "
                 f"({_where(selection, args)})")
        n_images = self._db.execute(f"SELECT COUNT(*) FROM images i WHERE {where}",
                                   (self.run, *args)).fetchone()[0]
        rows = self._db.execute(
            "SELECT p.concept, COUNT(*), COUNT(DISTINCT p.image), AVG(p.score_drop), "
            "AVG(p.heat_share), COUNT(p.heat_share), AVG(p.area_share), AVG(p.confidence) "
            f"FROM parts p JOIN images i ON i.id = p.image WHERE {where} GROUP BY p.concept "
            "ORDER BY AVG(p.score_drop) DESC, p.concept", (self.run, *args)).fetchall()
        return n_images, rows

    def heatmap_count(self) -> int:
        """How many images of this run have a heatmap."""
        return self._db.execute("SELECT COUNT(*) FROM heatmaps h JOIN images i ON i.id = h.image "
                               "WHERE i.run = ?", (self.run,)).fetchone()[0]

    def errors(self) -> Iterator[tuple[str, str, str]]:
        """(stored path, reason, warnings) of every image that failed, in id order."""
        yield from self._db.execute("SELECT path, error, COALESCE(notes, '') FROM images WHERE "
                                   "run = ? AND error IS NOT NULL ORDER BY id", (self.run,))

    def heatmap(self, image: int) -> dict | None:
        row = self._db.execute("SELECT kind, png, npy, seconds, done_at FROM heatmaps WHERE "
                              "image = ?", (image,)).fetchone()
        if row is None:
            return None
        return dict(zip(("kind", "png", "npy", "seconds", "done_at"), row, strict=True))

    def parts(self, image: int) -> list[dict]:
        rows = self._db.execute("SELECT n, concept, confidence, top, left, bottom, right, "
                               "area_share, score_drop, heat_share FROM parts WHERE image = ? "
                               "ORDER BY n", (image,))
        keys = ("n", "concept", "confidence", "top", "left", "bottom", "right", "area_share",
                "score_drop", "heat_share")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def save_heatmap(self, image: int, kind: str, png: str, npy: str, seconds: float,
                     heat_shares: dict[int, float | None]) -> None:
        """The heatmap row and the heat shares of the image's parts, in one transaction."""
        with self.transaction():
            self._db.execute("INSERT OR REPLACE INTO heatmaps (image, kind, png, npy, seconds, "
                            "done_at) VALUES (?, ?, ?, ?, ?, ?)",
                            (image, kind, png, npy, seconds, time.time()))
            self._db.executemany("UPDATE parts SET heat_share = ? WHERE image = ? AND n = ?",
                                [(share, image, n) for n, share in heat_shares.items()])

    # cue discovery (explain.audit.cues): one image, one transaction; one cluster, one transaction
    def cue_images(self, setting: str) -> list[tuple]:
        """(image, role, score, calls, embed_calls, embedding, error) of the images harvested."""
        return self._db.execute(
            "SELECT c.image, c.role, c.score, c.calls, c.embed_calls, c.embedding, c.error FROM "
            "cue_images c JOIN images i ON i.id = c.image WHERE i.run = ? AND c.setting = ? "
            "ORDER BY c.image", (self.run, setting)).fetchall()

    def cue_settings(self) -> list[str]:
        """The cue-option hashes this run holds harvests under, the most recently written
        first."""
        return [r[0] for r in self._db.execute(
            "SELECT c.setting FROM cue_images c JOIN images i ON i.id = c.image WHERE i.run = ? "
            "GROUP BY c.setting ORDER BY MAX(c.done_at) DESC", (self.run,))]

    def cue_patches(self, setting: str) -> list[tuple]:
        """(image, role, n, top, left, bottom, right, heat, drop, vector bytes) of every patch."""
        return self._db.execute(
            "SELECT p.image, c.role, p.n, p.top, p.left, p.bottom, p.right, p.heat, p.drop_, "
            "p.vector FROM cue_patches p JOIN cue_images c ON c.setting = p.setting AND "
            "c.image = p.image JOIN images i ON i.id = p.image WHERE i.run = ? AND "
            "p.setting = ? ORDER BY p.image, p.n", (self.run, setting)).fetchall()

    def save_cue_image(self, setting: str, image: int, record: tuple, patches: list[tuple]
                       ) -> None:
        """An image's harvest: ``record`` = (role, score, calls, embed_calls, embedding, error),
        ``patches`` = (n, top, left, bottom, right, heat, drop, vector bytes) rows."""
        with self.transaction():
            self._db.execute("DELETE FROM cue_patches WHERE setting = ? AND image = ?",
                            (setting, image))
            self._db.executemany(
                "INSERT INTO cue_patches (setting, image, n, top, left, bottom, right, heat, "
                "drop_, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(setting, image, *p) for p in patches])
            self._db.execute(
                "INSERT OR REPLACE INTO cue_images (setting, image, role, score, calls, "
                "embed_calls, embedding, error, done_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (setting, image, *record, time.time()))

    def cue_pastes(self, setting: str, signature: str) -> tuple[str, int] | None:
        """(pastes as JSON, model calls) of a cluster's paste test, when done."""
        row = self._db.execute("SELECT pastes, calls FROM cue_pastes WHERE run = ? AND "
                              "setting = ? AND signature = ?",
                              (self.run, setting, signature)).fetchone()
        return None if row is None else (row[0], int(row[1]))

    def save_cue_pastes(self, setting: str, signature: str, pastes: str, calls: int) -> None:
        with self.transaction():
            self._db.execute("INSERT OR REPLACE INTO cue_pastes (run, setting, signature, pastes, "
                            "calls, done_at) VALUES (?, ?, ?, ?, ?, ?)",
                            (self.run, setting, signature, pastes, calls, time.time()))

    def sample(self, outcome: str, target: str, threshold: float, n: int, seed: int
               ) -> list[ImageRow]:
        """``n`` labeled, scored images of one ``outcome``: ``"tn"`` (label ≠ ``target``, score
        below ``threshold``) or ``"tp"`` (label = ``target``, score at or above it); a seeded
        pseudo-random choice (the order of a multiplicative hash of the id), the same on every
        call with the same seed."""
        if outcome not in ("tn", "tp"):
            raise ValueError(f"no sample of outcome {outcome!r}; use tn or tp")
        where = _where(outcome, (target, threshold))
        rows = self._db.execute(
            "SELECT id, path, label, score, height, width FROM images WHERE run = ? AND "
            f"score IS NOT NULL AND label IS NOT NULL AND {where} "
            "ORDER BY (id * 2654435761 + ?) % 4294967296, id LIMIT ?",
            (self.run, target, threshold, seed, n)).fetchall()
        return [ImageRow(*r) for r in rows]


class MiningStore:
    """The counter-example mining's database in its output folder (:data:`MINING_DB`), bound to
    one mining run (found by the hash of ``params`` or created): each pool image scanned, with
    its score or the reason it failed, and its top windows, committed one image at a time so
    that a rerun scans only what is missing. Its connection is private."""

    def __init__(self, folder: str | os.PathLike, params: dict) -> None:
        self.path = Path(folder) / MINING_DB
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = _connect(self.path, MINING_SCHEMA)
        self.key = run_key(params)
        row = self._db.execute("SELECT id FROM mining_runs WHERE key = ?", (self.key,)).fetchone()
        if row is None:
            cur = self._db.execute("INSERT INTO mining_runs (key, params, created) VALUES "
                                   "(?, ?, ?)", (self.key, json.dumps(params, sort_keys=True,
                                                                      default=str), time.time()))
            self.run = int(cur.lastrowid)
        else:
            self.run = int(row[0])

    def close(self) -> None:
        self._db.close()

    def done(self) -> set[str]:
        """The stored paths of the pool images already scanned (or failed)."""
        return {r[0] for r in self._db.execute("SELECT path FROM pool_images WHERE run = ?",
                                              (self.run,))}

    def save_image(self, path: str | os.PathLike, score: float | None, error: str | None,
                   windows: list[tuple]) -> None:
        """One pool image: its score or ``error``, and its ``windows`` = (n, top, left, bottom,
        right, heat, drop, vector bytes) rows, in one transaction."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cur = self._db.execute(
                "INSERT OR REPLACE INTO pool_images (run, path, score, error, done_at) VALUES "
                "(?, ?, ?, ?, ?)", (self.run, to_storable(path), score, error, time.time()))
            self._db.executemany(
                "INSERT INTO pool_windows (image, n, top, left, bottom, right, heat, drop_, "
                "vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(cur.lastrowid, *w) for w in windows])
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def counts(self) -> tuple[int, int]:
        """(images scanned, images failed) of this run."""
        row = self._db.execute("SELECT COUNT(*), COUNT(error) FROM pool_images WHERE run = ?",
                               (self.run,)).fetchone()
        return int(row[0]), int(row[1])

    def failed(self) -> list[tuple[str, str]]:
        """(stored path, reason) of each pool image that could not be scanned."""
        return self._db.execute("SELECT path, error FROM pool_images WHERE run = ? AND error IS "
                                "NOT NULL ORDER BY path", (self.run,)).fetchall()

    def windows(self, chunk: int = 256) -> Iterator[tuple[str, float, list[tuple]]]:
        """(stored path, score, [(top, left, bottom, right, drop, vector bytes)]) of each scanned
        image that has windows, in id order, ``chunk`` images at a time (bounded memory)."""
        last = 0
        while True:
            ids = self._db.execute(
                "SELECT id, path, score FROM pool_images WHERE run = ? AND id > ? AND error IS "
                "NULL ORDER BY id LIMIT ?", (self.run, last, chunk)).fetchall()
            if not ids:
                return
            found: dict[int, list[tuple]] = {}
            for image, *w in self._db.execute(
                    "SELECT image, top, left, bottom, right, drop_, vector FROM pool_windows "
                    f"WHERE image IN ({','.join('?' * len(ids))}) ORDER BY image, n",
                    [r[0] for r in ids]):
                found.setdefault(image, []).append(tuple(w))
            for image, path, score in ids:
                if image in found:
                    yield path, float(score), found[image]
            last = ids[-1][0]
