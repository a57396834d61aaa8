"""Read image files into RGB uint8 arrays, robustly.

``load_image`` is the single entry point: it applies the EXIF orientation, converts every mode
(grayscale, palette, RGBA/LA composited on white, CMYK, 16-bit) to RGB uint8, takes the first
frame of animations, and refuses decompression bombs and images above ``max_pixels``. Every
failure is an :class:`~explain.errors.ImageError` naming the path and the reason, so batch jobs
can record it and go on.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from explain.errors import ImageError

DEFAULT_MAX_PIXELS = 100_000_000
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


def load_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read ``path`` as an RGB uint8 array of shape (H, W, 3)."""
    p = Path(path)
    if not p.exists():
        raise ImageError(p, "file not found")
    if p.is_dir():
        raise ImageError(p, "is a directory, not an image file")
    if p.stat().st_size == 0:
        raise ImageError(p, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageError(
                        p, f"image is {w}x{h} = {w * h:,} pixels, above the limit of "
                        f"{max_pixels:,}; raise max_pixels (--max-pixels) if you trust the file"
                    )
                img.seek(0)
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb(img)
                return np.array(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(p, f"refused as a decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(p, "not an image file (or a format Pillow cannot read)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower() or isinstance(exc, EOFError):
            reason = f"truncated or corrupt image data ({reason})"
        raise ImageError(p, f"cannot decode: {reason}") from exc


def iter_image_files(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Yield image files: files as given, folders searched recursively by suffix, sorted."""
    for item in paths:
        p = Path(item)
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield p


def to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """RGB uint8 (H, W, 3) → float32 tensor (1, 3, H, W) in [0, 1] on ``device``."""
    t = torch.from_numpy(np.ascontiguousarray(image)).to(device)
    return t.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
