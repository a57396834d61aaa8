"""Occlusion sensitivity (Zeiler & Fergus): how much the target's probability drops when a window
of the image is hidden.

For target class t, each pixel gets the mean, over the windows covering it (see
:mod:`explain.windows`), of ``p_t(image) − p_t(image with the window filled)``. Positive values
mark regions that support t. The classic "1 − p_t(occluded)" picture is this map plus the constant
``1 − p_t(image)``; on ``jet`` the renderer's ``minmax`` normalisation is shift-invariant, so both
look the same (by default the signed map is drawn on a diverging scale centred on 0).

Relation to captum: with windows captum can express (stride ≤ box and ``(side − box) % stride ==
0`` on both axes, so that the grids coincide) and the image already at the classifier's input size,

    occlusion_map(...).values == Occlusion(f).attribute(x, sliding_window_shapes=(3, b, b),
        strides=(3, s, s), baselines=fill, target=t).sum(1)[0] / 3

captum also averages over covering windows and gives every channel the same value, so summing
the channels and dividing by 3 gives the same per-pixel mean.

Speed: when the classifier declares ``input_size``, the image is resized there once and the
windows (defined in original pixels) are scaled to it, so no occluded copy is ever resized. Each
batch of occluded copies is one ``torch.where`` against a mask built by comparing pixel
coordinates with the batch's window bounds, on the classifier's device, followed by one
``predict`` (:func:`explain.perturb.masked_scores`, the core RISE shares); the map is accumulated
in original coordinates. For a torch model that torch.fx traces, :mod:`explain.incremental`
scores the same windows exactly by recomputing only what each window changes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import numpy as np
import torch

from explain.choices import check_fill
from explain.heatmap import NOISE_FLOOR, Heatmap
from explain.images import as_rgb, to_tensor
from explain.incremental import network_for, window_scores
from explain.models.base import Classifier, resize, resolve_target
from explain.perturb import fill_values, masked_scores
from explain.progress import Progress
from explain.windows import (
    DEFAULT_BOX,
    DEFAULT_STRIDE,
    Size,
    check_batch_size,
    pixels,
    window_grid,
    window_mean,
)


def scale_windows(windows: np.ndarray, shape: tuple[int, int], size: tuple[int, int]
                  ) -> np.ndarray:
    """Windows in ``shape`` pixels → the same windows in ``size`` pixels (rounded, never empty)."""
    scale = np.array([size[0] / shape[0], size[1] / shape[1]] * 2)
    scaled = np.floor(windows * scale + 0.5).astype(np.int64)
    limit = np.array([size[0], size[1]])
    scaled[:, :2] = np.minimum(scaled[:, :2], limit - 1)
    scaled[:, 2:] = np.clip(scaled[:, 2:], scaled[:, :2] + 1, limit)
    return scaled


@torch.no_grad()
def occlusion_map(classifier: Classifier, image: np.ndarray | str | os.PathLike, *,
                  box: Size = DEFAULT_BOX, stride: Size = DEFAULT_STRIDE, fill: str = "gray",
                  target: str | int = "nsfw", batch_size: int | None = None,
                  progress: Progress | None = None, incremental: bool | None = None,
                  tau: float | None = None) -> Heatmap:
    """Occlusion sensitivity map of ``image`` for ``target`` (the maths: the module docstring).

    ``classifier``: any :class:`~explain.models.base.Classifier` (black box is enough). ``image``:
    an RGB array (uint8, or float in [0, 1]) or a path. ``box``/``stride``: original pixels (int) or
    fractions of the shorter side (float in (0, 1]), one or (h, w); see :mod:`explain.windows`.
    ``fill``: what a hidden window becomes, ``gray`` (0.5), ``black``, ``mean`` (the image's mean
    colour) or ``blur`` (a heavily blurred copy). ``target``: the class, by name or index.
    ``batch_size``: occluded copies per ``predict`` (default:
    :func:`~explain.windows.default_batch_size`; a given size over the memory budget is refused).
    ``progress(done, total)`` is called after each batch, counting windows.
    ``incremental``: reuse the intact image's activations (:mod:`explain.incremental`, exact):
    None = whenever the classifier is a torch module torch.fx traces, True = required (an
    OptionError says why when impossible), False = never. ``tau``: Krypton's projective-field
    threshold in (0, 1] (approximate, faster; None = exact). ``params`` records what ran.

    Returns a :class:`~explain.heatmap.Heatmap` in the original image's coordinates: per pixel
    the mean over covering windows of p(target | image) − p(target | window hidden). SIGNED,
    in units of p(target): positive = hiding the region lowers the score (it supports the
    target), negative = hiding it raises the score; noise floor
    :data:`~explain.heatmap.NOISE_FLOOR`; ``score`` is the intact image's probability.
    """
    start = time.perf_counter()
    check_fill(fill)
    net = network_for(classifier, incremental, tau)
    rgb = as_rgb(image)
    shape = rgb.shape[:2]
    t = resolve_target(classifier, target)
    windows = window_grid(shape, box, stride)
    device = classifier.device
    x = to_tensor(rgb, device)
    size = tuple(classifier.input_size) if classifier.input_size else shape
    if size != shape:
        x = resize(x, size)
    scaled = scale_windows(windows, shape, size)
    baseline = fill_values(x, fill, tuple(scaled[0, 2:] - scaled[0, :2]))
    # row 0 is an empty window: the unoccluded image, scored in the first batch
    bounds = torch.from_numpy(np.concatenate([np.zeros((1, 4), np.int64), scaled])).to(device)
    rows = torch.arange(size[0], device=device).view(1, -1, 1)
    cols = torch.arange(size[1], device=device).view(1, 1, -1)
    n = len(bounds)
    step = check_batch_size(batch_size, device, size, n)

    def kept() -> Iterator[torch.Tensor]:
        """Per batch, True outside each window: the pixels each occluded copy keeps."""
        for lo in range(0, n, step):
            b = bounds[lo:lo + step, :, None]
            in_rows = (rows >= b[:, 0:1]) & (rows < b[:, 2:3])
            yield ~(in_rows & (cols >= b[:, 1:2]) & (cols < b[:, 3:4]))

    windows_done = None if progress is None else lambda done, total: progress(done - 1, total - 1)
    if net is not None:
        p = window_scores(classifier, net, x, baseline, bounds, t, step, windows_done, tau=tau)
    else:
        p = torch.cat([s for _, s in masked_scores(classifier, x, baseline, kept(), t, n,
                                                   windows_done)])
    p = p.double().cpu().numpy()
    values = window_mean(shape, windows, p[0] - p[1:])
    name = classifier.class_names[t]
    return Heatmap(values=values, method="occlusion", target=name,
                   score=float(p[0]), box=tuple(int(v) for v in windows[0, 2:] - windows[0, :2]),
                   stride=pixels(stride, "stride", shape), windows=len(windows),
                   seconds=time.perf_counter() - start,
                   params={"fill": fill, "batch_size": step, "work_size": list(size),
                           "box_asked": box, "stride_asked": stride,
                           "incremental": net is not None, "tau": tau},
                   signed=True, unit=f"drop in p({name})", noise_floor=NOISE_FLOOR)
