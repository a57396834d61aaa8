"""The audit judges a clip by its max frame: the score, heatmap and card are that frame's."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_clips import flash, flash_video, redness
from test_frames import cut_gifs, gif_bomb, save_animation, save_video

from explain.audit import AuditOptions, audit
from explain.errors import OptionError
from explain.models import CallableClassifier

H, W = 32, 48


def test_audit_scores_a_clip_by_its_max_frame_and_explains_that_frame(tmp_path):
    data = tmp_path / "data"
    frames = [np.full((H, W, 3), 40 + 20 * k, np.uint8) for k in range(8)]
    frames[6][8:24, 8:24] = (255, 0, 0)  # only frame 6 carries the signal
    (data / "sfw").mkdir(parents=True)
    save_animation(data / "sfw" / "sneaky.gif", frames, 100)
    quiet = [np.full((H, W, 3), 100, np.uint8) for _ in range(5)]
    save_video(data / "sfw" / "quiet.mkv", quiet, fps=5)
    clf = CallableClassifier(redness, class_names=["sfw", "nsfw"])
    o = AuditOptions(threshold=0.1, top=3, box=16, stride=16, concepts=False, mosaic=0)
    result = audit(data, tmp_path / "out", model=clf, options=o)
    assert result.metrics["fp"] == 1 and result.heatmaps == 1
    rows = {r["path"].split("/")[-1]: r for r in csv.DictReader(
        (tmp_path / "out" / "scores.csv").open())}
    assert set(rows) == {"sneaky.gif", "quiet.mkv"}
    assert float(rows["sneaky.gif"]["score"]) == pytest.approx(16 * 16 / (H * W), abs=1e-6)
    assert float(rows["quiet.mkv"]["score"]) == 0.0
    meta = json.loads(next((tmp_path / "out" / "heatmaps").glob("fp_*.json")).read_text())
    assert meta["params"]["frame"] == 6 and meta["score"] == pytest.approx(16 * 16 / (H * W))
    html = (tmp_path / "out" / "audit.html").read_text()
    assert "judged by its max frame 6 at 0.60 s" in html or "sneaky.gif" in html


def test_a_clip_keeps_its_judged_frame_so_later_steps_make_no_model_call(tmp_path):
    """The frame a clip was judged by is stored with it, so its embedding (label issues, error
    clusters) and a new threshold read that frame without scoring the clip's frames again."""
    import sqlite3

    data = tmp_path / "data"
    frames = [np.full((H, W, 3), 40 + 20 * k, np.uint8) for k in range(8)]
    frames[6][8:24, 8:24] = (255, 0, 0)
    (data / "sfw").mkdir(parents=True)
    save_animation(data / "sfw" / "sneaky.gif", frames, 100)
    calls = [0]

    def counted(batch: np.ndarray) -> np.ndarray:
        calls[0] += 1
        return redness(batch)

    clf = CallableClassifier(counted, class_names=["sfw", "nsfw"])
    o = AuditOptions(threshold=0.1, top=0, concepts=False, cues=False, mosaic=0)
    audit(data, tmp_path / "out", model=clf, options=o)
    db = sqlite3.connect(tmp_path / "out" / "audit.sqlite")
    (props,), = db.execute("SELECT props FROM images").fetchall()
    db.close()
    assert json.loads(props)["frame"] == 6
    before = calls[0]
    o = AuditOptions(threshold=0.5, top=0, concepts=False, cues=False, mosaic=0)
    again = audit(data, tmp_path / "out", model=clf, options=o)
    assert again.resumed and calls[0] == before and again.metrics["fp"] == 0


def test_cut_piped_and_oversized_animations_fail_alone_and_resume(tmp_path, fifos):
    """A cut GIF, FIFOs named like images and a decoding bomb are each recorded as a failed
    image (before: a traceback that came back on every resume, or a hang); a resume finishes."""
    data = tmp_path / "data"
    data.mkdir()
    cuts = cut_gifs(data)
    fifos(data)
    gif_bomb(data / "bomb.gif", 4000, 20_000)
    clf = CallableClassifier(redness, class_names=["sfw", "nsfw"])
    o = AuditOptions(top=0, concepts=False, mosaic=0, cues=False)
    first = audit(data, tmp_path / "out", model=clf, options=o)
    again = audit(data, tmp_path / "out", model=clf, options=o)
    assert again.resumed and again.failed == first.failed
    errors = (tmp_path / "out" / "errors.csv").read_text()
    assert errors.count("is not a regular file") == 3
    assert "bomb.gif" in errors and "pixels to decode" in errors
    assert first.failed >= 30 + 4 and first.images == len(cuts) + 5  # + whole.gif


def test_the_audit_finds_a_one_frame_flash_by_default_and_takes_frames(tmp_path):
    data = tmp_path / "data"
    (data / "sfw").mkdir(parents=True)
    flash_video(data / "sfw" / "flash.mkv")
    clf = CallableClassifier(flash, class_names=["sfw", "nsfw"])
    scores = {}
    for frames in ("auto", "fps:4"):
        o = AuditOptions(top=0, concepts=False, mosaic=0, cues=False, frames=frames)
        audit(data, tmp_path / frames.replace(":", ""), model=clf, options=o)
        rows = list(csv.DictReader((tmp_path / frames.replace(":", "") / "scores.csv").open()))
        scores[frames] = float(rows[0]["score"])
    assert scores == {"auto": pytest.approx(0.9), "fps:4": pytest.approx(0.02)}
    with pytest.raises(OptionError, match="--frames must be"):
        AuditOptions(frames="fps:0").check()
