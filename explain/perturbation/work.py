"""The plan of the work image: how an ORIGINAL image maps to the work image the copies are made
of, and how that maps to the model's input.

Three coordinate systems, and the one function for each step between them:

- original pixels (the user's image; windows, boxes and maps live here);
- work pixels: the image resized ONCE to the classifier's ``input_size`` (the image's own size
  when it declares none), so that no copy is ever resized; :meth:`WorkImage.to_work` scales
  original windows to it (:func:`scale_windows`);
- the model's input: what its :class:`~explain.models.base.Preprocess` makes of the work image
  (the centre crop); the model's own :meth:`~explain.models.base.Preprocess.input_windows` maps
  work windows there (occlusion's copies in the model input,
  :class:`~explain.occlusion.OccludedCopies`), and :attr:`WorkImage.view` is the part of the
  original the model sees (:func:`~explain.models.base.model_view`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from explain.images import as_rgb, to_tensor
from explain.models.base import Classifier, model_view, resize


def work_size(classifier: Classifier, shape: tuple[int, int]) -> tuple[int, int]:
    """The work size of an image of ``shape`` (H, W): the classifier's ``input_size`` when it
    declares one, else ``shape``."""
    size = classifier.input_size or shape
    return int(size[0]), int(size[1])


def at_size(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` (N×3×H×W) at ``size``: itself when it is already there, else resized the way the
    models resize (:func:`~explain.models.base.resize`)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else resize(x, size)


def scale_windows(windows: np.ndarray, shape: tuple[int, int], size: tuple[int, int]
                  ) -> np.ndarray:
    """Windows in ``shape`` pixels → the same windows in ``size`` pixels (rounded, never empty)."""
    scale = np.array([size[0] / shape[0], size[1] / shape[1]] * 2)
    scaled = np.floor(windows * scale + 0.5).astype(np.int64)
    limit = np.array([size[0], size[1]])
    scaled[:, :2] = np.minimum(scaled[:, :2], limit - 1)
    scaled[:, 2:] = np.clip(scaled[:, 2:], scaled[:, :2] + 1, limit)
    return scaled


@dataclass(frozen=True)
class WorkImage:
    """One image planned for perturbation: ``shape``, its original size (H, W); ``x``, the work
    image (1×3×h×w RGB in [0, 1] on the classifier's device, at :func:`work_size`)."""

    classifier: Classifier
    shape: tuple[int, int]
    x: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        """The work size (h, w)."""
        return int(self.x.shape[2]), int(self.x.shape[3])

    @property
    def view(self) -> list[int]:
        """[top, left, bottom, right) of the original that reaches the model."""
        return model_view(self.classifier, self.shape)

    def to_work(self, windows: np.ndarray) -> np.ndarray:
        """Windows (n×4, original pixels) in work pixels."""
        return scale_windows(windows, self.shape, self.size)


def work_image(classifier: Classifier, image: np.ndarray | str | os.PathLike | torch.Tensor
               ) -> WorkImage:
    """The :class:`WorkImage` of ``image`` (a path, an RGB array, uint8 or float in [0, 1], or a
    1×3×H×W tensor already in [0, 1]) for ``classifier``."""
    if isinstance(image, torch.Tensor):
        x = image.to(classifier.device)
    else:
        x = to_tensor(as_rgb(image), classifier.device)
    shape = (int(x.shape[2]), int(x.shape[3]))
    return WorkImage(classifier, shape, at_size(x, work_size(classifier, shape)))
