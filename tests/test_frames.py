"""The clip intake (explain.frames): real GIF, APNG, WebP and video files made here, sampling,
caps and bad files."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from explain import frames as frames_module
from explain.errors import ImageError, OptionError
from explain.frames import Sampling, frame_at, is_clip, parse_sampling, read_clip
from explain.images import load_image

H, W = 48, 64


def coloured(k: int) -> np.ndarray:
    """Frame k: a flat colour that differs from every other frame's (survives a GIF palette)."""
    frame = np.zeros((H, W, 3), np.uint8)
    frame[:] = (10 * k % 250, 255 - 10 * k % 250, 40)
    return frame


def save_animation(path: Path, frames: list[np.ndarray], durations_ms: list[int] | int) -> Path:
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations_ms, loop=0)
    return path


def save_video(path: Path, frames: list[np.ndarray], fps: float, fourcc: str = "FFV1") -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps,
                             (frames[0].shape[1], frames[0].shape[0]))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} into {path.suffix}"
    for f in frames:
        writer.write(np.ascontiguousarray(f[:, :, ::-1]))
    writer.release()
    return path


@pytest.mark.parametrize("suffix", [".gif", ".png", ".webp"])
def test_animated_image_every_frame_with_its_duration(tmp_path, suffix):
    frames = [coloured(k) for k in range(6)]
    durations = [100, 200, 50, 300, 100, 250]
    path = save_animation(tmp_path / f"clip{suffix}", frames, durations)
    assert is_clip(path)
    clip = read_clip(path)
    assert [f.index for f in clip.frames] == list(range(6))
    assert [round(f.duration, 3) for f in clip.frames] == [d / 1000 for d in durations]
    assert [round(f.time, 3) for f in clip.frames] == [0, 0.1, 0.3, 0.35, 0.65, 0.75]
    assert clip.seconds == pytest.approx(1.0)
    for got, want in zip(clip.frames, frames, strict=True):
        assert np.abs(got.rgb.astype(int) - want).max() <= (8 if suffix == ".webp" else 0)
    assert clip.notes == []


def test_a_still_image_is_not_a_clip(tmp_path):
    Image.fromarray(coloured(1)).save(tmp_path / "still.gif")
    Image.fromarray(coloured(1)).save(tmp_path / "still.png")
    assert not is_clip(tmp_path / "still.gif")
    assert not is_clip(tmp_path / "still.png")
    assert not is_clip(tmp_path / "missing.gif")
    assert is_clip(tmp_path / "missing.mp4")  # a video by its name: read_clip reports it


@pytest.mark.parametrize(("suffix", "fourcc"), [(".mkv", "FFV1"), (".mp4", "mp4v"),
                                                (".avi", "FFV1"), (".mov", "mp4v")])
def test_video_frames_and_times(tmp_path, suffix, fourcc):
    frames = [coloured(k) for k in range(20)]
    path = save_video(tmp_path / f"clip{suffix}", frames, fps=10)
    clip = read_clip(path, "all")
    assert len(clip.frames) == 20 and clip.source_frames == 20
    assert [round(f.time, 3) for f in clip.frames] == [k / 10 for k in range(20)]
    assert clip.seconds == pytest.approx(2.0)
    tolerance = 0 if fourcc == "FFV1" else 12
    assert max(np.abs(f.rgb.astype(int) - want).max()
               for f, want in zip(clip.frames, frames, strict=True)) <= tolerance


def test_sampling_fps_count_and_the_note(tmp_path):
    path = save_video(tmp_path / "clip.mkv", [coloured(k) for k in range(30)], fps=10)
    by_rate = read_clip(path, "fps:2")
    assert [f.index for f in by_rate.frames] == [0, 5, 10, 15, 20, 25]
    assert [round(f.duration, 3) for f in by_rate.frames] == [0.5] * 6
    assert by_rate.notes == ["6 of 30 frames sampled (fps:2); the rest were skipped"]
    by_count = read_clip(path, "4")
    assert [f.index for f in by_count.frames] == [0, 10, 19, 29]
    default = read_clip(path)  # every frame, a video too, while the clip fits the cap
    assert len(default.frames) == 30 and default.sampling == "all" and default.notes == []
    assert default.every_frame and default.scored_text() == "30 of 30 frames (every frame)"


