"""Cue discovery, step 1: harvest (see :mod:`explain.audit.cues` for the whole method).

Each image's occlusion map gives at most ``per_image`` patches (:func:`top_windows`, over the
heat the model can see: :func:`seen_heat`), each with its score drop and its embedding vector
(:class:`PatchEmbedder` over the patch faded to gray where its heat is low, :func:`focus`).
:class:`Counting` counts the images the model scores.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch

from explain.audit.concepts import Part, score_drops
from explain.audit.options import CueOptions
from explain.errors import ExplainError, OptionError
from explain.images import as_rgb, load_image, to_batch
from explain.models import Classifier, HasFeatures
from explain.models.base import Preprocess, execution_provider, model_geometry, model_view
from explain.occlusion import occlusion_map
from explain.perturbation import Images, at_size, probabilities, score_all, work_size
from explain.windows import WindowPlan, check_batch_size

MIN_SHARE = 0.5


@dataclass
class CueImage:
    """One image of the discovery: ``key`` identifies it in the cache (the audit's image id),
    ``role`` is fp, tn or tp, ``name`` how outputs name it; ``score`` (its unperturbed
    p_target) and ``heatmap`` (its occlusion map at any scale of the image, or a function
    loading it) spare model calls when known."""

    key: int
    role: str
    source: object
    name: str
    score: float | None = None
    heatmap: np.ndarray | Callable[[], np.ndarray] | None = None


@dataclass
class Patch:
    """A harvested region: ``box`` (top, left, bottom, right) in original pixels, its mean
    positive ``heat``, its ``drop``, its embedding ``vector``."""

    image: int
    n: int
    role: str
    box: tuple[int, int, int, int]
    heat: float
    drop: float
    vector: np.ndarray


class Counting:
    """A classifier that counts the images it is asked to score."""

    def __init__(self, classifier: Classifier) -> None:
        self.classifier = classifier
        self.calls = 0

    @property
    def class_names(self) -> list[str]:
        return list(self.classifier.class_names)

    @property
    def device(self) -> torch.device:
        return self.classifier.device

    @property
    def input_size(self) -> tuple[int, int] | None:
        return self.classifier.input_size

    @property
    def provider(self) -> str | None:
        """The counted model's onnxruntime provider (what :func:`execution_provider` reads)."""
        return execution_provider(self.classifier)

    @property
    def geometry(self) -> Preprocess | None:
        """The resize and crop of the counted model (what :func:`model_view` reads)."""
        return model_geometry(self.classifier)

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += int(batch.shape[0])
        return probabilities(self.classifier, batch)


def seen_heat(values: np.ndarray, view: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """``values`` (an occlusion map at any scale of an image of ``shape``) with everything
    outside ``view`` (the part of the image the model sees, in its pixels) set to 0: no heat,
    so that no patch is harvested where the model never looks."""
    fy, fx = values.shape[0] / shape[0], values.shape[1] / shape[1]
    top, left = round(view[0] * fy), round(view[1] * fx)
    bottom, right = round(view[2] * fy), round(view[3] * fx)
    out = np.zeros_like(values)
    out[top:bottom, left:right] = values[top:bottom, left:right]
    return out


def top_windows(values: np.ndarray, box: tuple[int, int], k: int, percentile: float
                ) -> list[tuple[tuple[int, int, int, int], float]]:
    """At most ``k`` non-overlapping box-sized windows of highest mean positive heat, each
    re-centred on the heat around it, kept while its mean is at least the ``percentile``-th
    percentile of the means of all window positions and :data:`MIN_SHARE` of the best one's:
    ``[(box, mean heat)]``, best first, in the map's pixels."""
    h, w = values.shape
    bh, bw = min(box[0], h), min(box[1], w)
    positive = np.clip(values.astype(np.float64), 0.0, None)
    if positive.max() <= 0.0:
        return []
    total = cv2.integral(positive)
    means = (total[bh:, bw:] - total[:-bh, bw:] - total[bh:, :-bw] + total[:-bh, :-bw]) / (bh * bw)
    floor = float(np.percentile(means, percentile))
    out: list[tuple[tuple[int, int, int, int], float]] = []
    while len(out) < k:
        i, j = np.unravel_index(int(np.argmax(means)), means.shape)
        best = float(means[i, j])
        if best <= 0.0 or best < floor or (out and best < MIN_SHARE * out[0][1]):
            break
        i, j = _heat_centre(positive, (int(i), int(j)), (bh, bw))
        out.append(((int(i), int(j), int(i) + bh, int(j) + bw), best))
        means[max(0, i - bh + 1):i + bh, max(0, j - bw + 1):j + bw] = -np.inf
    return out


def _heat_centre(positive: np.ndarray, corner: tuple[int, int], box: tuple[int, int]
                 ) -> tuple[int, int]:
    """The window of ``box`` re-centred on the centre of mass of the positive heat around the
    one at ``corner`` (that window grown by half a box on each side): a window-averaged map is
    flat in steps of the stride, so its first maximum may hold the region at its edge."""
    (i, j), (bh, bw) = corner, box
    h, w = positive.shape
    top, left = max(0, i - bh // 2), max(0, j - bw // 2)
    part = positive[top:min(h, i + bh + bh // 2), left:min(w, j + bw + bw // 2)]
    ys, xs = np.indices(part.shape)
    mass = part.sum()
    cy, cx = top + (ys * part).sum() / mass, left + (xs * part).sum() / mass
    return (int(min(max(round(cy + 0.5 - bh / 2), 0), h - bh)),
            int(min(max(round(cx + 0.5 - bw / 2), 0), w - bw)))


def _scaled_boxes(values: np.ndarray, shape: tuple[int, int], box: tuple[int, int], k: int,
                  percentile: float) -> list[tuple[tuple[int, int, int, int], float]]:
    """:func:`top_windows` on a map of any scale of an image of ``shape``, boxes in the image's
    pixels."""
    fy, fx = values.shape[0] / shape[0], values.shape[1] / shape[1]
    small = (max(1, round(box[0] * fy)), max(1, round(box[1] * fx)))
    out = []
    for (t, le, b, r), heat in top_windows(values, small, k, percentile):
        top, left = min(round(t / fy), shape[0] - 1), min(round(le / fx), shape[1] - 1)
        bottom = min(max(round(b / fy), top + 1), shape[0])
        right = min(max(round(r / fx), left + 1), shape[1])
        out.append(((top, left, bottom, right), heat))
    return out


def model_input(classifier: Classifier, images: Sequence[np.ndarray]) -> torch.Tensor:
    """Same-size RGB uint8 images → the batch the audit scores (resized to the model's input
    size when it has one)."""
    x = to_batch(list(images), classifier.device)
    return at_size(x, work_size(classifier, (int(x.shape[2]), int(x.shape[3]))))


def score_images(classifier: Classifier, images: Sequence[np.ndarray], t: int,
                 batch_size: int | None = None) -> np.ndarray:
    """p_t of each RGB uint8 image, batched by equal size."""
    out = np.zeros(len(images))
    groups: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(img.shape, []).append(i)
    for shape, idx in groups.items():
        step = check_batch_size(batch_size, classifier.device, work_size(classifier, shape[:2]))
        scores = score_all(AtWorkSize(classifier, [images[i] for i in idx]), step, t)
        out[idx] = scores.double().numpy()
    return out


class AtWorkSize(Images):
    """Same-size RGB uint8 images as the audit scores them (:func:`model_input`)."""

    def copies(self, lo: int, hi: int) -> torch.Tensor:
        return model_input(self.classifier, self.images[lo:hi])


class PatchEmbedder:
    """Patch crops → L2-normalised vectors: the model's features, open_nsfw's, or pixels."""

    def __init__(self, classifier: Classifier, embed: str = "auto") -> None:
        from explain.grid import Embedder
        from explain.models import load

        self.calls = 0
        candidates: list[Callable[[], object]] = []
        if embed in ("auto", "features") and isinstance(classifier, HasFeatures):
            candidates.append(lambda: classifier)
        if embed in ("auto", "open-nsfw"):
            candidates.append(lambda: load("open-nsfw:auto", None))
        for make in candidates:
            try:
                embedder = Embedder("features", make())  # type: ignore[arg-type]
                embedder([np.full((*embedder.size, 3), 128, np.uint8)])
            except (ExplainError, ImportError, OSError, RuntimeError):
                continue
            self.calls += 1
            if embedder.mode == "features":
                self.embedder = embedder
                return
        if embed in ("features", "open-nsfw"):
            raise OptionError(f"cue embedding {embed!r} is not available for this model; use "
                              "auto or pixels")
        self.embedder = Embedder("pixels", None)

    @property
    def describe(self) -> str:
        return self.embedder.describe

    def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        h, w = self.embedder.size
        images = [cv2.resize(c, (w, h), interpolation=cv2.INTER_AREA if c.shape[0] > h
                             else cv2.INTER_LINEAR) for c in crops]
        vectors = self.embedder(images).astype(np.float64)
        if self.embedder.mode != "pixels":
            self.calls += len(images)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def focus(rgb: np.ndarray, values: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The patch as it is embedded: its pixels faded to gray where its heat is low (weight =
    (positive heat / the patch's highest)²), so that the region the model reacts to, not its
    surroundings, decides which cluster it joins (ACE blanks a segment's context the same way).
    ``values`` is the image's occlusion map at any scale."""
    top, left, bottom, right = box
    crop = rgb[top:bottom, left:right].astype(np.float32)
    fy, fx = values.shape[0] / rgb.shape[0], values.shape[1] / rgb.shape[1]
    t, le = min(int(top * fy), values.shape[0] - 1), min(int(left * fx), values.shape[1] - 1)
    b, r = max(round(bottom * fy), t + 1), max(round(right * fx), le + 1)
    heat = np.clip(values[t:b, le:r].astype(np.float32), 0.0, None)
    heat = cv2.resize(heat, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_LINEAR)
    weight = ((heat / heat.max()) ** 2 if heat.max() > 0 else np.ones_like(heat))[..., None]
    return np.rint(127.5 + (crop - 127.5) * weight).astype(np.uint8)


def decode(image: CueImage, max_pixels: int) -> np.ndarray:
    """The image's RGB uint8 pixels, read from its file or taken from its array (raises
    :class:`~explain.errors.ImageError` when it cannot be read)."""
    if isinstance(image.source, str | bytes | os.PathLike):
        return load_image(image.source, max_pixels=max_pixels, notes=[])  # type: ignore[arg-type]
    return as_rgb(image.source, name=image.name)


def kept_pixels(read: Callable[[Hashable], np.ndarray], size: int = 64
                ) -> Callable[[Hashable], np.ndarray | None]:
    """``read`` (a key → RGB pixels) with its last ``size`` answers kept decoded, and None for
    a key whose image cannot be read (an :class:`~explain.errors.ExplainError` or an unknown
    key): how compare's cue section and the counter-examples' pastes read many patches of a
    few images."""

    @lru_cache(maxsize=size)
    def pixels(key: Hashable) -> np.ndarray | None:
        try:
            return read(key)
        except (ExplainError, KeyError):
            return None

    return pixels


def harvest(classifier: Counting, image: CueImage, rgb: np.ndarray, t: int, embed: PatchEmbedder,
            *, windows: WindowPlan, fill: str,
            batch_size: int | None, options: CueOptions) -> tuple[float, list[Patch]]:
    """The image's score and patches (see the module docstring, step 1), on the caller's
    window plan ``windows`` (made once for all its images)."""
    shape = rgb.shape[:2]
    values = image.heatmap() if callable(image.heatmap) else image.heatmap
    score = image.score
    if values is None:
        heat = occlusion_map(classifier, rgb, windows=windows, fill=fill, target=t,
                             batch_size=batch_size)
        values, score = heat.values, heat.score
    x = model_input(classifier, [rgb])
    if score is None:
        score = float(probabilities(classifier, x)[0, t])
    values = seen_heat(np.asarray(values), model_view(classifier, shape), shape)
    found = _scaled_boxes(values, shape, windows.pixels(shape)[0],
                          options.per_image, options.percentile)
    if not found:
        return float(score), []
    drops = score_drops(classifier, x, shape, [Part("cue", 1.0, b) for b, _ in found], t, fill,
                        float(score), batch_size)
    vectors = embed([focus(rgb, np.asarray(values), b) for b, _ in found])
    return float(score), [Patch(image.key, n, image.role, b, heat, float(d), v)
                          for n, ((b, heat), d, v) in enumerate(zip(found, drops, vectors,
                                                                    strict=True))]
