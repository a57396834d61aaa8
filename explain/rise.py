"""RISE (Petsiuk, Das & Saenko, BMVC 2018): randomized input sampling for explanation.

Masks. Each of the N masks starts as a ``cell × cell`` grid of independent cells, each kept (1)
with probability ``p``, else 0. On a work image of H×W pixels (the classifier's input size when it
declares one, else the image's own size) a cell spans C_H × C_W = ⌈H/cell⌉ × ⌈W/cell⌉ pixels; the
grid is up-sampled bilinearly (``align_corners=False``, edges replicated) to (cell+1)·C_H ×
(cell+1)·C_W pixels and an H×W crop is taken at a random shift (dy, dx), uniform over
0 ≤ dy < C_H, 0 ≤ dx < C_W, as in the paper. A mask value M(u) ∈ [0, 1] is a convex blend of kept
and dropped cells, so E[M(u)] = p at every pixel, and the shift hides the grid's cell borders.

Saliency. With f_t the classifier's probability of the target and I ⊙ M the image multiplied by
the mask (dropped pixels go black, as in the paper),

    S(u) = 1/(N·p) · Σ_i f_t(I ⊙ M_i) · M_i(u),

a Monte-Carlo estimate of E[f_t(I ⊙ M) · M(u)] / E[M(u)]: for a binary mask that is
E[f_t(I ⊙ M) | M(u) = 1], the expected score when pixel u is kept, hence the unit
"E[p(t) | pixel kept]" (unsigned, a probability, drawn on 0..1). Its per-pixel standard error,
sd_i(f_t · M_i(u)) / (p·√N), is estimated from the same masks; its largest value over the map is
``params["standard_error"]``.

For a linear score the expectation has a closed form: M(u) = Σ_c w_c(u)·B_c with B_c the cells'
Bernoulli(p) values and w_c(u) ≥ 0 the bilinear weights (Σ_c w_c(u) = 1), so
E[M(u)·M(v)] = p² + p(1 − p)·k(u, v) with k(u, v) = E_shift[Σ_c w_c(u)·w_c(v)]. For
f(x) = Σ_v a_v·x(v), E[S(u)] = Σ_v a_v·I(v)·(p + (1 − p)·k(u, v)): p·f(I) everywhere plus the
contributions a_v·I(v) blurred by the kernel k (at most 1, largest for nearby pixels, 0 for
pixels two or more up-sampled cells apart). The tests check RISE against it.

Reproducible: the grids and shifts come from two numpy generators seeded by ``seed`` and drawn
batch after batch (N·cell² and 2N uniform numbers in order), so the same seed gives the same map
whatever the batch size or device. Each batch's masks are up-sampled and cropped on the
classifier's device and scored in one ``predict`` by the core occlusion shares,
:func:`explain.perturb.masked_scores`; memory is bounded by the batch, not by N, and a batch of
masks is checked against the memory budget before any model call (:func:`mask_bytes`: a huge
``cell`` is refused, not allocated).
The map, computed at the work size, is resized bilinearly to the ORIGINAL image's size.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from explain.budget import check_memory, memory_budget
from explain.choices import DEFAULT_CELL, DEFAULT_MASKS, DEFAULT_P
from explain.errors import OptionError
from explain.heatmap import NOISE_FLOOR, Heatmap
from explain.models.base import (
    Classifier,
    execution_provider,
    precision_params,
    resize,
    resolve_target,
)
from explain.perturb import masked_scores
from explain.perturbation import probabilities, work_image
from explain.progress import Progress
from explain.windows import check_batch_size


def check_rise(masks: int, cell: int = DEFAULT_CELL, p: float = DEFAULT_P, seed: int = 0) -> None:
    """Refuse RISE settings that cannot give a map, before any model runs: ``masks`` and
    ``cell`` at least 1, ``p`` in (0, 1], ``seed`` at least 0 (see :func:`rise_map`)."""
    for name, value, least in (("masks", masks, 1), ("cell", cell, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
            raise OptionError(f"RISE {name} must be a whole number of at least {least}, got "
                              f"{value!r}")
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 < p <= 1.0:
        raise OptionError(f"RISE p (the probability that a cell is kept) must be in (0, 1], "
                          f"got {p!r}; the paper uses 0.5")


def mask_bytes(cell: int, size: tuple[int, int]) -> int:
    """Peak bytes of drawing one mask on an H×W work image: its ``cell``² uniforms (float64),
    kept flags and float32 grid, the up-sampled grid ((cell+1)·C_H × (cell+1)·C_W float32) and
    the H×W crop."""
    ch, cw = math.ceil(size[0] / cell), math.ceil(size[1] / cell)
    return 13 * cell * cell + 4 * (cell + 1) * ch * (cell + 1) * cw + 4 * size[0] * size[1]


def _mask_batch(cell: int, size: tuple[int, int], step: int, given: bool,
                device: torch.device) -> int:
    """The masks drawn per batch: ``step`` when they fit the memory budget; a default ``step``
    (not ``given``) is lowered to fit; a given one, or one mask over the budget, is refused."""
    one = mask_bytes(cell, size)
    what = f"RISE masks of {cell}x{cell} cells on a {size[0]}x{size[1]} work image"
    check_memory(one, f"one of the {what}", f"use a smaller --cell (at most the work image's "
                 f"side, {max(size)}; the paper uses {DEFAULT_CELL})", device)
    if not given:
        return max(1, min(step, memory_budget(device) // one))
    check_memory(step * one, f"batches of {step} {what}", "use a smaller --batch-size or --cell",
                 device)
    return step


def _masks(keep: np.ndarray, shifts: np.ndarray, cells: tuple[int, int],
           size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """b × cell × cell kept cells → b × H × W masks: up-sampled to (cell+1) cells, shifted,
    cropped (module docstring)."""
    grid = torch.from_numpy(keep).to(device=device, dtype=torch.float32)[:, None]
    cell = keep.shape[1]
    up = F.interpolate(grid, size=((cell + 1) * cells[0], (cell + 1) * cells[1]),
                       mode="bilinear", align_corners=False)[:, 0]
    shift = torch.from_numpy(shifts).to(device)
    rows = (shift[:, 0:1] + torch.arange(size[0], device=device))[:, :, None]
    cols = (shift[:, 1:2] + torch.arange(size[1], device=device))[:, None, :]
    return up[torch.arange(len(keep), device=device)[:, None, None], rows, cols]


@torch.no_grad()
def rise_map(classifier: Classifier, image: np.ndarray | str | os.PathLike, *,
             masks: int = DEFAULT_MASKS, cell: int = DEFAULT_CELL, p: float = DEFAULT_P,
             seed: int = 0, target: str | int = "nsfw", batch_size: int | None = None,
             progress: Progress | None = None) -> Heatmap:
    """RISE saliency of ``image`` for ``target``, from ``masks`` random masks.

    ``classifier``: any :class:`~explain.models.base.Classifier` (black box is enough). ``image``:
    an RGB array (uint8, or float in [0, 1]) or a path. ``target``: the class, by name or index.
    ``cell``: the masks' grid is ``cell × cell``; ``p``: the probability that a grid cell is kept;
    ``seed``: the same seed gives the same map. ``batch_size``: masked images per model call
    (default as for occlusion, refused when over the memory budget). ``progress(done, total)`` is
    called after each batch, counting masks.

    Returns a :class:`~explain.heatmap.Heatmap` in the original image's coordinates: per pixel
    the estimate of E[p(target) | pixel kept] (see the module docstring); unsigned, bounds
    (0, 1), noise floor :data:`~explain.heatmap.NOISE_FLOOR` on its spread; ``score`` is the
    unmasked image's probability; ``params`` holds the settings, the work size and the largest
    per-pixel ``standard_error``.
    """
    start = time.perf_counter()
    check_rise(masks, cell, p, seed)
    work = work_image(classifier, image)
    shape, size, x = work.shape, work.size, work.x
    t = resolve_target(classifier, target)
    device = classifier.device
    cells = (math.ceil(size[0] / cell), math.ceil(size[1] / cell))
    step = check_batch_size(batch_size, device, size, masks)
    step = _mask_batch(cell, size, step, batch_size is not None, device)
    grid_rng, shift_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    probs = probabilities(classifier, x)
    score = float(probs[0, t])
    precision = precision_params(classifier, x, probs)

    def drawn(lo: int, hi: int) -> torch.Tensor:  # called in order, one batch at a time
        keep = grid_rng.random((hi - lo, cell, cell)) < p
        shifts = np.floor(shift_rng.random((hi - lo, 2)) * cells).astype(np.int64)
        return _masks(keep, shifts, cells, size, device)

    total = torch.zeros(size, dtype=torch.float64, device=device)
    squares = torch.zeros(size, dtype=torch.float64, device=device)
    black = torch.zeros((1, 3, 1, 1), device=device)
    for m, scores in masked_scores(classifier, x, black, drawn, t, masks, step, progress):
        weighted = scores.view(-1, 1, 1) * m
        total += weighted.sum(0, dtype=torch.float64)
        squares += weighted.square().sum(0, dtype=torch.float64)
    mean = total / masks
    variance = (squares / masks - mean.square()).clamp(min=0) * masks / max(masks - 1, 1)
    error = float((variance / masks).sqrt().max()) / p
    values = (mean / p).float()[None, None]
    if size != shape:
        values = resize(values, shape)
    name = classifier.class_names[t]
    return Heatmap(values=values[0, 0].cpu().numpy(), method="rise", target=name, score=score,
                   seconds=time.perf_counter() - start,
                   params={"masks": masks, "cell": cell, "p": p, "seed": seed,
                           "batch_size": step, "work_size": list(size),
                           "model_view": work.view,
                           "provider": execution_provider(classifier), **precision,
                           "standard_error": float(f"{error:.3g}")},
                   unit=f"E[p({name}) | pixel kept]", bounds=(0.0, 1.0), noise_floor=NOISE_FLOOR)
