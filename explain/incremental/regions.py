"""Where each window changes each activation map: rectangles propagated through the network.

A rectangle is ``[y0, x0, y1, x1)`` in a map's pixels, one row per window (numpy int64, N×4);
an empty one (nothing changed) is ``(0, 0, 0, 0)``. Through a :class:`~.graph.Window` step of
kernel k, stride s and padding p, the input rows ``[a, b)`` change the output rows
``[⌈(a + p − k + 1)/s⌉, ⌊(b − 1 + p)/s⌋ + 1)``, clipped to the map; a :class:`~.graph.Shift`
moves them; an :class:`~.graph.Aligned` step takes the bounding box of its inputs' rectangles.
These bounds contain every activation that can change (a test checks it by brute force).

Each step's batch is computed on one patch shape: the largest rectangle of the batch, placed
over each window's rectangle and pushed inside the map. When that patch covers more than
``most`` of the map (or a step is :class:`~.graph.Full`), the step and everything it feeds run
on whole maps. ``tau`` (Krypton's projective-field threshold, approximate) caps every
rectangle a Window step produces at ``⌈τ · side⌉`` per side, centred: changes beyond it are
dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from explain.incremental.graph import Aligned, Full, Network, Rule, Shift, Window

EMPTY = np.zeros(4, np.int64)


@dataclass
class Region:
    """One step's batch layout: each window's changed ``rect`` (N×4), the ``origin`` (N×2) of
    its patch, the patch ``size`` (h, w) shared by the batch, and the map's ``shape``."""

    rect: np.ndarray
    origin: np.ndarray
    size: tuple[int, int]
    shape: tuple[int, int]


def normalise(rect: np.ndarray) -> np.ndarray:
    """``rect`` with every empty row set to (0, 0, 0, 0)."""
    empty = (rect[:, 2] <= rect[:, 0]) | (rect[:, 3] <= rect[:, 1])
    rect = rect.copy()
    rect[empty] = EMPTY
    return rect


def through_window(rect: np.ndarray, rule: Window, shape: tuple[int, int]) -> np.ndarray:
    """The output rectangles of a convolution/pooling for input rectangles ``rect``; ``shape``
    is the OUTPUT map's (rows, cols)."""
    out = np.empty_like(rect)
    for axis in (0, 1):
        k, s, p = rule.kernel[axis], rule.stride[axis], rule.padding[axis]
        a, b = rect[:, axis], rect[:, axis + 2]
        out[:, axis] = np.maximum((a + p - k + s) // s, 0)
        out[:, axis + 2] = np.minimum((b - 1 + p) // s + 1, shape[axis])
    out[rect[:, 2] <= rect[:, 0]] = EMPTY
    return normalise(out)


def union(rects: list[np.ndarray]) -> np.ndarray:
    """Per window, the bounding box of ``rects`` (empty rows left out)."""
    big = np.iinfo(np.int64).max
    lo = np.full((len(rects[0]), 2), big, np.int64)
    hi = np.full((len(rects[0]), 2), -big, np.int64)
    for r in rects:
        full = (r[:, 2] > r[:, 0])[:, None]
        lo = np.where(full, np.minimum(lo, r[:, :2]), lo)
        hi = np.where(full, np.maximum(hi, r[:, 2:]), hi)
    return normalise(np.concatenate([lo, hi], axis=1))


def cap(rect: np.ndarray, tau: float, shape: tuple[int, int]) -> np.ndarray:
    """``rect`` with each side at most ``⌈tau · side of the map⌉``, centred (approximate)."""
    out = rect.copy()
    for axis in (0, 1):
        limit = max(1, math.ceil(tau * shape[axis]))
        over = out[:, axis + 2] - out[:, axis] - limit
        start = out[:, axis] + np.maximum(over, 0) // 2
        out[:, axis] = np.where(over > 0, start, out[:, axis])
        out[:, axis + 2] = np.where(over > 0, start + limit, out[:, axis + 2])
    return out


def place(rect: np.ndarray, shape: tuple[int, int], most: float) -> Region | None:
    """One patch size for the batch (the largest rectangle), each patch pushed inside the map;
    None when the patch would cover more than ``most`` of the map."""
    h = max(1, int((rect[:, 2] - rect[:, 0]).max()))
    w = max(1, int((rect[:, 3] - rect[:, 1]).max()))
    if h * w > most * shape[0] * shape[1]:
        return None
    origin = np.stack([np.clip(rect[:, 0], 0, shape[0] - h),
                       np.clip(rect[:, 1], 0, shape[1] - w)], axis=1)
    return Region(rect, origin, (h, w), shape)


def layout(net: Network, rules: dict[str, Rule], shapes: dict[str, tuple[int, int]],
           windows: np.ndarray, *, most: float, tau: float | None = None
           ) -> dict[str, Region | None]:
    """Every variable step's :class:`Region` for a batch of ``windows`` (N×4 rectangles on the
    network's input), or None where it runs on whole maps. ``rules``: each step's rule after the
    checks on its actual shapes; ``shapes``: each 4-D map's (rows, cols)."""
    regions: dict[str, Region | None] = {
        net.input: place(normalise(windows), shapes[net.input], most)}
    for step in net.steps:
        if step.constant:
            continue
        rule = rules[step.name]
        ins = [regions[i] for i in step.inputs if i in regions]
        if isinstance(rule, Full) or any(r is None for r in ins):
            regions[step.name] = None
            continue
        shape = shapes[step.name]
        if isinstance(rule, Shift):
            r = ins[0]
            move = np.array([rule.top, rule.left])
            rect = normalise(r.rect + np.concatenate([move, move]))
            regions[step.name] = Region(rect, r.origin + move, r.size, shape)
        elif isinstance(rule, Window):
            rect = through_window(ins[0].rect, rule, shape)
            if tau is not None:
                rect = cap(rect, tau, shape)
            regions[step.name] = place(rect, shape, most)
        elif isinstance(rule, Aligned):
            first = ins[0]
            same = all(r.size == first.size and np.array_equal(r.origin, first.origin)
                       for r in ins[1:])
            rect = union([r.rect for r in ins])
            regions[step.name] = Region(rect, first.origin, first.size, shape) if same \
                else place(rect, shape, most)
    return regions
