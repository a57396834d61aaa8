"""Visual-similarity grid: embed images, reduce to 2-D with t-SNE, snap to a grid, draw a mosaic.

1. **Embed** each image: the classifier's penultimate features (open_nsfw: the 1024-d average
   pool), or its class probabilities when it has no ``features`` (black boxes), or a user function
   ``package.module:function`` (uint8 N×H×W×3 → N×D), or raw pixels (32×32 RGB) for comparison.
   Images are resized to the classifier's ``input_size`` (else 256×256) and batched.
2. **Reduce** to 2-D with openTSNE (FFT-accelerated, seeded). openTSNE needs 3·perplexity nearest
   neighbours per point, so the perplexity is clipped to (N − 1)/3: N = 16 runs at 5.
3. **Snap** to a rows×cols grid: the 2-D points are scaled to the grid's extent (x → columns,
   y → rows), the cost of point i in cell c is their squared (or plain) distance, and scipy's
   ``linear_sum_assignment`` (a Jonker-Volgenant variant) finds the one-to-one map of least total
   cost. With fewer images than cells the cost matrix is rectangular and cells stay empty.
4. **Measure**: mean k-NN preservation — for each image, the fraction of its k nearest neighbours
   in embedding space (Euclidean) that sit within Chebyshev radius r of it on the grid, r the
   smallest radius whose neighbourhood holds at least k cells — for the layout and for seeded
   random placements; their ratio says how much the layout helps. With labels, also the fraction
   of grid neighbours that share an image's label.
5. **Draw** the mosaic (square thumbnails, optional border coloured by score or label, legend)
   and write ``grid.json`` (see :meth:`SimilarityGrid.to_json`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from explain.budget import check_memory
from explain.choices import COLOR_BY, COSTS, EMBED_MODES
from explain.errors import ExplainError, ImageError, ModelError, OptionError
from explain.files import display, to_storable, write_text
from explain.images import as_rgb, to_batch
from explain.models import Classifier, resolve_target
from explain.models.adapters import import_callable, raised
from explain.windows import fit_batch

PIXEL_SIDE = 32
DEFAULT_INPUT = (256, 256)
MIN_IMAGES = 4
TSNE_ITERATIONS = 250 + 500
GRID_JSON_VERSION = 1
NO_LABEL = "(no label)"
EMPTY_CELL = (40, 40, 40)
TAB10 = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
         (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))

ImageSource = str | os.PathLike | np.ndarray


@dataclass(frozen=True)
class GridQuality:
    """How well a grid keeps embedding-space neighbours together, against random placement."""

    k: int
    radius: int
    layout: float
    random: float
    trials: int
    label_layout: float | None = None
    label_random: float | None = None

    @property
    def ratio(self) -> float:
        return self.layout / self.random if self.random > 0 else math.inf

    @property
    def label_ratio(self) -> float | None:
        if self.label_layout is None or self.label_random is None:
            return None
        return self.label_layout / self.label_random if self.label_random > 0 else math.inf

    def summary(self) -> str:
        text = (f"{self.k}-NN preservation (grid radius {self.radius}): {self.layout:.3f} vs "
                f"random {self.random:.3f} (x{self.ratio:.1f})")
        if self.label_ratio is not None:
            text += (f"; same-label grid neighbours {self.label_layout:.3f} vs random "
                     f"{self.label_random:.3f} (x{self.label_ratio:.1f})")
        return text

    def to_json(self) -> dict:
        return {"k": self.k, "radius": self.radius, "layout": self.layout, "random": self.random,
                "ratio": self.ratio, "random_trials": self.trials,
                "label_layout": self.label_layout, "label_random": self.label_random,
                "label_ratio": self.label_ratio}


@dataclass
class SimilarityGrid:
    """A laid-out grid: where every image sits, what it was embedded with, and how good it is.

    Arrays are aligned with ``names``: ``cells`` N×2 (row, col), ``coords`` N×2 t-SNE points,
    ``embedding`` N×D, ``thumbnails`` N×t×t×3 uint8, ``scores`` N (target probability) or None.
    """

    names: list[str]
    cells: np.ndarray
    coords: np.ndarray
    shape: tuple[int, int]
    embedding: np.ndarray
    embed: str
    quality: GridQuality
    perplexity: float
    seed: int
    thumbnails: np.ndarray
    scores: np.ndarray | None = None
    target: str | None = None
    labels: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The ``grid.json`` document.

        ``images`` maps each name (the path as given, in :func:`explain.files.to_storable` form,
        so any byte name is kept exactly in strict UTF-8) to ``{"cell": [row, col], "xy": [x, y]}``
        plus ``"score"`` and ``"label"`` when known; ``skipped`` lists unreadable images with the
        reason, ``left_out`` the images sampled out to fit a fixed grid.
        """
        images = {}
        for i, name in enumerate(self.names):
            entry: dict[str, object] = {"cell": [int(self.cells[i, 0]), int(self.cells[i, 1])],
                                        "xy": [float(self.coords[i, 0]), float(self.coords[i, 1])]}
            if self.scores is not None:
                entry["score"] = float(self.scores[i])
            if self.labels is not None:
                entry["label"] = self.labels[i]
            images[to_storable(name)] = entry
        return {
            "version": GRID_JSON_VERSION,
            "rows": self.shape[0], "cols": self.shape[1],
            "embed": self.embed, "embedding_dim": int(self.embedding.shape[1]),
            "perplexity": self.perplexity, "seed": self.seed, "target": self.target,
            "quality": self.quality.to_json(),
            "images": images,
            "skipped": [{"path": to_storable(p), "reason": display(r)} for p, r in self.skipped],
            "left_out": list(self.left_out),
            "notes": list(self.notes),
        }

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_json` to ``path``, atomically."""
        return write_text(path, json.dumps(self.to_json(), indent=1))


def read_grid_json(path: str | os.PathLike) -> dict:
    """Read a ``grid.json`` written by :meth:`SimilarityGrid.save_json`."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ExplainError(f"cannot read grid file {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("version") != GRID_JSON_VERSION or "images" not in doc:
        raise ExplainError(f"{path} is not a grid.json (version {GRID_JSON_VERSION}) of "
                           "`explain grid`")
    return doc


def folder_labels(root: str | os.PathLike, paths: Sequence[str | os.PathLike]) -> list[str] | None:
    """Label of each image = its first-level sub-folder of ``root`` (root/label/img.jpg).

    Images directly in ``root`` get ``NO_LABEL``; None when no image lives in a sub-folder.
    """
    base = Path(root)
    labels = []
    for p in paths:
        parts = Path(p).relative_to(base).parts
        labels.append(parts[0] if len(parts) > 1 else NO_LABEL)
    return labels if any(label != NO_LABEL for label in labels) else None


# --- layout -----------------------------------------------------------------------------------

def grid_shape(n: int) -> tuple[int, int]:
    """The smallest near-square grid holding ``n`` images: ceil(sqrt n) columns."""
    cols = max(1, math.ceil(math.sqrt(n)))
    return max(1, math.ceil(n / cols)), cols


def grid_cells(shape: tuple[int, int]) -> np.ndarray:
    """All (row, col) cells of a grid, row-major, as a (rows·cols)×2 int array."""
    rows, cols = shape
    r, c = np.divmod(np.arange(rows * cols), cols)
    return np.stack([r, c], axis=1)


def assign_to_grid(points: np.ndarray, shape: tuple[int, int], *, cost: str = "sqeuclidean"
                   ) -> np.ndarray:
    """Cells (row, col) for 2-D ``points`` (x → column, y → row): the optimal one-to-one map.

    Points are scaled to the grid's extent per axis; the cost is the (squared) distance from each
    point to each cell centre; ``linear_sum_assignment`` minimises its sum. N ≤ rows·cols.
    """
    if cost not in COSTS:
        raise OptionError(f"unknown cost {cost!r}: use one of {', '.join(COSTS)}")
    pts = np.asarray(points, dtype=np.float64)
    rows, cols = shape
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise OptionError(f"points must be Nx2, got shape {pts.shape}")
    if len(pts) > rows * cols:
        raise OptionError(f"{len(pts)} points do not fit a {rows}x{cols} grid")
    lo, span = pts.min(axis=0), np.ptp(pts, axis=0)
    span[span == 0] = 1.0
    scaled = (pts - lo) / span * np.array([cols - 1, rows - 1], dtype=np.float64)
    cells = grid_cells(shape)
    matrix = cdist(scaled, cells[:, ::-1].astype(np.float64), metric=cost)
    point_idx, cell_idx = linear_sum_assignment(matrix)
    out = np.empty((len(pts), 2), dtype=np.int64)
    out[point_idx] = cells[cell_idx]
    return out


def mosaic_bytes(shape: tuple[int, int], cell_px: int) -> int:
    """Memory of drawing a mosaic: the picture, the canvas with its footer and the array copy."""
    return 3 * 3 * shape[0] * shape[1] * cell_px * cell_px


def grid_bytes(images: int, shape: tuple[int, int], cell_px: int) -> int:
    """Estimated peak memory of laying ``images`` out on a ``shape`` grid and drawing its mosaic
    with ``cell_px`` cells: the thumbnails (kept throughout, stacked once) plus the largest of
    the images×cells float64 assignment cost matrix, the neighbour search's distance blocks and
    the mosaic."""
    thumbnails = 2 * 3 * images * cell_px * cell_px
    assignment = 8 * images * shape[0] * shape[1]
    neighbours = 3 * 8 * min(1024, images) * images
    return thumbnails + max(assignment, neighbours, mosaic_bytes(shape, cell_px))


def check_grid_memory(images: int, size: int | None, cell_px: int) -> None:
    """Refuse, before any work, a grid of ``images`` (``size``×``size``, or the default shape)
    whose layout and mosaic would not fit the memory budget (:mod:`explain.budget`)."""
    shape = (size, size) if size is not None else grid_shape(images)
    used = min(images, size * size) if size is not None else images
    check_memory(grid_bytes(used, shape, cell_px),
                 f"a {shape[0]}x{shape[1]} grid of {used} images with {cell_px}-px cells",
                 "use a smaller --size or --cell-px, or fewer images")


def tsne_layout(vectors: np.ndarray, *, perplexity: float = 30.0, seed: int = 0,
                n_jobs: int = 1, callback: Callable[[int], None] | None = None
                ) -> tuple[np.ndarray, float]:
    """2-D openTSNE embedding of ``vectors`` and the perplexity used (clipped to (N − 1)/3).

    ``callback(iterations)`` is called as the optimisation advances (for progress bars). One
    thread by default: on a busy 2-core machine openTSNE's threads made N = 64 take 14 s instead
    of 0.8 s and N = 4096 75 s instead of 26 s.
    """
    from openTSNE import TSNE

    n = len(vectors)
    if perplexity <= 0:
        raise OptionError(f"perplexity must be positive, got {perplexity}")
    used = float(min(perplexity, (n - 1) / 3))
    every = 25
    callbacks = None
    if callback is not None:
        def callbacks(*_: object) -> bool:
            callback(every)
            return False
    tsne = TSNE(n_components=2, perplexity=used, random_state=seed, n_jobs=n_jobs,
                callbacks=callbacks, callbacks_every_iters=every)
    coords = np.asarray(tsne.fit(np.asarray(vectors, dtype=np.float64)), dtype=np.float64)
    if not np.isfinite(coords).all():
        raise ModelError("t-SNE produced non-finite coordinates; the embeddings may be degenerate")
    return coords, used


# --- quality ----------------------------------------------------------------------------------

def neighbourhood_radius(k: int) -> int:
    """Smallest Chebyshev radius r whose grid neighbourhood, (2r+1)² − 1 cells, holds ≥ k."""
    r = 1
    while (2 * r + 1) ** 2 - 1 < k:
        r += 1
    return r


def nearest_neighbours(vectors: np.ndarray, k: int, *, chunk: int = 1024) -> np.ndarray:
    """Indices (N×k) of each row's k nearest other rows, exact Euclidean, in chunks."""
    x = np.asarray(vectors, dtype=np.float64)
    sq = (x * x).sum(axis=1)
    out = np.empty((len(x), k), dtype=np.int64)
    for start in range(0, len(x), chunk):
        block = x[start:start + chunk]
        d = sq[start:start + chunk, None] + sq[None, :] - 2.0 * block @ x.T
        d[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(d, part, axis=1).argsort(axis=1, kind="stable")
        out[start:start + chunk] = np.take_along_axis(part, order, axis=1)
    return out


def knn_preservation(neighbours: np.ndarray, cells: np.ndarray, radius: int) -> float:
    """Mean fraction of each image's embedding neighbours within ``radius`` of it on the grid."""
    gap = np.abs(cells[:, None, :] - cells[neighbours]).max(axis=2)
    return float((gap <= radius).mean())


def label_agreement(cells: np.ndarray, labels: Sequence[str], shape: tuple[int, int],
                    radius: int) -> float:
    """Fraction of (image, grid neighbour within ``radius``) pairs that share a label."""
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    occupant = np.full((shape[0] + 2 * radius, shape[1] + 2 * radius), -1, dtype=np.int64)
    occupant[cells[:, 0] + radius, cells[:, 1] + radius] = codes
    same = pairs = 0
    for dr in range(-radius, radius + 1):
        for dc in range(-radius, radius + 1):
            if dr == dc == 0:
                continue
            other = occupant[cells[:, 0] + radius + dr, cells[:, 1] + radius + dc]
            filled = other >= 0
            pairs += int(filled.sum())
            same += int((other[filled] == codes[filled]).sum())
    return same / pairs if pairs else 0.0


def random_cells(n: int, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random placement of ``n`` images on distinct cells."""
    return grid_cells(shape)[rng.permutation(shape[0] * shape[1])[:n]]


def grid_quality(vectors: np.ndarray, cells: np.ndarray, shape: tuple[int, int], *, k: int = 8,
                 labels: Sequence[str] | None = None, seed: int = 0, trials: int = 10
                 ) -> GridQuality:
    """k-NN preservation of a layout and of ``trials`` seeded random placements (mean)."""
    n = len(cells)
    if n < 2:
        raise OptionError("grid quality needs at least 2 images")
    if k < 1:
        raise OptionError(f"k must be at least 1, got {k}")
    k = min(k, n - 1)
    radius = neighbourhood_radius(k)
    neighbours = nearest_neighbours(vectors, k)
    rng = np.random.default_rng(seed)
    placements = [random_cells(n, shape, rng) for _ in range(trials)]
    layout = knn_preservation(neighbours, cells, radius)
    random = float(np.mean([knn_preservation(neighbours, p, radius) for p in placements]))
    label_layout = label_random = None
    if labels is not None:
        label_layout = label_agreement(cells, labels, shape, radius)
        label_random = float(np.mean([label_agreement(p, labels, shape, radius)
                                      for p in placements]))
    return GridQuality(k=k, radius=radius, layout=layout, random=random, trials=trials,
                       label_layout=label_layout, label_random=label_random)


# --- embedding --------------------------------------------------------------------------------

def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    shrink = h < img.shape[0] or w < img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def thumbnail(img: np.ndarray, side: int) -> np.ndarray:
    """Centre square of ``img`` resized to side×side."""
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return _resize(img[top:top + s, left:left + s], (side, side))


class Embedder:
    """Turns a list of same-size RGB uint8 images (at ``size``) into N×D float32 vectors.

    ``mode`` is "features", "probabilities" (a classifier without penultimate features, or whose
    ``features`` refused), "function" (a user's ``package.module:function``) or "pixels";
    ``describe`` says which in words, for the output.
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
        self.size = tuple(getattr(classifier, "input_size", None) or DEFAULT_INPUT)
        if embed == "features":
            if classifier is None:
                raise OptionError("embedding by features needs a classifier (--model)")
            self.mode = "features"
            if not callable(getattr(classifier, "features", None)):
                self.mode, self.why_not_features = "probabilities", "it has no features()"
        elif ":" in embed:
            self.mode, self.fn = "function", import_callable(embed)
        else:
            raise OptionError(f"unknown embedding {embed!r}: use features, pixels or "
                              "package.module:function")

    @property
    def describe(self) -> str:
        name = getattr(self.classifier, "name", type(self.classifier).__name__)
        if self.mode == "pixels":
            return f"raw pixels ({PIXEL_SIDE}x{PIXEL_SIDE} RGB, {self.dim}-d)"
        if self.mode == "function":
            return f"embedding function {self.spec} ({self.dim}-d)"
        if self.mode == "features":
            return f"penultimate features of {name} ({self.dim}-d)"
        return (f"class probabilities of {name} ({self.dim}-d): fallback, no penultimate "
                f"features: {self.why_not_features}")

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        n = len(images)
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
                    out = clf.features(batch)  # type: ignore[union-attr]
                except ModelError as exc:
                    if self.dim:  # features worked on an earlier batch: a real failure
                        raise
                    self.mode, self.why_not_features = "probabilities", str(exc)
            if out is None:
                out = clf.predict(batch)  # type: ignore[union-attr]
        vectors = _as_matrix(out, n)
        self.dim = vectors.shape[1]
        return vectors


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


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress]:
    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not enabled) as bar:
        yield bar


def _target_scores(classifier: Classifier, embedder: Embedder, vectors: np.ndarray,
                   embed_in: list[np.ndarray], originals: list[np.ndarray], t_index: int
                   ) -> np.ndarray:
    """The target probability of each image; free when the embedding already is probabilities."""
    if embedder.mode == "probabilities":
        return vectors[:, t_index]
    size = tuple(classifier.input_size or DEFAULT_INPUT)
    model_in = embed_in if embedder.size == size else [_resize(img, size) for img in originals]
    probs = classifier.predict(to_batch(model_in, classifier.device))
    return probs[:, t_index].cpu().numpy().astype(np.float32)


@dataclass
class _Embedded:
    kept: list[int] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    thumbs: list[np.ndarray] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _embed_all(images: Sequence[ImageSource], order: np.ndarray, names: list[str],
               embedder: Embedder, classifier: Classifier | None, t_index: int | None,
               thumb_px: int, batch_size: int, progress: bool) -> _Embedded:
    """Read, embed (and score) ``images[order]`` batch by batch; unreadable ones are skipped."""
    out = _Embedded()
    with _progress(progress) as bar:
        task = bar.add_task("embedding", total=len(order))
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
                embed_in = [_resize(img, embedder.size) for img in originals]
                out.vectors.append(embedder(embed_in))
                if t_index is not None:
                    out.scores.append(_target_scores(classifier, embedder, out.vectors[-1],
                                                     embed_in, originals, t_index))
                out.thumbs.extend(thumbnail(img, thumb_px) for img in originals)
                out.kept.extend(i for i, _ in loaded)
            bar.advance(task, len(chunk))
    return out


def similarity_grid(images: Sequence[ImageSource], classifier: Classifier | None = None, *,
                    embed: str = "features", names: Sequence[str] | None = None,
                    labels: Sequence[str] | None = None, target: str | int | None = None,
                    size: int | None = None, perplexity: float = 30.0, seed: int = 0,
                    cost: str = "sqeuclidean", k: int = 8, thumb_px: int = 64,
                    batch_size: int = 32, progress: bool = False) -> SimilarityGrid:
    """Lay ``images`` (paths or RGB uint8 arrays) out on a grid so that similar ones sit together.

    ``size`` fixes a size×size grid (images beyond size² are sampled with ``seed``); by default
    the grid is the smallest near-square one holding every readable image. ``target`` (a class
    name or index) adds each image's score for it. ``labels`` (e.g. folder names) are kept for
    colouring and a same-label quality figure. Unreadable images are skipped and listed.
    A grid whose layout and mosaic (at ``thumb_px``), or an embedding batch, would not fit the
    memory budget is refused before any image is read (:func:`check_grid_memory`).
    """
    if embed not in EMBED_MODES and ":" not in embed:
        raise OptionError(f"unknown embed {embed!r}: use features, pixels or package.module:fn")
    if size is not None and size < 1:
        raise OptionError(f"grid size must be at least 1, got {size}")
    if thumb_px < 4 or batch_size < 1:
        raise OptionError("thumb_px must be >= 4 and batch_size >= 1")
    n = len(images)
    names = [str(x) if not isinstance(x, np.ndarray) else f"image-{i:05d}"
             for i, x in enumerate(images)] if names is None else [str(x) for x in names]
    if len(names) != n or (labels is not None and len(labels) != n):
        raise OptionError("names and labels must have one entry per image")
    check_grid_memory(n, size, thumb_px)
    t_index = None
    if target is not None:
        if classifier is None:
            raise OptionError("scores need a classifier (--model)")
        t_index = resolve_target(classifier, target)
    embedder = Embedder(embed, classifier)
    fit_batch(batch_size, getattr(classifier, "device", None), embedder.size, items=n)

    notes: list[str] = []
    order = np.arange(n)
    left_out: list[str] = []
    if size is not None and n > size * size:
        keep = np.sort(np.random.default_rng(seed).choice(n, size * size, replace=False))
        left_out = [names[i] for i in np.setdiff1d(order, keep)]
        order = keep
        notes.append(f"{n} images do not fit a {size}x{size} grid: sampled {len(keep)} "
                     f"(seed {seed}), {len(left_out)} left out")

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    done = _embed_all(images, order, names, embedder, classifier, t_index, thumb_px, batch_size,
                      progress)
    seconds["embed"] = time.perf_counter() - start
    kept, skipped = done.kept, done.skipped
    if len(kept) < MIN_IMAGES:
        raise ExplainError(f"only {len(kept)} readable image(s) of {n}; a grid needs at least "
                           f"{MIN_IMAGES}" + (f" (first skipped: {skipped[0][0]}: {skipped[0][1]})"
                                              if skipped else ""))
    emb = np.concatenate(done.vectors)
    shape = (size, size) if size is not None else grid_shape(len(kept))
    if len(kept) < shape[0] * shape[1]:
        notes.append(f"{len(kept)} images on {shape[0]}x{shape[1]} = {shape[0] * shape[1]} "
                     f"cells: {shape[0] * shape[1] - len(kept)} left empty")

    start = time.perf_counter()
    with _progress(progress) as bar:
        task = bar.add_task("t-SNE", total=TSNE_ITERATIONS)
        if np.ptp(emb, axis=0).max() == 0:
            coords = grid_cells(shape)[:len(kept), ::-1].astype(np.float64)
            used = 0.0
            notes.append("all embeddings are identical: images placed in input order")
        else:
            coords, used = tsne_layout(emb, perplexity=perplexity, seed=seed,
                                       callback=lambda step: bar.advance(task, step))
            if used < perplexity:
                notes.append(f"perplexity {perplexity:g} clipped to (N-1)/3 = {used:.3g} "
                             f"for N = {len(kept)}")
        bar.update(task, completed=TSNE_ITERATIONS)
    seconds["tsne"] = time.perf_counter() - start

    start = time.perf_counter()
    cells = assign_to_grid(coords, shape, cost=cost)
    seconds["assign"] = time.perf_counter() - start

    kept_labels = [labels[i] for i in kept] if labels is not None else None
    start = time.perf_counter()
    quality = grid_quality(emb, cells, shape, k=k, labels=kept_labels, seed=seed)
    seconds["quality"] = time.perf_counter() - start
    return SimilarityGrid(
        names=[names[i] for i in kept], cells=cells, coords=coords, shape=shape, embedding=emb,
        embed=embedder.describe, quality=quality, perplexity=used, seed=seed,
        thumbnails=np.stack(done.thumbs),
        scores=np.concatenate(done.scores) if done.scores else None,
        target=classifier.class_names[t_index] if t_index is not None else None,  # type: ignore
        labels=kept_labels, skipped=skipped, left_out=left_out, notes=notes, seconds=seconds)


# --- drawing ----------------------------------------------------------------------------------

def score_colours(scores: np.ndarray) -> np.ndarray:
    """RGB uint8 colours (N×3) of scores in [0, 1] on the jet colormap (blue 0 → red 1)."""
    values = np.clip(np.rint(np.asarray(scores, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
    bgr = cv2.applyColorMap(values.reshape(-1, 1), cv2.COLORMAP_JET).reshape(-1, 3)
    return bgr[:, ::-1].copy()


def label_colours(labels: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """A distinct colour per label (sorted): tab10, then evenly spaced hues beyond ten."""
    names = sorted(set(labels))
    if len(names) <= len(TAB10):
        return dict(zip(names, TAB10, strict=False))
    hues = np.linspace(0, 180, len(names), endpoint=False).astype(np.uint8)
    hsv = np.stack([hues, np.full_like(hues, 200), np.full_like(hues, 230)], axis=1)
    rgb = cv2.cvtColor(hsv.reshape(-1, 1, 3), cv2.COLOR_HSV2RGB).reshape(-1, 3)
    return {name: tuple(int(v) for v in c) for name, c in zip(names, rgb, strict=True)}


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int
          ) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return [*lines, line] if line else lines


def draw_mosaic(grid: SimilarityGrid, *, color_by: str = "none", cell_px: int | None = None,
                border: int | None = None, caption: bool = True) -> np.ndarray:
    """The grid as an RGB uint8 picture: thumbnails in their cells, empty cells dark.

    ``color_by`` "score" frames each thumbnail with its target score on jet (legend: a colour
    bar), "label" with its label's colour (legend: swatches). ``caption`` adds a footer with the
    embedding and the quality figures.
    """
    if color_by not in COLOR_BY:
        raise OptionError(f"unknown color_by {color_by!r}: use one of {', '.join(COLOR_BY)}")
    if color_by == "score" and grid.scores is None:
        raise OptionError("colouring by score needs scores: build the grid with a target")
    if color_by == "label" and grid.labels is None:
        raise OptionError("colouring by label needs labels (images in sub-folders DIR/label/)")
    side = cell_px or grid.thumbnails.shape[1]
    check_memory(mosaic_bytes(grid.shape, side),
                 f"a mosaic of {grid.shape[0]}x{grid.shape[1]} cells of {side} px",
                 "use a smaller cell_px")
    frame = (border if border is not None else max(2, side // 16)) if color_by != "none" else 0
    rows, cols = grid.shape
    mosaic = np.empty((rows * side, cols * side, 3), dtype=np.uint8)
    mosaic[:] = EMPTY_CELL
    if color_by == "score":
        colours = score_colours(grid.scores)  # type: ignore[arg-type]
    elif color_by == "label":
        palette = label_colours(grid.labels)  # type: ignore[arg-type]
        colours = np.array([palette[lab] for lab in grid.labels], dtype=np.uint8)  # type: ignore
    inner = side - 2 * frame
    for i, (r, c) in enumerate(grid.cells):
        y, x = r * side, c * side
        if frame:
            mosaic[y:y + side, x:x + side] = colours[i]
        mosaic[y + frame:y + frame + inner, x + frame:x + frame + inner] = \
            _resize(grid.thumbnails[i], (inner, inner))
    if not caption:
        return mosaic
    return _with_footer(mosaic, grid, color_by)


def _with_footer(mosaic: np.ndarray, grid: SimilarityGrid, color_by: str) -> np.ndarray:
    width = max(mosaic.shape[1], 512)
    pad, size = 8, 14
    font = ImageFont.load_default(size=size)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text = (f"{len(grid.names)} images on {grid.shape[0]}x{grid.shape[1]}, embedding: "
            f"{grid.embed}. {grid.quality.summary()}.")
    lines = _wrap(scratch, text, font, width - 2 * pad)
    swatches: list[tuple[str, tuple[int, int, int]]] = []
    if color_by == "label":
        swatches = list(label_colours(grid.labels).items())  # type: ignore[arg-type]
    line_h = size + 6
    legend_h = line_h * 2 if color_by != "none" else 0
    if swatches:
        widths = [size + 6 + int(scratch.textlength(name, font=font)) + 16 for name, _ in swatches]
        legend_rows, x = 1, 0
        for w in widths:
            if x + w > width - 2 * pad and x > 0:
                legend_rows, x = legend_rows + 1, 0
            x += w
        legend_h = line_h * legend_rows + pad
    footer_h = pad + line_h * len(lines) + legend_h + pad
    canvas = Image.new("RGB", (width, mosaic.shape[0] + footer_h), (255, 255, 255))
    canvas.paste(Image.fromarray(mosaic), ((width - mosaic.shape[1]) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    y = mosaic.shape[0] + pad
    for line in lines:
        draw.text((pad, y), line, fill=(0, 0, 0), font=font)
        y += line_h
    if color_by == "score":
        bar_w = min(256, width - 2 * pad - 140)
        ramp = score_colours(np.linspace(0, 1, bar_w))
        label = f"score ({grid.target}): 0"
        x = pad + int(draw.textlength(label, font=font)) + 6
        draw.text((pad, y), label, fill=(0, 0, 0), font=font)
        strip = np.repeat(ramp[None], size, axis=0)
        canvas.paste(Image.fromarray(strip), (x, y + 2))
        draw.text((x + bar_w + 6, y), "1", fill=(0, 0, 0), font=font)
    x = pad
    for name, colour in swatches:
        w = size + 6 + int(draw.textlength(name, font=font)) + 16
        if x + w > width - pad and x > pad:
            x, y = pad, y + line_h
        draw.rectangle((x, y + 2, x + size, y + 2 + size), fill=colour)
        draw.text((x + size + 6, y), name, fill=(0, 0, 0), font=font)
        x += w
    return np.asarray(canvas)
