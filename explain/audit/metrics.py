"""Classification metrics for the audit, written with numpy alone, and their plots.

- ROC AUC is the Mann–Whitney statistic: the probability that a random positive scores above a
  random negative, ties counting one half (average ranks), which equals the trapezoidal area
  under the ROC curve.
- Precision, recall and F1 at a threshold count ``score >= threshold`` as a positive prediction;
  an undefined ratio (0/0) is reported as ``None``, never silently as 0.
- The confusion matrix has one row per true label and one column per predicted label.
- A rate k/n comes with its Wilson score interval at 95 % (z = 1.959964): the centre
  (k + z²/2)/(n + z²) ± z·sqrt(k(n−k)/n + z²/4)/(n + z²), which stays inside [0, 1] and keeps a
  width at k = 0 or k = n, unlike the normal approximation.
- The operating threshold is a distinct score of the labeled images. ``--target-precision P``
  takes the lowest one at which precision ≥ P (so the highest recall that keeps that precision);
  ``--target-recall R`` the highest one at which recall ≥ R (the highest precision that keeps
  that recall). Both are chosen on the same images they are measured on, so their intervals are
  a little optimistic.
- Calibration: ``bins`` equal-width score bins over [0, 1] (the last one closed); ECE = Σ_b
  (n_b / N)·|mean score_b − positive rate_b|; Brier score = mean (score − 1[positive])².
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from explain.errors import OptionError
from explain.files import atomic_write

Z95 = 1.959963984540054
CALIBRATION_BINS = 10


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def roc_auc(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray
            ) -> float | None:
    """Area under the ROC curve; ``None`` when only one class is present."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = average_ranks(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), one point per distinct score,
    starting at (0, 0)."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    order = np.argsort(-s, kind="mergesort")
    s, pos = s[order], pos[order]
    last = np.r_[s[1:] != s[:-1], True]
    tps = np.cumsum(pos)[last]
    fps = np.cumsum(~pos)[last]
    tpr = np.r_[0.0, tps / max(1, pos.sum())]
    fpr = np.r_[0.0, fps / max(1, (~pos).sum())]
    return fpr, tpr, np.r_[np.inf, s[last]]


def at_threshold(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray,
                 threshold: float) -> dict:
    """Counts and precision / recall / F1 / accuracy with ``score >= threshold`` as positive."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    pred = s >= threshold
    tp, fp = int((pred & pos).sum()), int((pred & ~pos).sum())
    fn, tn = int((~pred & pos).sum()), int((~pred & ~pos).sum())
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {"threshold": threshold, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": precision, "recall": recall, "f1": f1,
            "accuracy": _ratio(tp + tn, len(s)), "positives": int(pos.sum()),
            "negatives": int((~pos).sum())}


def wilson(k: int, n: int, z: float = Z95) -> tuple[float | None, float | None]:
    """The Wilson score interval of the rate ``k / n`` (95 % by default); (None, None) for
    n = 0."""
    if n <= 0:
        return None, None
    centre = (k + z * z / 2.0) / (n + z * z)
    half = z * math.sqrt(k * (n - k) / n + z * z / 4.0) / (n + z * z)
    return max(0.0, centre - half), min(1.0, centre + half)


def with_intervals(point: dict) -> dict:
    """``point`` (an :func:`at_threshold` result) with the Wilson 95 % bounds of its precision
    and recall as ``precision_low``, ``precision_high``, ``recall_low``, ``recall_high``."""
    tp, fp, fn = point["tp"], point["fp"], point["fn"]
    point["precision_low"], point["precision_high"] = wilson(tp, tp + fp)
    point["recall_low"], point["recall_high"] = wilson(tp, tp + fn)
    return point


def operating_threshold(scores: Sequence[float] | np.ndarray,
                        positive: Sequence[bool] | np.ndarray, *,
                        precision: float | None = None, recall: float | None = None) -> float:
    """The threshold that meets a target precision or recall on these labeled scores (the rule
    is in the module docstring); :class:`~explain.errors.OptionError` when no threshold meets
    it, naming the best that one does."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    if pos.sum() == 0:
        raise OptionError("a target precision or recall needs labeled images of the target "
                          "class; none was scored")
    order = np.argsort(-s, kind="mergesort")
    s, pos = s[order], pos[order]
    last = np.r_[s[1:] != s[:-1], True]
    thresholds = s[last]
    tps, fps = np.cumsum(pos)[last], np.cumsum(~pos)[last]
    if precision is not None:
        prec = tps / (tps + fps)
        ok = np.flatnonzero(prec >= precision - 1e-12)
        if len(ok) == 0:
            best = int(prec.argmax())
            raise OptionError(f"no threshold reaches precision {precision:g} on these "
                              f"{len(s)} labeled images (the highest is {prec[best]:.4f}, at "
                              f"{thresholds[best]:.6g}); lower --target-precision")
        return float(thresholds[ok[-1]])
    if recall is None:
        raise ValueError("give a target precision or a target recall")
    rec = tps / pos.sum()
    return float(thresholds[int(np.flatnonzero(rec >= recall - 1e-12)[0])])


