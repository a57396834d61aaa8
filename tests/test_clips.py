"""Scoring and explaining clips (explain.clips, explain.frame_reuse) on real files made here with
Python-function models whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from test_frames import save_animation, save_video

from explain.clips import explain_clip, frame_maps, pick_frames, score_clip
from explain.frame_reuse import meeting, occlusion_maps, sliding_maps
from explain.frames import read_clip
from explain.models import CallableClassifier
from explain.occlusion import occlusion_map
from explain.sliding import sliding_window_map
from explain.windows import window_grid

H, W = 48, 64
ATOL = 1e-6  # the models answer in float32: a drop kept from another frame differs in its last bits


def redness(images: np.ndarray) -> np.ndarray:
    """p(nsfw) = the share of strongly red pixels: additive over pixels, so hiding a window
    changes it by an amount that depends on that window's pixels only."""
    x = images.astype(np.int32)
    red = (x[..., 0] > 200) & (x[..., 1] < 60) & (x[..., 2] < 60)
    s = red.mean(axis=(1, 2))
    return np.stack([1 - s, s], axis=1)


def brightness(images: np.ndarray) -> np.ndarray:
    """p(nsfw) = mean brightness: additive too, and sensitive to every pixel's value."""
    s = images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0
    return np.stack([1 - s, s], axis=1)


def model(fn) -> CallableClassifier:
    return CallableClassifier(fn, class_names=["sfw", "nsfw"])


def gray_frames(n: int) -> list[np.ndarray]:
    return [np.full((H, W, 3), 90 + 10 * (k % 5), np.uint8) for k in range(n)]


def test_planted_frame_decides_the_score_and_is_the_one_explained(tmp_path):
    frames = gray_frames(12)
    k = 7
    frames[k][10:30, 20:44] = (255, 0, 0)
    clip = read_clip(save_animation(tmp_path / "planted.gif", frames, 80))
    clf = model(redness)
    scores = score_clip(clf, clip, "nsfw")
    share = 20 * 24 / (H * W)
    assert scores.max == pytest.approx(share) and scores.top == k
    assert scores.mean == pytest.approx(share / 12)
    summary = scores.summary()
    assert summary["max_frame"] == k and summary["max_time"] == pytest.approx(0.56)
    assert summary["frames_scored"] == 12 and scores.curve[0] == 0.0
    assert [row["index"] for row in scores.frames()] == list(range(12))
    explained = explain_clip(scores, clip, lambda fr, progress: occlusion_maps(
        clf, fr, box=8, stride=8, progress=progress), top_frames=1)
    assert explained.positions == [k]
    hm = explained.maps[0]
    assert hm.score == pytest.approx(share)
    assert hm.values[10:30, 20:44].min() > 0 and hm.values[:8].max() == 0


def test_top_frames_and_all_frames():
    class Fake:
        curve = np.array([0.1, 0.9, 0.3, 0.9, 0.2])
        indices = list(range(5))

    assert pick_frames(Fake, 2) == [1, 3]
    assert pick_frames(Fake, 3) == [1, 2, 3]
    assert pick_frames(Fake, 2, all_frames=True) == [0, 1, 2, 3, 4]


