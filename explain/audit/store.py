"""The audit's SQLite store: every result is written as soon as it is computed.

One database per output folder (``audit.sqlite``) holds any number of runs. A run is identified by
its *key*: a hash of everything that changes the results (model, data, target, threshold,
occlusion box/stride/fill, concept detection, code version). Re-running with the same key resumes
that run; a different key starts a new run next to the old one, so results computed under
different settings are never mixed.

Tables: ``runs`` (key, parameters, stage timestamps), ``images`` (one row per image: label,
score, error, the warnings its decoding raised, timestamps of each stage), ``parts`` (one row
per detected body part: box, score drop, heat share), ``heatmaps`` (one row per top-k
heatmap, with its files) and the cue discovery's (:mod:`explain.audit.cues`): ``cue_images``
(one row per image harvested, under a *setting*, the hash of the cue options), ``cue_patches``
(its patches with their embeddings) and ``cue_pastes`` (each cluster's paste test). Each batch
of images is committed in one short transaction together
with its stage marks, so a kill at any moment loses at most the batch in flight and never leaves
half of one. WAL journaling keeps
readers (a progress poller, a test) from blocking the writer.

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

from explain.errors import OptionError
from explain.files import from_storable, to_storable

DB_NAME = "audit.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    params TEXT NOT NULL,
    created REAL NOT NULL,
    listed REAL,
    scored REAL,
    mosaic REAL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    run INTEGER NOT NULL REFERENCES runs(id),
    path TEXT NOT NULL,
    label TEXT,
    score REAL,
    probs TEXT,
    height INTEGER,
    width INTEGER,
    error TEXT,
    notes TEXT,
    scored_at REAL,
    concepts_at REAL,
    UNIQUE (run, path)
);
CREATE INDEX IF NOT EXISTS images_score ON images (run, score);
CREATE TABLE IF NOT EXISTS parts (
    image INTEGER NOT NULL REFERENCES images(id),
    n INTEGER NOT NULL,
    concept TEXT NOT NULL,
    confidence REAL NOT NULL,
    top INTEGER NOT NULL,
    left INTEGER NOT NULL,
    bottom INTEGER NOT NULL,
    right INTEGER NOT NULL,
    area_share REAL NOT NULL,
    score_drop REAL NOT NULL,
    heat_share REAL,
    PRIMARY KEY (image, n)
);
CREATE TABLE IF NOT EXISTS heatmaps (
    image INTEGER PRIMARY KEY REFERENCES images(id),
    kind TEXT NOT NULL,
    png TEXT NOT NULL,
    npy TEXT NOT NULL,
    seconds REAL NOT NULL,
    done_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cue_images (
    setting TEXT NOT NULL,
    image INTEGER NOT NULL REFERENCES images(id),
    role TEXT NOT NULL,
    score REAL,
    calls INTEGER NOT NULL,
    embed_calls INTEGER NOT NULL,
    embedding TEXT NOT NULL,
    error TEXT,
    done_at REAL NOT NULL,
    PRIMARY KEY (setting, image)
);
CREATE TABLE IF NOT EXISTS cue_patches (
    setting TEXT NOT NULL,
    image INTEGER NOT NULL REFERENCES images(id),
    n INTEGER NOT NULL,
    top INTEGER NOT NULL,
    left INTEGER NOT NULL,
    bottom INTEGER NOT NULL,
    right INTEGER NOT NULL,
    heat REAL NOT NULL,
    drop_ REAL NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (setting, image, n)
);
CREATE TABLE IF NOT EXISTS cue_pastes (
    run INTEGER NOT NULL REFERENCES runs(id),
    setting TEXT NOT NULL,
    signature TEXT NOT NULL,
    pastes TEXT NOT NULL,
    calls INTEGER NOT NULL,
    done_at REAL NOT NULL,
    PRIMARY KEY (run, setting, signature)
);
"""


