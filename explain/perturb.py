"""The perturbation core: fills (:func:`fill_values`, :func:`gaussian_blur`) and masked copies,
shared by RISE, the audit's concept occlusion and occlusion maps of models whose input is not
pixel-wise (through :func:`masked` in :class:`explain.occlusion.OccludedCopies`).

:class:`MaskedCopies` is the copy builder (:mod:`explain.perturbation.loop`) of the image ``x``
(1×3×H×W on the classifier's device) under masks made batch by batch by the caller (b×H×W on the
same device, so memory is bounded by the batch): a boolean mask keeps the image where True and
puts the fill elsewhere (one ``torch.where``, exact); a float mask in [0, 1] blends,
``fill + m·(x − fill)`` (RISE's smooth masks; with a black fill, ``x·m``). Each batch of masked
images is scored in ONE model call, with no copy between host and device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from explain.choices import check_fill
from explain.models.base import Classifier
from explain.perturbation.loop import Copies, scored
from explain.progress import Progress


class MaskedCopies(Copies):
    """``n`` masked copies of ``x`` (1×3×H×W) with ``fill`` (broadcastable to ``x``);
    ``masks(lo, hi)`` makes the masks of copies ``lo:hi`` (hi−lo × H × W, boolean or float, see
    the module docstring), called once per batch in order; :attr:`last` holds the last
    batch's. No fast path: RISE's masks change the whole image; the audit's part boxes could
    take incremental inference (:class:`~explain.occlusion.OccludedCopies`), which is not wired
    here, so their drops stay those of these RGB copies."""

    def __init__(self, classifier: Classifier, x: torch.Tensor, fill: torch.Tensor,
                 masks: Callable[[int, int], torch.Tensor], n: int) -> None:
        self.classifier, self.x, self.fill, self.masks, self.n = classifier, x, fill, masks, n
        self.last = torch.zeros(0)

    def __len__(self) -> int:
        return self.n

    def copies(self, lo: int, hi: int) -> torch.Tensor:
        self.last = self.masks(lo, hi)
        return masked(self.x, self.fill, self.last)


def masked_scores(classifier: Classifier, x: torch.Tensor, fill: torch.Tensor,
                  masks: Callable[[int, int], torch.Tensor], target: int, total: int, step: int,
                  progress: Progress | None = None
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """For each batch of ``step`` of the ``total`` masks: (the masks, p(``target``) of each
    masked image), through :class:`MaskedCopies` and the one scoring loop.
    ``progress(done, total)`` after each batch, counting masks."""
    copies = MaskedCopies(classifier, x, fill, masks, total)
    for _, _, probs in scored(copies, step, progress=progress):
        yield copies.last, probs[:, target]


def masked(x: torch.Tensor, fill: torch.Tensor, masks: torch.Tensor,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """The masked copies of ``x`` (1×3×H×W) for a batch of ``masks`` (b×H×W): a boolean mask keeps
    ``x`` where True and puts ``fill`` elsewhere, a float one blends (the module docstring);
    b×3×H×W, on ``x``'s device (written into ``out`` when given)."""
    keep = masks[:, None]
    if masks.dtype == torch.bool:
        return torch.where(keep, x, fill) if out is None else torch.where(keep, x, fill, out=out)
    blend = fill + keep * (x - fill)
    return blend if out is None else out.copy_(blend)


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
