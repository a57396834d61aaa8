"""The audit's outputs, rebuilt from the store on every call (cheap, and always consistent):

``scores.csv`` (one row per scored image), ``errors.csv`` (path, reason), ``parts.csv`` (one row
per detected part), ``concepts.csv`` (per group and concept: count, image share, mean score drop,
mean heat share, mean area share), ``cues.csv`` and ``cue_patches.csv`` (the discovered cues and
their patches, with a patch mosaic and two paste examples per cue under ``cues/``),
``slices.csv``, ``label_issues.csv`` and ``error_clusters.csv`` (what
:mod:`explain.audit.findings` finds), ``metrics.json`` (the operating threshold, the metrics with
their intervals, calibration, the findings' counts, the summary) and ``summary.md``,
``histogram.png``, ``roc.png`` and ``reliability.png``, the similarity mosaic
``grid.png`` + ``grid.json`` (when :mod:`explain.grid` is installed), and ``audit.html``: one
self-contained page. This module writes the CSVs and gathers what the page shows; the page and
the pictures are :mod:`explain.audit.page`'s.

Every file is written atomically (:mod:`explain.files`). In the CSVs paths are in the lossless
strict-UTF-8 form of :func:`explain.files.to_storable` and every text cell goes through
:func:`csv_cell`, so that a class name or file name such as ``=HYPERLINK(…)`` is not a formula
in a spreadsheet; the page shows names through :func:`explain.files.display`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from explain.audit import metrics as m
from explain.audit.cues import Cues
from explain.audit.dataset import Dataset
from explain.audit.findings import Findings, find, summary, write_summary
from explain.audit.options import AuditOptions
from explain.audit.page import cue_section, write_mosaic, write_page, write_plots
from explain.audit.result import AuditResult
from explain.audit.slices import COLUMNS
from explain.audit.store import Store
from explain.files import atomic_write, display, from_storable, write_text
from explain.models import Classifier

HTML_ERRORS = 500


@dataclass(frozen=True)
class Group:
    """A set of images that concept statistics are aggregated over: its title, and the store's
    selection (:data:`explain.audit.schema.SELECTIONS`) with its parameters."""

    name: str
    selection: str
    args: tuple


def groups(labels: list[str], target: str, threshold: float) -> list[Group]:
    """False positives and every non-target label, then false negatives and the target label;
    for unlabeled data, all images and those at or above the threshold."""
    if not labels:
        return [Group("all images", "all", ()),
                Group(f"score ≥ {threshold:g}", "at_or_above", (threshold,))]
    out = [Group("false positives", "fp", (target, threshold))]
    out += [Group(f"all {label}", "label", (label,)) for label in labels if label != target]
    if target in labels:
        out += [Group("false negatives", "fn", (target, threshold)),
                Group(f"all {target}", "label", (target,))]
    return out


def concept_table(store: Store, group: Group) -> tuple[int, list[dict]]:
    """(images in the group with parts detected, per-concept statistics sorted by mean drop)."""
    n_images, rows = store.concept_stats(group.selection, group.args)
    keys = ("concept", "parts", "images", "mean_score_drop", "mean_heat_share", "heat_parts",
            "mean_area_share", "mean_confidence")
    table = [dict(zip(keys, r, strict=True)) for r in rows]
    for row in table:
        row["image_share"] = row["images"] / n_images if n_images else None
    return n_images, table


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A CSV cell that no spreadsheet runs as a formula: text starting with ``= + - @``, a tab or
    a carriage return gets a leading single quote (numbers, also as text, are kept); a NUL,
    which CSV readers refuse, is written ``\\x00`` (paths never hold one: see
    :func:`explain.files.to_storable`)."""
    if isinstance(value, str) and "\x00" in value:
        value = value.replace("\x00", "\\x00")
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


class CsvRows:
    """A ``csv.writer`` whose every cell goes through :func:`csv_cell`."""

    def __init__(self, f: object) -> None:
        self._writer = csv.writer(f)  # type: ignore[arg-type]

    def writerow(self, row: Iterable[object]) -> None:
        self._writer.writerow([csv_cell(v) for v in row])


@contextmanager
def csv_file(path: Path) -> Iterator[CsvRows]:
    """A CSV output written atomically, its cells neutralised."""
    with atomic_write(path, "w", newline="") as f:
        yield CsvRows(f)


def _predicted(probs: list[float], class_names: list[str], t: int, threshold: float) -> str:
    """The target at or above the threshold, else the likeliest other class (a model of one
    output column is read as two classes, ``not-TARGET`` and ``TARGET``:
    :func:`explain.models.base.check_scores`)."""
    if probs[t] >= threshold:
        return class_names[t]
    others = [i for i in range(len(probs)) if i != t]
    return class_names[max(others, key=lambda i: probs[i])]


