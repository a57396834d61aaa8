"""The clip intake: animated images and videos as a list of sampled frames, each with its time.

A *clip* is an animated GIF, WebP or PNG (APNG), read with Pillow frame by frame (each frame
composited as browsers show it, with its own duration), or a video (MP4, M4V, WebM, MOV, MKV,
AVI), read with OpenCV's FFmpeg backend (already a dependency; in a side-by-side test it decoded
the same containers as PyAV with identical pixels, and the rotation metadata is applied). Every
frame goes through the same conversions and guards as a still image (:mod:`explain.images`):
RGB uint8 (H, W, 3), the pixel limit checked from the header before anything is decoded.

Sampling (``frames``): ``all`` (every frame), ``N`` (N frames evenly spaced over the clip's frame
indices), ``fps:R`` (the frame on screen every 1/R seconds) or ``auto`` (the default: every frame,
animations and videos alike, so that a one-frame event is never skipped). At most ``max_frames``
frames are kept, and no more than the memory budget holds. When ``auto`` or ``all`` asks for more,
a cheap *difference pass* decodes every frame once more, shrunk to 32×32, and keeps (1) the
frames most unlike each of the 3 frames before them, up to half the cap, frame 0 first (a
one-frame flash is unlike the frames before it; the frame after it, back to what came before,
is not, and takes no place), and (2) frames evenly spaced over the rest to fill the cap. A
frame unlike those before it is skipped only when more than half the cap are more unlike
theirs. ``N`` and ``fps:R`` over the cap keep frames evenly spaced. :attr:`Clip.notes` says
what was skipped and why.

Bad clips are one :class:`~explain.errors.ImageError` each, naming the file and the cap: not a
regular file (a FIFO would block forever: refused before it is opened), no frame at all, a file
FFmpeg cannot open, a truncated or corrupt file (whatever Pillow raises on it; OpenCV decodes
fewer than 90 % of the frames the header declares), more than :data:`MAX_SOURCE_FRAMES` frames,
a frame above ``max_pixels``, and frames × pixels above :data:`CLIP_WORK_FRAMES` × ``max_pixels``
(the decoding work, checked from the header before any frame is decoded, and again while
decoding a video whose header gives no frame count). A still image is not a clip:
:func:`is_clip` tells them apart, and still images keep their own faster path,
:func:`explain.images.load_image`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from explain.budget import memory_budget
from explain.choices import DEFAULT_MAX_FRAMES, DEFAULT_MAX_PIXELS
from explain.errors import ImageError, OptionError
from explain.images import IMAGE_SUFFIXES, _check_path, _to_rgb, decoding_warnings, is_regular

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".webm", ".mov", ".mkv", ".avi"})
ANIMATED_SUFFIXES = frozenset({".gif", ".webp", ".png", ".apng"})
CLIP_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES | ANIMATED_SUFFIXES  # what a folder search finds
MAX_SOURCE_FRAMES = 100_000
GIF_DEFAULT_DURATION = 0.1  # seconds: what browsers show a frame that declares 0 or ≤ 10 ms for
# the decoding work a clip may take, in frames of max_pixels: 300 × 100 M (the default) = 30 G
# pixels, a 2-minute 4K video at 30 fps; a 460 KB GIF of 20,000 4000x4000 frames is 320 G
CLIP_WORK_FRAMES = 300
# the difference pass compares frames shrunk to this side, each with this many frames before it
SIGNATURE_SIDE = 32
LOOK_BACK = 3


@dataclass(frozen=True)
class Frame:
    """One sampled frame: ``index`` in the source (0-based), ``time`` in seconds from the start
    at which it is shown, ``duration`` in seconds that it stands for (until the next SAMPLED
    frame, or the end of the clip), and its pixels ``rgb`` (H, W, 3) uint8."""

    index: int
    time: float
    duration: float
    rgb: np.ndarray


@dataclass
class Clip:
    """A clip's sampled frames (in order), how many frames the source has (``source_frames``),
    its length in seconds (``seconds``), the sampling asked (``sampling``) and what was skipped
    or capped (``notes``, sentences for the user)."""

    path: Path
    frames: list[Frame]
    source_frames: int
    seconds: float
    sampling: str
    notes: list[str] = field(default_factory=list)

    @property
    def every_frame(self) -> bool:
        """True when every frame of the source was kept (and so scored)."""
        return len(self.frames) == self.source_frames

    def scored_text(self) -> str:
        """``"120 of 120 frames (every frame)"`` or ``"300 of 3,600 frames (difference
        pass, 300 frames)"``: what was scored, for output lines and pictures."""
        what = "every frame" if self.every_frame else self.sampling
        return f"{len(self.frames):,} of {self.source_frames:,} frames ({what})"


