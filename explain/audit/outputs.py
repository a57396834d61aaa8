"""The audit's outputs, rebuilt from the store on every call (cheap, and always consistent):

``scores.csv`` (one row per scored image), ``errors.csv`` (path, reason), ``parts.csv`` (one row
per detected part), ``concepts.csv`` (per group and concept: count, image share, mean score drop,
mean heat share, mean area share), ``cues.csv`` and ``cue_patches.csv`` (the discovered cues and
their patches, with a patch mosaic and two paste examples per cue under ``cues/``),
``histogram.png`` and ``roc.png``, the similarity mosaic
``grid.png`` + ``grid.json`` (when :mod:`explain.grid` is installed), and ``audit.html``: one
self-contained page (pictures inlined as base64; jinja2 with autoescaping, since file names and
labels are untrusted text).

Every file is written atomically (:mod:`explain.files`). In the CSVs paths are in the lossless
strict-UTF-8 form of :func:`explain.files.to_storable` and every text cell goes through
:func:`csv_cell`, so that a class name or file name such as ``=HYPERLINK(…)`` is not a formula
in a spreadsheet; the page shows names through :func:`explain.files.display`.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from explain.audit import metrics as m
from explain.audit.cues import Cues, Paste, put
from explain.audit.store import ImageRow, Store
from explain.errors import ExplainError
from explain.files import atomic_write, display, from_storable, write_bytes, write_text
from explain.html import environment
from explain.images import load_image, warnings_into
from explain.models import Classifier
from explain.render import data_uri, shrink

DISPLAY_SIDE = 256
HTML_ERRORS = 500
PART_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40))


@dataclass(frozen=True)
class Group:
    """A set of images that concept statistics are aggregated over (an SQL condition)."""

    name: str
    where: str
    args: tuple


def groups(labels: list[str], target: str, threshold: float) -> list[Group]:
    """False positives and every non-target label, then false negatives and the target label;
    for unlabeled data, all images and those at or above the threshold."""
    if not labels:
        return [Group("all images", "1", ()),
                Group(f"score ≥ {threshold:g}", "score >= ?", (threshold,))]
    out = [Group("false positives", "label IS NOT NULL AND label != ? AND score >= ?",
                 (target, threshold))]
    out += [Group(f"all {label}", "label = ?", (label,)) for label in labels if label != target]
    if target in labels:
        out += [Group("false negatives", "label = ? AND score < ?", (target, threshold)),
                Group(f"all {target}", "label = ?", (target,))]
    return out


def concept_table(store: Store, group: Group) -> tuple[int, list[dict]]:
    """(images in the group with parts detected, per-concept statistics sorted by mean drop)."""
    where = f"i.run = ? AND i.score IS NOT NULL AND i.concepts_at IS NOT NULL AND ({group.where})"
    n_images = store.db.execute(f"SELECT COUNT(*) FROM images i WHERE {where}",
                                (store.run, *group.args)).fetchone()[0]
    rows = store.db.execute(
        "SELECT p.concept, COUNT(*), COUNT(DISTINCT p.image), AVG(p.score_drop), "
        "AVG(p.heat_share), COUNT(p.heat_share), AVG(p.area_share), AVG(p.confidence) "
        f"FROM parts p JOIN images i ON i.id = p.image WHERE {where} GROUP BY p.concept "
        "ORDER BY AVG(p.score_drop) DESC, p.concept", (store.run, *group.args)).fetchall()
    keys = ("concept", "parts", "images", "mean_score_drop", "mean_heat_share", "heat_parts",
            "mean_area_share", "mean_confidence")
    table = [dict(zip(keys, r, strict=True)) for r in rows]
    for row in table:
        row["image_share"] = row["images"] / n_images if n_images else None
    return n_images, table


def concept_matrix(concept_groups: list[dict]) -> list[dict]:
    """One row per concept with its statistics in each group (``None`` where absent), sorted by
    the first group's mean score drop (the false positives when the data is labeled)."""
    names: dict[str, list] = {}
    for g, group in enumerate(concept_groups):
        for row in group["concepts"]:
            names.setdefault(row["concept"], [None] * len(concept_groups))[g] = row

    def order(item: tuple[str, list]) -> tuple:
        first = item[1][0]
        return (first is None, -(first["mean_score_drop"] if first else 0.0), item[0])

    return [{"concept": c, "cells": cells} for c, cells in sorted(names.items(), key=order)]