def test_frame_cap_keeps_frames_evenly_and_says_so(tmp_path):
    path = save_animation(tmp_path / "long.gif", [coloured(k) for k in range(25)], 40)
    clip = read_clip(path, "13", max_frames=5)
    assert [f.index for f in clip.frames] == [0, 6, 12, 18, 24]
    assert "13 frames would keep 13 frames, above the cap (--max-frames 5)" in clip.notes[1]
    assert clip.notes[0] == "5 of 25 frames sampled (5 frames); the rest were skipped"


def test_absurd_frame_count_is_refused_naming_the_cap(tmp_path, monkeypatch):
    path = save_animation(tmp_path / "many.gif", [coloured(k) for k in range(12)], 40)
    monkeypatch.setattr(frames_module, "MAX_SOURCE_FRAMES", 10)
    with pytest.raises(ImageError, match="declares 12 frames, above the cap of 10 frames"):
        read_clip(path)


def test_absurd_resolution_is_refused_before_decoding(tmp_path):
    path = save_video(tmp_path / "big.mkv", [coloured(k) for k in range(3)], fps=5)
    with pytest.raises(ImageError, match=r"64x48 = 3,072 pixels, above the limit of 1,000"):
        read_clip(path, max_pixels=1000)
    gif = save_animation(tmp_path / "big.gif", [coloured(k) for k in range(3)], 40)
    with pytest.raises(ImageError, match="above the limit of 1,000"):
        read_clip(gif, max_pixels=1000)


