"""Kill-and-resume: `python -m explain audit` is SIGKILLed mid-scoring and mid-heatmaps, then
re-run; every image ends up with exactly one row, and nothing finished before a kill is computed
again (its timestamps are unchanged and the model saw each image at most once more than the
batch that was in flight)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

N_GOOD = 24
BATCH = 2

MODEL = '''
import os, time
import numpy as np

def score(batch):
    """p(nsfw) = mean brightness; logs how many images it saw; slow enough to be killed."""
    with open(os.environ["AUDIT_TEST_LOG"], "a") as f:
        f.write(f"{len(batch)}\\n")
    time.sleep(0.15)
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


def _command(tmp: Path, top: int) -> list[str]:
    return [sys.executable, "-m", "explain", "audit", str(tmp / "data"), "-o", str(tmp / "out"),
            "--model", f"{tmp / 'model.py'}:score", "--classes", "sfw,nsfw", "--threshold", "0.5",
            "--top", str(top), "--box", "16", "--stride", "16", "-b", str(BATCH),
            "--no-concepts", "--mosaic", "0", "--quiet"]


def _env(tmp: Path) -> dict:
    return {**os.environ, "AUDIT_TEST_LOG": str(tmp / "calls.log")}


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


def _kill_when(tmp: Path, top: int, sql: str, at_least: int) -> None:
    proc = subprocess.Popen(_command(tmp, top), env=_env(tmp), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    db = tmp / "out" / "audit.sqlite"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            rows = _query(db, sql)
            if rows and rows[0][0] >= at_least:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the audit finished before it could be killed: " + \
            proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _seen(tmp: Path) -> int:
    return sum(int(n) for n in (tmp / "calls.log").read_text().split())


SCORED = "SELECT COUNT(*) FROM images WHERE scored_at IS NOT NULL"
ROWS = "SELECT path, score, error, scored_at FROM images ORDER BY path"


def test_kill_and_resume(tmp_path):
    _dataset(tmp_path / "data")
    (tmp_path / "model.py").write_text(MODEL)
    db = tmp_path / "out" / "audit.sqlite"

    # 1. killed while scoring
    _kill_when(tmp_path, 0, SCORED, 6)
    done = {r[0]: r for r in _query(db, ROWS) if r[3] is not None}
    assert 6 <= len(done) < N_GOOD + 1
    seen_first = _seen(tmp_path)

    # 2. resumed to the end (no heatmaps yet: --top 0)
    subprocess.run(_command(tmp_path, 0), env=_env(tmp_path), check=True, capture_output=True)
    rows = _query(db, ROWS)
    assert len(rows) == N_GOOD + 1 == len({r[0] for r in rows})  # every file once
    assert all(r[3] is not None for r in rows)
    for path, row in done.items():
        assert next(r for r in rows if r[0] == path) == row  # finished rows untouched
    n_good_done = sum(1 for r in done.values() if r[2] is None)
    rescored = _seen(tmp_path) - seen_first
    assert rescored == N_GOOD - n_good_done  # only what was not finished
    assert N_GOOD <= _seen(tmp_path) <= N_GOOD + BATCH  # at most the batch in flight is lost
    assert [r[2] for r in rows if r[0].endswith("zero.png")] == ["file is empty (0 bytes)"]

    # 3. --top is not part of the run key: asking for heatmaps resumes the same run; killed
    # after the first heatmap
    _kill_when(tmp_path, 3, "SELECT COUNT(*) FROM heatmaps", 1)
    maps = _query(db, "SELECT image, png, done_at FROM heatmaps")
    assert len(maps) >= 1 and _query(db, "SELECT COUNT(*) FROM runs") == [(1,)]

    # 4. resumed to the end: the heatmaps done before are kept, the others added once
    subprocess.run(_command(tmp_path, 3), env=_env(tmp_path), check=True, capture_output=True)
    final = _query(db, "SELECT image, png, done_at FROM heatmaps")
    assert set(maps) <= set(final) and len(final) == len({m[0] for m in final})
    fp = _query(db, "SELECT COUNT(*) FROM images WHERE label = 'sfw' AND score >= 0.5")[0][0]
    fn = _query(db, "SELECT COUNT(*) FROM images WHERE label = 'nsfw' AND score < 0.5")[0][0]
    assert len(final) == min(3, fp) + min(3, fn)
    for _, png, _ in final:
        assert (tmp_path / "out" / png).is_file()
    assert not list((tmp_path / "out" / "heatmaps").glob("*.tmp*"))
    assert _query(db, ROWS) == rows  # scores never touched again
    assert (tmp_path / "out" / "audit.html").is_file()
