"""Cue discovery, steps 2 and 3: group the patches (seeded k-means, k by silhouette) and
measure each cluster's paste test (see :mod:`explain.audit.cues` for the whole method).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from explain.audit.cue_harvest import Counting, Patch, score_images

MIN_CLUSTER = 8
SILHOUETTE_POINTS = 2000
KMEANS_STARTS = 8
KMEANS_ITERATIONS = 100
# a paste gain at most this (two points of p) proves nothing: 16 pastes move by a few points
# between seeds. Read by compare's cue statuses and by the counter-example synthesis.
PASTE_FLOOR = 0.02


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


# --- 2. group ------------------------------------------------------------------------------------

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

def paste(recipient: np.ndarray, crop: np.ndarray, donor_shape: tuple[int, int],
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
        pasted, where = paste(dst, src[t_:b_, l_:r_], src.shape[:2], rng)
        images.append(pasted)
        made.append((donor, rec, where))
    after = score_images(classifier, images, t, batch_size) if images else []
    return [Paste(d.image, d.box, rec, where, scores[rec], float(a))
            for (d, rec, where), a in zip(made, after, strict=True)]


def strength(fp_share: float, tn_share: float | None, mean_drop: float | None,
             paste_gain: float | None) -> float:
    """The ranking score of the module docstring (missing measurements count as 0)."""
    lift = max(fp_share - (tn_share or 0.0), 0.0)
    return lift * (max(mean_drop or 0.0, 0.0) + max(paste_gain or 0.0, 0.0))