def _outcome(label: str | None, predicted: str, target: str) -> str:
    if label is None:
        return ""
    positive, called = label == target, predicted == target
    return {(True, True): "TP", (False, True): "FP", (True, False): "FN",
            (False, False): "TN"}[(positive, called)]


def write_scores(store: Store, path: Path, class_names: list[str], target: str,
                 threshold: float) -> dict:
    """``scores.csv``, streamed from the store; returns what the metrics need."""
    t = class_names.index(target)
    labels: list[str | None] = []
    scores: list[float] = []
    predicted: list[str] = []
    with csv_file(path) as writer:
        writer.writerow(["path", "label", "score", "predicted", "outcome", "height", "width",
                         *(f"p_{name}" for name in class_names), "warnings"])
        for p, label, score, probs, h, w, notes in store.score_rows():
            values = json.loads(probs)
            pred = _predicted(values, class_names, t, threshold)
            writer.writerow([p, label or "", f"{score:.6f}", pred, _outcome(label, pred, target),
                             h, w, *(f"{v:.6f}" for v in values), notes or ""])
            labels.append(label)
            scores.append(score)
            predicted.append(pred)
    return {"labels": labels, "scores": np.array(scores, dtype=np.float64),
            "predicted": predicted}


def write_errors(store: Store, path: Path) -> list[tuple[str, str]]:
    """``errors.csv``; returns the first :data:`HTML_ERRORS` rows for the page (as display
    text)."""
    shown = []
    with csv_file(path) as writer:
        writer.writerow(["path", "reason", "warnings"])
        for p, reason, notes in store.errors():
            writer.writerow([p, reason, notes])
            if len(shown) < HTML_ERRORS:
                text = display(reason) + (f" (warnings: {display(notes)})" if notes else "")
                shown.append((display(from_storable(p)), text))
    return shown


def write_parts(store: Store, path: Path) -> None:
    """``parts.csv``: one row per detected part, in image then part order."""
    with csv_file(path) as writer:
        writer.writerow(["path", "label", "score", "part", "concept", "confidence", "top", "left",
                         "bottom", "right", "area_share", "score_drop", "heat_share"])
        for row in store.part_rows():
            writer.writerow(["" if v is None else v for v in row])


def write_concepts(store: Store, path: Path, group_list: list[Group]) -> list[dict]:
    """``concepts.csv``; returns the groups with their tables for the page."""
    out = []
    with csv_file(path) as writer:
        writer.writerow(["group", "group_images", "concept", "parts", "images", "image_share",
                         "mean_score_drop", "mean_heat_share", "heat_parts", "mean_area_share",
                         "mean_confidence"])
        for group in group_list:
            n, table = concept_table(store, group)
            out.append({"name": group.name, "images": n, "concepts": table})
            for r in table:
                writer.writerow([group.name, n, r["concept"], r["parts"], r["images"],
                                 _num(r["image_share"]), _num(r["mean_score_drop"]),
                                 _num(r["mean_heat_share"]), r["heat_parts"],
                                 _num(r["mean_area_share"]), _num(r["mean_confidence"])])
    return out


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def operating_rule(o: AuditOptions) -> str:
    """How the operating threshold was chosen, in words."""
    if o.target_precision is not None:
        return f"the lowest threshold with precision ≥ {o.target_precision:g} on these labels"
    if o.target_recall is not None:
        return f"the highest threshold with recall ≥ {o.target_recall:g} on these labels"
    return "fixed by --threshold"


def compute_metrics(seen: dict, target: str, threshold: float, class_names: list[str]) -> dict:
    """Metrics over the labeled scored images (empty when none is labeled): the counts and
    rates at ``threshold`` with the Wilson intervals of precision and recall, ROC AUC, the
    confusion matrix, ECE with its bins and the Brier score."""
    labeled = [i for i, lab in enumerate(seen["labels"]) if lab is not None]
    if not labeled:
        return {}
    scores = seen["scores"][labeled]
    true = [seen["labels"][i] for i in labeled]
    positive = np.array([lab == target for lab in true])
    out = m.with_intervals(m.at_threshold(scores, positive, threshold))
    out["auc"] = m.roc_auc(scores, positive)
    calibrated = m.calibration(scores, positive)
    out["ece"], out["brier"] = calibrated["ece"], calibrated["brier"]
    out["calibration_bins"] = calibrated["bins"]
    columns = list(class_names)
    rows = [c for c in columns if c in set(true)]
    out["confusion_labels"] = rows
    out["confusion_columns"] = columns
    matrix = m.confusion_matrix(true, [seen["predicted"][i] for i in labeled], columns)
    out["confusion"] = [matrix[columns.index(r)].tolist() for r in rows]
    out["labeled"] = len(labeled)
    return out


