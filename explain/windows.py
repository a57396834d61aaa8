"""The window grid shared by the black-box methods (DESIGN.md, "Definitions").

Along an axis of length ``L`` with box ``b`` and stride ``s``, windows start at 0, s, 2s, … while
the box fits, plus one last window flush with the far edge when the image would otherwise not be
covered; a box larger than the image is clipped to it. The grid is the product of the two axes,
rows first. Windows are half-open pixel boxes ``(top, left, bottom, right)`` in ORIGINAL image
coordinates; every pixel is covered by at least one (a stride larger than the box, which would
leave gaps, is refused).

The module also holds what both window methods share: image intake and batch sizing.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

from explain.budget import check_memory, memory_budget
from explain.errors import OptionError
from explain.images import load_image, to_tensor

BATCH_BYTES = 256 * 2**20
INPUT_BYTES_PER_PIXEL = 3 * 4 * 2
MODEL_BYTES_PER_PIXEL = 160  # open_nsfw (ResNet-50 thin) at 256×256: ~150 B/px, torch and onnx
Progress = Callable[[int, int], None]


def as_pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """``64`` or ``(64, 32)`` → ``(h, w)``, both positive integers."""
    if isinstance(value, int | np.integer):
        pair: tuple = (value, value)
    elif isinstance(value, tuple | list):
        pair = tuple(value)
    else:
        pair = ()
    if len(pair) != 2 or not all(isinstance(v, int | np.integer) for v in pair):
        raise OptionError(f"{name} must be an integer or a pair (h, w) of integers, got {value!r}")
    if min(pair) < 1:
        raise OptionError(f"{name} must be at least 1 pixel, got {value!r}")
    return int(pair[0]), int(pair[1])


def check_windows(box: int | tuple[int, int], stride: int | tuple[int, int]
                  ) -> tuple[tuple[int, int], tuple[int, int]]:
    """Validated ``(box, stride)`` pairs; a stride larger than the box is refused."""
    (bh, bw), (sh, sw) = as_pair(box, "box"), as_pair(stride, "stride")
    if sh > bh or sw > bw:
        raise OptionError(f"stride {(sh, sw)} is larger than box {(bh, bw)}: the pixels between "
                          "windows would be covered by none; use a stride of at most the box")
    return (bh, bw), (sh, sw)


def axis_starts(length: int, box: int, stride: int) -> np.ndarray:
    """Start positions along one axis (the box already clipped to ``length``)."""
    box = min(box, length)
    starts = np.arange(0, length - box + 1, stride, dtype=np.int64)
    if starts[-1] + box < length:
        starts = np.append(starts, length - box)
    return starts


def window_grid(shape: tuple[int, int], box: int | tuple[int, int],
                stride: int | tuple[int, int]) -> np.ndarray:
    """All windows over an image of ``shape`` (H, W): int64 array (N, 4) of top, left, bottom,
    right, rows first."""
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise OptionError(f"cannot place windows on an empty image of shape {shape}")
    (bh, bw), (sh, sw) = check_windows(box, stride)
    bh, bw = min(bh, h), min(bw, w)
    tops, lefts = axis_starts(h, bh, sh), axis_starts(w, bw, sw)
    top, left = np.repeat(tops, len(lefts)), np.tile(lefts, len(tops))
    return np.stack([top, left, top + bh, left + bw], axis=1)


def window_mean(shape: tuple[int, int], windows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per pixel, the mean of ``values`` over the windows covering it (float64, 0 if none).

    Summed-area accumulation: four corner updates per window and two cumulative sums, so the cost
    does not grow with the box area.
    """
    h, w = shape
    t, le, b, r = (windows[:, i] for i in range(4))
    vals = np.asarray(values, dtype=np.float64)
    total = np.zeros((h + 1, w + 1))
    count = np.zeros((h + 1, w + 1))
    for grid, v in ((total, vals), (count, np.ones_like(vals))):
        np.add.at(grid, (t, le), v)
        np.add.at(grid, (t, r), -v)
        np.add.at(grid, (b, le), -v)
        np.add.at(grid, (b, r), v)
    total = total.cumsum(0).cumsum(1)[:h, :w]
    count = np.rint(count.cumsum(0).cumsum(1)[:h, :w])
    return np.divide(total, count, out=np.zeros((h, w)), where=count > 0)