def run_key(params: dict) -> str:
    """A short stable hash of the parameters that define a run's results."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


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
    """An open audit database, bound to one run (found by its key or created)."""

    def __init__(self, folder: str | os.PathLike, params: dict) -> None:
        self.path = Path(folder) / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
            columns = {r[1] for r in self.db.execute("PRAGMA table_info(images)")}
            if "notes" not in columns:  # a database written before notes were kept
                self.db.execute("ALTER TABLE images ADD COLUMN notes TEXT")
        except sqlite3.DatabaseError as exc:
            raise OptionError(f"{self.path} is not a usable audit database ({exc}); choose "
                              "another output folder or remove the file") from exc
        self.params = params
        self.key = run_key(params)
        row = self.db.execute("SELECT id, created FROM runs WHERE key = ?", (self.key,)).fetchone()
        self.resumed = row is not None
        if row is None:
            with self.transaction():
                cur = self.db.execute("INSERT INTO runs (key, params, created) VALUES (?, ?, ?)",
                                      (self.key, json.dumps(params, sort_keys=True, default=str),
                                       time.time()))
            self.run = int(cur.lastrowid)
        else:
            self.run = int(row[0])

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE … COMMIT``; rolled back if anything in it fails."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def previous_runs(self) -> list[dict]:
        """The other runs in this database (their key, creation time and image count)."""
        rows = self.db.execute(
            "SELECT r.id, r.key, r.created, COUNT(i.id) FROM runs r LEFT JOIN images i "
            "ON i.run = r.id WHERE r.id != ? GROUP BY r.id ORDER BY r.id", (self.run,))
        return [{"id": r[0], "key": r[1], "created": r[2], "images": r[3]} for r in rows]

    # stages of the run as a whole
    def stage_done(self, stage: str) -> bool:
        return self.db.execute(f"SELECT {stage} FROM runs WHERE id = ?",
                               (self.run,)).fetchone()[0] is not None

    def mark_stage(self, stage: str) -> None:
        with self.transaction():
            self.db.execute(f"UPDATE runs SET {stage} = ? WHERE id = ?", (time.time(), self.run))

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
            before = self.db.total_changes
            self.db.executemany("INSERT OR IGNORE INTO images (run, path, label) VALUES (?, ?, ?)",
                                rows)
            return self.db.total_changes - before

    # scoring (+ concepts) stage
    def count(self, where: str = "1", args: tuple = ()) -> int:
        return self.db.execute(f"SELECT COUNT(*) FROM images WHERE run = ? AND ({where})",
                               (self.run, *args)).fetchone()[0]

    def pending(self, *, concepts: bool, chunk: int = 256) -> Iterator[ImageRow]:
        """Images still to score (or, with ``concepts``, still to run the part detector on),
        in id order, read ``chunk`` rows at a time so the cursor never holds the whole table."""
        todo = "error IS NULL AND (score IS NULL" + (" OR concepts_at IS NULL)" if concepts
                                                     else ")")
        last = 0
        while True:
            rows = self.db.execute(
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
                    self.db.execute("UPDATE images SET notes = ? WHERE id = ?",
                                    ("; ".join(r["notes"]), r["id"]))
                if r.get("error") is not None:
                    self.db.execute("UPDATE images SET error = ?, scored_at = ? WHERE id = ?",
                                    (r["error"], now, r["id"]))
                    continue
                if "score" in r:
                    self.db.execute(
                        "UPDATE images SET score = ?, probs = ?, height = ?, width = ?, "
                        "scored_at = ? WHERE id = ?",
                        (r["score"], json.dumps(r["probs"]), r["height"], r["width"], now,
                         r["id"]))
                if "parts" in r:
                    self.db.execute("DELETE FROM parts WHERE image = ?", (r["id"],))
                    self.db.executemany(
                        "INSERT INTO parts (image, n, concept, confidence, top, left, bottom, "
                        "right, area_share, score_drop) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [(r["id"], n, p["concept"], p["confidence"], *p["box"], p["area_share"],
                          p["score_drop"]) for n, p in enumerate(r["parts"])])
                    self.db.execute("UPDATE images SET concepts_at = ? WHERE id = ?",
                                    (now, r["id"]))

    # results
    def scored(self) -> Iterator[tuple[int, str, str | None, float]]:
        """(id, path, label, score) of every scored image, streamed in id order."""
        yield from self.db.execute(
            "SELECT id, path, label, score FROM images WHERE run = ? AND score IS NOT NULL "
            "ORDER BY id", (self.run,))

    def ranked(self, where: str, args: tuple, *, descending: bool, limit: int) -> list[ImageRow]:
        order = "DESC" if descending else "ASC"
        rows = self.db.execute(
            f"SELECT id, path, label, score, height, width FROM images WHERE run = ? AND "
            f"score IS NOT NULL AND ({where}) ORDER BY score {order}, id LIMIT ?",
            (self.run, *args, limit)).fetchall()
        return [ImageRow(*r) for r in rows]

    def errors(self) -> Iterator[tuple[str, str, str]]:
        """(stored path, reason, warnings) of every image that failed, in id order."""
        yield from self.db.execute("SELECT path, error, COALESCE(notes, '') FROM images WHERE "
                                   "run = ? AND error IS NOT NULL ORDER BY id", (self.run,))

    def heatmap(self, image: int) -> dict | None:
        row = self.db.execute("SELECT kind, png, npy, seconds, done_at FROM heatmaps WHERE "
                              "image = ?", (image,)).fetchone()
        if row is None:
            return None
        return dict(zip(("kind", "png", "npy", "seconds", "done_at"), row, strict=True))

    def parts(self, image: int) -> list[dict]:
        rows = self.db.execute("SELECT n, concept, confidence, top, left, bottom, right, "
                               "area_share, score_drop, heat_share FROM parts WHERE image = ? "
                               "ORDER BY n", (image,))
        keys = ("n", "concept", "confidence", "top", "left", "bottom", "right", "area_share",
                "score_drop", "heat_share")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def save_heatmap(self, image: int, kind: str, png: str, npy: str, seconds: float,
                     heat_shares: dict[int, float | None]) -> None:
        """The heatmap row and the heat shares of the image's parts, in one transaction."""
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO heatmaps (image, kind, png, npy, seconds, "
                            "done_at) VALUES (?, ?, ?, ?, ?, ?)",
                            (image, kind, png, npy, seconds, time.time()))
            self.db.executemany("UPDATE parts SET heat_share = ? WHERE image = ? AND n = ?",
                                [(share, image, n) for n, share in heat_shares.items()])

    # cue discovery (explain.audit.cues): one image, one transaction; one cluster, one transaction
    def cue_images(self, setting: str) -> list[tuple]:
        """(image, role, score, calls, embed_calls, embedding, error) of the images harvested."""
        return self.db.execute(
            "SELECT c.image, c.role, c.score, c.calls, c.embed_calls, c.embedding, c.error FROM "
            "cue_images c JOIN images i ON i.id = c.image WHERE i.run = ? AND c.setting = ? "
            "ORDER BY c.image", (self.run, setting)).fetchall()

    def cue_patches(self, setting: str) -> list[tuple]:
        """(image, role, n, top, left, bottom, right, heat, drop, vector bytes) of every patch."""
        return self.db.execute(
            "SELECT p.image, c.role, p.n, p.top, p.left, p.bottom, p.right, p.heat, p.drop_, "
            "p.vector FROM cue_patches p JOIN cue_images c ON c.setting = p.setting AND "
            "c.image = p.image JOIN images i ON i.id = p.image WHERE i.run = ? AND "
            "p.setting = ? ORDER BY p.image, p.n", (self.run, setting)).fetchall()

    def save_cue_image(self, setting: str, image: int, record: tuple, patches: list[tuple]
                       ) -> None:
        """An image's harvest: ``record`` = (role, score, calls, embed_calls, embedding, error),
        ``patches`` = (n, top, left, bottom, right, heat, drop, vector bytes) rows."""
        with self.transaction():
            self.db.execute("DELETE FROM cue_patches WHERE setting = ? AND image = ?",
                            (setting, image))
            self.db.executemany(
                "INSERT INTO cue_patches (setting, image, n, top, left, bottom, right, heat, "
                "drop_, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(setting, image, *p) for p in patches])
            self.db.execute(
                "INSERT OR REPLACE INTO cue_images (setting, image, role, score, calls, "
                "embed_calls, embedding, error, done_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (setting, image, *record, time.time()))

    def cue_pastes(self, setting: str, signature: str) -> tuple[str, int] | None:
        """(pastes as JSON, model calls) of a cluster's paste test, when done."""
        row = self.db.execute("SELECT pastes, calls FROM cue_pastes WHERE run = ? AND "
                              "setting = ? AND signature = ?",
                              (self.run, setting, signature)).fetchone()
        return None if row is None else (row[0], int(row[1]))

    def save_cue_pastes(self, setting: str, signature: str, pastes: str, calls: int) -> None:
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO cue_pastes (run, setting, signature, pastes, "
                            "calls, done_at) VALUES (?, ?, ?, ?, ?, ?)",
                            (self.run, setting, signature, pastes, calls, time.time()))

    def sample(self, outcome: str, target: str, threshold: float, n: int, seed: int
               ) -> list[ImageRow]:
        """``n`` labeled, scored images of one ``outcome``: ``"tn"`` (label ≠ ``target``, score
        below ``threshold``) or ``"tp"`` (label = ``target``, score at or above it); a seeded
        pseudo-random choice (the order of a multiplicative hash of the id), the same on every
        call with the same seed."""
        where = {"tn": "label != ? AND score < ?", "tp": "label = ? AND score >= ?"}[outcome]
        rows = self.db.execute(
            "SELECT id, path, label, score, height, width FROM images WHERE run = ? AND "
            f"score IS NOT NULL AND label IS NOT NULL AND {where} "
            "ORDER BY (id * 2654435761 + ?) % 4294967296, id LIMIT ?",
            (self.run, target, threshold, seed, n)).fetchall()
        return [ImageRow(*r) for r in rows]
