"""The window grid shared by the black-box methods (the README, "Black-box heatmaps").

Along an axis of length ``L`` with box ``b`` and stride ``s``, windows start at 0, s, 2s, … while
the box fits, plus one last window flush with the far edge when the image would otherwise not be
covered; a box larger than the image is clipped to it. The grid is the product of the two axes,
rows first. Windows are half-open pixel boxes ``(top, left, bottom, right)`` in ORIGINAL image
coordinates; every pixel is covered by at least one (a stride larger than the box, which would
leave gaps, is refused).

Sizes: a box or stride is an int (pixels) or a float in (0, 1], a fraction of the image's SHORTER
side (rounded half up, at least 1 px), given once for a square or as (h, w); the CLI writes a
fraction as ``25%``. The defaults, :data:`DEFAULT_BOX` = 25 % and :data:`DEFAULT_STRIDE` =
18.75 %, are the classic 64-px box and 48-px stride of a 256-px image (open_nsfw's input side) and
scale with the image, so a 4000-px phone photo gets the same 25 windows as its 256-px thumbnail
instead of thousands of windows that each hide a few pixels of what the model sees.
:func:`small_box_note` warns when a box is under :data:`MIN_BOX_AT_INPUT` px at the model's input.

:class:`WindowPlan` is the one place a box and a stride are validated and turned into windows;
the black-box engine (:mod:`explain.perturbation`) takes its windows from it. The module also
holds what the window methods share: batch sizing. Image intake lives in :mod:`explain.images`.
"""

from __future__ import annotations

import numpy as np
import torch

from explain.budget import check_memory, memory_budget
from explain.errors import OptionError
from explain.progress import Progress as Progress  # its old home; the type lives in progress

BATCH_BYTES = 256 * 2**20
INPUT_BYTES_PER_PIXEL = 3 * 4 * 2
MODEL_BYTES_PER_PIXEL = 160  # open_nsfw (ResNet-50 thin) at 256×256: ~150 B/px, torch and onnx
Size = int | float | tuple[int | float, int | float]

DEFAULT_BOX = 0.25
DEFAULT_STRIDE = 0.1875
MIN_BOX_AT_INPUT = 16


def as_pair(value: Size, name: str) -> tuple[int | float, int | float]:
    """``64``, ``0.25`` or ``(64, 0.5)`` → ``(h, w)``, each a pixel count (int ≥ 1) or a fraction
    of the image's shorter side (float in (0, 1])."""
    pair: tuple = tuple(value) if isinstance(value, tuple | list) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, int | float | np.integer | np.floating)
                                 and not isinstance(v, bool) for v in pair):
        raise OptionError(f"{name} must be a number or a pair (h, w), got {value!r}")
    out = []
    for v in pair:
        if isinstance(v, int | np.integer):
            if v < 1:
                raise OptionError(f"{name} must be at least 1 pixel, got {value!r}")
            out.append(int(v))
        elif not 0.0 < v <= 1.0:
            raise OptionError(f"{name} {value!r}: a fraction of the image's shorter side must be "
                              "in (0, 1] (e.g. 0.25 or '25%'); give pixels as a whole number")
        else:
            out.append(float(v))
    return out[0], out[1]


def _spec(pair: tuple[int | float, int | float]) -> str:
    text = [f"{v:.4g}" if isinstance(v, int) else f"{100 * v:.4g}%" for v in pair]
    return text[0] if text[0] == text[1] else f"({text[0]}, {text[1]})"


def pixels(value: Size, name: str, shape: tuple[int, int]) -> tuple[int, int]:
    """``value`` (see :func:`as_pair`) in pixels of an image of ``shape``: a fraction f becomes
    ``max(1, round(f × min(H, W)))``, rounding halves up."""
    return in_pixels(as_pair(value, name), shape)


def in_pixels(pair: tuple[int | float, int | float], shape: tuple[int, int]) -> tuple[int, int]:
    """A validated pair (:func:`as_pair`) in pixels of an image of ``shape``."""
    short = min(int(shape[0]), int(shape[1]))
    h, w = (v if isinstance(v, int) else max(1, int(v * short + 0.5)) for v in pair)
    return h, w


