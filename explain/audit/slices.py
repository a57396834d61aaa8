"""Slices of the labeled data, each with its error rates, Wilson intervals and a flag when it
fails beyond chance.

A *slice* is a (family, value) pair; an image can be in several slices of one family:

- ``folder``: the image's folder relative to the dataset's root (the manifest's folder for a
  manifest);
- every extra column of a manifest (``source``, ``skin_tone``, …): its non-empty values; a
  column with more than :data:`MAX_VALUES` distinct values (an id) is left out, with a note;
- ``part``: each part the detector found in the image (NudeNet's classes);
- ``property``: the image properties below, measured once when the image is decoded for scoring
  (:func:`image_properties`, on the image shrunk to at most :data:`PROPERTY_SIDE` px on its long
  side, luma Y = 0.299 R + 0.587 G + 0.114 B on 0–255):

  - ``grayscale``: the mean over pixels of max(R, G, B) − min(R, G, B) is below
    :data:`GRAY_CHROMA` (JPEG noise in a gray picture stays under it; a sepia photo does not);
  - ``small``: the original's shorter side is under :data:`SMALL_SIDE` px (the model upsamples
    it);
  - ``extreme aspect``: long side / short side ≥ :data:`EXTREME_ASPECT`;
  - ``dark`` / ``bright``: mean luma below :data:`DARK_LUMA` / above :data:`BRIGHT_LUMA`;
  - ``collage``: a straight seam across the whole picture: some boundary between two rows (or
    two columns) between 20 % and 80 % of the height (width) where the luma jumps by more than
    :data:`SEAM_JUMP` levels along at least :data:`SEAM_SHARE` of its length (panels put side
    by side; a photo's edges are rarely that straight and long).

Per slice, at the operating threshold: ``n``, ``positives``, precision, recall, FPR
(= FP / negatives) and FNR (= FN / positives), each with its Wilson 95 % interval
(:func:`explain.audit.metrics.wilson`). **Flagged**: a slice whose FPR (or FNR) is higher than
that of the labeled images outside it, by a one-sided Fisher exact test on the 2×2 table
(slice vs rest × error vs correct), after a Benjamini–Hochberg correction over every test made
(two per slice where both rates are defined) at a false discovery rate of :data:`FDR`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np

from explain.audit.metrics import wilson

PROPERTY_SIDE = 256
GRAY_CHROMA = 6.0
SMALL_SIDE = 224
EXTREME_ASPECT = 2.0
DARK_LUMA = 40.0
BRIGHT_LUMA = 215.0
SEAM_JUMP = 24.0
SEAM_SHARE = 0.8
MAX_VALUES = 100
FDR = 0.05
RATES = ("precision", "recall", "fpr", "fnr")
COLUMNS = ("slice", "value", "n", "positives", "tp", "fp", "fn", "tn",
           *(f"{r}{s}" for r in RATES for s in ("", "_low", "_high")),
           "fpr_p", "fpr_q", "fnr_p", "fnr_q", "flagged")


def image_properties(rgb: np.ndarray) -> dict[str, float]:
    """The measures the ``property`` slices are decided on (module docstring): ``chroma``,
    ``luma`` and ``seam`` (the largest share of a straight boundary with a jump); the original
    size is stored beside them, and for a clip the index of the frame it was judged by
    (``frame``), so that later steps read that frame without scoring the clip again."""
    h, w = rgb.shape[:2]
    scale = min(1.0, PROPERTY_SIDE / max(h, w))
    small = rgb if scale == 1.0 else cv2.resize(
        rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    small = small.astype(np.float32)
    chroma = float((small.max(axis=2) - small.min(axis=2)).mean())
    luma = small @ np.array([0.299, 0.587, 0.114], np.float32)
    seam = 0.0
    for g in (luma, luma.T):
        rows = g.shape[0]
        lo, hi = int(np.ceil(0.2 * rows)), int(np.floor(0.8 * rows))
        if hi > lo and g.shape[1] > 1:
            jumps = np.abs(g[lo:hi] - g[lo - 1:hi - 1]) > SEAM_JUMP
            seam = max(seam, float(jumps.mean(axis=1).max()))
    return {"chroma": round(chroma, 3), "luma": round(float(luma.mean()), 3),
            "seam": round(seam, 4)}


def properties_of(props: dict, height: int, width: int) -> list[str]:
    """The ``property`` slices an image is in, from its stored measures and size."""
    out = []
    if props["chroma"] < GRAY_CHROMA:
        out.append("grayscale")
    if min(height, width) < SMALL_SIDE:
        out.append("small")
    if max(height, width) / max(1, min(height, width)) >= EXTREME_ASPECT:
        out.append("extreme aspect")
    if props["luma"] < DARK_LUMA:
        out.append("dark")
    if props["luma"] > BRIGHT_LUMA:
        out.append("bright")
    if props["seam"] >= SEAM_SHARE:
        out.append("collage")
    return out


@dataclass
class Labeled:
    """One labeled scored image as the slices see it: whether it is of the target class,
    whether it is called so at the threshold, and the slices it is in."""

    path: str
    label: str
    positive: bool
    called: bool
    score: float
    slices: list[tuple[str, str]] = field(default_factory=list)
    frame: int | None = None

    @property
    def outcome(self) -> str:
        """TP, FP, FN or TN at the threshold."""
        return ("T" if self.called == self.positive else "F") + ("P" if self.called else "N")


def _counts(members: Iterable[Labeled]) -> tuple[int, int, int, int]:
    tp = fp = fn = tn = 0
    for x in members:
        if x.positive:
            tp, fn = tp + x.called, fn + (not x.called)
        else:
            fp, tn = fp + x.called, tn + (not x.called)
    return tp, fp, fn, tn


def _rates(tp: int, fp: int, fn: int, tn: int) -> dict:
    out: dict = {}
    for name, k, n in (("precision", tp, tp + fp), ("recall", tp, tp + fn),
                       ("fpr", fp, fp + tn), ("fnr", fn, fn + tp)):
        out[name] = k / n if n else None
        out[f"{name}_low"], out[f"{name}_high"] = wilson(k, n)
    return out


def fisher_greater(errors: int, correct: int, rest_errors: int, rest_correct: int
                   ) -> float | None:
    """One-sided Fisher exact p-value that the slice's error rate is above the rest's; None
    when either side has no image to judge."""
    if errors + correct == 0 or rest_errors + rest_correct == 0:
        return None
    from scipy.stats import fisher_exact

    return float(fisher_exact([[errors, correct], [rest_errors, rest_correct]],
                              alternative="greater")[1])


def benjamini_hochberg(pvalues: list[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (q-values), in the order given."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out.tolist()


def slice_table(images: list[Labeled]) -> list[dict]:
    """One row per slice (columns :data:`COLUMNS`), flagged slices first (smallest q first),
    then by family and size."""
    members: dict[tuple[str, str], list[Labeled]] = {}
    for x in images:
        for key in dict.fromkeys(x.slices):
            members.setdefault(key, []).append(x)
    total = _counts(images)
    rows, tests = [], []
    for (family, value), inside in members.items():
        tp, fp, fn, tn = _counts(inside)
        rtp, rfp, rfn, rtn = (a - b for a, b in zip(total, (tp, fp, fn, tn), strict=True))
        row = {"slice": family, "value": value, "n": len(inside), "positives": tp + fn,
               "tp": tp, "fp": fp, "fn": fn, "tn": tn, **_rates(tp, fp, fn, tn)}
        row["fpr_p"] = fisher_greater(fp, tn, rfp, rtn)
        row["fnr_p"] = fisher_greater(fn, tp, rfn, rtp)
        row["fpr_q"] = row["fnr_q"] = None
        tests += [(len(rows), kind) for kind in ("fpr", "fnr") if row[f"{kind}_p"] is not None]
        rows.append(row)
    for (i, kind), q in zip(tests, benjamini_hochberg([rows[i][f"{kind}_p"] for i, kind in tests]),
                            strict=True):
        rows[i][f"{kind}_q"] = q
    for row in rows:
        worse = [kind for kind in ("fpr", "fnr")
                 if row[f"{kind}_q"] is not None and row[f"{kind}_q"] <= FDR]
        row["flagged"] = "+".join(worse)

    def order(row: dict) -> tuple:
        qs = [q for q in (row["fpr_q"], row["fnr_q"]) if q is not None]
        return (not row["flagged"], min(qs) if row["flagged"] else 0.0, row["slice"],
                -row["n"], row["value"])

    return sorted(rows, key=order)


def families(values: dict[str, dict[str, str]]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The manifest columns kept as slice families (``values``: column → path → value), and a
    note for each left out for having more than :data:`MAX_VALUES` distinct values."""
    kept, notes = {}, []
    for column, by_path in values.items():
        distinct = {v for v in by_path.values() if v != ""}
        if len(distinct) > MAX_VALUES:
            notes.append(f"manifest column {column!r} has {len(distinct)} distinct values (over "
                         f"{MAX_VALUES}): not used as a slice")
        elif distinct:
            kept[column] = by_path
    return kept, notes