def write_cue_tables(folder: Path, cues: Cues) -> dict[str, Path]:
    """``cues.csv`` (one row per cue) and ``cue_patches.csv`` (one row per patch) in
    ``folder``; returns them by name."""
    files = {"cues": folder / "cues.csv", "cue_patches": folder / "cue_patches.csv"}
    with csv_file(files["cues"]) as writer:
        writer.writerow(["cue", "rank", "strength", "patches", "fp_images", "fp_share",
                         "tn_share", "tp_share", "mean_drop", "paste_gain", "paste_images",
                         "paste_pairs"])
        for c in cues.cues:
            writer.writerow([c.cue, c.rank, f"{c.strength:.6f}", len(c.patches), c.fp_images,
                             _num(c.fp_share), _num(c.tn_share), _num(c.tp_share),
                             _num(c.mean_drop), _num(c.paste_gain), c.paste_images,
                             len(c.pastes)])
    with csv_file(files["cue_patches"]) as writer:
        writer.writerow(["cue", "rank", "path", "role", "top", "left", "bottom", "right", "heat",
                         "drop"])
        for c in cues.cues:
            for p in c.patches:
                writer.writerow([c.cue, c.rank, cues.images[p.image].name, p.role, *p.box,
                                 f"{p.heat:.6f}", f"{p.drop:.6f}"])
    return files


