"""Batched masked scoring, the core the perturbation methods share (occlusion, RISE).

:func:`masked_scores` takes the image ``x`` (1×3×H×W on the classifier's device), what hidden
pixels become (``fill``, broadcastable to ``x``) and batches of masks (b×H×W on the same device,
made by the caller batch after batch, so memory is bounded by the batch): a boolean mask keeps
the image where True and puts the fill elsewhere (one ``torch.where``, exact); a float mask in
[0, 1] blends, ``fill + m·(x − fill)`` (RISE's smooth masks; with a black fill, ``x·m``). Each
batch of masked images is scored in ONE ``predict``, with no copy between host and device.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

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
        keep = m[:, None]
        if m.dtype == torch.bool:
            batch = torch.where(keep, x, fill)
        else:
            batch = fill + keep * (x - fill)
        scores = classifier.predict(batch)[:, target]
        done += len(m)
        if progress is not None:
            progress(done, total)
        yield m, scores
