"""The grid's first step: read each image, embed it as a vector, keep a thumbnail (and a score).

An image becomes the classifier's penultimate features (open_nsfw: the 1024-d average pool), or
its class probabilities when it has no ``features`` (black boxes), or a user function
``package.module:function`` (uint8 N×H×W×3 → N×D), or raw pixels (32×32 RGB) for comparison.
Images are resized to the classifier's ``input_size`` (else 256×256) and batched.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from explain import perturbation
from explain.errors import ImageError, ModelError, OptionError
from explain.images import as_rgb, to_batch
from explain.models import Classifier, HasFeatures
from explain.models.adapters import import_callable, raised
from explain.models.base import model_name
from explain.windows import Progress

PIXEL_SIDE = 32
DEFAULT_INPUT = (256, 256)
NO_LABEL = "(no label)"

ImageSource = str | os.PathLike | np.ndarray


def folder_labels(root: str | os.PathLike, paths: Sequence[str | os.PathLike]) -> list[str] | None:
    """Label of each image = its first-level sub-folder of ``root`` (root/label/img.jpg).

    ``root`` is the folder the images were found under; every one of ``paths`` lies below it.
    Returns one label per path, aligned with ``paths``: images directly in ``root`` get
    ``NO_LABEL``; None when no image lives in a sub-folder.
    """
    base = Path(root)
    labels = []
    for p in paths:
        parts = Path(p).relative_to(base).parts
        labels.append(parts[0] if len(parts) > 1 else NO_LABEL)
    return labels if any(label != NO_LABEL for label in labels) else None


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``img`` (H×W×3 uint8) at ``size`` = (height, width): area-averaged when it shrinks along
    either axis, bilinear when it only grows; the array itself when it already has that size."""
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    shrink = h < img.shape[0] or w < img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def thumbnail(img: np.ndarray, side: int) -> np.ndarray:
    """The centre square of ``img`` (H×W×3 uint8), resized to ``side``×``side`` pixels.

    Returns a side×side×3 uint8 array.
    """
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return resize(img[top:top + s, left:left + s], (side, side))


class Embedder:
    """Turns a list of same-size RGB uint8 images (at ``size``) into N×D float32 vectors.

    ``embed`` is "features", "pixels" or ``package.module:function``; ``classifier`` is needed
    for "features" (None is allowed for the others). ``mode`` is then "features",
    "probabilities" (a classifier without penultimate features, or whose ``features`` refused),
    "function" or "pixels"; ``size`` (height, width) is the size the images must have;
    ``describe`` says which embedding ran in words, for the output.
    """

    def __init__(self, embed: str, classifier: Classifier | None) -> None:
        self.classifier = classifier
        self.fn: Callable[..., object] | None = None
        self.spec = embed
        self.dim = 0
        self.why_not_features = ""
        if embed == "pixels":
            self.mode, self.size = "pixels", (PIXEL_SIDE, PIXEL_SIDE)
            return
        own = classifier.input_size if classifier is not None else None
        self.size = tuple(own or DEFAULT_INPUT)
        if embed == "features":
            if classifier is None:
                raise OptionError("embedding by features needs a classifier (--model)")
            self.mode = "features"
            if not isinstance(classifier, HasFeatures):
                self.mode, self.why_not_features = "probabilities", "it has no features()"
        elif ":" in embed:
            self.mode, self.fn = "function", import_callable(embed)
        else:
            raise OptionError(f"unknown embedding {embed!r}: use features, pixels or "
                              "package.module:function")

    @property
    def describe(self) -> str:
        """The embedding in words, with its dimension (e.g. "penultimate features of open-nsfw
        (1024-d)"); a fallback to probabilities says why features were not used."""
        name = model_name(self.classifier)
        if self.mode == "pixels":
            return f"raw pixels ({PIXEL_SIDE}x{PIXEL_SIDE} RGB, {self.dim}-d)"
        if self.mode == "function":
            return f"embedding function {self.spec} ({self.dim}-d)"
        if self.mode == "features":
            return f"penultimate features of {name} ({self.dim}-d)"
        return (f"class probabilities of {name} ({self.dim}-d): fallback, no penultimate "
                f"features: {self.why_not_features}")

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        """Embed ``images`` (N RGB uint8 arrays of ``size``): an N×D float32 array, finite.

        A classifier whose ``features`` refuses on the first batch falls back to its
        probabilities for the whole run; a refusal after a batch worked raises ModelError.
        """
        return self.embed(images)[0]

    def embed(self, images: list[np.ndarray], probabilities: bool = False
              ) -> tuple[np.ndarray, torch.Tensor | None]:
        """(vectors, probabilities) of ``images``: the vectors as :meth:`__call__` gives them
        and, when ``probabilities`` is asked and the embedder is the model (modes "features"
        and "probabilities"), the model's N×C probabilities from the same forward pass
        (``features_and_scores``); None otherwise (another model pass is then needed)."""
        n = len(images)
        probs = None
        if self.mode == "pixels":
            out: object = np.stack(images).reshape(n, -1).astype(np.float32) / 255.0
        elif self.mode == "function":
            try:
                out = self.fn(np.stack(images))  # type: ignore[misc]
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # SystemExit too: a user's function must not end us
                raise ModelError(f"embedding function {self.spec} {raised(exc)}") from exc
        else:
            clf = self.classifier
            batch = to_batch(images, clf.device)  # type: ignore[union-attr]
            out = None
            if self.mode == "features":
                try:
                    if probabilities:
                        out, probs = clf.features_and_scores(batch)  # type: ignore[union-attr]
                    else:
                        out = clf.features(batch)  # type: ignore[union-attr]
                except ModelError as exc:
                    if self.dim:  # features worked on an earlier batch: a real failure
                        raise
                    self.mode, self.why_not_features = "probabilities", str(exc)
            if out is None:
                out = probs = perturbation.probabilities(clf, batch)  # type: ignore[arg-type]
        vectors = _as_matrix(out, n)
        self.dim = vectors.shape[1]
        return vectors, probs if probabilities else None