def static_video(tmp_path, n: int = 6):
    """A lossless video (FFV1) whose frames 1..3 repeat frame 0 exactly, then a change."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    frames = [base.copy() for _ in range(n)]
    frames[4][5:15, 5:15] = 255
    frames[5][30:40, 40:60] = 0
    return read_clip(save_video(tmp_path / "static.mkv", frames, fps=5), "all")


@pytest.mark.parametrize("fill", ["gray", "mean"])
def test_identical_frames_reuse_maps_equal_to_recomputed(tmp_path, fill):
    clip = static_video(tmp_path)
    frames = [f.rgb for f in clip.frames]
    assert all((frames[k] == frames[0]).all() for k in range(4))
    clf = model(brightness)
    maps = occlusion_maps(clf, frames, box=12, stride=8, fill=fill)
    assert [m.params["reuse"] for m in maps[:4]] == ["none", "identical", "identical",
                                                     "identical"]
    assert [m.params["rescored"] for m in maps[:4]] == [maps[0].windows, 0, 0, 0]
    for frame, hm in zip(frames, maps, strict=True):
        full = occlusion_map(clf, frame, box=12, stride=8, fill=fill)
        np.testing.assert_allclose(hm.values, full.values, atol=ATOL)
        assert hm.score == pytest.approx(full.score)
    calls = []
    generic = frame_maps(lambda f: calls.append(1) or occlusion_map(clf, f, box=12, stride=8),
                         frames)
    assert len(calls) == 3 and [m.params["reuse"] for m in generic[:3]] == ["none", "identical",
                                                                            "identical"]


def moving_square(n: int = 8) -> list[np.ndarray]:
    """A textured static background and one red square moving right by 4 px a frame."""
    rng = np.random.default_rng(5)
    background = rng.integers(0, 150, (H, W, 3), dtype=np.uint8)
    frames = []
    for k in range(n):
        frame = background.copy()
        frame[16:28, 4 + 4 * k:16 + 4 * k] = (255, 0, 0)
        frames.append(frame)
    return frames


@pytest.mark.slow
def test_moving_region_rescores_only_the_windows_meeting_it_and_equals_recomputation(tmp_path):
    clip = read_clip(save_animation(tmp_path / "moving.png", moving_square(), 100))
    frames = [f.rgb for f in clip.frames]
    clf = model(redness)
    scored = []
    counting = CallableClassifier(lambda x: scored.append(len(x)) or redness(x),
                                  class_names=["sfw", "nsfw"])
    maps = occlusion_maps(counting, frames, box=8, stride=4, fill="gray", reuse="region")
    windows = window_grid((H, W), 8, 4)
    assert maps[0].params["reuse"] == "none"
    for k in range(1, len(frames)):
        change = (frames[k] != frames[k - 1]).any(axis=2)
        expected = int(meeting(windows, change).sum())
        assert maps[k].params == maps[k].params | {"reuse": "region", "rescored": expected}
        assert 0 < expected < len(windows) // 3
        full = occlusion_map(clf, frames[k], box=8, stride=4, fill="gray")
        np.testing.assert_allclose(maps[k].values, full.values, atol=ATOL)
    # each scored frame: its windows, the intact frame and the baseline (the whole frame filled)
    assert sum(scored) == len(windows) + 2 + sum(m.params["rescored"] + 2 for m in maps[1:])
    recomputed = occlusion_maps(clf, frames, box=8, stride=4, fill="gray", reuse="none")
    assert all(m.params["rescored"] == len(windows) for m in recomputed)
    by_default = occlusion_maps(clf, frames, box=8, stride=4, fill="gray")  # identical only
    assert [m.params["reuse"] for m in by_default] == ["none"] * len(frames)


def test_whole_frame_fills_refuse_region_reuse():
    frames = moving_square(3)
    clf = model(redness)
    maps = occlusion_maps(clf, frames, box=8, stride=4, fill="blur", reuse="region")
    assert [m.params["reuse"] for m in maps] == ["none", "none", "none"]
    for frame, hm in zip(frames, maps, strict=True):
        full = occlusion_map(clf, frame, box=8, stride=4, fill="blur")
        np.testing.assert_allclose(hm.values, full.values, atol=ATOL)


def test_meeting_windows():
    windows = np.array([[0, 0, 4, 4], [0, 4, 4, 8], [4, 0, 8, 4], [4, 4, 8, 8]])
    mask = np.zeros((8, 8), bool)
    mask[3, 3] = True
    assert meeting(windows, mask).tolist() == [True, False, False, False]
    mask[4, 4] = True  # the bounding box now spans all four
    assert meeting(windows, mask).tolist() == [True, True, True, True]


def contrast(images: np.ndarray) -> np.ndarray:
    """A model that is NOT additive over regions: p(nsfw) = the squashed spread of the red
    channel, which any pixel of the image changes."""
    red = images[..., 0].astype(np.float64)
    s = 1.0 / (1.0 + np.exp(-(red.std(axis=(1, 2)) - 40.0) / 10.0))
    return np.stack([1 - s, s], axis=1)


@pytest.mark.slow
def test_sliding_region_reuse_is_exact_for_any_model(tmp_path):
    clip = read_clip(save_animation(tmp_path / "moving.png", moving_square(6), 100))
    frames = [f.rgb for f in clip.frames]
    clf = model(contrast)
    maps = sliding_maps(clf, frames, box=16, stride=8)
    assert [m.params["reuse"] for m in maps] == ["none"] + ["region"] * 5
    assert all(0 < m.params["rescored"] < m.windows for m in maps[1:])
    for frame, hm in zip(frames, maps, strict=True):
        full = sliding_window_map(clf, frame, box=16, stride=8)
        np.testing.assert_array_equal(hm.values, full.values)
        assert hm.score == full.score
    occluded = occlusion_maps(clf, frames, box=16, stride=8, reuse="region")
    recomputed = occlusion_maps(clf, frames, box=16, stride=8, reuse="none")
    # occlusion's kept drops are an approximation for such a model: they do move the map
    moved = [np.abs(a.values - b.values).max()
             for a, b in zip(occluded, recomputed, strict=True)]
    assert max(moved) > 1e-5


def test_timeline_marks_the_explained_frames():
    from explain.render_clip import MARK, timeline

    times, durations = [0.0, 1.0, 2.0, 3.0], [1.0] * 4
    picture = timeline(times, [0.1, 0.9, 0.2, 0.5], durations, target="nsfw", marked=[1, 3])
    assert picture.shape == (260, 800, 3) and picture.dtype == np.uint8
    red = (picture == MARK).all(axis=2)
    columns = np.nonzero(red.any(axis=0))[0]
    # plot area x from 48 to 784 over 4 s: frame k's mark is centred at 48 + 184 * (k + 0.5)
    centres = [48 + 184 * (k + 0.5) for k in range(4)]
    assert any(abs(c - centres[1]) <= 8 for c in columns)
    assert any(abs(c - centres[3]) <= 8 for c in columns)
    assert not any(abs(c - centres[2]) <= 12 for c in columns)


def flash(images: np.ndarray) -> np.ndarray:
    """p(nsfw) = 0.9 for a frame that is mostly strongly red, else 0.02: a model that scores a
    frame by its content."""
    x = images.astype(np.int32)
    red = ((x[..., 0] > 200) & (x[..., 1] < 60) & (x[..., 2] < 60)).mean(axis=(1, 2)) > 0.5
    s = np.where(red, 0.9, 0.02)
    return np.stack([1 - s, s], axis=1)


def flash_video(path, n: int = 60, hot: int = 24):
    """A 10 fps lossless video of ``n`` gray frames (the level changes a little each frame), one
    of which, ``hot``, is red: a one-frame flash that 4 frames per second never sample."""
    frames = [np.full((H, W, 3), 80 + 3 * (k % 7), np.uint8) for k in range(n)]
    frames[hot][:] = (230, 20, 20)
    return save_video(path, frames, fps=10)


def test_a_one_frame_flash_is_found_by_default_and_past_the_cap(tmp_path, monkeypatch):
    video = flash_video(tmp_path / "flash.mkv")
    clf = model(flash)
    assert 24 not in [f.index for f in read_clip(video, "fps:4").frames]  # the old default
    clip = read_clip(video)
    assert clip.every_frame and len(clip.frames) == 60 and clip.notes == []
    scores = score_clip(clf, clip)
    assert scores.max == pytest.approx(0.9) and scores.summary()["max_frame"] == 24
    capped = read_clip(video, max_frames=8)  # past the cap: the difference pass
    assert len(capped.frames) == 8 and capped.sampling == "difference pass, 8 frames"
    assert {0, 24} <= {f.index for f in capped.frames}
    assert capped.scored_text() == "8 of 60 frames (difference pass, 8 frames)"
    assert "a difference pass kept the 4 frames most unlike the frames before them" in (
        " ".join(capped.notes))
    found = score_clip(clf, capped)
    assert found.max == pytest.approx(0.9) and found.summary()["max_frame"] == 24
    monkeypatch.setenv("EXPLAIN_MEMORY_BUDGET", str(2 * 3 * H * W * 5))  # 5 frames fit
    tight = read_clip(video, "all")
    assert len(tight.frames) == 5 and 24 in [f.index for f in tight.frames]
    assert "the memory budget, 5 frames of 64x48" in " ".join(tight.notes)