def test_truncated_and_empty_files(tmp_path):
    gif = save_animation(tmp_path / "a.gif", [np.random.randint(0, 255, (H, W, 3), np.uint8)
                                              for _ in range(8)], 40)
    (tmp_path / "cut.gif").write_bytes(gif.read_bytes()[:len(gif.read_bytes()) * 2 // 3])
    with pytest.raises(ImageError, match="truncated or corrupt animation"):
        read_clip(tmp_path / "cut.gif")
    video = save_video(tmp_path / "v.mkv", [np.random.randint(0, 255, (H, W, 3), np.uint8)
                                            for _ in range(20)], fps=10)
    (tmp_path / "cut.mkv").write_bytes(video.read_bytes()[:len(video.read_bytes()) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt video: only"):
        read_clip(tmp_path / "cut.mkv")
    mp4 = save_video(tmp_path / "v.mp4", [coloured(k) for k in range(20)], fps=10, fourcc="mp4v")
    (tmp_path / "cut.mp4").write_bytes(mp4.read_bytes()[:len(mp4.read_bytes()) // 2])
    with pytest.raises(ImageError, match="cannot be opened as a video"):
        read_clip(tmp_path / "cut.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty \(0 bytes\)"):
        read_clip(tmp_path / "empty.mp4")
    (tmp_path / "noise.webm").write_bytes(b"\x1aE\xdf\xa3" + bytes(200))
    with pytest.raises(ImageError, match="noise.webm"):
        read_clip(tmp_path / "noise.webm")


def test_zero_frame_video(tmp_path):
    writer = cv2.VideoWriter(str(tmp_path / "zero.mkv"), cv2.VideoWriter_fourcc(*"FFV1"), 10,
                             (W, H))
    writer.release()
    with pytest.raises(ImageError, match="zero.mkv: (contains no decodable frame|cannot be "
                                         "opened)"):
        read_clip(tmp_path / "zero.mkv")


@pytest.mark.parametrize("text", ["0", "-3", "fps:0", "fps:x", "every", "fps:inf", ""])
def test_bad_sampling_is_an_option_error(text):
    with pytest.raises(OptionError, match="--frames must be all, auto"):
        parse_sampling(text)


def test_sampling_forms():
    assert parse_sampling("ALL") == Sampling("all")
    assert parse_sampling(" 12 ") == Sampling("count", 12)
    assert parse_sampling("fps:2.5") == Sampling("fps", 2.5)


def gif_bomb(path: Path, side: int, frames: int) -> Path:
    """A GIF of ``frames`` frames on a ``side``×``side`` screen, each frame a 1-pixel update of
    23 bytes (written by hand): 20,000 frames at 4000² are a 460 KB file."""
    head = b"GIF89a" + struct.pack("<HHBBB", side, side, 0x80, 0, 0) + bytes([0, 0, 0] + [255] * 3)
    frame = (b"\x21\xf9\x04\x00\x0a\x00\x00\x00" + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
             + b"\x02\x02\x44\x01\x00")
    path.write_bytes(head + frame * frames + b"\x3b")
    return path


def cut_gifs(tmp_path: Path) -> list[Path]:
    """An 8-frame animated GIF cut at 40 places through its length (Pillow raises OSError,
    EOFError, IndexError or struct.error on them, depending on where the cut falls)."""
    rng = np.random.default_rng(0)
    gif = save_animation(tmp_path / "whole.gif", [rng.integers(0, 255, (H, W, 3), np.uint8)
                                                  for _ in range(8)], 40)
    data = gif.read_bytes()
    cuts = []
    for k, end in enumerate(range(40, len(data), len(data) // 40)):
        (tmp_path / f"cut{k:02d}.gif").write_bytes(data[:end])
        cuts.append(tmp_path / f"cut{k:02d}.gif")
    return cuts


def test_a_gif_cut_anywhere_is_one_image_error_naming_it(tmp_path):
    for cut in cut_gifs(tmp_path):
        try:
            (read_clip if is_clip(cut) else load_image)(cut)
        except ImageError as exc:
            assert str(cut) in str(exc)


def test_decoding_work_is_refused_from_the_header(tmp_path, monkeypatch):
    bomb = gif_bomb(tmp_path / "bomb.gif", 4000, 20_000)
    assert bomb.stat().st_size < 470_000 and is_clip(bomb)

    def no_decoding(self):
        raise AssertionError("a frame was decoded")

    monkeypatch.setattr(frames_module._AnimatedSource, "_frames", no_decoding)
    with pytest.raises(ImageError, match=r"bomb.gif: 20,000 frames of 4000x4000 are "
                                         r"320,000,000,000 pixels to decode, above the limit of "
                                         r"30,000,000,000 \(300 frames of --max-pixels\)"):
        read_clip(bomb)
    monkeypatch.undo()
    small = gif_bomb(tmp_path / "small.gif", 100, frames_module.CLIP_WORK_FRAMES + 1)
    with pytest.raises(ImageError, match="301 frames of 100x100 are 3,010,000 pixels"):
        read_clip(small, max_pixels=10_000)
    assert len(read_clip(small, max_pixels=10_100).frames) == 301


def test_a_fifo_is_refused_before_it_is_opened(tmp_path, fifos):
    for p in fifos(tmp_path):
        assert not is_clip(p) or p.suffix == ".mp4"
        with pytest.raises(ImageError, match="is not a regular file"):
            read_clip(p)
        with pytest.raises(ImageError, match="is not a regular file"):
            load_image(p)


def test_frame_at_reads_one_frame_by_its_source_index(tmp_path):
    frames = [coloured(k) for k in range(6)]
    path = save_animation(tmp_path / "clip.gif", frames, [100, 200, 50, 300, 100, 250])
    got = frame_at(path, 3)
    assert (got.index, round(got.time, 3), round(got.duration, 3)) == (3, 0.35, 0.3)
    assert np.array_equal(got.rgb, frames[3])
    assert round(frame_at(path, 5).duration, 3) == 0.25
    with pytest.raises(ImageError, match="has no frame 6: it has 6 frames"):
        frame_at(path, 6)
