"""Kill-and-resume: `python -m explain audit` is SIGKILLed mid-scoring, re-run and SIGKILLed
mid-heatmaps, then re-run to the end. Every image ends up with exactly one row, and nothing
finished before a kill is computed again: its timestamps are unchanged, and the model's own log
shows each image scored once, apart from at most the one batch in flight at the kill."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

N_GOOD = 24
BATCH = 2

MODEL = '''
import hashlib, os, time
import numpy as np

def score(batch):
    """p(nsfw) = mean brightness; slow enough to be killed. Logs the hash of every image of a
    scoring batch: occlusion batches (some 16x16 block filled with gray 128) are not logged."""
    n = len(batch)
    blocks = batch.reshape(n, 2, 16, 2, 16, 3)
    if not (blocks == 128).all(axis=(2, 4, 5)).any():
        with open(os.environ["AUDIT_TEST_LOG"], "a") as f:
            f.writelines(hashlib.md5(img.tobytes()).hexdigest() + "\\n" for img in batch)
    time.sleep(0.1)
    s = batch.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0
    return np.stack([1.0 - s, s], axis=1)
'''


def _dataset(root: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(N_GOOD):
        label = "nsfw" if i % 3 == 0 else "sfw"
        img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        path = root / label / f"img{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
    (root / "sfw" / "zero.png").write_bytes(b"")


def _command(tmp: Path) -> list[str]:
    return [sys.executable, "-m", "explain", "audit", str(tmp / "data"), "-o", str(tmp / "out"),
            "--model", f"{tmp / 'model.py'}:score", "--classes", "sfw,nsfw", "--threshold", "0.5",
            "--top", "3", "--box", "16", "--stride", "16", "-b", str(BATCH), "--no-concepts",
            "--mosaic", "0", "--quiet"]


def _env(tmp: Path, phase: int) -> dict:
    return {**os.environ, "AUDIT_TEST_LOG": str(tmp / f"scored{phase}.log")}


def _query(db: Path, sql: str) -> list[tuple]:
    if not db.exists():
        return []
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        con.close()


def _kill_when(tmp: Path, phase: int, sql: str, at_least: int) -> None:
    """Start the audit and SIGKILL it as soon as ``sql`` counts ``at_least`` rows."""
    proc = subprocess.Popen(_command(tmp), env=_env(tmp, phase), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    db = tmp / "out" / "audit.sqlite"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            rows = _query(db, sql)
            if rows and rows[0][0] >= at_least:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the audit ended before it could be killed: " + \
            proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _scored(tmp: Path, phase: int) -> Counter:
    log = tmp / f"scored{phase}.log"
    return Counter(log.read_text().split() if log.exists() else [])


def _digest(path: Path) -> str:
    return hashlib.md5(np.asarray(Image.open(path).convert("RGB")).tobytes()).hexdigest()


ROWS = "SELECT path, score, error, scored_at FROM images ORDER BY path"
MAPS = "SELECT image, png, done_at FROM heatmaps ORDER BY image"


@pytest.mark.slow
def test_kill_and_resume(tmp_path):
    _dataset(tmp_path / "data")
    (tmp_path / "model.py").write_text(MODEL)
    db = tmp_path / "out" / "audit.sqlite"

    # 1. killed while scoring
    _kill_when(tmp_path, 1, "SELECT COUNT(*) FROM images WHERE scored_at IS NOT NULL", 6)
    done = {r[0]: r for r in _query(db, ROWS) if r[3] is not None}
    assert 6 <= len(done) < N_GOOD + 1

    # 2. the same command resumes; killed after its first heatmap
    _kill_when(tmp_path, 2, "SELECT COUNT(*) FROM heatmaps", 1)
    maps = _query(db, MAPS)
    assert len(maps) >= 1 and _query(db, "SELECT COUNT(*) FROM runs") == [(1,)]

    # 3. the same command runs to the end
    subprocess.run(_command(tmp_path), env=_env(tmp_path, 3), check=True, capture_output=True)
    rows = _query(db, ROWS)
    assert len(rows) == N_GOOD + 1 == len({r[0] for r in rows})  # every file once
    assert all(r[3] is not None for r in rows)
    for path, row in done.items():
        assert next(r for r in rows if r[0] == path) == row  # finished rows untouched
    assert [r[2] for r in rows if r[0].endswith("zero.png")] == ["file is empty (0 bytes)"]

    # the model's own log: every image scored, finished ones never again, at most one batch
    # (in flight at the first kill) twice; nothing scored after the scoring stage finished
    first, second, third = (_scored(tmp_path, phase) for phase in (1, 2, 3))
    digests = {str(p): _digest(p) for p in (tmp_path / "data").rglob("img*.png")}
    assert set(first + second) == set(digests.values()) and not third
    for path in done:
        if path in digests:
            assert first[digests[path]] == 1 and second[digests[path]] == 0
    assert sum((first + second).values()) - N_GOOD <= BATCH

    # heatmaps: those done before the second kill kept as they were, the rest added once
    final = _query(db, MAPS)
    assert set(maps) <= set(final) and len(final) == len({m[0] for m in final})
    fp = _query(db, "SELECT COUNT(*) FROM images WHERE label = 'sfw' AND score >= 0.5")[0][0]
    fn = _query(db, "SELECT COUNT(*) FROM images WHERE label = 'nsfw' AND score < 0.5")[0][0]
    assert len(final) == min(3, fp) + min(3, fn)
    for _, png, _ in final:
        assert (tmp_path / "out" / png).is_file()
    assert not list((tmp_path / "out" / "heatmaps").glob("*.tmp*"))
    assert (tmp_path / "out" / "audit.html").is_file()
