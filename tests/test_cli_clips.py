"""Clips through the CLI: `explain score` and `explain occlude|slide` on real GIF and video
files, with a Python-function model whose answer is known; bad clips in a batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_clips import flash_video
from test_frames import cut_gifs, gif_bomb, save_animation, save_video
from typer.testing import CliRunner

from explain.cli import app

H, W = 48, 64
MODEL = '''import numpy as np
def score(images):
    x = images.astype(np.int32)
    red = (x[..., 0] > 200) & (x[..., 1] < 60) & (x[..., 2] < 60)
    s = red.mean(axis=(1, 2))
    return np.stack([1 - s, s], axis=1)
'''
FLASH = '''
def flash(images):
    x = images.astype(np.int32)
    red = ((x[..., 0] > 200) & (x[..., 1] < 60) & (x[..., 2] < 60)).mean(axis=(1, 2)) > 0.5
    s = np.where(red, 0.9, 0.02)
    return np.stack([1 - s, s], axis=1)
'''
SHARE = 12 * 16 / (H * W)


@pytest.fixture
def clips(tmp_path, monkeypatch):
    """planted.gif: frame 5 of 9 alone shows a red patch (each frame a different gray, so that
    the GIF keeps them all); moving.mkv: a lossless video of a red square moving; model.py."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.py").write_text(MODEL)
    frames = [np.full((H, W, 3), 60 + 12 * k, np.uint8) for k in range(9)]
    frames[5][20:32, 30:46] = (255, 0, 0)
    save_animation(tmp_path / "planted.gif", frames, 120)
    moving = []
    for k in range(10):
        frame = np.full((H, W, 3), 100, np.uint8)
        frame[10:22, 2 + 4 * k:18 + 4 * k] = (255, 0, 0)
        moving.append(frame)
    save_video(tmp_path / "moving.mkv", moving, fps=10)
    Image.fromarray(frames[5]).save(tmp_path / "still.png")
    return tmp_path


ARGS = ["-m", "model.py:score", "--classes", "sfw,nsfw"]


def test_score_reports_the_max_frame_and_every_frame_in_json(clips):
    result = CliRunner().invoke(app, ["score", "planted.gif", "still.png", "--json", *ARGS])
    assert result.exit_code == 0, result.output
    clip, still = json.loads(result.stdout)
    assert clip["scores"]["nsfw"] == pytest.approx(SHARE)
    assert clip["clip"]["max_frame"] == 5 and clip["clip"]["max_time"] == pytest.approx(0.6)
    assert clip["clip"]["mean"] == pytest.approx(SHARE / 9)
    assert [f["index"] for f in clip["frames"]] == list(range(9))
    assert [f["scores"]["nsfw"] > 0 for f in clip["frames"]] == [k == 5 for k in range(9)]
    assert still["scores"]["nsfw"] == pytest.approx(SHARE) and "clip" not in still
    plain = CliRunner().invoke(app, ["score", "planted.gif", "still.png", *ARGS])
    lines = plain.stdout.splitlines()
    assert lines[1] == "image\tsfw\tnsfw\tclip"
    assert lines[2].startswith("planted.gif\t") and "max nsfw at frame 5 (0.60 s)" in lines[2]
    assert lines[3].endswith("\t")  # a still image has no clip column value


def test_score_notes_skipped_frames(clips):
    result = CliRunner().invoke(app, ["score", "moving.mkv", "--frames", "fps:2", *ARGS])
    assert result.exit_code == 0, result.output
    assert "note: moving.mkv: 2 of 10 frames sampled (fps:2); the rest were skipped" in (
        " ".join(result.stderr.split()))


def test_occlude_explains_the_planted_frame(clips):
    result = CliRunner().invoke(app, ["occlude", "planted.gif", "-o", "out", "--box", "8",
                                      "--stride", "4", "--top-frames", "1", *ARGS])
    assert result.exit_code == 0, result.output
    assert "max 0.0625 at frame 5 (0.60 s)" in result.stdout
    out = clips / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "planted.occlusion.frame5.png", "planted.occlusion.gif",
        "planted.occlusion.timeline.png"]
    with Image.open(out / "planted.occlusion.gif") as gif:
        assert gif.n_frames == 9
        durations = []
        for k in range(9):
            gif.seek(k)
            durations.append(gif.info["duration"])
    assert durations == [120] * 9


def test_all_frames_with_reuse_on_a_video(clips):
    result = CliRunner().invoke(app, ["occlude", "moving.mkv", "-o", "out", "--frames", "all",
                                      "--all-frames", "--top-frames", "2", "--box", "8",
                                      "--stride", "8", "--reuse", "region", *ARGS])
    assert result.exit_code == 0, result.output
    assert "10 explained (reuse: 1 none, 9 region)" in result.stdout
    names = sorted(p.name for p in (clips / "out").iterdir())
    assert len([n for n in names if ".frame" in n]) == 2 and "moving.occlusion.gif" in names