@dataclass(frozen=True)
class Sampling:
    """A parsed ``frames`` value: ``kind`` is ``all``, ``count`` (``value`` frames), ``fps``
    (``value`` frames per second) or ``auto``; ``difference`` (``value`` frames) is what
    ``auto`` and ``all`` become over the cap (the difference pass)."""

    kind: str
    value: float = 0.0


def parse_sampling(text: str) -> Sampling:
    """``"all"``, ``"auto"``, ``"N"`` (N ≥ 1) or ``"fps:R"`` (R > 0) → :class:`Sampling`; anything
    else is an OptionError saying the accepted forms."""
    spec = str(text).strip().lower()
    try:
        if spec in ("all", "auto"):
            return Sampling(spec)
        if spec.startswith("fps:"):
            rate = float(spec[4:])
            if rate > 0 and np.isfinite(rate):
                return Sampling("fps", rate)
        elif int(spec) >= 1:
            return Sampling("count", int(spec))
    except ValueError:
        pass
    raise OptionError(f"--frames must be all, auto, a number of frames N ≥ 1 or fps:R with "
                      f"R > 0 frames per second; got {text!r}")


def is_clip(path: str | os.PathLike) -> bool:
    """True for a video file (by suffix) and for an image file with more than one frame; False
    for anything else, unreadable files included (the still-image intake reports those)."""
    p = Path(os.fsdecode(path))
    suffix = p.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return True
    if suffix not in ANIMATED_SUFFIXES or not is_regular(p):  # a FIFO would block the open
        return False
    try:
        with decoding_warnings(None, ignore=True):  # load_image or read_clip reads it again
            img = Image.open(p)
    except Exception:  # noqa: BLE001 - whatever Pillow raises, load_image reports the file
        return False
    with img:
        try:
            return bool(getattr(img, "is_animated", False))
        except Exception:  # noqa: BLE001 - a first frame and then a cut or corrupt file:
            return True  # read_clip reports it, instead of a still read of its first frame


def read_clip(path: str | os.PathLike, frames: str | Sampling = "auto", *,
              max_frames: int = DEFAULT_MAX_FRAMES, max_pixels: int = DEFAULT_MAX_PIXELS) -> Clip:
    """The sampled frames of the clip at ``path`` (see the module docstring).

    ``frames``: the sampling (``all``, ``N``, ``fps:R``, ``auto``). ``max_frames``: at most this
    many frames are kept (fewer when the memory budget holds fewer; ``auto`` and ``all`` then
    keep the difference pass's frames). ``max_pixels``: a larger frame is refused before
    decoding, and so is a clip of more than :data:`CLIP_WORK_FRAMES` × ``max_pixels`` pixels
    in all. Raises :class:`~explain.errors.ImageError` naming the file, the reason and the cap
    involved.
    """
    sampling = frames if isinstance(frames, Sampling) else parse_sampling(frames)
    if max_frames < 1:
        raise OptionError(f"--max-frames must be at least 1, got {max_frames}")
    p = _checked(path)
    with _open(p, max_pixels) as source:
        keep, notes, sampling = _plan(sampling, source, max_frames)
    if keep.difference:
        keep, n = _difference_pass(p, max_pixels, keep)
        if len(keep.indices or ()) < n:
            notes.append(f"{n} frames are above the cap ({keep.cap}): a difference pass kept "
                         f"the {keep.limit // 2} frames most unlike the frames before them and "
                         "spread the rest evenly")
        else:
            sampling = Sampling("all")
    kept: list[tuple[int, float, np.ndarray]] = []
    decoded = capped = 0
    next_time = 0.0
    with _open(p, max_pixels) as source:
        for index, time, rgb in source:
            decoded = index + 1
            if keep.indices is not None:
                wanted = index in keep.indices
            else:
                wanted = keep.step is None or time >= next_time - 1e-9
                if wanted and keep.step is not None:
                    next_time = (np.floor(time / keep.step + 1e-9) + 1) * keep.step
            if wanted and len(kept) >= keep.limit:
                capped += 1
            elif wanted:
                kept.append((index, time, rgb))
        end = source.end_time(decoded)
        _check_decoded(source, decoded)
    if capped:
        notes.append(f"the last {capped} sampled frames were dropped: the cap of "
                     f"{keep.limit} frames (--max-frames, or the memory budget) was reached")
    if decoded > len(kept):
        notes.insert(0, f"{len(kept)} of {decoded} frames sampled ({_describe(sampling)}); "
                     "the rest were skipped")
    times = [t for _, t, _ in kept] + [max(end, kept[-1][1])]
    out = [Frame(i, t, times[k + 1] - t, rgb) for k, (i, t, rgb) in enumerate(kept)]
    return Clip(p, out, decoded, end, _describe(sampling), notes)


