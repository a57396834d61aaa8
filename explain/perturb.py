"""Batched masked scoring, the core the mask-based perturbations share (RISE, the audit's concept
occlusion; occlusion maps of models whose input is not pixel-wise, through :func:`masked` in
:class:`explain.occlusion.OccludedCopies`).

:func:`masked_scores` takes the image ``x`` (1×3×H×W on the classifier's device), what hidden
pixels become (``fill``, broadcastable to ``x``) and batches of masks (b×H×W on the same device,
made by the caller batch after batch, so memory is bounded by the batch): a boolean mask keeps
the image where True and puts the fill elsewhere (one ``torch.where``, exact); a float mask in
[0, 1] blends, ``fill + m·(x − fill)`` (RISE's smooth masks; with a black fill, ``x·m``). Each
batch of masked images is scored in ONE ``predict``, with no copy between host and device.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from explain.choices import check_fill
from explain.models.base import Classifier
from explain.progress import Progress


def masked_scores(classifier: Classifier, x: torch.Tensor, fill: torch.Tensor,
                  masks: Iterable[torch.Tensor], target: int, total: int,
                  progress: Progress | None = None
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """For each batch of ``masks``: (the masks, p(``target``) of each masked image).

    ``classifier`` scores; ``x`` is the image (1×3×H×W on its device), ``fill`` what hidden
    pixels become (broadcastable to ``x``); a boolean mask keeps ``x`` where True, a float one
    blends (see the module docstring). ``progress(done, total)`` after each batch, counting
    masks out of ``total``."""
    done = 0
    for m in masks:
        scores = classifier.predict(masked(x, fill, m))[:, target]
        done += len(m)
        if progress is not None:
            progress(done, total)
        yield m, scores


def masked(x: torch.Tensor, fill: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The masked copies of ``x`` (1×3×H×W) for a batch of ``masks`` (b×H×W): a boolean mask keeps
    ``x`` where True and puts ``fill`` elsewhere, a float one blends (the module docstring);
    b×3×H×W, on ``x``'s device."""
    keep = masks[:, None]
    if masks.dtype == torch.bool:
        return torch.where(keep, x, fill)
    return fill + keep * (x - fill)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``x``, a (1, 3, H, W) tensor, with standard deviation ``sigma``
    pixels, edges replicated."""
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).repeat(3, 1, 1, 1)
    x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel.view(3, 1, 1, -1), groups=3)
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(x, kernel.view(3, 1, -1, 1), groups=3)


def fill_values(x: torch.Tensor, fill: str, box: tuple[int, int]) -> torch.Tensor:
    """What a window is filled with: ``gray`` (0.5), ``black`` (0), ``mean`` (the image's mean
    colour) or ``blur`` (the image blurred with σ = half the box side, so that nothing of the
    box's content survives), as ``fill`` names it; broadcastable to ``x``."""
    if fill == "gray":
        return torch.full((1, 3, 1, 1), 0.5, dtype=x.dtype, device=x.device)
    if fill == "black":
        return torch.zeros((1, 3, 1, 1), dtype=x.dtype, device=x.device)
    if check_fill(fill) == "blur":
        return gaussian_blur(x, max(box) / 2.0)
    return x.mean(dim=(2, 3), keepdim=True)
