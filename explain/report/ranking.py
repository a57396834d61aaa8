"""The report's ranking rules: which methods are compared, on which images, and how ties count.

The measure is ``insertion_auc − deletion_auc`` of :func:`explain.faithfulness` (higher is
better). The ranking counts only what that measure can tell apart:

- An image has **no signal** when the curves cannot tell one map from another: its score is
  *saturated* (p_t of the image, of its fully deleted copy and of the blurred insertion canvas
  all within ``SATURATION_MARGIN`` = 0.01 of 0, or all within it of 1, for every method), or its
  curves are *flat* (for every method, all points of both curves within ``FLAT_TOLERANCE`` =
  0.01 of each other); see :mod:`explain.faithfulness`. Such an image is flagged with its reason
  and left out of the ranking, as is an image on which no method produced a map.
- A method has a **usable map** on an image when it produced one and the map is not constant (a
  constant map orders no pixel). Methods are compared on the same images only: the compared
  methods are the largest set of methods that all have a usable map on at least one image with a
  signal (among sets of that size, the one sharing the most images; then the earlier methods);
  they are ranked on exactly the images with a signal where every one of them has a usable map.
  Any other image with a signal is left out for all, with the methods that had no usable map on
  it. A method outside the compared set is *not ranked*, with its reason — never first.
- **Ties**: sorted by ``insertion_auc − deletion_auc`` (per image; overall its mean over the
  compared images), a method within ``TIE_TOLERANCE`` = 0.01 of the best of its group shares that
  group's rank, and the next group's rank counts all methods above it (1, 1, 3). A shared rank is
  marked ``tied``. With no image with a signal the verdict is "no ranking: no image had a signal".
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from explain.faithfulness import FLAT_TOLERANCE, SATURATION_MARGIN
from explain.methods import METHODS
from explain.report.results import ImageResult, MethodResult

TIE_TOLERANCE = 0.01


def tie_ranks(values: Sequence[float], tolerance: float = TIE_TOLERANCE) -> list[int]:
    """Competition ranks of ``values`` (rank 1 = the highest value), one per value, in order.

    Going down the sorted values, one within ``tolerance`` of the best of its group shares the
    group's rank; a new group's rank counts every value above it (``[0.5, 0.495, 0.3]`` →
    ``[1, 1, 3]``).
    """
    order = sorted(range(len(values)), key=lambda i: -values[i])
    ranks = [0] * len(values)
    lead, group_rank = None, 0
    for place, i in enumerate(order, 1):
        if lead is None or lead - values[i] > tolerance:
            lead, group_rank = values[i], place
        ranks[i] = group_rank
    return ranks


def _gap(m: MethodResult) -> float:
    return m.faithfulness["insertion_minus_deletion"]


def _usable(m: MethodResult) -> bool:
    return m.faithfulness is not None and not m.faithfulness["constant"]


def _unusable(m: MethodResult) -> str:
    if m.skipped:
        return "skipped"
    if m.error:
        return "failed"
    return "has a constant map"


def _no_signal(img: ImageResult, target: str) -> str | None:
    """Why the curves on ``img`` cannot tell maps apart (see the module docstring), or None."""
    curves = [m.faithfulness for m in img.methods if m.faithfulness is not None]
    if not curves:
        return "no method produced a map"
    if all(f["saturated"] for f in curves):
        end = 0 if curves[0]["score"] <= 0.5 else 1
        return (f"no signal: score saturated (p({target}) of the image, of its fully deleted "
                f"copy and of the blurred canvas all within {SATURATION_MARGIN:g} of {end})")
    if all(f["flat"] for f in curves):
        return (f"no signal: curves flat (every method's deletion and insertion curves stay "
                f"within {FLAT_TOLERANCE:g})")
    return None


def _compared(signal: list[ImageResult], names: list[str]) -> tuple[list[str], list[int]]:
    """The compared methods and the indices of the images they share (module docstring)."""
    usable = {n: {i for i, img in enumerate(signal) for m in img.methods
                  if m.method == n and _usable(m)} for n in names}
    candidates = [n for n in names if usable[n]]
    for size in range(len(candidates), 0, -1):
        shared = [(sorted(set.intersection(*(usable[n] for n in group))), list(group))
                  for group in combinations(candidates, size)]
        shared = [s for s in shared if s[0]]
        if shared:
            images, group = max(shared, key=lambda s: len(s[0]))
            return group, images
    return [], []


def rank(images: list[ImageResult], names: list[str], target: str
         ) -> tuple[str, dict[str, str], list[dict]]:
    """Rank the methods ``names`` over ``images`` by the rules of the module docstring.

    ``target`` is the class name the scores are for (it only appears in the reasons). Sets each
    loaded image's ``left_out`` (why it is not ranked, or None) and each compared method's
    ``rank`` (1 = best, i.e. highest ``insertion_auc − deletion_auc``) and ``tied``, in place.
    Returns the verdict line, the methods not ranked with their reasons, and the summary rows
    (one per ranked method: its means over the compared images, ``rank``/``tied``), best first.
    """
    loaded = [img for img in images if img.error is None]
    for img in loaded:
        img.left_out = _no_signal(img, target)
    signal = [img for img in loaded if img.left_out is None]
    group, shared = _compared(signal, names)
    for i, img in enumerate(signal):
        by_name = {m.method: m for m in img.methods}
        if i not in shared:
            img.left_out = "not comparable: " + ", ".join(
                f"{by_name[n].title} {_unusable(by_name[n])}" for n in group
                if not _usable(by_name[n]))
            continue
        compared = [by_name[n] for n in group]
        ranks = tie_ranks([_gap(m) for m in compared])
        for m, r in zip(compared, ranks, strict=True):
            m.rank, m.tied = r, ranks.count(r) > 1

    if not loaded:
        none = "no image could be read"
    elif not any(m.faithfulness is not None for img in loaded for m in img.methods):
        none = "no method produced a map"
    elif not signal:
        none = "no image had a signal"
    elif not group:
        none = "no method has a usable map on an image with a signal"
    else:
        none = None
    verdict = f"no ranking: {none}" if none else (
        f"{len(group)} method{'s' * (len(group) != 1)} ranked on {len(shared)} of "
        f"{len(images)} image{'s' * (len(images) != 1)}, the same for every method")
    not_ranked = {}
    for n in names:
        if n in group:
            continue
        results = [m for img in loaded for m in img.methods if m.method == n]
        if results and all(m.skipped for m in results):
            not_ranked[n] = "skipped"
        elif not signal:
            not_ranked[n] = none
        elif any(_usable(m) for img in signal for m in img.methods if m.method == n):
            not_ranked[n] = "shares no image with a signal with the ranked methods"
        else:
            not_ranked[n] = "no usable map on an image with a signal"

    rows = []
    for n in group:
        done = [m for i in shared for m in signal[i].methods if m.method == n]
        f = [m.faithfulness for m in done]
        rows.append({
            "method": n, "title": METHODS[n].title, "images": len(done),
            "deletion_auc": float(np.mean([x["deletion_auc"] for x in f])),
            "insertion_auc": float(np.mean([x["insertion_auc"] for x in f])),
            "insertion_minus_deletion": float(np.mean([x["insertion_minus_deletion"]
                                                       for x in f])),
            "mean_rank": float(np.mean([m.rank for m in done])),
            "wins": sum(m.rank == 1 and not m.tied for m in done),
            "shared_wins": sum(m.rank == 1 and m.tied for m in done),
            "seconds": float(np.mean([m.seconds for m in done])),
            "faith_seconds": float(np.mean([m.faith_seconds for m in done])),
        })
    ranks = tie_ranks([r["insertion_minus_deletion"] for r in rows])
    for r, place in zip(rows, ranks, strict=True):
        r["rank"], r["tied"] = place, ranks.count(place) > 1
    rows.sort(key=lambda r: (r["rank"], -r["insertion_minus_deletion"]))
    return verdict, not_ranked, rows