def file_uri(path: Path) -> str | None:
    if not path.is_file():
        return None
    kind = "png" if path.suffix.lower() == ".png" else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def draw_parts(rgb: np.ndarray, parts: list[dict]) -> np.ndarray:
    """The image at display size with each part's box and number drawn on it."""
    small = shrink(rgb, DISPLAY_SIDE).copy()
    scale = small.shape[1] / rgb.shape[1]
    for p in parts:
        colour = PART_COLOURS[p["n"] % len(PART_COLOURS)]
        top, left = round(p["top"] * scale), round(p["left"] * scale)
        bottom, right = round(p["bottom"] * scale) - 1, round(p["right"] * scale) - 1
        cv2.rectangle(small, (left, top), (right, bottom), colour, 2)
        cv2.putText(small, str(p["n"] + 1), (left + 3, top + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    colour, 2, cv2.LINE_AA)
    return small


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A CSV cell that no spreadsheet runs as a formula: text starting with ``= + - @``, a tab or
    a carriage return gets a leading single quote (numbers, also as text, are kept)."""
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


def write_png(path: Path, picture: np.ndarray) -> Path:
    """An RGB uint8 picture as a PNG file, written atomically."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(picture), "RGB").save(buffer, format="PNG")
    return write_bytes(path, buffer.getvalue())


def _predicted(probs: list[float], class_names: list[str], t: int, threshold: float) -> str:
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
        for p, label, score, probs, h, w, notes in store.db.execute(
                "SELECT path, label, score, probs, height, width, notes FROM images WHERE run = ? "
                "AND score IS NOT NULL ORDER BY id", (store.run,)):
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
    with csv_file(path) as writer:
        writer.writerow(["path", "label", "score", "part", "concept", "confidence", "top", "left",
                         "bottom", "right", "area_share", "score_drop", "heat_share"])
        for row in store.db.execute(
                "SELECT i.path, i.label, i.score, p.n, p.concept, p.confidence, p.top, p.left, "
                "p.bottom, p.right, p.area_share, p.score_drop, p.heat_share FROM parts p JOIN "
                "images i ON i.id = p.image WHERE i.run = ? ORDER BY i.id, p.n", (store.run,)):
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


def compute_metrics(seen: dict, target: str, threshold: float, class_names: list[str]) -> dict:
    """Metrics over the labeled scored images (empty when none is labeled)."""
    labeled = [i for i, lab in enumerate(seen["labels"]) if lab is not None]
    if not labeled:
        return {}
    scores = seen["scores"][labeled]
    true = [seen["labels"][i] for i in labeled]
    positive = np.array([lab == target for lab in true])
    out = m.at_threshold(scores, positive, threshold)
    out["auc"] = m.roc_auc(scores, positive)
    rows = [c for c in class_names if c in set(true)]
    out["confusion_labels"] = rows
    out["confusion_columns"] = list(class_names)
    matrix = m.confusion_matrix(true, [seen["predicted"][i] for i in labeled], class_names)
    out["confusion"] = [matrix[class_names.index(r)].tolist() for r in rows]
    out["labeled"] = len(labeled)
    return out


def write_plots(folder: Path, seen: dict, metrics_: dict, target: str, threshold: float
                ) -> dict[str, Path]:
    files: dict[str, Path] = {}
    if len(seen["scores"]) == 0:
        return files
    by_label: dict[str, list[float]] = {}
    for lab, s in zip(seen["labels"], seen["scores"], strict=True):
        by_label.setdefault(lab if lab is not None else "unlabeled", []).append(s)
    files["histogram"] = m.histogram_png(folder / "histogram.png",
                                         {k: np.array(v) for k, v in sorted(by_label.items())},
                                         threshold, target)
    if metrics_.get("auc") is not None:
        labeled = [i for i, lab in enumerate(seen["labels"]) if lab is not None]
        positive = np.array([seen["labels"][i] == target for i in labeled])
        fpr, tpr, _ = m.roc_curve(seen["scores"][labeled], positive)
        files["roc"] = m.roc_png(folder / "roc.png", fpr, tpr, metrics_["auc"])
    return files


def mosaic_sample(store: Store, first: list[ImageRow], limit: int) -> tuple[list[str], list]:
    """The heatmap images first, then evenly spaced others, at most ``limit`` in all."""
    paths = [r.path for r in first][:limit]
    labels = [r.label for r in first][:limit]
    taken = set(paths)
    total = store.count("score IS NOT NULL")
    room = limit - len(paths)
    if room > 0 and total:
        step = max(1, total // room)
        for k, (_, p, label, _) in enumerate(store.scored()):
            if len(paths) >= limit:
                break
            if k % step == 0 and p not in taken:
                paths.append(p)
                labels.append(label)
    return paths, labels


def write_mosaic(store: Store, folder: Path, classifier: Classifier, target: str,
                 first: list[ImageRow], limit: int) -> tuple[dict | None, list[str]]:
    """``grid.png`` + ``grid.json`` of a sample (done once per run); (section, notes)."""
    try:
        from explain import grid as grid_module
    except ImportError:
        return None, []
    png, js = folder / "grid.png", folder / "grid.json"
    if limit < 4:
        return None, []
    if not (store.stage_done("mosaic") and png.is_file() and js.is_file()):
        paths, labels = mosaic_sample(store, first, limit)
        if len(paths) < 4:
            return None, ["mosaic skipped: fewer than 4 scored images"]
        use_labels = all(lab is not None for lab in labels)
        try:  # decoding warnings were recorded with each image when it was scored
            with warnings_into([]):
                grid = grid_module.similarity_grid([from_storable(p) for p in paths], classifier,
                                                   labels=labels if use_labels else None,
                                                   target=target)
            picture = grid_module.draw_mosaic(grid, color_by="label" if use_labels else "score")
        except ExplainError as exc:
            return None, [f"mosaic skipped: {display(str(exc))}"]
        write_png(png, picture)
        write_text(js, json.dumps(grid.to_json(), indent=1))
        store.mark_stage("mosaic")
    info = json.loads(js.read_text())
    return {"uri": file_uri(png), "images": len(info.get("images", {})),
            "rows": info.get("rows"), "cols": info.get("cols"), "embed": info.get("embed"),
            "quality": info.get("quality", {})}, []


def gallery(store: Store, folder: Path, targets: list, kind: str) -> Iterator[dict]:
    """Cards of one kind (fp, fn, top) for the page: pictures, score, parts."""
    rank = 0
    for k, row in targets:
        if k != kind:
            continue
        rank += 1
        card = {"rank": rank, "path": display(row.file), "label": row.label, "score": row.score,
                "parts": store.parts(row.id), "original": None, "overlay": None, "error": None}
        done = store.heatmap(row.id)
        if done is not None:
            card["overlay"] = file_uri(folder / done["png"])
            card["png"] = done["png"]
        try:
            card["original"] = data_uri(draw_parts(load_image(row.file, notes=[]), card["parts"]),
                                        DISPLAY_SIDE)
        except ExplainError as exc:
            card["error"] = display(str(exc))
        yield card


def _gallery_kinds(labeled: bool, target: str, threshold: float) -> list[tuple[str, str, str]]:
    if not labeled:
        return [("top", "Highest scores", f"highest p({target}) first")]
    return [("fp", "False positives", f"true label is not {target}, p({target}) ≥ "
             f"{threshold:g}; highest score first"),
            ("fn", "False negatives", f"true label is {target}, p({target}) < {threshold:g}; "
             "lowest score first")]


CUE_TILE = 64
CUE_TILES = 24
CUES_SHOWN = 12
ROLE_COLOURS = {"fp": (214, 39, 40), "tn": (44, 160, 44), "tp": (31, 119, 180)}


def write_cues(folder: Path, cues: Cues) -> tuple[dict[str, Path], dict]:
    """``cues.csv``, ``cue_patches.csv`` and per cue a patch mosaic and two before/after paste
    pictures under ``cues/``; returns the files and the page section."""
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
    pixels: dict[int, np.ndarray | None] = {}

    def image(key: int) -> np.ndarray | None:
        if key not in pixels:
            try:
                pixels[key] = load_image(from_storable(cues.images[key].name), notes=[])
            except ExplainError:
                pixels[key] = None
        return pixels[key]

    shown = []
    for c in cues.cues[:CUES_SHOWN]:
        tiles = []
        for p in sorted(c.patches, key=lambda q: (q.role != "fp", -q.drop))[:CUE_TILES]:
            rgb = image(p.image)
            if rgb is not None:
                tile = cv2.resize(np.ascontiguousarray(rgb[p.box[0]:p.box[2], p.box[1]:p.box[3]]),
                                  (CUE_TILE - 4, CUE_TILE - 4), interpolation=cv2.INTER_AREA)
                tiles.append(cv2.copyMakeBorder(tile, 2, 2, 2, 2, cv2.BORDER_CONSTANT,
                                                value=ROLE_COLOURS[p.role]))
        card = {"cue": c, "mosaic": None, "pastes": []}
        if tiles:
            cols = min(len(tiles), 8)
            rows = -(-len(tiles) // cols)
            sheet = np.full((rows * CUE_TILE, cols * CUE_TILE, 3), 255, np.uint8)
            for i, tile in enumerate(tiles):
                r, q = divmod(i, cols)
                sheet[r * CUE_TILE:(r + 1) * CUE_TILE, q * CUE_TILE:(q + 1) * CUE_TILE] = tile
            png = write_png(folder / "cues" / f"cue_{c.cue:02d}.png", sheet)
            card["mosaic"] = file_uri(png)
        for k, paste in enumerate(sorted(c.pastes, key=lambda q: -q.gain)[:2], 1):
            picture = paste_picture(paste, image)
            if picture is not None:
                png = write_png(folder / "cues" / f"cue_{c.cue:02d}_paste_{k}.png", picture)
                card["pastes"].append({"uri": file_uri(png), "before": paste.before,
                                       "after": paste.after,
                                       "recipient": display(from_storable(
                                           cues.images[paste.recipient].name))})
        shown.append(card)
    section = {"cards": shown, "total": len(cues.cues), "embedding": cues.embedding,
               "k": cues.k, "silhouette": cues.silhouette, "calls": cues.calls,
               "new_calls": cues.new_calls, "embed_calls": cues.embed_calls,
               "fp_images": cues.fp_images, "tn_images": cues.tn_images,
               "tp_images": cues.tp_images}
    return files, section


def paste_picture(paste: Paste, image: Callable[[int], np.ndarray | None]) -> np.ndarray | None:
    """The recipient before and after the paste, side by side, the pasted box outlined."""
    rgb, donor = image(paste.recipient), image(paste.donor)
    if rgb is None or donor is None:
        return None
    t, le, b, r = paste.box
    dt, dl, db, dr = paste.donor_box
    after = put(rgb, donor[dt:db, dl:dr], paste.box)
    before, after = shrink(rgb, DISPLAY_SIDE), shrink(after, DISPLAY_SIDE).copy()
    scale = after.shape[1] / rgb.shape[1]
    cv2.rectangle(after, (round(le * scale), round(t * scale)),
                  (round(r * scale) - 1, round(b * scale) - 1), (255, 255, 0), 2)
    gap = np.full((before.shape[0], 8, 3), 255, np.uint8)
    return np.concatenate([before, gap, after], axis=1)


def write_outputs(store: Store, folder: Path, *, classifier: Classifier, target: str,
                  class_names: list[str], options: object, targets: list, labels: list[str],
                  notes: list[str], seconds: dict[str, float], cues: Cues | None = None
                  ):  # noqa: ANN201
    """Every output file of the run; returns the :class:`~explain.audit.run.AuditResult`."""
    from explain.audit.run import AuditResult

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
    cue_section = None
    if cues is not None:
        cue_files, cue_section = write_cues(folder, cues)
        files.update(cue_files)
    else:
        for name in ("cues.csv", "cue_patches.csv"):
            (folder / name).unlink(missing_ok=True)
    metrics_ = compute_metrics(seen, target, o.threshold, class_names)
    files.update(write_plots(folder, seen, metrics_, target, o.threshold))
    mosaic, mosaic_notes = write_mosaic(store, folder, classifier, target,
                                        [row for _, row in targets], o.mosaic)
    if mosaic is not None:
        files["grid"] = folder / "grid.png"
    n_images = store.count()
    n_failed = store.count("error IS NOT NULL")
    n_heat = store.db.execute("SELECT COUNT(*) FROM heatmaps h JOIN images i ON i.id = h.image "
                              "WHERE i.run = ?", (store.run,)).fetchone()[0]
    run_row = store.db.execute("SELECT created FROM runs WHERE id = ?", (store.run,)).fetchone()
    page = {
        "params": {k: display(v) if isinstance(v, str) else v for k, v in store.params.items()},
        "key": store.key, "run": store.run, "resumed": store.resumed,
        "created": datetime.fromtimestamp(run_row[0], timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "previous": store.previous_runs(), "target": target, "threshold": o.threshold,
        "options": o, "images": n_images, "scored": len(seen["scores"]), "failed": n_failed,
        "unlabeled": sum(1 for lab in seen["labels"] if lab is None), "labels": labels,
        "metrics": metrics_, "seconds": seconds,
        "notes": [display(n) for n in notes + mosaic_notes],
        "histogram": file_uri(files["histogram"]) if "histogram" in files else None,
        "roc": file_uri(files["roc"]) if "roc" in files else None,
        "concepts": concept_groups,
        "concept_rows": concept_matrix(concept_groups), "mosaic": mosaic, "errors": errors,
        "cues": cue_section,
        "galleries": [
            {"kind": kind, "title": title, "help": text,
             "cards": list(gallery(store, folder, targets, kind))}
            for kind, title, text in _gallery_kinds(bool(labels), target, o.threshold)],
    }
    files["html"] = folder / "audit.html"
    write_text(files["html"], environment().get_template("audit.html.j2").render(a=page))
    return AuditResult(output=folder, run=store.run, key=store.key, resumed=store.resumed,
                       images=n_images, scored=len(seen["scores"]), failed=n_failed,
                       heatmaps=n_heat, metrics=metrics_, files=files)
