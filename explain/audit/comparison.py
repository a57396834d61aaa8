"""``explain compare``: two audits of the same images (two models, or two versions of one), side
by side, with no model call: everything is read from the two audit folders.

- **Same data.** Images are matched by the SHA-256 of their file (stored when each was scored;
  an image scored before the hash was kept is hashed from its file now), so that moved or renamed
  copies still match. The comparison runs on the intersection, whose size is reported; runs that
  share no image are refused. An image whose label differs between the runs is left out of the
  metrics (counted in the notes). Both runs must have the same target class.
- **Metrics** at two operating points: each run at its own threshold (what its ``metrics.json``
  records), and *matched FPR*: run A at its threshold, run B at the lowest of its scores at which
  its false positive rate on these images is at most A's (so B's recall and precision are read
  at the FPR A runs at). Precision, recall, FPR, F1, accuracy and ROC AUC, each with its delta
  (B − A) and a paired 95 % bootstrap interval: :data:`RESAMPLES` resamples of the matched
  labeled images with replacement (seeded; thresholds held fixed; the 2.5th and 97.5th
  percentiles of the resampled deltas, undefined resamples (0/0) left out).
- **McNemar's test** on the changed errors at each point: *fixed* (wrong under A, right under B)
  against *new* (right under A, wrong under B); two-sided exact binomial below
  :data:`EXACT_BELOW` changed errors, else χ² with continuity correction, (|b − c| − 1)² / (b + c).
- **Slices**: each slice of either run (folder, manifest column, parts present, image property:
  :mod:`explain.audit.slices`) with both runs' FPR, FNR and error rate at their own thresholds,
  the fixed and new errors, McNemar's p and a Benjamini–Hochberg q over the slices tested.
- **Outputs**: ``image_changes.csv`` (``path, label, score_a, score_b, error_a, error_b``, one
  row per matched image; the errors at each run's own threshold, empty for an unlabeled image),
  ``slice_changes.csv``, ``compare.json`` and ``compare.html`` (self-contained): the errors fixed,
  the new errors and the largest score changes, each with both runs' occlusion maps side by side
  on one colour scale where both runs drew one (an audit draws maps for its top-k errors only).
- **Cues** (:mod:`explain.audit.cue_changes`): each cue of run A re-measured under model B
  (the one step that calls a model: B's, reloaded from its run's recorded spec, and the shared
  patch embedder; kept in the output folder, so a resumed compare calls none), B's new cues,
  ``cue_changes.csv`` and the page's cue section.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from explain.audit.comparison_page import pair_pictures, write_page
from explain.audit.cue_changes import (
    CUE_COLUMNS,
    GAIN_FLOOR,
    VANISHED_SHARE,
    WEAKENED_SHARE,
    cue_changes,
)
from explain.audit.dataset import Dataset, open_dataset
from explain.audit.findings import labeled_images
from explain.audit.finished import Run, open_run
from explain.audit.outputs import csv_file, csv_value, write_table
from explain.audit.slices import benjamini_hochberg
from explain.errors import ExplainError, OptionError
from explain.files import check_output_dir, display, file_sha256, from_storable, write_text

RESAMPLES = 1000
EXACT_BELOW = 25
SHOWN = 12
CHUNK_VALUES = 2_000_000
METRICS = ("precision", "recall", "fpr", "f1", "accuracy")
IMAGE_COLUMNS = ("path", "label", "score_a", "score_b", "error_a", "error_b")
SLICE_COLUMNS = ("slice", "value", "n", "errors_a", "errors_b", "error_rate_a", "error_rate_b",
                 "error_rate_delta", "fpr_a", "fpr_b", "fnr_a", "fnr_b", "fixed", "new",
                 "mcnemar_p", "mcnemar_q")


@dataclass
class Pairs:
    """The images both runs scored, matched by content, as parallel arrays (A's paths)."""

    paths: list[str]
    labels: list[str | None]
    ids_a: np.ndarray
    ids_b: np.ndarray
    score_a: np.ndarray
    score_b: np.ndarray
    only_a: int
    only_b: int
    notes: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    """What :func:`compare` computed and wrote: ``summary`` is ``compare.json``'s content."""

    output: Path
    summary: dict
    files: dict[str, Path]


def _keyed(run: Run, notes: list[str], name: str) -> dict[tuple[str, int], tuple]:
    """(content hash, occurrence) → (id, stored path, label, score) of the run's scored images;
    an image without a stored hash is hashed from its file (one that cannot be read is left out,
    with a note)."""
    rows: dict[str, list[tuple]] = {}
    hashed = unreadable = 0
    for image, path, label, score, digest in run.store.content_rows():
        if digest is None:
            try:
                digest = file_sha256(from_storable(path))
                hashed += 1
            except OSError:
                unreadable += 1
                continue
        rows.setdefault(digest, []).append((image, path, label, score))
    if hashed:
        notes.append(f"run {name}: {hashed} image(s) were scored before audits kept a content "
                     "hash; they were hashed from their files now")
    if unreadable:
        notes.append(f"run {name}: {unreadable} image(s) have no stored content hash and their "
                     "file cannot be read; they are left out")
    return {(digest, k): row for digest, group in rows.items()
            for k, row in enumerate(sorted(group, key=lambda r: r[1]))}


def match(a: Run, b: Run) -> Pairs:
    """The images both runs scored, matched by content hash (module docstring);
    :class:`~explain.errors.OptionError` when they share none."""
    notes: list[str] = []
    left, right = _keyed(a, notes, "A"), _keyed(b, notes, "B")
    common = sorted(left.keys() & right.keys(), key=lambda k: left[k][0])
    if not common:
        raise OptionError(f"the audits in {display(a.folder)} ({len(left)} images) and "
                          f"{display(b.folder)} ({len(right)} images) share no image (matched "
                          "by file content); compare two audits of the same data")
    pa, pb = [left[k] for k in common], [right[k] for k in common]
    return Pairs(paths=[r[1] for r in pa], labels=[r[2] for r in pa],
                 ids_a=np.array([r[0] for r in pa]), ids_b=np.array([r[0] for r in pb]),
                 score_a=np.array([r[3] for r in pa], dtype=np.float64),
                 score_b=np.array([r[3] for r in pb], dtype=np.float64),
                 only_a=len(left) - len(common), only_b=len(right) - len(common), notes=notes)


def matched_threshold(scores: np.ndarray, positive: np.ndarray, fpr: float) -> float:
    """The lowest of ``scores`` at which the false positive rate (``score >= t`` among the
    negatives) is at most ``fpr``; just above the highest score when none is."""
    negatives = np.sort(scores[~positive])[::-1]
    if len(negatives) == 0:
        return float(scores.min())
    allowed = int(np.floor(fpr * len(negatives) + 1e-9))  # negatives that may be called
    candidates = np.unique(scores)[::-1]
    called = len(negatives) - np.searchsorted(negatives[::-1], candidates, side="left")
    ok = np.flatnonzero(called <= allowed)
    if len(ok) == 0:
        return float(np.nextafter(scores.max(), np.inf))
    return float(candidates[ok[-1]])


def _rates(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> dict:
    """The metrics of :data:`METRICS` from (arrays of) counts; NaN where a ratio is 0/0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"precision": tp / (tp + fp), "recall": tp / (tp + fn), "fpr": fp / (fp + tn),
                "f1": 2 * tp / (2 * tp + fp + fn), "accuracy": (tp + tn) / (tp + fp + fn + tn)}


def _counts(weights: np.ndarray, called: np.ndarray, positive: np.ndarray) -> tuple:
    """(tp, fp, fn, tn) of each row of ``weights`` (resample counts per image)."""
    return tuple(weights @ (c & p).astype(np.float64) for c, p in (
        (called, positive), (called, ~positive), (~called, positive), (~called, ~positive)))


def weighted_auc(weights: np.ndarray, scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC AUC (Mann–Whitney, ties one half) of each row of ``weights`` (image counts); NaN
    where a resample holds one class only."""
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    w = weights[:, order]
    pos = np.add.reduceat(w * positive[order], starts, axis=1)
    neg = np.add.reduceat(w * ~positive[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))


def mcnemar(fixed: int, new: int) -> dict:
    """McNemar's test on the changed errors (module docstring): ``p`` and the ``test`` used."""
    n = fixed + new
    if n == 0:
        return {"fixed": 0, "new": 0, "p": None, "test": "no changed errors"}
    from scipy.stats import binom, chi2

    if n < EXACT_BELOW:
        p = min(1.0, 2.0 * float(binom.cdf(min(fixed, new), n, 0.5)))
        test = "exact binomial"
    else:
        p = float(chi2.sf((abs(fixed - new) - 1) ** 2 / n, 1))
        test = "chi-square, continuity corrected"
    return {"fixed": fixed, "new": new, "p": p, "test": test}


def _value(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def paired_deltas(score_a: np.ndarray, score_b: np.ndarray, positive: np.ndarray,
                  points: dict[str, tuple[float, float]], *, resamples: int = RESAMPLES,
                  seed: int = 0) -> dict:
    """For each operating point (name → (threshold A, threshold B)): each metric of A and B, the
    delta B − A and its paired bootstrap interval, and McNemar's test; ``auc`` the same for ROC
    AUC (no threshold)."""
    n = len(positive)
    full = np.ones((1, n))
    called = {name: (score_a >= ta, score_b >= tb) for name, (ta, tb) in points.items()}
    draws: dict[str, dict[str, list]] = {name: {m: [] for m in METRICS} for name in points}
    auc_draws: list[np.ndarray] = []
    rng = np.random.default_rng(seed)
    step = max(1, CHUNK_VALUES // max(1, n))
    for start in range(0, resamples, step):
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(step, resamples - start))
        w = w.astype(np.float64)
        for name, (ca, cb) in called.items():
            ra, rb = _rates(*_counts(w, ca, positive)), _rates(*_counts(w, cb, positive))
            for m in METRICS:
                draws[name][m].append(rb[m] - ra[m])
        auc_draws.append(weighted_auc(w, score_b, positive) - weighted_auc(w, score_a, positive))

    def delta(a: float, b: float, sample: list[np.ndarray]) -> dict:
        values = np.concatenate(sample)
        values = values[~np.isnan(values)]
        low, high = (np.percentile(values, [2.5, 97.5]) if len(values) else (np.nan, np.nan))
        d = b - a
        return {"a": _value(a), "b": _value(b), "delta": _value(d), "low": _value(low),
                "high": _value(high), "resamples": int(len(values))}

    out: dict = {}
    for name, (ta, tb) in points.items():
        ca, cb = called[name]
        ra, rb = _rates(*_counts(full, ca, positive)), _rates(*_counts(full, cb, positive))
        error_a, error_b = ca != positive, cb != positive
        out[name] = {
            "threshold_a": ta, "threshold_b": tb,
            "metrics": {m: delta(float(ra[m][0]), float(rb[m][0]), draws[name][m])
                        for m in METRICS},
            "mcnemar": mcnemar(int((error_a & ~error_b).sum()), int((~error_a & error_b).sum())),
        }
    auc_a = weighted_auc(full, score_a, positive)[0]
    auc_b = weighted_auc(full, score_b, positive)[0]
    out["auc"] = delta(float(auc_a), float(auc_b), auc_draws)
    return out


def _dataset(params: dict) -> Dataset | None:
    """The run's data as its key recorded it (a folder, or a folder or file with a manifest),
    for the folder and manifest-column slices; None when it can no longer be opened."""
    root, _, rest = str(params.get("data", "")).partition(" labels=")
    labels = rest.rpartition(" rows=")[0] if rest else None
    try:
        return open_dataset(root, params.get("classes") or [], labels=labels or None)
    except ExplainError:
        return None


def _slices_of(run: Run, name: str, notes: list[str]) -> dict[int, set[tuple[str, str]]]:
    """Image id → the slices it is in, for the run's labeled images."""
    dataset = _dataset(run.store.params)
    if dataset is None:
        notes.append(f"run {name}: its data ({display(run.store.params.get('data', ''))}) can no "
                     "longer be opened; its folder and manifest-column slices are left out")
    images, ids, _ = labeled_images(run.store, dataset, run.target, run.threshold)
    return {i: set(x.slices) for i, x in zip(ids, images, strict=True)}


def slice_changes(a: Run, b: Run, pairs: Pairs, labeled: np.ndarray, positive: np.ndarray,
                  notes: list[str]) -> list[dict]:
    """One row per slice (:data:`SLICE_COLUMNS`) over the matched labeled images, smallest
    McNemar p first."""
    sa, sb = _slices_of(a, "A", notes), _slices_of(b, "B", notes)
    members: dict[tuple[str, str], list[int]] = {}
    for k in np.flatnonzero(labeled):
        for key in sa.get(int(pairs.ids_a[k]), set()) | sb.get(int(pairs.ids_b[k]), set()):
            members.setdefault(key, []).append(int(k))
    error_a = (pairs.score_a >= a.threshold) != positive
    error_b = (pairs.score_b >= b.threshold) != positive
    rows = []
    for (family, value), index in members.items():
        i = np.array(index)
        ea, eb, pos = error_a[i], error_b[i], positive[i]
        neg = ~pos

        def rate(errors: np.ndarray, among: np.ndarray) -> float | None:
            return float(errors[among].mean()) if among.any() else None

        test = mcnemar(int((ea & ~eb).sum()), int((~ea & eb).sum()))
        rows.append({"slice": family, "value": value, "n": len(i),
                     "errors_a": int(ea.sum()), "errors_b": int(eb.sum()),
                     "error_rate_a": float(ea.mean()), "error_rate_b": float(eb.mean()),
                     "error_rate_delta": float(eb.mean() - ea.mean()),
                     "fpr_a": rate(ea, neg), "fpr_b": rate(eb, neg),
                     "fnr_a": rate(ea, pos), "fnr_b": rate(eb, pos),
                     "fixed": test["fixed"], "new": test["new"], "mcnemar_p": test["p"],
                     "mcnemar_q": None})
    tested = [r for r in rows if r["mcnemar_p"] is not None]
    for row, q in zip(tested, benjamini_hochberg([r["mcnemar_p"] for r in tested]),
                      strict=True):
        row["mcnemar_q"] = q
    return sorted(rows, key=lambda r: (r["mcnemar_p"] is None, r["mcnemar_p"] or 0.0,
                                       r["slice"], -r["n"], r["value"]))


def write_image_changes(path: Path, pairs: Pairs, error_a: list, error_b: list) -> Path:
    """``image_changes.csv``: one row per matched image, in run A's order."""
    with csv_file(path) as writer:
        writer.writerow(IMAGE_COLUMNS)
        for k, p in enumerate(pairs.paths):
            writer.writerow([p, pairs.labels[k] or "", f"{pairs.score_a[k]:.6f}",
                             f"{pairs.score_b[k]:.6f}", csv_value(error_a[k]),
                             csv_value(error_b[k])])
    return path


def _run_summary(run: Run) -> dict:
    return {"folder": str(run.folder), "model": run.model, "key": run.key,
            "threshold": run.threshold, "target": run.target,
            "images": run.store.count("scored")}


def compare(run_a: str | os.PathLike, run_b: str | os.PathLike, output: str | os.PathLike, *,
            resamples: int = RESAMPLES, seed: int = 0, shown: int = SHOWN,
            cue_embed: str = "open-nsfw", model_b: object | None = None) -> Comparison:
    """Compare the audits in ``run_a`` and ``run_b`` (module docstring) and write the outputs
    into ``output``. ``resamples`` bootstrap resamples (seeded by ``seed``, which also seeds
    B's paste tests), ``shown`` images per list on the page; ``cue_embed`` the shared patch
    embedder (``open-nsfw`` or ``pixels``); ``model_b`` (a classifier or spec) replaces run B's
    recorded spec for the cue tests. Only the cue tests load a model."""
    if resamples < 100:
        raise OptionError(f"resamples must be at least 100 for a 95 % interval, got {resamples}")
    out = check_output_dir(output)
    for folder in (run_a, run_b):
        if Path(folder).resolve() == out.resolve():
            raise OptionError(f"the output folder {display(out)} is an audit being compared; "
                              "choose another -o")
    a = open_run(run_a)
    try:
        b = open_run(run_b)
    except ExplainError:
        a.store.close()
        raise
    try:
        return _compare(a, b, out, resamples, seed, shown, cue_embed, model_b)
    finally:
        a.store.close()
        b.store.close()


def _compare(a: Run, b: Run, out: Path, resamples: int, seed: int, shown: int,
             cue_embed: str, model_b: object | None) -> Comparison:
    if a.target != b.target:
        raise OptionError(f"run A's target class is {a.target!r} and run B's {b.target!r}; "
                          "compare two audits of the same target (--target)")
    pairs = match(a, b)
    notes = list(pairs.notes)
    n = len(pairs.paths)
    if pairs.only_a or pairs.only_b:
        notes.append(f"compared on the {n} images both runs scored; {pairs.only_a} only in run "
                     f"A, {pairs.only_b} only in run B")
    labels_b = {image: label for image, _, label, _, _ in b.store.content_rows()}
    disagree = [k for k in range(n)
                if pairs.labels[k] != labels_b.get(int(pairs.ids_b[k]))]
    if disagree:
        notes.append(f"{len(disagree)} matched image(s) carry different labels in the two runs; "
                     "they are left out of the metrics")
    labeled = np.array([lab is not None for lab in pairs.labels], dtype=bool)
    labeled[disagree] = False
    positive = np.array([lab == a.target for lab in pairs.labels], dtype=bool)
    error_a: list = [None] * n
    error_b: list = [None] * n
    for k in np.flatnonzero(labeled):
        error_a[k] = int((pairs.score_a[k] >= a.threshold) != positive[k])
        error_b[k] = int((pairs.score_b[k] >= b.threshold) != positive[k])
    files = {"image_changes": write_image_changes(out / "image_changes.csv", pairs, error_a,
                                                  error_b)}
    summary = {"run_a": _run_summary(a), "run_b": _run_summary(b), "matched": n,
               "only_a": pairs.only_a, "only_b": pairs.only_b,
               "labeled": int(labeled.sum()), "label_disagreements": len(disagree),
               "bootstrap": {"resamples": resamples, "seed": seed}}
    (out / "slice_changes.csv").unlink(missing_ok=True)
    if labeled.any():
        sa, sb, pos = pairs.score_a[labeled], pairs.score_b[labeled], positive[labeled]
        fpr_a = float(((sa >= a.threshold) & ~pos).sum() / max(1, (~pos).sum()))
        points = {"own_thresholds": (a.threshold, b.threshold),
                  "matched_fpr": (a.threshold, matched_threshold(sb, pos, fpr_a))}
        summary.update(paired_deltas(sa, sb, pos, points, resamples=resamples, seed=seed))
        rows = slice_changes(a, b, pairs, labeled, positive, notes)
        files["slice_changes"] = write_table(out / "slice_changes.csv", SLICE_COLUMNS, rows)
        summary["slices"] = rows
    else:
        notes.append("no matched image is labeled (with the same label in both runs): no "
                     "metrics, no errors fixed or new")
    to_a = {int(ib): int(ia) for ia, ib in zip(pairs.ids_a, pairs.ids_b, strict=True)}
    cues = cue_changes(a, b, to_a, out, seed=seed, embed=cue_embed, model_b=model_b)
    notes += cues.notes
    (out / "cue_changes.csv").unlink(missing_ok=True)
    if cues.reason is None:
        files["cue_changes"] = write_table(out / "cue_changes.csv", CUE_COLUMNS, cues.rows)
    summary["cues"] = {
        "embedding": cues.embedding, "reason": cues.reason, "model_calls": cues.calls,
        "thresholds": {"gain_floor": GAIN_FLOOR, "vanished_share": VANISHED_SHARE,
                       "weakened_share": WEAKENED_SHARE},
        "rows": [{k: v for k, v in r.items() if not k.startswith("thumbs")}
                 for r in cues.rows]}
    summary["notes"] = notes
    lists = change_lists(pairs, error_a, error_b, shown)
    if labeled.any():
        summary["changes"] = {name: len(lists[name]) for name in ("fixed", "new")}
    else:
        lists = {"largest": lists["largest"]}
    files["json"] = write_text(out / "compare.json",
                               json.dumps(summary, indent=1, default=str) + "\n")
    cards: dict[int, dict] = {}

    def card(k: int) -> dict:
        if k not in cards:
            found = [run.store.heatmap(int(ids[k])) for run, ids in ((a, pairs.ids_a),
                                                                      (b, pairs.ids_b))]
            maps = [None if h is None else (run.folder, h["npy"])
                    for run, h in zip((a, b), found, strict=True)]
            cards[k] = {"path": display(from_storable(pairs.paths[k])),
                        "label": pairs.labels[k],
                        "score_a": float(pairs.score_a[k]), "score_b": float(pairs.score_b[k]),
                        "error_a": error_a[k], "error_b": error_b[k],
                        **pair_pictures(pairs.paths[k], *maps)}
        return cards[k]

    page = {"a": summary["run_a"], "b": summary["run_b"], "s": summary, "notes": notes,
            "lists": [{"name": name, "total": len(index),
                       "cards": [card(k) for k in index[:shown]]}
                      for name, index in lists.items()],
            "slices": summary.get("slices", [])[:40], "cues": cues}
    files["html"] = write_page(out / "compare.html", page)
    return Comparison(output=out, summary=summary, files=files)


def change_lists(pairs: Pairs, error_a: list, error_b: list, shown: int) -> dict[str, list[int]]:
    """The matched images of each list on the page, largest score change first: ``fixed``
    (an error under A, right under B), ``new`` (the reverse) and ``largest`` (the ``shown``
    largest |score B − score A|); the first two hold every such image (the page shows the first
    ``shown``)."""
    change = np.abs(pairs.score_b - pairs.score_a)
    order = np.argsort(-change, kind="mergesort")
    fixed = [int(k) for k in order if error_a[k] == 1 and error_b[k] == 0]
    new = [int(k) for k in order if error_a[k] == 0 and error_b[k] == 1]
    return {"fixed": fixed, "new": new, "largest": [int(k) for k in order[:shown]]}


__all__ = ["Comparison", "Pairs", "Run", "compare", "match", "matched_threshold", "mcnemar",
           "open_run", "paired_deltas"]
