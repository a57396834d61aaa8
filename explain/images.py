"""The one image intake: every method, the audit and the grid see an image the same way.

The canonical image is an RGB uint8 array (H, W, 3); the model sees it as a float32 batch
N×3×H×W in [0, 1] made by :func:`to_batch` / :func:`to_tensor` (value / 255), nowhere else.

- ``load_image`` reads a file: it applies the EXIF orientation, converts every mode (grayscale,
  palette, RGBA/LA composited on white, CMYK, 16-bit, float) to RGB uint8, takes the first frame
  of animations, and refuses decompression bombs, images above ``max_pixels`` and float files
  with NaN or infinite values (as a float array's are).
- ``as_rgb`` takes anything a user may hand a method and gives the canonical array: a path (str,
  bytes or ``os.PathLike``), a uint8 array, a float array in [0, 1] (rounded to the nearest
  1/255), an integer array of 0..255, or a nested list of either; grayscale (H, W) or (H, W, 1)
  is repeated to three channels and RGBA (H, W, 4) is composited on white exactly as an RGBA
  file is. A float array outside [0, 1] (for example 0..255), an integer array outside 0..255,
  NaN or infinite values, an empty array and any other shape are refused.

Every failure is an :class:`~explain.errors.ImageError` naming the path (or ``image`` for an
array) and the reason, so batch jobs can record it and go on.

Warnings raised while decoding (PIL's on odd EXIF or truncated data) can be attached to the image
that caused them instead of reaching the terminal: see :func:`collect_warnings`.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from explain.choices import DEFAULT_MAX_PIXELS
from explain.errors import ImageError, ImageTooLargeError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(np.rint(arr / hi * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max() > 1.0 else 1.0
        arr8 = np.clip(np.rint(arr / scale * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _check_path(p: Path) -> None:
    """What can be wrong with the path itself, before decoding: an ImageError naming it."""
    problem = _link_problem(p)
    if problem == "loop":
        raise ImageError(p, "is a symbolic link loop (it leads back to itself or to a folder "
                         "above it); remove or fix the link")
    if problem == "broken":
        raise ImageError(p, f"is a broken symbolic link (to {os.readlink(p)!r}, which does not "
                         "exist)")
    if not p.exists():
        raise ImageError(p, "file not found")
    if p.is_dir():
        if not os.access(p, os.R_OK | os.X_OK):
            raise ImageError(p, "folder cannot be read (permission denied): its images were "
                             "not listed")
        raise ImageError(p, "is a directory, not an image file")
    if not is_regular(p):
        raise ImageError(p, "is not a regular file (a FIFO, socket or device: reading it could "
                         "block forever); give the file itself")
    if p.stat().st_size == 0:
        raise ImageError(p, "file is empty (0 bytes)")


def is_regular(p: Path) -> bool:
    """True for a regular file (links followed), decided from its metadata without opening it:
    opening a FIFO blocks until a writer comes. False for a path the system cannot stat (one
    with a NUL byte, from a manifest, too)."""
    try:
        return stat.S_ISREG(p.stat().st_mode)
    except (OSError, ValueError):
        return False


def load_image(path: str | bytes | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               notes: list[str] | None = None) -> np.ndarray:
    """Read ``path`` (str, bytes or PathLike: any byte name) as an RGB uint8 array (H, W, 3),
    EXIF-rotated, every mode converted (see the module docstring).

    ``max_pixels``: a larger image is refused before it is decoded. ``notes``: with a list, and
    inside :func:`collect_warnings`, the warnings the decoding raises are appended to it instead
    of being shown (see :func:`warnings_into`). Raises :class:`~explain.errors.ImageError`
    naming the path and the reason (missing, empty, a folder, a link loop, truncated, not an
    image, too large).
    """
    p = _checked_path(path)
    with decoding_warnings(notes):
        with _opened(p, max_pixels) as img:
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode == "F":  # a float file (TIFF) under the float array's rule
                _check_finite(np.asarray(img), p)
            rgb = _to_rgb(img)
            return np.array(rgb, dtype=np.uint8)


def probe_image(path: str | bytes | os.PathLike, *,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """The checks :func:`load_image` makes before decoding, without decoding: ``(width,
    height)`` of the image at ``path`` as its header gives them (before EXIF rotation).

    For a caller that must refuse a file at once and decode it later (the service: a non-image
    or an over-large one is refused when it is uploaded; a truncated one fails its job). Raises
    :class:`~explain.errors.ImageError` as :func:`load_image` does (an
    :class:`~explain.errors.ImageTooLargeError` above ``max_pixels`` or for a bomb); data that
    is truncated after the header passes.
    """
    p = _checked_path(path)
    with decoding_warnings(None):
        with _opened(p, max_pixels) as img:
            return img.size


def _checked_path(path: str | bytes | os.PathLike) -> Path:
    p = Path(os.fsdecode(path))
    try:
        _check_path(p)
    except OSError as exc:  # the system refuses the name itself (too long, …)
        raise ImageError(p, f"cannot be read: {exc.strerror or exc}") from None
    return p


@contextmanager
def _opened(p: Path, max_pixels: int) -> Iterator[Image.Image]:
    """``p`` opened by Pillow, refused above ``max_pixels`` before decoding; any error raised
    while it is open (decoding included) becomes an ImageError with the reason."""
    try:
        with Image.open(p) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageTooLargeError(
                    p, f"image is {w}x{h} = {w * h:,} pixels, above the limit of "
                    f"{max_pixels:,}; raise max_pixels (--max-pixels) if you trust the file"
                )
            yield img
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(p, f"refused as a decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(p, "not an image file (or a format Pillow cannot read)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower() or isinstance(exc, EOFError):
            reason = f"truncated or corrupt image data ({reason})"
        raise ImageError(p, f"cannot decode: {reason}") from exc


_sink = threading.local()


@contextmanager
def warnings_into(notes: list[str]) -> Iterator[list[str]]:
    """Inside :func:`collect_warnings`, the warnings this thread raises go into ``notes``."""
    previous = getattr(_sink, "notes", None)
    _sink.notes = notes
    try:
        yield notes
    finally:
        _sink.notes = previous


_collecting = 0  # how many collect_warnings are open (process-wide, like the state they guard)


@contextmanager
def decoding_warnings(notes: list[str] | None, *, ignore: bool = False) -> Iterator[None]:
    """Around a decoder, on any thread: what happens to the warnings it raises.

    Inside :func:`collect_warnings` (several decoding threads), only the thread-local sink is
    set (:func:`warnings_into`), into ``notes`` or, when None, a list thrown away: the
    process-wide warning state is never touched there, since ``catch_warnings`` from one thread
    would change (and on exit restore) the filters and the routing of every other thread. Outside
    it (one thread), ``notes`` given: the sink is set and the warnings are shown as usual;
    ``notes`` None: PIL's decompression-bomb warning is silenced (``max_pixels`` decides) or,
    with ``ignore``, every warning (a probe whose file is read again later)."""
    if _collecting or notes is not None:
        with warnings_into([] if notes is None else notes):
            yield
        return
    with warnings.catch_warnings():
        if ignore:
            warnings.simplefilter("ignore")
        else:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


@contextmanager
def collect_warnings() -> Iterator[None]:
    """While open, a warning raised by ``load_image(..., notes=list)`` on ANY thread goes into
    that call's ``notes`` instead of the terminal; other warnings are shown as before.

    Enter it once, on the thread that runs the pool of decoding threads: Python's warning state
    is process-wide and ``catch_warnings`` is not thread-safe, so the decoding threads never
    touch it themselves. PIL's warnings are recorded for every image (not once per process);
    PIL's own decompression-bomb warning is dropped, since ``max_pixels`` decides.
    """
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def route(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
            notes = getattr(_sink, "notes", None)
            if notes is None:
                shown(message, category, filename, lineno, file, line)  # type: ignore[arg-type]
            else:
                notes.append(f"{category.__name__}: {message}")

        warnings.filterwarnings("always", module=r"(PIL|explain\.images)\b")
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        warnings.showwarning = route
        global _collecting
        _collecting += 1
        try:
            yield
        finally:
            _collecting -= 1


def iter_image_files(paths: Iterable[str | bytes | os.PathLike], *,
                     skip: Callable[[Path], bool] | None = None,
                     suffixes: Collection[str] = IMAGE_SUFFIXES) -> Iterator[Path]:
    """Yield image files: files as given, folders searched recursively by suffix (``suffixes``,
    lower case with the dot: :data:`IMAGE_SUFFIXES` by default), sorted.

    Never raises and never loops: a sub-folder that cannot be read, and a symbolic link to a
    folder that leads back into the walk (a loop), are yielded themselves, so that reading them
    with :func:`load_image` reports the reason as for any bad file. Other links to folders are
    followed once. ``skip(folder)`` true leaves a folder out (an audit's own outputs).
    """
    for item in paths:
        p = Path(os.fsdecode(item))
        try:
            is_dir = p.is_dir()
        except OSError:  # a name the system refuses (too long): load_image reports it
            is_dir = False
        if is_dir:
            yield from _walk(p, skip, suffixes)
        else:
            yield p


def _walk(root: Path, skip: Callable[[Path], bool] | None, suffixes: Collection[str]
          ) -> Iterator[Path]:
    visited = {os.path.realpath(root)}
    found: list[Path] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            found.append(folder)
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if not is_dir:
                if path.suffix.lower() in suffixes or (
                        entry.is_symlink() and _link_problem(path) == "loop"):
                    found.append(path)
                continue
            if skip is not None and skip(path):
                continue
            real = os.path.realpath(path)
            if real in visited:
                if entry.is_symlink() and _link_problem(path) == "loop":
                    found.append(path)
                continue
            visited.add(real)
            stack.append(path)
    yield from sorted(found)


def _link_problem(path: Path) -> str | None:
    """"loop" for a symbolic link that leads back to itself or to a folder above it, "broken"
    for a link to nothing, else None."""
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
    except OSError as exc:
        return "loop" if exc.errno == errno.ELOOP else "broken"
    real = os.path.realpath(path)
    parent = os.path.realpath(path.parent)
    if os.path.isdir(real) and (parent == real or parent.startswith(real.rstrip(os.sep) + os.sep)):
        return "loop"
    return None


ImageInput = np.ndarray | str | bytes | os.PathLike | Sequence


def as_rgb(image: ImageInput, *, name: str = "image") -> np.ndarray:
    """Any accepted image (see the module docstring) → RGB uint8 array (H, W, 3).

    ``name`` is how an array is called in errors (a path names itself).
    """
    if isinstance(image, str | bytes | os.PathLike):
        return load_image(image)
    try:
        arr = np.asarray(image)
    except (TypeError, ValueError) as exc:
        raise ImageError(name, f"is not a rectangular array of numbers ({exc})") from None
    if arr.size == 0:
        raise ImageError(name, f"is empty (shape {arr.shape}); an image needs at least 1x1 pixel")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(name, f"must be an RGB array (H, W, 3), grayscale (H, W) or RGBA "
                         f"(H, W, 4) with channels last; got shape {arr.shape}")
    arr = _as_uint8(arr, name)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.shape[2] == 4:
        return np.array(_to_rgb(Image.fromarray(np.ascontiguousarray(arr), "RGBA")),
                        dtype=np.uint8)
    return arr


def _check_finite(arr: np.ndarray, name: str | os.PathLike) -> None:
    """Refuse float pixels that are NaN or infinite (an array's or a float file's): no colour
    means them, and a silent 0 would be scored as black."""
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(arr.size - np.count_nonzero(finite))
        raise ImageError(name, f"contains NaN or infinite values ({bad} of {arr.size} pixel "
                         "values); replace them (e.g. numpy.nan_to_num) or mask them first")


def _as_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    """Values of any numeric dtype → uint8 under the rules of :func:`as_rgb`."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise ImageError(name, f"has values of type {arr.dtype}; give uint8 (0..255), integers "
                         "(0..255) or floats in [0, 1]")
    if arr.dtype.kind == "f":
        _check_finite(arr, name)
        low, high = float(arr.min()), float(arr.max())
        if low < 0.0 or high > 1.0:
            raise ImageError(name, f"is a float array with values {low:g} .. {high:g}, outside "
                             "[0, 1]; a float image must be in [0, 1]: for a 0..255 image pass "
                             "image / 255 (or image.astype(np.uint8))")
        return np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or high > 255:
        raise ImageError(name, f"is an integer array with values {low} .. {high}, outside 0..255; "
                         "integer images are taken as 0..255 (scale 16-bit data to 0..255 "
                         "first, e.g. image >> 8)")
    return arr.astype(np.uint8)


def to_batch(images: Sequence[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """RGB uint8 images (H, W, 3) of one size → the model's float32 batch (N, 3, H, W) in
    [0, 1] on ``device``: value / 255, the only place this conversion is written."""
    stacked = np.stack([as_rgb(img) for img in images])
    t = torch.from_numpy(np.ascontiguousarray(stacked)).to(device)
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def to_tensor(image: ImageInput, device: torch.device | str = "cpu") -> torch.Tensor:
    """Any accepted image (see :func:`as_rgb`) → float32 tensor (1, 3, H, W) in [0, 1] on
    ``device``."""
    return to_batch([as_rgb(image)], device)
