"""Deletion and insertion AUC (Petsiuk et al., RISE, 2018): does a heatmap match the model?

Pixels are ranked by the heatmap, most salient first (ties keep raster order). Only the N pixels
the model sees count (:func:`~explain.models.base.model_view`: open_nsfw never sees the border
outside its centre crop, so deleting there would spend steps that cannot move the score). For
k = 0..steps the top ``round(k·N/steps)`` of the N pixels are

- **deleted**: replaced by the fill (as in occlusion: ``gray``, ``black``, ``mean``, ``blur``),
  starting from the image. A faithful map makes p_t fall fast: *lower* AUC is better.
- **inserted**: copied from the image onto a heavily blurred copy of it. A faithful map makes p_t
  rise fast: *higher* AUC is better.

Each AUC is the trapezoid area under p_t over the fraction axis 0..1, so for probabilities both
lie in [0, 1]; ``insertion_auc − deletion_auc`` sums them up into one number to rank methods by.

All 2·(steps+1) perturbed images are built in one vectorised operation per batch on the
classifier's device (:class:`Steps`, a copy builder of :mod:`explain.perturbation`) and scored
with as few model calls as the batch size allows. When the
classifier declares an input size, image and heatmap are resized there once and the curves are
computed at that size (the model would resize every perturbed copy anyway).

Two flags say when the curves cannot tell one map from another (probability units, stated here
and in every result):

- **saturated**: the score is pinned at one end whatever the measure does to the image — p_t of
  the intact image, of the fully deleted image and of the blurred canvas (the three points of the
  curves that no map can change) all lie within ``SATURATION_MARGIN`` = 0.01 of 0, or all within
  it of 1.
- **flat**: the highest and the lowest point of both curves together differ by at most
  ``FLAT_TOLERANCE`` = 0.01: whatever this map put first, the score did not move.

``constant`` says the map has one value only: it orders no pixel before another, so its curves
follow raster order and its AUCs say nothing about the map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from explain.choices import check_fill
from explain.errors import OptionError
from explain.heatmap import Heatmap
from explain.images import ImageInput
from explain.models.base import Classifier, model_view, resolve_target
from explain.perturb import fill_values, gaussian_blur
from explain.perturbation import Copies, score_all, work_image
from explain.windows import check_batch_size

SATURATION_MARGIN = 0.01
FLAT_TOLERANCE = 0.01


def blurred(x: torch.Tensor) -> torch.Tensor:
    """The "heavily blurred" insertion canvas of ``x`` (1×3×H×W): Gaussian with σ = 1/20 of the
    longer side (≥ 1 px), the blur of :mod:`explain.occlusion`."""
    return gaussian_blur(x, max(1.0, max(x.shape[-2:]) / 20.0))


def auc(curve: np.ndarray, fractions: np.ndarray) -> float:
    """Trapezoid area under ``curve`` over ``fractions``, the axis 0..1."""
    y, x = np.asarray(curve, dtype=np.float64), np.asarray(fractions, dtype=np.float64)
    return float(((y[1:] + y[:-1]) * np.diff(x)).sum() / 2.0)


def _saliency(heatmap: Heatmap | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    values = heatmap.values if isinstance(heatmap, Heatmap) else np.asarray(heatmap)
    if values.shape != shape:
        raise OptionError(f"the heatmap has shape {values.shape} but the image is {shape}: "
                          "a heatmap must be in the image's own coordinates")
    values = values.astype(np.float32)
    finite = values[np.isfinite(values)]
    low = float(finite.min()) if finite.size else 0.0
    return np.nan_to_num(values, nan=low, neginf=low, posinf=float(np.finfo(np.float32).max))


class Steps(Copies):
    """The copy builder of the curves: copies 0..steps are the deletion steps (the first
    ``counts[k]`` pixels of ``rank`` replaced by ``removed``), steps+1..2·steps+1 the insertion
    steps (the same pixels of ``x`` on ``canvas``); one vectorised ``torch.where`` per part.
    No fast path applies: each step changes pixels across the whole image."""

    def __init__(self, classifier: Classifier, x: torch.Tensor, rank: torch.Tensor,
                 counts: torch.Tensor, removed: torch.Tensor, canvas: torch.Tensor) -> None:
        self.classifier, self.x, self.rank, self.counts = classifier, x, rank, counts
        self.removed, self.canvas = removed, canvas
        self.steps = len(counts) - 1

    def __len__(self) -> int:
        return 2 * (self.steps + 1)

    def copies(self, lo: int, hi: int) -> torch.Tensor:
        steps, parts = self.steps, []
        if lo <= steps:
            hidden = self.rank < self.counts[lo: min(hi, steps + 1)].view(-1, 1, 1, 1)
            parts.append(torch.where(hidden, self.removed, self.x))
        if hi > steps + 1:
            shown = self.rank < self.counts[max(lo, steps + 1) - steps - 1:
                                            hi - steps - 1].view(-1, 1, 1, 1)
            parts.append(torch.where(shown, self.x, self.canvas))
        return torch.cat(parts) if len(parts) > 1 else parts[0]


@torch.no_grad()
def faithfulness(classifier: Classifier, image: ImageInput,
                 heatmap: Heatmap | np.ndarray, *, steps: int = 20, target: str | int = "nsfw",
                 fill: str = "blur", batch_size: int | None = None) -> dict:
    """Deletion and insertion curves and AUCs of ``heatmap`` for ``classifier`` on ``image``.

    ``classifier``: any :class:`~explain.models.base.Classifier`. ``image``: a path or an array as
    :func:`explain.images.as_rgb` takes it. ``heatmap``: a :class:`Heatmap` or an (H, W) array in
    the image's coordinates, HIGHER = more salient (a signed map ranks its most positive pixels
    first; NaN ranks last). ``steps``: points of each curve after the first. ``target``: the class,
    by name or index. ``fill``: what deleted pixels become (as in occlusion: ``gray``, ``black``,
    ``mean``, ``blur``). ``batch_size``: perturbed images per ``predict`` (default:
    :func:`~explain.windows.default_batch_size`; a given size over the memory budget is refused).
    Returns a JSON-able dict: ``deletion_auc`` (lower is better), ``insertion_auc`` (higher is
    better), ``insertion_minus_deletion``, the two curves, ``fractions``, ``score`` (p_t of the
    intact image), ``steps``, ``fill``, ``target``, ``size`` (the (H, W) the curves were computed
    at), ``view`` (the part of that size the model sees, the only pixels ranked), ``constant``
    (the map has one value only: its pixel order, and so its AUCs, mean nothing) and
    ``saturated`` / ``flat`` (the curves cannot tell maps apart; see the module docstring).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise OptionError(f"steps must be a positive integer, got {steps!r}")
    check_fill(fill)
    work = work_image(classifier, image)
    t = resolve_target(classifier, target)
    device, x = classifier.device, work.x
    sal = torch.from_numpy(_saliency(heatmap, work.shape)).to(device)[None, None]
    if work.size != work.shape:
        sal = F.interpolate(sal, size=work.size, mode="area")
    h, w = x.shape[-2:]
    top, left, bottom, right = view = model_view(classifier, (h, w))
    seen = torch.zeros((h, w), dtype=torch.bool, device=device)
    seen[top:bottom, left:right] = True
    n = int(seen.sum())
    inside = sal[0, 0][seen]
    constant = bool(inside.max() == inside.min())
    # the unseen pixels rank after every seen one: no step ever deletes or inserts them
    sal = torch.where(seen, sal, torch.tensor(-torch.inf, device=device))
    order = torch.argsort(-sal.flatten(), stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(h * w, device=device)
    rank = rank.view(1, 1, h, w)
    counts = torch.round(torch.arange(steps + 1, device=device, dtype=torch.float64)
                         * n / steps).long()
    canvas = blurred(x)
    removed = canvas if fill == "blur" else fill_values(x, fill, (1, 1))
    # Items 0..steps are the deletion steps, steps+1..2·steps+1 the insertion steps.
    total = 2 * (steps + 1)
    batch_size = check_batch_size(batch_size, device, (h, w), total)
    copies = Steps(classifier, x, rank, counts, removed, canvas)
    curve = score_all(copies, batch_size, t).float().numpy().astype(np.float64)
    deletion, insertion = curve[: steps + 1], curve[steps + 1:]
    fractions = counts.cpu().numpy() / n
    d_auc, i_auc = auc(deletion, fractions), auc(insertion, fractions)
    fixed = (deletion[0], deletion[-1], insertion[0])  # no pixel order changes these three
    saturated = (all(p <= SATURATION_MARGIN for p in fixed)
                 or all(p >= 1.0 - SATURATION_MARGIN for p in fixed))
    return {
        "target": list(classifier.class_names)[t],
        "steps": steps,
        "fill": fill,
        "size": [int(h), int(w)],
        "view": [int(v) for v in view],
        "score": float(deletion[0]),
        "deletion_auc": d_auc,
        "insertion_auc": i_auc,
        "insertion_minus_deletion": i_auc - d_auc,
        "constant": constant,
        "saturated": bool(saturated),
        "flat": bool(curve.max() - curve.min() <= FLAT_TOLERANCE),
        "fractions": fractions.tolist(),
        "deletion": deletion.tolist(),
        "insertion": insertion.tolist(),
    }
