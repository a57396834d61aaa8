"""The grid's pipeline, :func:`similarity_grid`: embed → t-SNE → snap to the grid → measure.

Each step lives in its own module (:mod:`explain.grid.embed`, :mod:`explain.grid.layout`,
:mod:`explain.grid.quality`); this one checks the options and the memory budget first, samples
a fixed grid, times each step and gathers the :class:`SimilarityGrid`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from explain.budget import check_memory
from explain.choices import EMBED_MODES, GRID_PERPLEXITY
from explain.errors import ExplainError, OptionError
from explain.grid.arrange import arrange, candidates
from explain.grid.embed import Embedder, ImageSource, embed_all
from explain.grid.layout import TSNE_ITERATIONS, grid_shape
from explain.grid.mosaic import mosaic_bytes
from explain.grid.quality import dpq_bytes, grid_quality
from explain.grid.result import SimilarityGrid
from explain.grid.swaps import swap_bytes
from explain.models import Classifier, resolve_target
from explain.windows import fit_batch

MIN_IMAGES = 4
GridProgress = Callable[[int, int, str], None]


def grid_bytes(images: int, shape: tuple[int, int], cell_px: int, layout: str = "auto",
               dim: int = 1024) -> int:
    """Estimated peak memory, in bytes, of laying ``images`` out on a ``shape`` = (rows, cols)
    grid with ``layout`` and drawing its mosaic with ``cell_px`` cells: the thumbnails (kept
    throughout, stacked once) and ``dim``-d float32 features (a few copies: the features, the
    blurred grid of the polish), plus the largest of the images×cells float64 cost matrix of a
    dense assignment (only for the layouts that run one), the swap polish's N×N distances
    (:func:`explain.grid.swaps.swap_bytes`, when it runs), the distance blocks of the DPQ and
    of the neighbour search, and the mosaic (:func:`explain.grid.mosaic.mosaic_bytes`)."""
    thumbnails = 2 * 3 * images * cell_px * cell_px
    features = 4 * 4 * dim * max(images, shape[0] * shape[1])
    runs = candidates(layout, images)
    dense = any(name.startswith("tsne-jv") for name in runs)
    assignment = 8 * images * shape[0] * shape[1] if dense else 0
    swaps = swap_bytes(images) if "tsne-jv+polish" in runs else 0
    neighbours = 3 * 8 * min(1024, images) * images
    dpq = dpq_bytes(images)
    return thumbnails + features + max(assignment, swaps, neighbours, dpq,
                                       mosaic_bytes(shape, cell_px))


def check_grid_memory(images: int, size: int | None, cell_px: int, layout: str = "auto") -> None:
    """Refuse, before any work, a grid of ``images`` (a count) whose layout and mosaic would
    not fit the memory budget (:mod:`explain.budget`).

    ``size`` fixes a ``size``×``size`` grid (at most size² images are used), None the default
    shape (:func:`explain.grid.layout.grid_shape`); ``cell_px`` is the mosaic's cell side;
    ``layout`` the layout asked for (OptionError for a dense one beyond its limit). Returns
    None; raises OptionError (what it would need, the budget, the way out) when it does not
    fit.
    """
    shape = (size, size) if size is not None else grid_shape(images)
    used = min(images, size * size) if size is not None else images
    check_memory(grid_bytes(used, shape, cell_px, layout),
                 f"a {shape[0]}x{shape[1]} grid of {used} images with {cell_px}-px cells",
                 "use a smaller --size or --cell-px, or fewer images")


def similarity_grid(images: Sequence[ImageSource], classifier: Classifier | None = None, *,
                    embed: str = "features", names: Sequence[str] | None = None,
                    labels: Sequence[str] | None = None, target: str | int | None = None,
                    size: int | None = None, layout: str = "auto",
                    perplexity: float = GRID_PERPLEXITY, seed: int = 0,
                    cost: str = "sqeuclidean", k: int = 8, thumb_px: int = 64,
                    batch_size: int = 32, progress: GridProgress | None = None
                    ) -> SimilarityGrid:
    """Lay ``images`` (paths or RGB uint8 arrays) out on a grid so that similar ones sit together.

    ``size`` fixes a size×size grid (images beyond size² are sampled with ``seed``); by default
    the grid is the smallest near-square one holding every readable image. ``target`` (a class
    name or index) adds each image's score for it. ``labels`` (e.g. folder names) are kept for
    colouring and a same-label quality figure. Unreadable images are skipped and listed.
    A grid whose layout and mosaic (at ``thumb_px``), or an embedding batch, would not fit the
    memory budget is refused before any image is read (:func:`check_grid_memory`).

    ``classifier`` embeds and scores (None only for ``embed="pixels"`` or a function without
    a target); ``embed`` is "features", "pixels" or ``package.module:function`` (see
    :class:`explain.grid.embed.Embedder`); ``names`` name the images in the output (default:
    the paths, ``image-00000``… for arrays). ``layout`` picks the layout (one of
    :data:`explain.choices.LAYOUTS`; ``auto`` keeps the best by DPQ16 of those that fit the
    size, see :mod:`explain.grid.arrange`); ``perplexity`` and ``seed`` drive t-SNE (``seed``
    FLAS too), ``cost`` the dense assignment (:func:`explain.grid.layout.assign_to_grid`),
    ``k`` the quality metric
    (:func:`explain.grid.quality.grid_quality`); ``thumb_px`` is the thumbnails' side,
    ``batch_size`` the images per model call. ``progress(done, total, stage)`` is called as
    each stage advances: "embedding" counts images, "t-SNE" iterations (from 0 to total).

    Returns the :class:`SimilarityGrid` of the readable images; ExplainError when fewer than
    :data:`MIN_IMAGES` are readable, OptionError for a bad option.
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
    t_index = None
    if target is not None:
        if classifier is None:
            raise OptionError("scores need a classifier (--model)")
        t_index = resolve_target(classifier, target)
    embedder = Embedder(embed, classifier)
    fit_batch(batch_size, None if classifier is None else classifier.device, embedder.size,
              items=n)
    check_grid_memory(n, size, thumb_px, layout)

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
    report = progress or (lambda done, total, stage: None)
    report(0, len(order), "embedding")
    done = embed_all(images, order, names, embedder, classifier, t_index, thumb_px, batch_size,
                     progress=lambda count, total: report(count, total, "embedding"))
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

    iterations = 0

    def tsne_step(step: int) -> None:
        nonlocal iterations
        iterations += step
        report(iterations, TSNE_ITERATIONS, "t-SNE")

    laid = arrange(emb, shape, layout=layout, perplexity=perplexity, seed=seed, cost=cost,
                   tsne_step=tsne_step, k=min(k, len(kept) - 1))
    seconds.update(laid.seconds)
    notes.extend(laid.notes)
    kept_labels = [labels[i] for i in kept] if labels is not None else None
    start = time.perf_counter()
    quality = grid_quality(emb, laid.cells, shape, k=k, labels=kept_labels, seed=seed,
                           dpq=laid.dpq, neighbours=laid.neighbours)
    seconds["quality"] = time.perf_counter() - start
    return SimilarityGrid(
        names=[names[i] for i in kept], cells=laid.cells, coords=laid.coords, shape=shape,
        embedding=emb, embed=embedder.describe, quality=quality, perplexity=laid.perplexity,
        seed=seed, layout=laid.layout, tried=laid.tried,
        thumbnails=np.stack(done.thumbs),
        scores=np.concatenate(done.scores) if done.scores else None,
        target=classifier.class_names[t_index] if t_index is not None else None,  # type: ignore
        labels=kept_labels, skipped=skipped, left_out=left_out, notes=notes, seconds=seconds)