def frame_at(path: str | os.PathLike, index: int, *,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> Frame:
    """The frame of source index ``index`` of the clip at ``path`` (what a page shows for a
    frame judged earlier, whatever sampling chose it), with the same checks as
    :func:`read_clip`; an index past the end is an ImageError."""
    p = _checked(path)
    found: tuple[float, np.ndarray] | None = None
    decoded = 0
    with _open(p, max_pixels) as source:
        for i, time, rgb in source:
            decoded = i + 1
            if found is not None:
                return Frame(index, found[0], time - found[0], found[1])
            if i == index:
                found = (time, rgb)
        _check_decoded(source, decoded)
        if found is not None:
            return Frame(index, found[0], source.end_time(decoded) - found[0], found[1])
    raise ImageError(p, f"has no frame {index}: it has {decoded} frames")


def _checked(path: str | os.PathLike) -> Path:
    p = Path(os.fsdecode(path))
    try:
        _check_path(p)
    except OSError as exc:
        raise ImageError(p, f"cannot be read: {exc.strerror or exc}") from None
    return p


def _open(p: Path, max_pixels: int) -> _Source:
    """The clip's decoder, its header checked: the frame count, the frame size and the
    decoding work (frames × pixels) against their caps, before any frame is decoded."""
    source = _VideoSource(p, max_pixels) if p.suffix.lower() in VIDEO_SUFFIXES else \
        _AnimatedSource(p, max_pixels)
    try:
        if source.count > MAX_SOURCE_FRAMES:
            raise ImageError(p, f"declares {source.count:,} frames, above the cap of "
                             f"{MAX_SOURCE_FRAMES:,} frames a clip may have")
        _check_work(source, source.count, max_pixels)
    except ImageError:
        source.close()
        raise
    return source


def _check_work(source: _Source, frames: int, max_pixels: int) -> None:
    """Refuse decoding ``frames`` frames of the clip's size when that is more pixels than
    :data:`CLIP_WORK_FRAMES` × ``max_pixels``."""
    h, w = source.size
    limit = CLIP_WORK_FRAMES * max_pixels
    if frames * h * w > limit:
        raise ImageError(source.path, f"{frames:,} frames of {w}x{h} are {frames * h * w:,} "
                         f"pixels to decode, above the limit of {limit:,} ({CLIP_WORK_FRAMES} "
                         "frames of --max-pixels); raise --max-pixels if you trust the file")


def _check_decoded(source: _Source, decoded: int) -> None:
    """What a finished decoding pass can still find wrong: no frame, or a cut video."""
    if decoded == 0:
        raise ImageError(source.path, "contains no decodable frame (an empty, corrupt or "
                         "unsupported video)" if isinstance(source, _VideoSource) else
                         "contains no frame")
    if isinstance(source, _VideoSource) and source.count and decoded < 0.9 * source.count:
        raise ImageError(source.path, f"truncated or corrupt video: only {decoded} of the "
                         f"{source.count} frames its header declares could be decoded")


def _difference_pass(p: Path, max_pixels: int, keep: _Keep) -> tuple[_Keep, int]:
    """The frames to keep (and the clip's frame count) when every frame is wanted but only
    ``keep.limit`` fit: the frames most unlike each of the :data:`LOOK_BACK` frames before
    them (up to half the limit, frame 0 first; the least mean absolute difference, all
    channels, of the frames shrunk to :data:`SIGNATURE_SIDE`; the earlier frame first on ties),
    and frames evenly spaced over the rest (see the module docstring)."""
    import cv2

    change: list[float] = []
    before: deque[np.ndarray] = deque(maxlen=LOOK_BACK)
    with _open(p, max_pixels) as source:
        for _, _, rgb in source:
            small = cv2.resize(rgb, (SIGNATURE_SIDE, SIGNATURE_SIDE),
                               interpolation=cv2.INTER_AREA).astype(np.float32)
            change.append(min((float(np.abs(small - b).mean()) for b in before),
                              default=np.inf))
            before.append(small)
        _check_decoded(source, len(change))
    n, limit = len(change), keep.limit
    if n <= limit:
        return replace(keep, indices=frozenset(range(n))), n
    order = np.argsort(-np.asarray(change), kind="stable")
    chosen = set(order[:max(1, limit // 2)].tolist())
    rest = np.array([k for k in range(n) if k not in chosen])
    spread = rest[np.unique(np.rint(np.linspace(0, len(rest) - 1, limit - len(chosen))
                                    ).astype(int))]
    return replace(keep, indices=frozenset(chosen | set(spread.tolist()))), n


def _describe(sampling: Sampling) -> str:
    if sampling.kind == "fps":
        return f"fps:{sampling.value:g}"
    if sampling.kind == "count":
        return f"{int(sampling.value)} frames"
    if sampling.kind == "difference":
        return f"difference pass, {int(sampling.value)} frames"
    return sampling.kind


@dataclass(frozen=True)
class _Keep:
    limit: int
    indices: frozenset[int] | None = None
    step: float | None = None
    difference: bool = False
    cap: str = ""


def _plan(sampling: Sampling, source: _Source, max_frames: int
          ) -> tuple[_Keep, list[str], Sampling]:
    """Which frames to keep: by index (``count``, or ``N``/``fps:R`` over the cap), by time
    (``fps``), all, or by the difference pass (``auto`` and ``all`` over the cap, or a video
    that does not declare its frame count); the cap is ``max_frames`` and what the memory
    budget holds. Returns the plan, the notes on capping, and the sampling in effect."""
    notes: list[str] = []
    per_frame = 3 * source.size[0] * source.size[1]
    budget_frames = max(1, memory_budget() // (2 * per_frame))
    limit = min(max_frames, budget_frames)
    cap = (f"--max-frames {max_frames}" if limit == max_frames else
           f"the memory budget, {limit} frames of {source.size[1]}x{source.size[0]}")
    n = source.count
    if sampling.kind in ("auto", "all"):
        if n and n <= limit:
            return _Keep(limit), notes, Sampling("all")
        return _Keep(limit, difference=True, cap=cap), notes, Sampling("difference", limit)
    if sampling.kind == "count":
        wanted = int(sampling.value)
    else:
        wanted = int(np.ceil(source.duration * sampling.value)) if source.duration else 0
    if wanted > limit:
        notes.append(f"{_describe(sampling)} would keep {wanted} frames, above the cap "
                     f"({cap}): {limit} frames evenly spaced are kept instead")
        wanted = limit
        sampling = Sampling("count", limit)
    if sampling.kind == "count" and n:
        picks = np.unique(np.rint(np.linspace(0, n - 1, min(wanted, n))).astype(int))
        return _Keep(limit, frozenset(picks.tolist())), notes, sampling
    step = 1.0 / sampling.value if sampling.kind == "fps" else None
    return _Keep(limit, None, step), notes, sampling


class _Source(ABC):
    """A decoder: ``count`` (frames declared, 0 when unknown), ``duration`` (seconds, 0 when
    unknown), ``size`` (H, W); iterating yields (index, time, rgb) and refuses a clip that goes
    past :data:`MAX_SOURCE_FRAMES` frames or its decoding work (a header may understate both);
    a context manager."""

    path: Path
    max_pixels: int
    count: int = 0
    duration: float = 0.0
    size: tuple[int, int] = (0, 0)

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def close(self) -> None:
        """Release the decoder."""

    def end_time(self, decoded: int) -> float:
        """The clip's end in seconds, once ``decoded`` frames were read."""
        return self.duration

    def __iter__(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """(index, time in seconds, RGB uint8 frame) of every frame, in order."""
        for index, time, rgb in self._frames():
            if index >= MAX_SOURCE_FRAMES:
                raise ImageError(self.path, f"has more than the cap of {MAX_SOURCE_FRAMES:,} "
                                 "frames a clip may have")
            if index >= self.count:
                _check_work(self, index + 1, self.max_pixels)
            yield index, time, rgb

    @abstractmethod
    def _frames(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """The decoder's frames, unchecked."""


def _refuse_size(path: Path, w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise ImageError(path, f"frames are {w}x{h} = {w * h:,} pixels, above the limit of "
                         f"{max_pixels:,}; raise max_pixels (--max-pixels) if you trust the file")


class _AnimatedSource(_Source):
    """An animated GIF/WebP/PNG through Pillow, frames composited as browsers show them.

    Pillow's plugins raise many kinds of exception on a cut or corrupt file (OSError, EOFError,
    IndexError, struct.error, …); every one of them is the file's fault here, so any exception
    from Pillow becomes one ImageError naming the file."""

    def __init__(self, path: Path, max_pixels: int) -> None:
        self.path, self.max_pixels = path, max_pixels
        try:
            with decoding_warnings(None):
                self.img = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise ImageError(path, f"refused as a decompression bomb ({exc})") from exc
        except UnidentifiedImageError as exc:
            raise ImageError(path, "not an image file (or a format Pillow cannot read)") from exc
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            raise ImageError(path, f"cannot decode: {_reason(exc)}") from exc
        w, h = self.img.size
        self.size = (h, w)
        try:
            _refuse_size(path, w, h, max_pixels)
            self.count = int(getattr(self.img, "n_frames", 1))
        except ImageError:
            self.img.close()
            raise
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            self.img.close()
            raise ImageError(path, f"truncated or corrupt animation ({_reason(exc)})") from exc
        self._end = 0.0

    def close(self) -> None:
        self.img.close()

    def end_time(self, decoded: int) -> float:
        return self._end

    def _frames(self) -> Iterator[tuple[int, float, np.ndarray]]:
        time = 0.0
        for index in range(self.count):
            try:
                self.img.seek(index)
                self.img.load()
                rgb = np.array(_to_rgb(self.img), dtype=np.uint8)
            except Exception as exc:  # noqa: BLE001 - see the class docstring
                raise ImageError(self.path, f"truncated or corrupt animation: frame {index} "
                                 f"cannot be decoded ({_reason(exc)})") from exc
            if rgb.shape[:2] != self.size:
                raise ImageError(self.path, f"frame {index} is {rgb.shape[1]}x{rgb.shape[0]}, "
                                 f"not the clip's {self.size[1]}x{self.size[0]}")
            ms = float(self.img.info.get("duration") or 0)
            yield index, time, rgb
            time += ms / 1000.0 if ms > 10 else GIF_DEFAULT_DURATION
            self._end = time


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _VideoSource(_Source):
    """A video through OpenCV's FFmpeg backend; times from the stream's timestamps."""

    def __init__(self, path: Path, max_pixels: int) -> None:
        import cv2

        self.path, self.max_pixels = path, max_pixels
        self.cv2 = cv2
        self.cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not self.cap.isOpened():
            self.cap.release()
            raise ImageError(path, "cannot be opened as a video (corrupt, truncated or not a "
                             "video FFmpeg can read)")
        w = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.size = (h, w)
        try:
            _refuse_size(path, w, h, max_pixels)
        except ImageError:
            self.cap.release()
            raise
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = self.fps if 0 < self.fps < 1000 else 25.0
        count = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.count = int(count) if count and count > 0 and np.isfinite(count) else 0
        self.duration = self.count / self.fps
        self._last = 0.0

    def close(self) -> None:
        self.cap.release()

    def end_time(self, decoded: int) -> float:
        return max(self._last + 1.0 / self.fps, 0.0) if decoded else 0.0

    def _frames(self) -> Iterator[tuple[int, float, np.ndarray]]:
        index = 0
        while True:
            ok, bgr = self.cap.read()
            if not ok or bgr is None:
                return
            stamp = self.cap.get(self.cv2.CAP_PROP_POS_MSEC) / 1000.0
            time = stamp if np.isfinite(stamp) and stamp >= self._last else index / self.fps
            if bgr.shape[:2] != self.size:
                raise ImageError(self.path, f"frame {index} is {bgr.shape[1]}x{bgr.shape[0]}, "
                                 f"not the video's {self.size[1]}x{self.size[0]}")
            self._last = time
            yield index, time, np.ascontiguousarray(bgr[:, :, ::-1])
            index += 1
