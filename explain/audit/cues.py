"""Cue discovery: the image regions a model reacts to in its mistakes, found and tested
automatically (black-box; in the spirit of ACE, Ghorbani et al. 2019).

1. **Harvest.** Each image's occlusion map (the audit's own map for a false positive; one computed
   here for the contrast images: a seeded sample of true negatives and true positives) gives at
   most ``per_image`` patches: box-sized windows (the occlusion box, placed at any pixel) of
   highest mean positive heat, chosen greedily without overlap, each re-centred on the centre of
   mass of the heat around it (the map is flat in stride-sized steps), kept while its mean is at
   least the ``percentile``-th percentile of all window positions' means and half the best
   one's (:func:`top_windows`). Each patch's **drop** is ``p_t(image) − p_t(image with the
   patch filled)`` (one batched call per image, :func:`explain.audit.concepts.score_drops`).
2. **Embed and group.** Patches are embedded by the model's own ``features()`` when it has them,
   by open_nsfw's penultimate features otherwise, by 32×32 pixels as the last resort, each patch
   faded to gray where its heat is low (:func:`focus`); vectors are centred, L2-normalised and
   grouped by seeded k-means (k-means++ starts, best of 8), k in 2..``max_cues`` (at most one
   cluster per 8 patches) chosen by the largest silhouette (the smallest k on ties).
3. **Measure** each cluster: ``fp_share`` (false positives with a patch in it / false positives
   harvested), ``tn_share`` and ``tp_share`` (the same for the contrast samples), ``mean_drop``
   (over its false-positive patches) and the **paste test**: ``paste_pairs`` seeded (donor patch,
   recipient) pairs, the donor a false-positive patch of the cluster (any of its patches when it
   has none), the recipient a true negative of the sample other than the donor's image, the
   patch scaled to keep its share of the image area and pasted at a seeded position;
   ``paste_gain`` is the mean of ``p_t(recipient with patch) − p_t(recipient)``.
4. **Rank** by ``strength = max(fp_share − tn_share, 0) · (max(mean_drop, 0) +
   max(paste_gain, 0))``: common in the mistakes, rare in the correct negatives, and causal
   (hiding it lowers the score, adding it raises it). Ties: larger paste gain, more
   false-positive images, lower cue id. Cue ids number the clusters in order of their first
   patch, so they do not depend on the ranking.

Model evaluations (images through ``predict``): ``windows + 1`` per contrast image (none for a
false positive whose map is given), one per patch for the drops, ``paste_pairs`` per cluster, plus
one per image given a map but no score; the embedder's evaluations (one per patch) are counted
apart. Every
result goes into a :class:`CueCache` as it is computed (the audit's is its SQLite store), so a
second call does only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np
import torch

from explain.audit.concepts import Part, score_drops
from explain.audit.options import CueOptions
from explain.errors import ExplainError, ImageError, OptionError
from explain.files import display
from explain.images import DEFAULT_MAX_PIXELS, as_rgb, load_image, to_batch
from explain.models import Classifier, resolve_target
from explain.models.base import resize
from explain.occlusion import FILLS, occlusion_map
from explain.windows import (
    DEFAULT_BOX,
    DEFAULT_STRIDE,
    Size,
    check_batch_size,
    check_windows,
    pixels,
)

ROLES = ("fp", "tn", "tp")
MIN_SHARE = 0.5
MIN_CLUSTER = 8
SILHOUETTE_POINTS = 2000
KMEANS_STARTS = 8
KMEANS_ITERATIONS = 100

if TYPE_CHECKING:
    from explain.audit.store import Store

CueProgress = Callable[[str, int, int], None]


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


@dataclass
class Harvested:
    """What the cache keeps per image: its score, the model's and the embedder's evaluations
    spent on it, the embedding used, or why it could not be read."""

    role: str
    score: float | None
    calls: int
    embed_calls: int
    embedding: str
    error: str | None = None


@dataclass
class Paste:
    """One paste-test pair: the donor patch, the recipient and where the patch went."""

    donor: int
    donor_box: tuple[int, int, int, int]
    recipient: int
    box: tuple[int, int, int, int]
    before: float
    after: float

    @property
    def gain(self) -> float:
        return self.after - self.before


@dataclass
class Cue:
    """A cluster of patches with its measurements (see the module docstring)."""

    cue: int
    rank: int
    patches: list[Patch]
    fp_images: int
    fp_share: float
    tn_share: float | None
    tp_share: float | None
    mean_drop: float | None
    paste_gain: float | None
    paste_images: int
    strength: float
    pastes: list[Paste] = field(default_factory=list)


@dataclass
class Cues:
    """The ranked cues (best first) and how they were found. ``calls`` counts the images the
    model scored for them, over every call that built them (``new_calls``: this call only);
    ``embed_calls`` the embedder's images."""

    cues: list[Cue]
    images: dict[int, CueImage]
    embedding: str
    k: int
    silhouette: float | None
    calls: int
    new_calls: int
    embed_calls: int
    fp_images: int
    tn_images: int
    tp_images: int
    notes: list[str] = field(default_factory=list)


