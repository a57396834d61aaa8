"""Classification metrics for the audit, written with numpy alone, and their plots.

- ROC AUC is the Mann–Whitney statistic: the probability that a random positive scores above a
  random negative, ties counting one half (average ranks), which equals the trapezoidal area
  under the ROC curve.
- Precision, recall and F1 at a threshold count ``score >= threshold`` as a positive prediction;
  an undefined ratio (0/0) is reported as ``None``, never silently as 0.
- The confusion matrix has one row per true label and one column per predicted label.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from explain.files import atomic_write


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