def csv_value(value: object) -> object:
    """A cell of the findings' CSVs: empty for None, a float to 6 significant digits (p-values
    are small)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_table(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> Path:
    """A CSV of ``columns`` with one line per row (a dict with those keys, each cell through
    :func:`csv_value`)."""
    with csv_file(path) as writer:
        writer.writerow(columns)
        for row in rows:
            writer.writerow([csv_value(row[c]) for c in columns])
    return path


def write_slices(path: Path, rows: list[dict]) -> None:
    """``slices.csv``: one row per slice, flagged first."""
    write_table(path, COLUMNS, rows)


def write_label_issues(path: Path, found: Findings) -> None:
    """``label_issues.csv``: path, label, score, rank, the probability of the given label under
    the probabilities used, the model's outcome at the threshold and where the probabilities
    came from."""
    with csv_file(path) as writer:
        writer.writerow(["path", "label", "score", "rank", "given_label_probability",
                         "outcome", "probabilities"])
        for row in found.issues:
            writer.writerow([row["path"], row["label"], f"{row['score']:.6f}",
                             row["rank"], f"{row['given_label_probability']:.6f}",
                             row["outcome"], found.issue_source])


def write_clusters(path: Path, found: Findings) -> None:
    """``error_clusters.csv``: one row per cluster of errors."""
    with csv_file(path) as writer:
        writer.writerow(["kind", "cluster", "errors", "region_images", "region_errors",
                         "error_rate", "error_rate_low", "error_rate_high", "cue", "cue_share",
                         *(f"exemplar_{k}" for k in range(1, 5))])
        for c in found.clusters:
            exemplars = [found.images[i].path for i in c.exemplars]
            writer.writerow([c.kind, c.cluster, len(c.members), c.region, c.region_errors,
                             *(csv_value(v) for v in (c.error_rate, *c.interval, c.cue,
                                                      c.cue_share)),
                             *(exemplars + [""] * (4 - len(exemplars)))])



def write_outputs(store: Store, folder: Path, *, classifier: Classifier, target: str,
                  class_names: list[str], options: AuditOptions, targets: list,
                  labels: list[str], notes: list[str], seconds: dict[str, float],
                  cues: Cues | None = None, dataset: Dataset | None = None,
                  embedded: tuple[dict, str] | None = None) -> AuditResult:
    """Every output file of the run in ``folder``, rebuilt from ``store``: ``targets`` are the
    (kind, row) pairs that got a heatmap, ``labels`` the true labels seen (empty: unlabeled),
    ``notes`` and ``seconds`` go on the page, ``dataset`` gives the slices' folders and manifest
    columns, ``embedded`` = (image id → vector, what they are) the label issues' and error
    clusters' embeddings; returns the :class:`AuditResult` (its ``seconds`` and ``cues`` left
    for the caller to fill)."""
    o = options
    files = {name: folder / f"{name}.csv" for name in ("scores", "errors", "concepts", "parts")}
    seen = write_scores(store, files["scores"], class_names, target, o.threshold)
    errors = write_errors(store, files["errors"])
    group_list = groups(labels, target, o.threshold)
    concept_groups = write_concepts(store, files["concepts"], group_list) if o.concepts else []
    if o.concepts:
        write_parts(store, files["parts"])
    else:
        for name in ("parts", "concepts"):
            files.pop(name).unlink(missing_ok=True)
    cue_pictures = None
    if cues is not None:
        files.update(write_cue_tables(folder, cues))
        cue_pictures = cue_section(folder, cues)
    else:
        for name in ("cues.csv", "cue_patches.csv"):
            (folder / name).unlink(missing_ok=True)
    metrics_ = compute_metrics(seen, target, o.threshold, class_names)
    found = None
    for name in ("slices", "label_issues", "error_clusters"):
        (folder / f"{name}.csv").unlink(missing_ok=True)
    if metrics_:
        vectors, embedding = embedded if embedded is not None else (None, None)
        found = find(store, dataset, target, o.threshold, vectors=vectors, embedding=embedding,
                     cues=cues, label_issues=o.label_issues, clusters=o.clusters,
                     seed=o.cue_options.seed)
        files["slices"] = folder / "slices.csv"
        write_slices(files["slices"], found.slices)
        if found.issue_source is not None:
            files["label_issues"] = folder / "label_issues.csv"
            write_label_issues(files["label_issues"], found)
        if found.clusters:
            files["error_clusters"] = folder / "error_clusters.csv"
            write_clusters(files["error_clusters"], found)
        notes = notes + found.notes
    files.update(write_plots(folder, seen, metrics_, target, o.threshold))
    mosaic, mosaic_notes = write_mosaic(store, folder, classifier, target,
                                        [row for _, row in targets], o.mosaic)
    if mosaic is not None:
        files["grid"] = folder / "grid.png"
    n_images = store.count()
    n_failed = store.count("failed")
    n_heat = store.heatmap_count()
    created = datetime.fromtimestamp(store.created(), timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rule = operating_rule(o)
    block = None
    (folder / "summary.md").unlink(missing_ok=True)
    if metrics_:
        metrics_["rule"] = rule
        block = summary(metrics_, found, model=store.params["model"],
                        data=str(dataset.labels_csv or dataset.root) if dataset is not None
                        else store.params["data"], images=n_images, created=created,
                        written=written, rule=rule)
        files["summary"] = write_summary(folder / "summary.md", block)
        metrics_["summary"] = {k: v for k, v in block.items() if k != "markdown"}
        metrics_["slices_flagged"] = block["flagged_slices"]
        if cues is not None:  # what `explain counterexamples` reads to find them in the store
            metrics_["cues"] = {"setting": cues.setting, "embedding": cues.embedding,
                                "options": asdict(o.cue_options)}
        metrics_["label_issues"] = len(found.issues) if found else 0
        metrics_["label_issue_probabilities"] = found.issue_source if found else None
        metrics_["error_clusters"] = [
            {"kind": c.kind, "cluster": c.cluster, "errors": len(c.members),
             "region_images": c.region, "error_rate": c.error_rate,
             "error_rate_low": c.interval[0], "error_rate_high": c.interval[1], "cue": c.cue}
            for c in (found.clusters if found else [])]
        files["metrics"] = write_text(folder / "metrics.json",
                                      json.dumps(metrics_, indent=1, default=str) + "\n")
    else:  # unlabeled: only the threshold the rankings used
        files["metrics"] = write_text(folder / "metrics.json", json.dumps(
            {"threshold": o.threshold, "rule": rule, "labeled": 0,
             "scored": len(seen["scores"])}, indent=1) + "\n")
    page = {
        "target": target, "threshold": o.threshold, "options": o, "images": n_images,
        "scored": len(seen["scores"]), "failed": n_failed,
        "unlabeled": sum(1 for lab in seen["labels"] if lab is None), "labels": labels,
        "metrics": metrics_, "seconds": seconds,
        "notes": [display(n) for n in notes + mosaic_notes], "concepts": concept_groups,
        "mosaic": mosaic, "errors": errors, "cues": cue_pictures, "rule": rule,
        "findings": found, "summary": block, "created": created, "written": written,
    }
    files["html"] = write_page(folder / "audit.html", store, page, targets=targets, files=files)
    return AuditResult(output=folder, run=store.run, key=store.key, resumed=store.resumed,
                       images=n_images, scored=len(seen["scores"]), failed=n_failed,
                       heatmaps=n_heat, threshold=o.threshold, metrics=metrics_, files=files)
