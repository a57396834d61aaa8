"""Maps of a sequence of frames (occlusion, sliding window) that reuse the previous frame's work.

Frame after frame (in time order), with the window grid and model of the single-image method,
each map takes one of three paths (``Heatmap.params["reuse"]``; ``params["rescored"]`` counts
the windows scored for it):

- **identical**: a frame that differs from the previous one nowhere by more than ``threshold``
  levels (0..255) takes its map. With threshold 0 the pixels are the same, so the map is exactly
  the one a recomputation gives, for any model. (With a threshold above 0, small changes can
  add up over many frames: each frame is compared with the one before it.)
- **region** (asked with ``reuse="region"``): only the windows that meet the bounding box of the
  changed pixels (in original pixels) are scored again; every other window keeps its previous
  value. Re-scored windows are exact. For the sliding-window map a kept value is exact too, for
  ANY model: a window away from the change crops the same pixels, so its crop scores the same.
  For occlusion, the kept value is the window's *drop* p(frame) − p(frame, window hidden), which
  equals the recomputed one only when hiding a window changes the score independently of the
  pixels outside it (models additive over regions, such as the tests'). A deep network sees the
  whole frame in every output: ``scripts/bench_video.py`` measured kept drops off by up to 70 %
  of the map's largest value on open_nsfw, so for occlusion region reuse is an approximation,
  never the default. It is refused (changed frames are recomputed in full) with the fills
  ``mean`` and ``blur``, which are computed from the whole frame: a change anywhere changes
  every window's occluded copy.
- **none**: the first frame, a changed frame without region reuse, and ``reuse="none"``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from explain.choices import DEFAULT_FILL, DEFAULT_REUSE_THRESHOLD, check_occlusion_fill, check_reuse
from explain.clips import changed
from explain.drill_down import check_drill_down
from explain.errors import OptionError
from explain.heatmap import NOISE_FLOOR, Heatmap
from explain.images import to_tensor
from explain.incremental import network_for
from explain.models.base import (
    Classifier,
    execution_provider,
    model_view,
    precision_params,
    resolve_target,
)
from explain.occlusion import LEAD, choose_fill, drilled_scores, lead_rows, occluded_scores
from explain.perturb import fill_values
from explain.perturbation import at_size, probabilities, scale_windows, work_size
from explain.progress import Progress
from explain.sliding import BLANK, blank_score, crop_scores, crops_view
from explain.windows import (
    DEFAULT_BOX,
    DEFAULT_STRIDE,
    Size,
    WindowPlan,
    check_batch_size,
    window_mean,
    window_plan,
)

REGION_FILLS = ("gray", "black")


def plan(previous: np.ndarray | None, frame: np.ndarray, windows: np.ndarray, reuse: str,
         threshold: int, region: bool = True) -> tuple[str, np.ndarray]:
    """How a frame's map is made (``identical``, ``region`` or ``none``) and which ``windows``
    are scored for it, given the ``previous`` frame (None for the first), the ``reuse`` mode
    asked (``none``, ``identical``, ``region``), the pixel ``threshold``, and whether region
    reuse applies (``region``: False for whole-frame fills)."""
    every = np.ones(len(windows), bool)
    if reuse == "none" or previous is None:
        return "none", every
    mask = changed(previous, frame, threshold)
    if not mask.any():
        return "identical", ~every
    if reuse == "region" and region:
        return "region", meeting(windows, mask)
    return "none", every


def meeting(windows: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Which ``windows`` (rows of top, left, bottom, right; bottom/right exclusive) meet the
    bounding box of the True pixels of ``mask`` (H, W): a boolean per window."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return ((windows[:, 0] < bottom) & (windows[:, 2] > top)
            & (windows[:, 1] < right) & (windows[:, 3] > left))


@torch.no_grad()
def occlusion_maps(classifier: Classifier, frames: Sequence[np.ndarray], *,
                   box: Size = DEFAULT_BOX, stride: Size = DEFAULT_STRIDE, fill: str = DEFAULT_FILL,
                   target: str | int = "nsfw", batch_size: int | None = None,
                   threshold: int = DEFAULT_REUSE_THRESHOLD, reuse: str = "identical",
                   drill_down: float | None = None,
                   progress: Progress | None = None, windows: WindowPlan | None = None
                   ) -> list[Heatmap]:
    """One occlusion map per frame of ``frames`` (RGB uint8 arrays of one size, in time order),
    each as :func:`explain.occlusion.occlusion_map` defines it (same parameters: ``box``,
    ``stride`` or their plan ``windows``, ``fill``, ``target``, ``batch_size``), reusing the
    previous frame's work as the module docstring says: ``reuse`` is ``identical`` (exact; the
    default), ``region`` (approximate for occlusion, see the module docstring) or ``none``.
    ``threshold``: the level difference (0..255) up to which a pixel counts as unchanged.
    ``drill_down``: None = every window scored; r in (0, 1] = each frame that is scored drills
    down as :func:`~explain.occlusion.occlusion_map` does
    (:func:`~explain.occlusion.drilled_scores`; ``params`` then record ``drill_down`` and
    ``windows_evaluated``); identical frames still take the previous map, and region reuse,
    which keeps windows of its own, is refused with it. ``progress(done, total)`` counts frames.

    Returns one SIGNED :class:`~explain.heatmap.Heatmap` per frame, in units of p(target),
    ``params["reuse"]`` in ``identical``, ``region`` or ``none`` and ``params["rescored"]`` the
    windows scored for it. ``fill="auto"`` is chosen once, on the first frame
    (:func:`~explain.occlusion.choose_fill`), and kept for the clip, so that its maps share one
    baseline fill.
    """
    asked = check_occlusion_fill(fill)
    check_reuse(reuse)
    drill = check_drill_down(drill_down)
    if drill is not None and reuse == "region":
        raise OptionError("drill-down and region reuse both leave windows unscored, each by its "
                          "own rule: use one of them (--reuse identical or none with "
                          "--fast/--drill-down)")
    shape = frames[0].shape[:2]
    t = resolve_target(classifier, target)
    name = classifier.class_names[t]
    grid = window_plan(box, stride, windows)
    placed = grid.grid(shape)
    size = work_size(classifier, shape)
    scaled = scale_windows(placed, shape, size)
    device = classifier.device
    step = check_batch_size(batch_size, device, size, len(placed) + LEAD)
    # incremental inference (exact) whenever it applies and pays
    net = network_for(classifier, None, window=tuple((scaled[0, 2:] - scaled[0, :2]).tolist()),
                      size=tuple(size))
    head = lead_rows(size)
    view = model_view(classifier, shape)
    maps: list[Heatmap] = []
    drops = np.zeros(len(placed))
    score = base = 0.0
    precision: dict = {}
    window = tuple(int(v) for v in scaled[0, 2:] - scaled[0, :2])
    for k, frame in enumerate(frames):
        start = time.perf_counter()
        x = None
        if fill == "auto":
            x = at_size(to_tensor(frame, device), size)
            fill = choose_fill(classifier, x, t, window)[0]
        how, chosen = plan(frames[k - 1] if k else None, frame, placed, reuse, threshold,
                           region=fill in REGION_FILLS)
        rescored = int(chosen.sum())
        if how != "identical":
            x = at_size(to_tensor(frame, device), size) if x is None else x
            baseline = fill_values(x, fill, window)
            bounds = np.concatenate([head, scaled[chosen]])

            def scores(rows: torch.Tensor, report: Progress | None,
                       x: torch.Tensor = x, baseline: torch.Tensor = baseline) -> torch.Tensor:
                return occluded_scores(classifier, x, baseline, rows, t, step, report, net, None)

            precision = precision_params(classifier, x)
            if drill is None:
                p = scores(torch.from_numpy(bounds), None).double().numpy()
                score, base = float(p[0]), float(p[1])
                drops = drops.copy()
                drops[chosen] = p[0] - p[LEAD:]
            else:  # chosen is every window: region reuse is refused with drill-down
                score, base, drops, rescored = drilled_scores(scores, bounds, placed, None,
                                                              drill)
        maps.append(Heatmap(
            values=window_mean(shape, placed, drops), method="occlusion", target=name,
            score=score, box=tuple(int(v) for v in placed[0, 2:] - placed[0, :2]),
            stride=grid.pixels(shape)[1], windows=len(placed),
            seconds=time.perf_counter() - start,
            params={"fill": fill, "fill_asked": asked, "baseline": f"whole image {fill}-filled",
                    "baseline_score": base, "model_view": view,
                    "provider": execution_provider(classifier), **precision,
                    "batch_size": step, "work_size": list(size), "box_asked": grid.box,
                    "stride_asked": grid.stride, "reuse": how, "rescored": rescored,
                    "incremental": net is not None,
                    "threshold": threshold}
                | ({} if drill is None else {"drill_down": drill, "windows_evaluated": rescored}),
            signed=True, unit=f"drop in p({name})", noise_floor=NOISE_FLOOR))
        if progress is not None:
            progress(k + 1, len(frames))
    return maps


@torch.no_grad()
def sliding_maps(classifier: Classifier, frames: Sequence[np.ndarray], *,
                 box: Size = DEFAULT_BOX, stride: Size = DEFAULT_STRIDE,
                 target: str | int = "nsfw", batch_size: int | None = None,
                 threshold: int = DEFAULT_REUSE_THRESHOLD, reuse: str = "region",
                 progress: Progress | None = None, windows: WindowPlan | None = None
                 ) -> list[Heatmap]:
    """One sliding-window map per frame of ``frames`` (RGB uint8 arrays of one size, in time
    order), each as :func:`explain.sliding.sliding_window_map` defines it (same ``box``,
    ``stride`` or their plan ``windows``, ``target``, ``batch_size``), reusing the previous
    frame's work: ``reuse`` is ``region`` (the default: exact for any model, see the module
    docstring), ``identical`` or ``none``; ``threshold`` as for :func:`occlusion_maps`.
    ``progress(done, total)`` counts frames.

    Returns one :class:`~explain.heatmap.Heatmap` per frame: per pixel the mean p(target) of the
    crops covering it, bounds (0, 1); ``params["reuse"]`` and ``params["rescored"]`` as for
    occlusion.
    """
    check_reuse(reuse)
    shape = frames[0].shape[:2]
    t = resolve_target(classifier, target)
    name = classifier.class_names[t]
    grid = window_plan(box, stride, windows)
    placed = grid.grid(shape)
    device = classifier.device
    bh, bw = (int(v) for v in placed[0, 2:] - placed[0, :2])
    size = work_size(classifier, (bh, bw))
    step = check_batch_size(batch_size, device, (max(bh, size[0]), max(bw, size[1])),
                            len(placed))
    maps: list[Heatmap] = []
    crops = np.zeros(len(placed))
    score = 0.0
    precision: dict = {}
    blank, view = blank_score(classifier, size, t), crops_view(classifier, placed)
    for k, frame in enumerate(frames):
        start = time.perf_counter()
        how, chosen = plan(frames[k - 1] if k else None, frame, placed, reuse, threshold)
        if how != "identical":
            x = to_tensor(frame, device)[0]
            probs = probabilities(classifier, x.unsqueeze(0))
            score = float(probs[0, t])
            precision = precision_params(classifier, x.unsqueeze(0), probs)
            crops = crops.copy()
            crops[chosen] = crop_scores(classifier, x, placed[chosen], size, t, step)
        maps.append(Heatmap(
            values=window_mean(shape, placed, crops), method="sliding", target=name,
            score=score, box=(bh, bw), stride=grid.pixels(shape)[1],
            windows=len(placed), seconds=time.perf_counter() - start,
            params={"baseline": BLANK, "baseline_score": blank, "model_view": view,
                    "provider": execution_provider(classifier), **precision,
                    "batch_size": step, "crop_size": list(size), "box_asked": grid.box,
                    "stride_asked": grid.stride, "reuse": how, "rescored": int(chosen.sum()),
                    "threshold": threshold},
            unit=f"p({name}) of the crop alone", bounds=(0.0, 1.0), noise_floor=NOISE_FLOOR))
        if progress is not None:
            progress(k + 1, len(frames))
    return maps