class CueCache(Protocol):
    """Where results are kept as they are computed (the audit: its store)."""

    def harvested(self) -> dict[int, Harvested]: ...

    def patches(self) -> list[Patch]: ...

    def save_image(self, image: CueImage, done: Harvested, patches: list[Patch]) -> None: ...

    def pastes(self, signature: str) -> tuple[list[Paste], int] | None: ...

    def save_pastes(self, signature: str, pastes: list[Paste], calls: int) -> None: ...


class MemoryCache:
    """A :class:`CueCache` in memory (the library's default)."""

    def __init__(self) -> None:
        self._images: dict[int, Harvested] = {}
        self._patches: list[Patch] = []
        self._pastes: dict[str, tuple[list[Paste], int]] = {}

    def harvested(self) -> dict[int, Harvested]:
        return dict(self._images)

    def patches(self) -> list[Patch]:
        return list(self._patches)

    def save_image(self, image: CueImage, done: Harvested, patches: list[Patch]) -> None:
        self._images[image.key] = done
        self._patches.extend(patches)

    def pastes(self, signature: str) -> tuple[list[Paste], int] | None:
        return self._pastes.get(signature)

    def save_pastes(self, signature: str, pastes: list[Paste], calls: int) -> None:
        self._pastes[signature] = (pastes, calls)


class StoreCache:
    """A :class:`CueCache` in the audit's store, under one ``setting`` (the options' hash)."""

    def __init__(self, store: Store, setting: str) -> None:
        self.store = store
        self.setting = setting

    def harvested(self) -> dict[int, Harvested]:
        return {r[0]: Harvested(*r[1:]) for r in self.store.cue_images(self.setting)}

    def patches(self) -> list[Patch]:
        return [Patch(image, n, role, (t, le, b, r), heat, drop, np.frombuffer(v, np.float32))
                for image, role, n, t, le, b, r, heat, drop, v
                in self.store.cue_patches(self.setting)]

    def save_image(self, image: CueImage, done: Harvested, patches: list[Patch]) -> None:
        self.store.save_cue_image(
            self.setting, image.key, (done.role, done.score, done.calls, done.embed_calls,
                                      done.embedding, done.error),
            [(p.n, *p.box, p.heat, p.drop, np.asarray(p.vector, np.float32).tobytes())
             for p in patches])

    def pastes(self, signature: str) -> tuple[list[Paste], int] | None:
        kept = self.store.cue_pastes(self.setting, signature)
        if kept is None:
            return None
        rows, calls = kept
        return [Paste(r["donor"], tuple(r["donor_box"]), r["recipient"], tuple(r["box"]),
                      r["before"], r["after"]) for r in json.loads(rows)], calls

    def save_pastes(self, signature: str, pastes: list[Paste], calls: int) -> None:
        self.store.save_cue_pastes(self.setting, signature,
                                   json.dumps([asdict(p) for p in pastes]), calls)


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

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += int(batch.shape[0])
        return self.classifier.predict(batch)


# --- 1. harvest ---------------------------------------------------------------------------------

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
    size = classifier.input_size
    if size is not None and tuple(size) != tuple(x.shape[-2:]):
        x = resize(x, tuple(size))
    return x