def test_bad_clips_are_one_error_each_and_the_batch_goes_on(clips):
    (clips / "empty.mp4").write_bytes(b"")
    (clips / "garbage.mov").write_bytes(b"not a video at all" * 20)
    data = (clips / "moving.mkv").read_bytes()
    (clips / "cut.mkv").write_bytes(data[:len(data) // 3])
    result = CliRunner().invoke(app, ["slide", "empty.mp4", "garbage.mov", "cut.mkv",
                                      "planted.gif", "-o", "out", "--box", "16", "--stride",
                                      "16", *ARGS])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3
    assert "empty.mp4: file is empty" in errors[0]
    assert "garbage.mov: cannot be opened as a video" in errors[1]
    assert "cut.mkv" in errors[2] and "truncated" in errors[2]
    assert "planted.gif  nsfw max" in result.stdout


@pytest.mark.parametrize("command", ["score", "occlude"])
def test_cut_piped_and_oversized_animations_are_one_error_each(clips, fifos, command):
    """A GIF cut anywhere, a FIFO named like an image, and 320 G pixels of GIF frames in 460 KB:
    one red line each naming the file, and the batch goes on (before: a traceback, a hang)."""
    cuts = [p.name for p in cut_gifs(clips)]
    fifos(clips)
    gif_bomb(clips / "bomb.gif", 4000, 20_000)
    names = [*cuts, "pipe.gif", "pipe.png", "bomb.gif", "planted.gif"]
    more = ["-o", "out", "--box", "16", "--stride", "16"] if command == "occlude" else []
    result = CliRunner().invoke(app, [command, *names, *more, *ARGS])
    assert result.exit_code == 2, result.output  # an uncaught exception exits 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert sum("pipe." in e and "is not a regular file" in e for e in errors) == 2
    assert any("bomb.gif: 20,000 frames of 4000x4000" in e for e in errors)
    for cut in cuts:  # scored (a cut in the trailer), or one line naming it
        assert (cut in result.stdout) != any(e.startswith(f"error: {cut}:") for e in errors)
    assert sum(e.startswith("error: cut") for e in errors) >= 30
    assert "planted.gif" in result.stdout


def test_a_one_frame_flash_is_found_by_default_and_past_max_frames(clips):
    """The default scores every frame of a 10 fps video (4 frames per second skipped the hot
    one); past --max-frames the difference pass still scores it; the line, the JSON and the
    timeline say how many frames were scored."""
    flash_video(clips / "flash.mkv")
    model = ["-m", "model.py:flash", "--classes", "sfw,nsfw"]
    (clips / "model.py").write_text(MODEL + FLASH)
    result = CliRunner().invoke(app, ["score", "flash.mkv", "--json", *model])
    assert result.exit_code == 0, result.output
    clip = json.loads(result.stdout)[0]["clip"]
    assert clip["max"] == pytest.approx(0.9) and clip["max_frame"] == 24
    assert (clip["frames_scored"], clip["source_frames"], clip["sampling"]) == (60, 60, "all")
    capped = CliRunner().invoke(app, ["score", "flash.mkv", "--max-frames", "8", *model])
    assert capped.exit_code == 0, capped.output
    assert "max nsfw at frame 24 (2.40 s)" in capped.stdout
    assert "8 of 60 frames scored" in capped.stdout
    assert "a difference pass kept the 4 frames most unlike" in " ".join(capped.stderr.split())
    out = CliRunner().invoke(app, ["occlude", "flash.mkv", "-o", "out", "--max-frames", "8",
                                   "--top-frames", "1", "--box", "16", "--stride", "16", *model])
    assert out.exit_code == 0, out.output
    assert ("max 0.9000 at frame 24 (2.40 s), mean 0.1300 over 8 of 60 frames (difference "
            "pass, 8 frames)") in " ".join(out.stdout.split())


def test_a_long_clip_animates_its_explained_frames_and_frames_evenly_spaced(clips, monkeypatch):
    monkeypatch.setattr("explain.render_clip.ANIMATION_FRAMES", 10)
    flash_video(clips / "flash.mkv")
    (clips / "model.py").write_text(MODEL + FLASH)
    result = CliRunner().invoke(app, ["occlude", "flash.mkv", "-o", "out", "--top-frames", "1",
                                      "--box", "16", "--stride", "16", "-m", "model.py:flash",
                                      "--classes", "sfw,nsfw"])
    assert result.exit_code == 0, result.output
    assert "over 60 of 60 frames (every frame)" in " ".join(result.stdout.split())
    with Image.open(clips / "out" / "flash.occlusion.gif") as gif:
        durations, red = [], []
        for k in range(gif.n_frames):
            gif.seek(k)
            durations.append(gif.info["duration"])
            rgb = np.asarray(gif.convert("RGB"))[:H, :W].astype(int)
            red.append(rgb[..., 0].mean() - rgb[..., 1].mean() > 60)
    # 10 spread and frame 24 (Pillow merges equal neighbours), held for the whole clip
    assert gif.n_frames <= 11 and sum(durations) == 6000
    assert red.count(True) == 1  # the one-frame flash is shown, with its map


def test_bad_frames_option(clips):
    result = CliRunner().invoke(app, ["score", "planted.gif", "--frames", "fps:-1", *ARGS])
    assert result.exit_code == 2 and "--frames must be all, auto" in result.stderr


def test_report_shows_the_timeline_and_explains_the_max_frame(clips):
    result = CliRunner().invoke(app, ["report", "planted.gif", "--methods", "occlusion,sliding",
                                      "-o", "report.json", "--format", "json", *ARGS])
    assert result.exit_code == 0, result.output
    row = json.loads((clips / "report.json").read_text())["images"][0]
    assert "judged by its max frame 5 at 0.60 s" in row["clip"]
    assert row["scores"]["nsfw"] == pytest.approx(SHARE)
    html = CliRunner().invoke(app, ["report", "planted.gif", "--methods", "sliding", "-o",
                                    "report.html", *ARGS])
    assert html.exit_code == 0, html.output
    page = (clips / "report.html").read_text()
    assert 'alt="timeline of p(nsfw)"' in page and "the explained frame is marked" in page
