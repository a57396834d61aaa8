"""``Reconstruction``: a signed input-space map (deconvnet, guided backprop) and how to show it.

``values`` is float32 (H, W, 3), RGB, in ORIGINAL image coordinates: the derivative of the
explained score with respect to each input value on the [0, 1] scale. Pixels the model never saw
(outside its centre crop) are exactly zero. ``magnitude`` is the per-pixel max of ``|values|``
over the channels (as in Simonyan et al.'s saliency maps), a :class:`~explain.heatmap.Heatmap`
that every heatmap tool can render, with its unit and its "no signal" floor. The JSON
(:meth:`Reconstruction.metadata`) says what the values mean: signed, their unit, the robust max
the picture is drawn on (``image_scale``) and the magnitude's raw signal.

Two pictures: :meth:`Reconstruction.image` is the Zeiler & Fergus rendering (zero is mid grey,
the signed values are scaled by a robust maximum, the ``percentile``-th percentile of ``|values|``,
so a few extreme pixels do not wash the rest out); :meth:`Reconstruction.overlay` blends the
magnitude on the photo through the shared renderer :func:`explain.render.overlay`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from explain.heatmap import RELEVANCE, Heatmap
from explain.render import Scale, hatch_unseen, overlay, with_legend


@dataclass
class Reconstruction:
    """A signed (H, W, 3) input-space map plus what it reconstructs.

    ``layer``/``neuron``/``activation`` are set in neuron mode: the layer name, the position of
    the reconstructed activation in that layer's per-image output (channel, y, x for a conv
    layer) and its value. ``score`` is the model's probability of ``target`` for the image.
    ``unit`` names one unit of ``values`` (signed: grey = 0 in :meth:`image`); the magnitude
    carries its own unit and noise floor.
    """

    values: np.ndarray
    magnitude: Heatmap
    method: str
    target: str
    score: float | None = None
    layer: str | None = None
    neuron: tuple[int, ...] | None = None
    activation: float | None = None
    seconds: float | None = None
    unit: str = RELEVANCE

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape[:2]  # type: ignore[return-value]

    def image_scale(self, *, percentile: float = 99.5) -> float:
        """The robust max that :meth:`image` draws at 0/255: the ``percentile``-th percentile of
        ``|values|`` (their max if that is 0, 1 for an all-zero map)."""
        scale = float(np.percentile(np.abs(self.values), percentile))
        return scale if scale > 0.0 else float(np.abs(self.values).max()) or 1.0

    def image(self, *, percentile: float = 99.5) -> np.ndarray:
        """The Zeiler-style picture: RGB uint8, zero at grey 128, ±robust max at 0/255."""
        scale = self.image_scale(percentile=percentile)
        centred = 0.5 + 0.5 * np.clip(self.values / scale, -1.0, 1.0)
        return np.rint(centred * 255.0).astype(np.uint8)

    def picture(self, *, legend: bool = True, percentile: float = 99.5) -> np.ndarray:
        """:meth:`image`, what the model never sees hatched (:func:`~explain.render.hatch_unseen`),
        with (unless ``legend=False``) the legend strip of its grey scale: ±the robust max of
        :meth:`image_scale`, grey = 0."""
        picture = hatch_unseen(self.image(percentile=percentile), self.magnitude)
        if not legend:
            return picture
        m = self.image_scale(percentile=percentile)
        labelled = replace(self.magnitude, unit=f"{self.unit}, grey = 0")
        return with_legend(picture, labelled, Scale("gray", -m, m))

    def overlay(self, image: np.ndarray, *, colormap: str = "jet", alpha: float = 0.5,
                normalize: str = "percentile", **kwargs: object) -> np.ndarray:
        """The magnitude blended on ``image`` by the shared renderer (percentile-clipped)."""
        return overlay(image, self.magnitude, colormap=colormap, alpha=alpha,
                       normalize=normalize, **kwargs)  # type: ignore[arg-type]

    def metadata(self) -> dict:
        return {
            "method": self.method, "target": self.target, "score": self.score,
            "layer": self.layer, "neuron": list(self.neuron) if self.neuron else None,
            "activation": self.activation, "seconds": self.seconds,
            "shape": list(self.values.shape),
            "min": float(self.values.min()), "max": float(self.values.max()),
            "signed": True, "unit": self.unit, "image_scale": self.image_scale(),
            "magnitude": {key: self.magnitude.metadata()[key] for key in
                          ("unit", "signal", "noise_floor", "no_signal")},
        }