def _as_matrix(out: object, n: int) -> np.ndarray:
    try:
        arr = out.detach().cpu().numpy() if torch.is_tensor(out) else np.asarray(out, np.float32)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"the embedding is not a numeric array: {exc}") from exc
    if arr.ndim > 2 and arr.shape[0] == n:
        arr = arr.reshape(n, -1)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ModelError(f"the embedding of a batch of {n} has shape {arr.shape}; expected NxD")
    if not np.isfinite(arr).all():
        raise ModelError("the embedding has NaN or infinite values")
    return arr.astype(np.float32)


def _target_scores(classifier: Classifier, embedder: Embedder, embed_in: list[np.ndarray],
                   originals: list[np.ndarray], t_index: int) -> np.ndarray:
    """The target probability of each image, by one more model pass (the embedder is not the
    model: pixels or a function)."""
    size = tuple(classifier.input_size or DEFAULT_INPUT)
    model_in = embed_in if embedder.size == size else [resize(img, size) for img in originals]
    probs = perturbation.probabilities(classifier, to_batch(model_in, classifier.device))
    return probs[:, t_index].cpu().numpy().astype(np.float32)


@dataclass
class Embedded:
    """What :func:`embed_all` kept: the indices of the readable images, their vectors, thumbnails
    and scores (per batch), and the unreadable ones as (name, reason)."""

    kept: list[int] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    thumbs: list[np.ndarray] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def embed_all(images: Sequence[ImageSource], order: np.ndarray, names: list[str],
              embedder: Embedder, classifier: Classifier | None, t_index: int | None,
              thumb_px: int, batch_size: int, progress: Progress) -> Embedded:
    """Read, embed (and score) ``images[order]`` batch by batch; unreadable ones are skipped.

    ``names`` (one per image) name them in errors; ``t_index`` (a class index of
    ``classifier``, or None for no scores) adds each image's target probability; thumbnails are
    ``thumb_px`` square; ``progress(done, total)`` is called after each batch, counting images
    read or skipped. Returns the :class:`Embedded` lists, in ``order``.
    """
    out = Embedded()
    for lo in range(0, len(order), batch_size):
        chunk = order[lo:lo + batch_size]
        loaded = []
        for i in chunk:
            try:
                loaded.append((int(i), as_rgb(images[i], name=names[i])))
            except ImageError as exc:
                out.skipped.append((names[i], exc.reason))
        if loaded:
            originals = [img for _, img in loaded]
            embed_in = [resize(img, embedder.size) for img in originals]
            vectors, probs = embedder.embed(embed_in, probabilities=t_index is not None)
            out.vectors.append(vectors)
            if probs is not None:
                out.scores.append(probs[:, t_index].cpu().numpy().astype(np.float32))
            elif t_index is not None:
                out.scores.append(_target_scores(classifier, embedder, embed_in, originals,
                                                 t_index))
            out.thumbs.extend(thumbnail(img, thumb_px) for img in originals)
            out.kept.extend(i for i, _ in loaded)
        progress(lo + len(chunk), len(order))
    return out
