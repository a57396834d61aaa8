"""The audit database's tables and the names its callers may use: the stages of a run and the
sets of images (their SQL conditions). Only :mod:`explain.audit.store` builds queries from them;
every other module passes a name, which the store checks against these lists.
"""

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
    props TEXT,
    sha256 TEXT,
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
CREATE TABLE IF NOT EXISTS embeddings (
    image INTEGER NOT NULL REFERENCES images(id),
    embedder TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (image, embedder)
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

MINING_SCHEMA = """
CREATE TABLE IF NOT EXISTS mining_runs (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    params TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pool_images (
    id INTEGER PRIMARY KEY,
    run INTEGER NOT NULL REFERENCES mining_runs(id),
    path TEXT NOT NULL,
    score REAL,
    error TEXT,
    done_at REAL NOT NULL,
    UNIQUE (run, path)
);
CREATE TABLE IF NOT EXISTS pool_windows (
    image INTEGER NOT NULL REFERENCES pool_images(id),
    n INTEGER NOT NULL,
    top INTEGER NOT NULL,
    left INTEGER NOT NULL,
    bottom INTEGER NOT NULL,
    right INTEGER NOT NULL,
    heat REAL NOT NULL,
    drop_ REAL NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (image, n)
);
"""
"""The counter-example mining's database (``counterexamples.sqlite`` in its output folder,
:class:`explain.audit.store.MiningStore`): each pool image scanned under one *run* (a hash of the
audit run, its cues' setting and the model), with its top windows."""

STAGES = ("listed", "scored", "mosaic", "finished")
"""The stages of a run that :meth:`Store.mark_stage` records (columns of ``runs``)."""

SELECTIONS = {
    "all": "1",
    "scored": "score IS NOT NULL",
    "failed": "error IS NOT NULL",
    "at_or_above": "score >= ?",
    "label": "label = ?",
    "fp": "label IS NOT NULL AND label != ? AND score >= ?",
    "fn": "label = ? AND score < ?",
    "tn": "label != ? AND score < ?",
    "tp": "label = ? AND score >= ?",
}
"""The sets of images callers may name, with their conditions: ``at_or_above`` takes
(threshold,), ``label`` (label,), ``fp``, ``fn``, ``tn`` and ``tp`` (target, threshold); the
others none. Callers pass a name and its parameters, never SQL."""