def score_images(classifier: Classifier, images: Sequence[np.ndarray], t: int,
                 batch_size: int | None = None) -> np.ndarray:
    """p_t of each RGB uint8 image, batched by equal size."""
    out = np.zeros(len(images))
    groups: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(img.shape, []).append(i)
    for shape, idx in groups.items():
        size = tuple(classifier.input_size or shape[:2])
        step = check_batch_size(batch_size, classifier.device, size)
        for lo in range(0, len(idx), step):
            part = idx[lo:lo + step]
            probs = classifier.predict(model_input(classifier, [images[i] for i in part]))
            out[part] = probs[:, t].double().cpu().numpy()
    return out


class PatchEmbedder:
    """Patch crops → L2-normalised vectors: the model's features, open_nsfw's, or pixels."""

    def __init__(self, classifier: Classifier, embed: str = "auto") -> None:
        from explain.grid import Embedder
        from explain.models import load

        self.calls = 0
        candidates: list[Callable[[], object]] = []
        if embed in ("auto", "features") and callable(getattr(classifier, "features", None)):
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


def _load(image: CueImage, max_pixels: int) -> np.ndarray:
    if isinstance(image.source, str | bytes | os.PathLike):
        return load_image(image.source, max_pixels=max_pixels, notes=[])  # type: ignore[arg-type]
    return as_rgb(image.source, name=image.name)


def harvest(classifier: Counting, image: CueImage, rgb: np.ndarray, t: int, embed: PatchEmbedder,
            *, box: Size, stride: Size, fill: str,
            batch_size: int | None, options: CueOptions) -> tuple[float, list[Patch]]:
    """The image's score and patches (see the module docstring, step 1)."""
    shape = rgb.shape[:2]
    values = image.heatmap() if callable(image.heatmap) else image.heatmap
    score = image.score
    if values is None:
        heat = occlusion_map(classifier, rgb, box=box, stride=stride, fill=fill, target=t,
                             batch_size=batch_size)
        values, score = heat.values, heat.score
    x = model_input(classifier, [rgb])
    if score is None:
        score = float(classifier.predict(x)[0, t])
    found = _scaled_boxes(np.asarray(values), shape, pixels(box, "box", shape),
                          options.per_image, options.percentile)
    if not found:
        return float(score), []
    drops = score_drops(classifier, x, shape, [Part("cue", 1.0, b) for b, _ in found], t, fill,
                        float(score), batch_size)
    vectors = embed([focus(rgb, np.asarray(values), b) for b, _ in found])
    return float(score), [Patch(image.key, n, image.role, b, heat, float(d), v)
                          for n, ((b, heat), d, v) in enumerate(zip(found, drops, vectors,
                                                                    strict=True))]


# --- 2. group -----------------------------------------------------------------------------------

