"""What the audit finds beyond the overall metrics, rebuilt from the store on every call with no
model call: the slices (``slices.csv``, :mod:`explain.audit.slices`), the label issues
(``label_issues.csv``, :mod:`explain.audit.label_issues`), the error clusters
(``error_clusters.csv``, :mod:`explain.audit.error_clusters`) and the summary a team can paste
into a transparency report (``summary.md``, and ``summary`` in ``metrics.json``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from explain.audit.cues import Cues
from explain.audit.dataset import Dataset
from explain.audit.error_clusters import ErrorCluster, error_clusters
from explain.audit.label_issues import find_issues
from explain.audit.slices import FDR, Labeled, families, properties_of, slice_table
from explain.audit.store import Store
from explain.errors import ExplainError
from explain.files import display, file_sha256, from_storable, write_text


@dataclass
class Findings:
    """The slices (rows of :data:`explain.audit.slices.COLUMNS`), the label issues (rows of
    ``label_issues.csv``), the error clusters, and the labeled images they index into."""

    images: list[Labeled]
    ids: list[int]
    slices: list[dict]
    issues: list[dict] = field(default_factory=list)
    issue_source: str | None = None
    clusters: list[ErrorCluster] = field(default_factory=list)
    embedding: str | None = None
    notes: list[str] = field(default_factory=list)


def _folder(path: str, base: Path) -> str:
    parent = os.path.dirname(from_storable(path))
    rel = os.path.relpath(parent, base)
    return "(top)" if rel == "." else rel


def labeled_images(store: Store, dataset: Dataset | None, target: str, threshold: float
                   ) -> tuple[list[Labeled], list[int], list[str]]:
    """The labeled scored images with the slices each is in (module docstring of
    :mod:`explain.audit.slices`), their store ids, and notes on manifest columns left out."""
    parts: dict[int, list[str]] = {}
    for image, concept in store.part_concepts():
        parts.setdefault(image, []).append(concept)
    columns, notes = families(dataset.columns() if dataset is not None else {})
    base = dataset.base if dataset is not None else None
    images, ids = [], []
    for image, path, label, score, h, w, props in store.slice_rows():
        x = Labeled(path, label, label == target, score >= threshold, score)
        if base is not None:
            x.slices.append(("folder", _folder(path, base)))
        for column, by_path in columns.items():
            value = by_path.get(path, "")
            if value:
                x.slices.append((column if column not in ("folder", "part", "property")
                                 else f"column {column}", value))
        x.slices += [("part", c) for c in parts.get(image, [])]
        if props is not None:
            measures = json.loads(props)
            x.slices += [("property", p) for p in properties_of(measures, h, w)]
            x.frame = measures.get("frame")
        images.append(x)
        ids.append(image)
    return images, ids, notes


def find(store: Store, dataset: Dataset | None, target: str, threshold: float, *,
         vectors: dict[int, np.ndarray] | None = None, embedding: str | None = None,
         cues: Cues | None = None, label_issues: bool = True, clusters: bool = True,
         seed: int = 0) -> Findings:
    """Slices, label issues (``label_issues``) and error clusters (``clusters``, needs
    ``vectors``: image id → embedding) of the labeled images at ``threshold``."""
    images, ids, notes = labeled_images(store, dataset, target, threshold)
    found = Findings(images, ids, slice_table(images), notes=notes, embedding=embedding)
    if not images:
        return found
    positive = np.array([x.positive for x in images])
    called = np.array([x.called for x in images])
    scores = np.array([x.score for x in images])
    have = vectors is not None and all(i in vectors for i in ids)
    matrix = np.stack([vectors[i] for i in ids]) if have else None  # type: ignore[index]
    if vectors is not None and not have:
        notes.append("some labeled images have no embedding: label issues use the model's "
                     "own probabilities and errors are not clustered")
    if label_issues:
        issues = find_issues(positive, scores, matrix, embedding or "", seed)
        if issues is None:
            notes.append("label issues skipped: they need at least 2 labeled images of the "
                         "target and 2 of the other classes")
        else:
            found.issue_source = issues.source
            for rank, i in enumerate(issues.order, 1):
                x = images[i]
                found.issues.append({
                    "path": x.path, "label": x.label,
                    "score": x.score, "rank": rank,
                    "given_label_probability": float(issues.given[i]),
                    "outcome": x.outcome, "index": i, "frame": x.frame})
    if clusters and matrix is not None:
        found.clusters = error_clusters(matrix, positive, called, ids, cues, seed)
    return found


def model_file(spec: str) -> Path | None:
    """The file a model spec loads its weights from, when there is one: a model file, a Python
    file's ``path.py:function``, the bundled open_nsfw's ONNX file."""
    first = spec.split(" ")[0]
    if first.startswith("open-nsfw"):
        from explain.models.open_nsfw import onnx_path

        try:
            return onnx_path()
        except ExplainError:  # not installed: the summary says there is no file
            return None
    for candidate in (first, first.rpartition(":")[0]):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _interval(low: float | None, high: float | None) -> str:
    return "" if low is None else f" (95 % CI {100 * low:.1f}–{100 * high:.1f} %)"


def summary(metrics: dict, found: Findings | None, *, model: str, data: str, images: int,
            created: str, written: str, rule: str) -> dict:
    """The transparency-report block: a dict for ``metrics.json`` and its Markdown text."""
    path = model_file(model)
    block = {
        "data": data, "images": images, "labeled": metrics.get("labeled", 0),
        "positives": metrics.get("positives"), "negatives": metrics.get("negatives"),
        "scored_from": created, "written": written, "model": model,
        "model_file": str(path) if path else None,
        "model_sha256": file_sha256(path) if path else None,
        "threshold": metrics.get("threshold"), "rule": rule,
        "precision": [metrics.get(k) for k in ("precision", "precision_low", "precision_high")],
        "recall": [metrics.get(k) for k in ("recall", "recall_low", "recall_high")],
        "ece": metrics.get("ece"), "brier": metrics.get("brier"),
        "flagged_slices": [{k: r[k] for k in ("slice", "value", "n", "flagged", "fpr",
                                               "fpr_low", "fpr_high", "fnr", "fnr_low",
                                               "fnr_high")}
                           for r in (found.slices if found else []) if r["flagged"]],
        "label_issues": len(found.issues) if found else 0,
    }
    lines = [
        "## Automated moderation: accuracy and error rates", "",
        f"- Data: {images} images in {display(data)} ({block['labeled']} labeled: "
        f"{block['positives']} target, {block['negatives']} other); audited from {created}, "
        f"report written {written}.",
        f"- Model: `{display(model)}`; "
        + (f"file {display(str(path))}, SHA-256 `{block['model_sha256']}`." if path
           else "no model file (a Python object or function)."),
        f"- Operating threshold: {block['threshold']:.4g} ({rule}).",
        f"- Precision {_pct(metrics.get('precision'))}"
        f"{_interval(metrics.get('precision_low'), metrics.get('precision_high'))}; recall "
        f"{_pct(metrics.get('recall'))}"
        f"{_interval(metrics.get('recall_low'), metrics.get('recall_high'))} "
        "(Wilson intervals).",
    ]
    if metrics.get("ece") is not None:
        lines.append(f"- Calibration: expected calibration error {metrics['ece']:.3f} "
                     f"(10 equal-width bins), Brier score {metrics['brier']:.3f}.")
    flagged = block["flagged_slices"]
    if found is not None:
        lines.append(f"- Slices with error rates worse than the rest of the data beyond chance "
                     f"(one-sided Fisher exact test, Benjamini–Hochberg FDR {FDR:.0%}): "
                     + ("none." if not flagged else ""))
        for r in flagged:
            rates = []
            for kind, word in (("fpr", "false positive rate"), ("fnr", "false negative rate")):
                if kind in r["flagged"]:
                    bounds = _interval(r[f"{kind}_low"], r[f"{kind}_high"])
                    rates.append(f"{word} {_pct(r[kind])}{bounds}")
            lines.append(f"  - {display(r['slice'])} = {display(r['value'])} ({r['n']} images): "
                         + "; ".join(rates) + ".")
        if found.issue_source is not None:
            lines.append(f"- Likely label errors: {len(found.issues)} images (confident "
                         f"learning; probabilities {found.issue_source}).")
    return {**block, "markdown": "\n".join(lines) + "\n"}


def write_summary(path: Path, block: dict) -> Path:
    return write_text(path, block["markdown"])
