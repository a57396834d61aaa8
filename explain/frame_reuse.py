"""Occlusion maps of a sequence of frames that reuse the previous frame's work.

Frame after frame (in time order), with the window grid, fill and model of
:func:`explain.occlusion.occlusion_map`:

- **identical**: a frame that differs from the previous one nowhere by more than ``threshold``
  levels (0..255) takes its map. With threshold 0 the pixels are the same, so the map is exactly
  the one a recomputation gives, for any model.
- **region**: otherwise, with fill ``gray`` or ``black``, only the intact frame and the windows
  that meet the changed pixels' bounding box (in original pixels) are scored again; every other
  window keeps its previous *drop* p(frame) − p(frame, window hidden). The re-scored windows are
  exact. A kept drop equals the recomputed one when hiding a window changes the score
  independently of the pixels outside it (models additive over regions, such as the tests'); for
  a deep network, whose every output sees the whole frame, it is an approximation:
  ``scripts/bench_video.py`` measures how far it moves the map.
- **none**: with fill ``mean`` or ``blur`` the fill is computed from the whole frame, so a change
  anywhere changes every window's occluded copy: changed frames are recomputed in full.

``Heatmap.params["reuse"]`` says which path each map took and ``params["rescored"]`` how many
windows were scored for it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from explain.choices import DEFAULT_REUSE_THRESHOLD, check_fill
from explain.clips import changed
from explain.heatmap import NOISE_FLOOR, Heatmap
from explain.images import to_tensor
from explain.models.base import Classifier, resize, resolve_target
from explain.occlusion import scale_windows
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

REGION_FILLS = ("gray", "black")


def meeting(windows: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Which ``windows`` (rows of top, left, bottom, right; bottom/right exclusive) meet the
    bounding box of the True pixels of ``mask`` (H, W): a boolean per window."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return ((windows[:, 0] < bottom) & (windows[:, 2] > top)
            & (windows[:, 1] < right) & (windows[:, 3] > left))


def window_scores(classifier: Classifier, x: torch.Tensor, fill: torch.Tensor,
                  bounds: torch.Tensor, target: int, step: int) -> np.ndarray:
    """p(``target``) of ``x`` with each window of ``bounds`` (n × 4 on x's device, in x's pixels;
    an empty window scores the intact image) filled with ``fill``, in batches of ``step``,
    through the perturbation core (:func:`explain.perturb.masked_scores`)."""
    rows = torch.arange(x.shape[2], device=x.device).view(1, -1, 1)
    cols = torch.arange(x.shape[3], device=x.device).view(1, 1, -1)

    def kept():  # noqa: ANN202 - a generator of boolean masks, True where the image is kept
        for lo in range(0, len(bounds), step):
            b = bounds[lo:lo + step, :, None]
            in_rows = (rows >= b[:, 0:1]) & (rows < b[:, 2:3])
            yield ~(in_rows & (cols >= b[:, 1:2]) & (cols < b[:, 3:4]))

    scores = masked_scores(classifier, x, fill, kept(), target, len(bounds))
    return torch.cat([s for _, s in scores]).double().cpu().numpy()


@torch.no_grad()
def occlusion_maps(classifier: Classifier, frames: Sequence[np.ndarray], *,
                   box: Size = DEFAULT_BOX, stride: Size = DEFAULT_STRIDE, fill: str = "gray",
                   target: str | int = "nsfw", batch_size: int | None = None,
                   threshold: int = DEFAULT_REUSE_THRESHOLD, reuse: bool = True,
                   progress: Progress | None = None) -> list[Heatmap]:
    """One occlusion map per frame of ``frames`` (RGB uint8 arrays of one size, in time order),
    each as :func:`explain.occlusion.occlusion_map` defines it (same parameters: ``box``,
    ``stride``, ``fill``, ``target``, ``batch_size``), reusing the previous frame's work as the
    module docstring says. ``threshold``: the level difference (0..255) below which a pixel
    counts as unchanged. ``reuse=False`` recomputes every frame (the reference the benchmark
    compares with). ``progress(done, total)`` counts frames.

    Returns one SIGNED :class:`~explain.heatmap.Heatmap` per frame, in units of p(target),
    ``params["reuse"]`` in ``identical``, ``region`` or ``none`` and ``params["rescored"]`` the
    windows scored for it.
    """
    check_fill(fill)
    shape = frames[0].shape[:2]
    t = resolve_target(classifier, target)
    name = classifier.class_names[t]
    windows = window_grid(shape, box, stride)
    size = tuple(classifier.input_size) if classifier.input_size else shape
    scaled = scale_windows(windows, shape, size)
    device = classifier.device
    step = check_batch_size(batch_size, device, size, len(windows) + 1)
    empty = np.zeros((1, 4), np.int64)
    maps: list[Heatmap] = []
    drops = np.zeros(len(windows))
    score = 0.0
    for k, frame in enumerate(frames):
        start = time.perf_counter()
        mask = changed(frames[k - 1], frame, threshold) if reuse and k else None
        if mask is not None and not mask.any():
            how, chosen = "identical", np.zeros(len(windows), bool)
        elif mask is not None and fill in REGION_FILLS:
            how, chosen = "region", meeting(windows, mask)
        else:
            how, chosen = "none", np.ones(len(windows), bool)
        if how != "identical":
            x = to_tensor(frame, device)
            if size != shape:
                x = resize(x, size)
            baseline = fill_values(x, fill, tuple(scaled[0, 2:] - scaled[0, :2]))
            bounds = torch.from_numpy(np.concatenate([empty, scaled[chosen]])).to(device)
            p = window_scores(classifier, x, baseline, bounds, t, step)
            score = float(p[0])
            drops = drops.copy()
            drops[chosen] = p[0] - p[1:]
        maps.append(Heatmap(
            values=window_mean(shape, windows, drops), method="occlusion", target=name,
            score=score, box=tuple(int(v) for v in windows[0, 2:] - windows[0, :2]),
            stride=pixels(stride, "stride", shape), windows=len(windows),
            seconds=time.perf_counter() - start,
            params={"fill": fill, "batch_size": step, "work_size": list(size), "box_asked": box,
                    "stride_asked": stride, "reuse": how, "rescored": int(chosen.sum()),
                    "threshold": threshold},
            signed=True, unit=f"drop in p({name})", noise_floor=NOISE_FLOOR))
        if progress is not None:
            progress(k + 1, len(frames))
    return maps