def parse_size(text: str, option: str) -> int | float | tuple[int | float, int | float]:
    """CLI form of a box or stride: ``"64"`` → 64, ``"25%"`` → 0.25, ``"64,25%"`` → (64, 0.25)."""
    values: list[int | float] = []
    for part in text.split(","):
        part = part.strip()
        try:
            values.append(float(part[:-1]) / 100.0 if part.endswith("%") else int(part))
        except ValueError:
            values = []
            break
    if len(values) not in (1, 2):
        raise OptionError(f"{option} must be N (pixels), P% (of the image's shorter side) or "
                          f"H,W of those, got {text!r}")
    size = values[0] if len(values) == 1 else (values[0], values[1])
    as_pair(size, option)
    return size


def small_box_note(box: tuple[int, int], shape: tuple[int, int],
                   input_size: tuple[int, int] | None) -> str | None:
    """A warning when a ``box`` (pixels of an image of ``shape``) spans fewer than
    :data:`MIN_BOX_AT_INPUT` pixels once the image is resized to the model's ``input_size``: hiding
    or cropping so little of what the model sees gives a map dominated by noise."""
    if not input_size:
        return None
    at_input = (box[0] * input_size[0] / shape[0], box[1] * input_size[1] / shape[1])
    if min(at_input) >= MIN_BOX_AT_INPUT:
        return None
    return (f"box {box[0]}×{box[1]} px is {min(at_input):.3g} px at the model's "
            f"{input_size[0]}×{input_size[1]} input (under {MIN_BOX_AT_INPUT}): the map is likely "
            "noise; use a larger box, e.g. the default 25%")


def axis_starts(length: int, box: int, stride: int) -> np.ndarray:
    """Start positions along one axis (the box already clipped to ``length``)."""
    box = min(box, length)
    starts = np.arange(0, length - box + 1, stride, dtype=np.int64)
    if starts[-1] + box < length:
        starts = np.append(starts, length - box)
    return starts