def image_array(image: np.ndarray | str | os.PathLike) -> np.ndarray:
    """An image path or array → RGB (H, W, 3) array, uint8 or float in [0, 1]."""
    if isinstance(image, str | os.PathLike):
        return load_image(image)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise OptionError(f"an image must be an RGB array (H, W, 3), got shape {arr.shape}")
    return arr


def image_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """RGB (H, W, 3) uint8 or [0, 1] float → float32 (1, 3, H, W) in [0, 1] on ``device``."""
    if image.dtype == np.uint8:
        return to_tensor(image, device)
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)
    return t.permute(2, 0, 1).unsqueeze(0)


def batch_bytes(batch_size: int, shape: tuple[int, int],
                model_shape: tuple[int, int] | None = None) -> int:
    """Estimated memory of one batch of ``batch_size`` inputs of ``shape`` (H, W): the float32
    batch and one copy of it, plus the model's activations at ``model_shape`` (the size the
    model resizes to; ``shape`` when None)."""
    model_h, model_w = model_shape or shape
    per_item = INPUT_BYTES_PER_PIXEL * int(shape[0]) * int(shape[1]) \
        + MODEL_BYTES_PER_PIXEL * int(model_h) * int(model_w)
    return int(batch_size) * per_item


def batch_limit(device: torch.device | None, shape: tuple[int, int],
                model_shape: tuple[int, int] | None = None) -> int:
    """The largest batch of inputs of ``shape`` that fits the memory budget (at least 1)."""
    return max(1, memory_budget(device) // batch_bytes(1, shape, model_shape))


def fit_batch(batch_size: int, device: torch.device | None, shape: tuple[int, int],
              model_shape: tuple[int, int] | None = None, items: int | None = None) -> int:
    """``batch_size`` when its batches fit the memory budget (:mod:`explain.budget`), else an
    OptionError giving the estimate and the largest batch size that fits. A batch holds at most
    ``items`` inputs (all there are to score, when known); a batch of one is always allowed:
    its size is the image's, not the option's."""
    if int(batch_size) < 1:
        raise OptionError(f"batch_size must be at least 1, got {batch_size}")
    used = min(int(batch_size), items) if items is not None else int(batch_size)
    fits = batch_limit(device, shape, model_shape)
    if used > fits:
        check_memory(batch_bytes(used, shape, model_shape),
                     f"batches of {used} inputs of {shape[0]}x{shape[1]} px",
                     f"use a batch size (--batch-size) of at most {fits}", device)
    return int(batch_size)


def default_batch_size(device: torch.device, shape: tuple[int, int]) -> int:
    """Windows per model call: 16 on CPU, 64 on CUDA, fewer when one input is large, so that a
    batch's inputs stay under about 256 MB whatever the number of windows and the whole batch
    fits the memory budget."""
    base = 64 if device.type == "cuda" else 16
    per_item = INPUT_BYTES_PER_PIXEL * int(shape[0]) * int(shape[1])
    return max(1, min(base, BATCH_BYTES // per_item, batch_limit(device, shape)))


def check_batch_size(batch_size: int | None, device: torch.device, shape: tuple[int, int],
                     items: int | None = None) -> int:
    """The batch size for ``items`` inputs of ``shape``: the default when None; a given one is
    checked against the memory budget (:func:`fit_batch`) and refused, not clamped, when over
    it — the user asked for that size, and a silent clamp would hide it."""
    if batch_size is None:
        return default_batch_size(device, shape)
    return fit_batch(batch_size, device, shape, items=items)