def kmeans(vectors: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Labels and inertia of the best of :data:`KMEANS_STARTS` k-means++ runs."""
    best: tuple[np.ndarray, float] | None = None
    sq = (vectors ** 2).sum(1)
    for _start in range(KMEANS_STARTS):
        centres = [vectors[rng.integers(len(vectors))]]
        for _more in range(1, k):
            d = np.min([((vectors - c) ** 2).sum(1) for c in centres], axis=0)
            total = d.sum()
            pick = rng.choice(len(vectors), p=d / total) if total > 0 else \
                rng.integers(len(vectors))
            centres.append(vectors[pick])
        c = np.array(centres)
        labels = np.zeros(len(vectors), dtype=np.int64)
        for step in range(KMEANS_ITERATIONS):
            dist = sq[:, None] - 2 * vectors @ c.T + (c ** 2).sum(1)[None]
            new = dist.argmin(1)
            if step and np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                if (labels == j).any():
                    c[j] = vectors[labels == j].mean(0)
        inertia = float(dist[np.arange(len(vectors)), labels].sum())
        if best is None or inertia < best[1] - 1e-12:
            best = (labels.copy(), inertia)
    return best  # type: ignore[return-value]


def silhouette(vectors: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette (Euclidean); a point alone in its cluster scores 0. Over
    :data:`SILHOUETTE_POINTS` points at most (an evenly spaced subset), so that memory stays
    bounded."""
    if len(vectors) > SILHOUETTE_POINTS:
        keep = np.linspace(0, len(vectors) - 1, SILHOUETTE_POINTS).astype(np.int64)
        vectors, labels = vectors[keep], labels[keep]
    sq = (vectors ** 2).sum(1)
    d = np.sqrt(np.clip(sq[:, None] + sq[None] - 2 * vectors @ vectors.T, 0, None))
    ids = np.unique(labels)
    if len(ids) < 2:
        return -1.0
    mean_to = np.stack([d[:, labels == j].mean(1) for j in ids], axis=1)
    sizes = np.array([(labels == j).sum() for j in ids])
    own = np.searchsorted(ids, labels)
    n_own = sizes[own]
    a = mean_to[np.arange(len(labels)), own] * n_own / np.maximum(n_own - 1, 1)
    mean_to[np.arange(len(labels)), own] = np.inf
    b = mean_to.min(1)
    s = np.where(n_own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def cluster(vectors: np.ndarray, max_k: int, seed: int) -> tuple[np.ndarray, float | None]:
    """Cluster ids (numbered in order of first member) and the silhouette of the chosen k.

    The vectors are centred (their mean removed: CNN features share a large common part that
    makes every pair look alike) and L2-normalised. k runs from 2 to ``max_k`` but at most
    n / :data:`MIN_CLUSTER`: on few points the silhouette keeps rising with k as clusters shrink
    to pairs."""
    n = len(vectors)
    if n < 4:
        return np.zeros(n, dtype=np.int64), None
    vectors = vectors - vectors.mean(0)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms > 0, norms, 1.0)
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray] | None = None
    for k in range(2, max(2, min(max_k, n // MIN_CLUSTER, n - 1)) + 1):
        labels, _ = kmeans(vectors, k, rng)
        score = silhouette(vectors, labels)
        if best is None or score > best[0] + 1e-9:
            best = (score, labels)
    score, labels = best  # type: ignore[misc]
    _, first = np.unique(labels, return_index=True)
    order = {old: new for new, old in enumerate(labels[np.sort(first)])}
    return np.array([order[v] for v in labels], dtype=np.int64), score


# --- 3. measure ---------------------------------------------------------------------------------

def _paste(recipient: np.ndarray, crop: np.ndarray, donor_shape: tuple[int, int],
           rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``recipient`` with ``crop`` pasted at a seeded position, scaled to keep its share of the
    image area."""
    h, w = recipient.shape[:2]
    scale = np.sqrt(h * w / float(donor_shape[0] * donor_shape[1]))
    ph = int(min(h, max(1, round(crop.shape[0] * scale))))
    pw = int(min(w, max(1, round(crop.shape[1] * scale))))
    top, left = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    box = (top, left, top + ph, left + pw)
    return put(recipient, crop, box), box


def put(recipient: np.ndarray, crop: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """A copy of ``recipient`` with ``crop`` resized into ``box``."""
    top, left, bottom, right = box
    shrinking = bottom - top < crop.shape[0]
    out = recipient.copy()
    out[top:bottom, left:right] = cv2.resize(np.ascontiguousarray(crop), (right - left,
                                                                          bottom - top),
                                             interpolation=cv2.INTER_AREA if shrinking
                                             else cv2.INTER_LINEAR)
    return out


def paste_test(classifier: Counting, donors: list[Patch], recipients: list[int],
               pixels: Callable[[int], np.ndarray | None], scores: dict[int, float], t: int,
               pairs: int, seed: int, batch_size: int | None) -> list[Paste]:
    """``pairs`` (donor, recipient) pastes, seeded; recipients never get their own patch."""
    rng = np.random.default_rng(seed)
    if not donors or not recipients or pairs == 0:
        return []
    order_d = rng.permutation(len(donors))
    order_r = rng.permutation(len(recipients))
    chosen: list[tuple[Patch, int]] = []
    for i in range(pairs * 4):
        if len(chosen) == pairs:
            break
        donor, rec = donors[order_d[i % len(donors)]], recipients[order_r[i % len(recipients)]]
        if rec != donor.image:
            chosen.append((donor, rec))
    images, made = [], []
    for donor, rec in chosen:
        t_, l_, b_, r_ = donor.box
        src, dst = pixels(donor.image), pixels(rec)
        if src is None or dst is None:  # a file gone since its harvest
            continue
        pasted, where = _paste(dst, src[t_:b_, l_:r_], src.shape[:2], rng)
        images.append(pasted)
        made.append((donor, rec, where))
    after = score_images(classifier, images, t, batch_size) if images else []
    return [Paste(d.image, d.box, rec, where, scores[rec], float(a))
            for (d, rec, where), a in zip(made, after, strict=True)]


def _signature(members: list[Patch], recipients: list[int], options: CueOptions) -> str:
    text = json.dumps([[(p.image, p.n) for p in members], recipients, options.paste_pairs,
                       options.seed])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _share(images: set[int], of: int) -> float | None:
    return len(images) / of if of else None


def strength(fp_share: float, tn_share: float | None, mean_drop: float | None,
             paste_gain: float | None) -> float:
    """The ranking score of the module docstring (missing measurements count as 0)."""
    lift = max(fp_share - (tn_share or 0.0), 0.0)
    return lift * (max(mean_drop or 0.0, 0.0) + max(paste_gain or 0.0, 0.0))


# --- the whole discovery ------------------------------------------------------------------------

def find_cues(classifier: Classifier, images: Sequence[CueImage], *,
              options: CueOptions | None = None, target: str | int = "nsfw",
              box: Size = DEFAULT_BOX, stride: Size = DEFAULT_STRIDE,
              fill: str = "gray", batch_size: int | None = None,
              max_pixels: int = DEFAULT_MAX_PIXELS, cache: CueCache | None = None,
              progress: CueProgress | None = None) -> Cues:
    """Harvest, group, measure and rank (the module docstring) over ``images``, keeping every
    result in ``cache`` as it is computed; what the cache already holds is not recomputed.
    An image that cannot be read is recorded with its reason and skipped; a model error stops
    the call (what was committed stays, and the next call goes on from there)."""
    o = options or CueOptions()
    o.check()
    if fill not in FILLS:
        raise OptionError(f"unknown fill {fill!r}; use one of {', '.join(FILLS)}")
    box_, stride_ = check_windows(box, stride)
    cache = cache if cache is not None else MemoryCache()
    counted = Counting(classifier)
    t = resolve_target(classifier, target)
    by_key = {im.key: im for im in images}
    done = cache.harvested()
    todo = [im for im in images if im.key not in done]
    embed: PatchEmbedder | None = None
    decoded: dict[int, np.ndarray | None] = {}
    notes: list[str] = []
    for i, image in enumerate(todo):
        calls, embed_calls = counted.calls, embed.calls if embed is not None else 0
        if embed is None:  # its probe counts for the first image
            embed = PatchEmbedder(classifier, o.embed)
        try:
            rgb = _load(image, max_pixels)
        except ImageError as exc:
            score, patches, error = None, [], display(exc.reason)
        else:
            score, patches = harvest(counted, image, rgb, t, embed, box=box_, stride=stride_,
                                     fill=fill, batch_size=batch_size, options=o)
            error = None
        cache.save_image(image, Harvested(image.role, score, counted.calls - calls,
                                          embed.calls - embed_calls, embed.describe, error),
                         patches)
        if progress is not None:
            progress("harvest", i + 1, len(todo))
    done = cache.harvested()
    for key, record in done.items():
        if record.error and key in by_key:
            notes.append(f"cue discovery skipped {display(by_key[key].name)}: {record.error}")
    alive = {k: r for k, r in done.items() if k in by_key and r.error is None}
    counts = {role: sum(1 for r in alive.values() if r.role == role) for role in ROLES}
    order = {im.key: i for i, im in enumerate(images)}
    patches = sorted((p for p in cache.patches() if p.image in alive),
                     key=lambda p: (order[p.image], p.n))
    embedding = "; ".join(sorted({r.embedding for r in alive.values()}))
    mine = [r for k, r in done.items() if k in by_key]
    result = Cues([], by_key, embedding, 0, None, sum(r.calls for r in mine), 0,
                  sum(r.embed_calls for r in mine), counts["fp"], counts["tn"], counts["tp"],
                  notes)
    if not any(p.role == "fp" for p in patches):
        notes.append("cue discovery found no regions that raise the score in the false positives")
        result.new_calls = counted.calls
        return result
    labels, result.silhouette = cluster(np.stack([p.vector for p in patches]).astype(np.float64),
                                        o.max_cues, o.seed)
    result.k = int(labels.max()) + 1
    recipients = sorted((k for k, r in alive.items() if r.role == "tn"), key=order.__getitem__)
    scores = {k: r.score for k, r in alive.items()}

    def pixels(key: int) -> np.ndarray | None:
        if key not in decoded:
            if len(decoded) > 64:
                decoded.clear()
            try:
                decoded[key] = _load(by_key[key], max_pixels)
            except ImageError:
                decoded[key] = None
        return decoded[key]

    for c in range(result.k):
        members = [p for p, lab in zip(patches, labels, strict=True) if lab == c]
        fp = [p for p in members if p.role == "fp"]
        signature = _signature(members, recipients, o)
        kept = cache.pastes(signature)
        if kept is None:
            before = counted.calls
            pastes = paste_test(counted, fp or members, recipients, pixels, scores, t,
                                o.paste_pairs, o.seed + c, batch_size)
            kept = (pastes, counted.calls - before)
            cache.save_pastes(signature, *kept)
        pastes = kept[0]
        result.calls += kept[1]
        fp_images = {p.image for p in fp}
        tn_share = _share({p.image for p in members if p.role == "tn"}, counts["tn"])
        mean_drop = float(np.mean([p.drop for p in fp])) if fp else None
        gain = float(np.mean([p.gain for p in pastes])) if pastes else None
        fp_share = len(fp_images) / counts["fp"] if counts["fp"] else 0.0
        result.cues.append(Cue(
            cue=c + 1, rank=0, patches=members, fp_images=len(fp_images), fp_share=fp_share,
            tn_share=tn_share, tp_share=_share({p.image for p in members if p.role == "tp"},
                                               counts["tp"]),
            mean_drop=mean_drop, paste_gain=gain, paste_images=len({p.recipient for p in pastes}),
            strength=strength(fp_share, tn_share, mean_drop, gain), pastes=pastes))
    result.cues.sort(key=lambda q: (-q.strength, -(q.paste_gain or 0.0), -q.fp_images, q.cue))
    for rank, cue in enumerate(result.cues, 1):
        cue.rank = rank
    if counts["tn"] == 0:
        notes.append("no true negatives to contrast with and paste into: tn_share and paste_gain "
                     "are empty")
    result.new_calls = counted.calls
    return result


def discover_cues(classifier: Classifier, false_positives: Sequence[object],
                  true_negatives: Sequence[object] = (), true_positives: Sequence[object] = (),
                  *, heatmaps: Sequence[np.ndarray | None] | None = None,
                  scores: Sequence[float | None] | None = None, target: str | int = "nsfw",
                  box: Size = DEFAULT_BOX, stride: Size = DEFAULT_STRIDE,
                  fill: str = "gray", batch_size: int | None = None,
                  options: CueOptions | None = None, progress: CueProgress | None = None
                  ) -> Cues:
    """The cues a model reacts to in its false positives (see the module docstring).

    Images are paths or RGB arrays; ``heatmaps[i]`` / ``scores[i]``, when given, are the
    occlusion map (any scale) and p_target of ``false_positives[i]`` and spare their model
    calls. ``true_negatives`` are the contrast sample and the paste recipients; ``true_positives``
    only add a ``tp_share``.
    """
    items: list[CueImage] = []
    for role, group in (("fp", false_positives), ("tn", true_negatives), ("tp", true_positives)):
        for i, src in enumerate(group):
            name = os.fsdecode(src) if isinstance(src, str | bytes | os.PathLike) else \
                f"{role}[{i}]"
            item = CueImage(len(items), role, src, name)
            if role == "fp":
                item.heatmap = heatmaps[i] if heatmaps is not None else None
                item.score = scores[i] if scores is not None else None
            items.append(item)
    return find_cues(classifier, items, options=options, target=target, box=box, stride=stride,
                     fill=fill, batch_size=batch_size, progress=progress)