class WindowPlan:
    """The window plan of a black-box method: ``box`` and ``stride`` as asked (see
    :func:`as_pair`), validated here and nowhere else, and from them the windows of any image
    (:meth:`grid`) and their sides in its pixels (:meth:`pixels`), with no second check. A
    stride larger than the box is refused here when both are in the same unit, else by
    :meth:`grid` once the image's size is known."""

    def __init__(self, box: Size = DEFAULT_BOX, stride: Size = DEFAULT_STRIDE) -> None:
        self.box, self.stride = box, stride
        (bh, bw), (sh, sw) = as_pair(box, "box"), as_pair(stride, "stride")
        if any(type(b) is type(s) and s > b for b, s in ((bh, sh), (bw, sw))):
            raise OptionError(f"stride {_spec((sh, sw))} is larger than box {_spec((bh, bw))}: "
                              "the pixels between windows would be covered by none; use a "
                              "stride of at most the box")
        self.box_pair, self.stride_pair = (bh, bw), (sh, sw)

    def __repr__(self) -> str:
        return f"WindowPlan(box={self.box!r}, stride={self.stride!r})"

    def pixels(self, shape: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """(box, stride) in pixels of an image of ``shape`` (:func:`pixels`' rounding), the box
        not yet clipped to the image."""
        return in_pixels(self.box_pair, shape), in_pixels(self.stride_pair, shape)

    def grid(self, shape: tuple[int, int]) -> np.ndarray:
        """All windows over an image of ``shape`` (H, W): int64 array (N, 4) of top, left,
        bottom, right, rows first."""
        h, w = int(shape[0]), int(shape[1])
        if h < 1 or w < 1:
            raise OptionError(f"cannot place windows on an empty image of shape {shape}")
        (bh, bw), (sh, sw) = self.pixels((h, w))
        if sh > bh or sw > bw:
            raise OptionError(f"stride {(sh, sw)} is larger than box {(bh, bw)} on this {h}×{w} "
                              "image: the pixels between windows would be covered by none")
        bh, bw = min(bh, h), min(bw, w)
        tops, lefts = axis_starts(h, bh, sh), axis_starts(w, bw, sw)
        top, left = np.repeat(tops, len(lefts)), np.tile(lefts, len(tops))
        return np.stack([top, left, top + bh, left + bw], axis=1)


def window_plan(box: Size, stride: Size, windows: WindowPlan | None) -> WindowPlan:
    """``windows`` (a job's plan, made once and passed down to each of its images), else the
    plan of ``box`` and ``stride``. With a plan, ``box`` and ``stride`` are left at their
    defaults or are the plan's own: two different windows for one map are refused, never one
    chosen in silence."""
    if windows is None:
        return WindowPlan(box, stride)
    for name, given, planned, default in (("box", box, windows.box, DEFAULT_BOX),
                                          ("stride", stride, windows.stride, DEFAULT_STRIDE)):
        if given != default and given != planned:
            raise OptionError(f"{name} {given!r} differs from the window plan's {planned!r}: "
                              f"give the {name} or the plan, not both")
    return windows


def check_windows(box: Size, stride: Size) -> tuple[tuple[int | float, int | float],
                                                     tuple[int | float, int | float]]:
    """Validated ``(box, stride)`` pairs: those of :class:`WindowPlan` (where the checks live),
    for callers that keep the values and not the plan."""
    plan = WindowPlan(box, stride)
    return plan.box_pair, plan.stride_pair


def window_grid(shape: tuple[int, int], box: Size, stride: Size) -> np.ndarray:
    """All windows over an image of ``shape`` (H, W) (:meth:`WindowPlan.grid`)."""
    return WindowPlan(box, stride).grid(shape)


def window_mean(shape: tuple[int, int], windows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per pixel, the mean of ``values`` over the windows covering it (float64, 0 if none).

    ``windows``: (N, 4) integer ``[top, left, bottom, right)`` inside the image (else a
    ValueError). Summed-area accumulation: four corner updates per window and two cumulative
    sums, so the cost does not grow with the box area. The sums run over the distinct window
    edges only (a 4×4 grid of windows has 5×5 of them, not the image's 257×257 corners): every
    other row and column of the corner grid is zero, and adding zero changes no partial sum, so
    each pixel gets exactly the value of the sum over the whole grid, at a fraction of its cost.
    """
    h, w = (int(v) for v in shape)
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[1] < 4 or windows.dtype.kind not in "iu":
        raise ValueError(f"windows must be an (N, 4) integer array, got {windows.dtype} of "
                         f"shape {windows.shape}")
    t, le, b, r = (windows[:, i].astype(np.int64) for i in range(4))
    if len(windows) and (min(t.min(), le.min()) < 0 or max(t.max(), b.max()) > h
                         or max(le.max(), r.max()) > w):
        raise ValueError(f"windows must lie inside the {h}x{w} image")
    vals = np.asarray(values, dtype=np.float64)
    # the distinct edges: edges[y] counts those at or before y (a compressed index + 1)
    edges = []
    for side, starts, ends in ((h, t, b), (w, le, r)):
        marked = np.zeros(side + 1, bool)
        marked[starts] = marked[ends] = True
        edges.append(np.cumsum(marked))
    rows, cols = edges
    t, b, le, r = rows[t] - 1, rows[b] - 1, cols[le] - 1, cols[r] - 1
    total = np.zeros((rows[-1], cols[-1]))
    count = np.zeros((rows[-1], cols[-1]))
    for grid, v in ((total, vals), (count, np.ones_like(vals))):
        np.add.at(grid, (t, le), v)
        np.add.at(grid, (t, r), -v)
        np.add.at(grid, (b, le), -v)
        np.add.at(grid, (b, r), v)
    total = total.cumsum(0).cumsum(1)
    count = np.rint(count.cumsum(0).cumsum(1))
    mean = np.zeros((rows[-1] + 1, cols[-1] + 1))  # row and column 0: before any edge
    np.divide(total, count, out=mean[1:, 1:], where=count > 0)
    # pixel (y, x) takes the sums at the last edges at or before it: the columns gathered,
    # then each row repeated down to the next edge (rows[y] never decreases)
    return np.repeat(mean[:, cols[:w]], np.bincount(rows[:h], minlength=len(mean)), axis=0)


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