def calibration(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray,
                bins: int = CALIBRATION_BINS) -> dict:
    """``ece``, its ``bins`` (low, high, n, mean score, positive rate with its Wilson interval;
    empty bins kept with n = 0) and the ``brier`` score of the labeled scores."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        k = int(y[inside].sum())
        mean = float(s[inside].mean()) if n else None
        rate = k / n if n else None
        low, high = wilson(k, n)
        if n:
            ece += n / len(s) * abs(mean - rate)  # type: ignore[operator]
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": n,
                     "positives": k, "mean_score": mean, "positive_rate": rate,
                     "positive_rate_low": low, "positive_rate_high": high})
    return {"ece": float(ece) if len(s) else None, "bins": rows,
            "brier": float(np.mean((s - y) ** 2)) if len(s) else None}


def confusion_matrix(true: Sequence[str], predicted: Sequence[str], labels: Sequence[str]
                     ) -> np.ndarray:
    """Counts, rows = true label, columns = predicted label, both in the order of ``labels``."""
    index = {name: i for i, name in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(true, predicted, strict=True):
        matrix[index[t], index[p]] += 1
    return matrix


def _figure(width: float, height: float) -> tuple[object, object]:
    """A matplotlib figure and axes without pyplot (no global state, no display needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.subplots()


def _save(fig: object, path: str | os.PathLike, legend: str) -> Path:
    ax = fig.axes[0]  # type: ignore[attr-defined]
    ax.set_xlim(0, 1)
    ax.legend(loc=legend, fontsize=8)
    fig.tight_layout()  # type: ignore[attr-defined]
    out = Path(path)
    with atomic_write(out) as f:
        fig.savefig(f, format="png")  # type: ignore[attr-defined]
    return out


def histogram_png(path: str | os.PathLike, scores_by_label: dict[str, np.ndarray],
                  threshold: float, target: str, bins: int = 50) -> Path:
    """Overlaid score histograms, one per true label, with the threshold marked (a symlog count
    axis above 1000 images, so that a small class stays visible)."""
    fig, ax = _figure(6.4, 3.6)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for label, scores in scores_by_label.items():
        ax.hist(scores, bins=edges, histtype="step", linewidth=1.6,
                label=f"{label} ({len(scores)})")
    ax.axvline(threshold, color="#444", linestyle="--", linewidth=1,
               label=f"threshold {threshold:g}")
    ax.set_xlabel(f"p({target})")
    ax.set_ylabel("images")
    if sum(len(s) for s in scores_by_label.values()) > 1000:
        ax.set_yscale("symlog", linthresh=10)
    else:
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path, "upper center")


def roc_png(path: str | os.PathLike, fpr: np.ndarray, tpr: np.ndarray, auc: float) -> Path:
    """The ROC curve with its area in the legend."""
    fig, ax = _figure(3.6, 3.6)
    ax.plot(fpr, tpr, linewidth=1.6, label=f"AUC {auc:.4f}")
    ax.plot([0, 1], [0, 1], color="#aaa", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_ylim(0, 1.01)
    return _save(fig, path, "lower right")


def reliability_png(path: str | os.PathLike, bins: list[dict], ece: float, brier: float,
                    target: str) -> Path:
    """The reliability diagram: each bin's positive rate (with its Wilson interval) against its
    mean score, the diagonal of perfect calibration, and the bins' image counts below."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6, 4.4), dpi=100)
    ax, counts = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    full = [b for b in bins if b["n"]]
    x = np.array([b["mean_score"] for b in full])
    y = np.array([b["positive_rate"] for b in full])
    err = np.array([[b["positive_rate"] - b["positive_rate_low"] for b in full],
                    [b["positive_rate_high"] - b["positive_rate"] for b in full]])
    ax.plot([0, 1], [0, 1], color="#aaa", linestyle=":", linewidth=1, label="calibrated")
    ax.errorbar(x, y, yerr=err, marker="o", markersize=4, linewidth=1.4, capsize=2,
                label=f"ECE {ece:.3f} · Brier {brier:.3f}")
    ax.set_ylabel(f"share truly {target}")
    ax.set_ylim(0, 1.01)
    ax.legend(loc="best", fontsize=8)
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    counts.bar(centres, [b["n"] for b in bins], width=1.0 / len(bins) * 0.9, color="#8aa")
    counts.set_xlabel(f"p({target}), {len(bins)} bins")
    counts.set_ylabel("images")
    counts.set_xlim(0, 1)
    fig.tight_layout()
    out = Path(path)
    with atomic_write(out) as f:
        fig.savefig(f, format="png")
    return out
