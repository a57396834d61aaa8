"""The audit's page and pictures: ``audit.html`` (one self-contained page, pictures inlined as
base64; jinja2 with autoescaping, since file names and labels are untrusted text: the summary,
metrics, the flagged slices with example errors, the label issues, the error clusters, concepts,
cues and the FP/FN cards), the ``histogram.png``, ``roc.png`` and ``reliability.png`` plots, the
similarity mosaic ``grid.png`` + ``grid.json`` (when :mod:`explain.grid` is installed) and the
cue pictures under ``cues/``. The page shows names through :func:`explain.files.display`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from explain.audit import metrics as m
from explain.audit.clip_frame import audit_pixels, judged_frame
from explain.audit.cue_groups import Paste, put
from explain.audit.cues import Cues
from explain.audit.findings import Findings
from explain.audit.stages import SAVED_SIDE
from explain.audit.store import ImageRow, Store
from explain.choices import DEFAULT_MAX_PIXELS
from explain.errors import ExplainError
from explain.files import display, from_storable, write_text
from explain.heatmap import Heatmap
from explain.html import environment
from explain.images import load_image, warnings_into
from explain.models import Classifier
from explain.outputs import record, write_map
from explain.render import DISPLAY_SIDE, TEXT_SIZE, data_uri, draw_text, figure, save_png, shrink

PART_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40))
CUE_TILE = 64
CUE_TILES = 24
CUES_SHOWN = 12
ROLE_COLOURS = {"fp": (214, 39, 40), "tn": (44, 160, 44), "tp": (31, 119, 180)}


def file_uri(path: Path) -> str | None:
    """The file as a base64 ``data:`` URI for the page (PNG or JPEG), or None when it is
    missing."""
    if not path.is_file():
        return None
    kind = "png" if path.suffix.lower() == ".png" else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def draw_parts(rgb: np.ndarray, parts: list[dict]) -> np.ndarray:
    """The image at display size with each part's box and number drawn on it."""
    small = shrink(rgb, DISPLAY_SIDE).copy()
    scale = small.shape[1] / rgb.shape[1]
    labels = []
    for p in parts:
        colour = PART_COLOURS[p["n"] % len(PART_COLOURS)]
        top, left = round(p["top"] * scale), round(p["left"] * scale)
        bottom, right = round(p["bottom"] * scale) - 1, round(p["right"] * scale) - 1
        cv2.rectangle(small, (left, top), (right, bottom), colour, 2)
        labels.append((str(p["n"] + 1), left + 4, top + 3, colour))
    return draw_text(small, labels, TEXT_SIZE + 1)


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


def write_plots(folder: Path, seen: dict, metrics_: dict, target: str, threshold: float
                ) -> dict[str, Path]:
    """``histogram.png`` (scores by true label, the threshold marked) and, with labels of both
    sides, ``roc.png`` in ``folder``; returns them by name (none when nothing was scored)."""
    files: dict[str, Path] = {}
    if len(seen["scores"]) == 0:
        return files
    by_label: dict[str, list[float]] = {}
    for lab, s in zip(seen["labels"], seen["scores"], strict=True):
        by_label.setdefault(lab if lab is not None else "unlabeled", []).append(s)
    files["histogram"] = m.histogram_png(folder / "histogram.png",
                                         {k: np.array(v) for k, v in sorted(by_label.items())},
                                         threshold, target)
    if metrics_.get("ece") is not None:
        files["reliability"] = m.reliability_png(folder / "reliability.png",
                                                 metrics_["calibration_bins"], metrics_["ece"],
                                                 metrics_["brier"], target)
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
    total = store.count("scored")
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
        save_png(picture, png)
        write_text(js, json.dumps(grid.to_json(), indent=1))
        store.mark_stage("mosaic")
    info = json.loads(js.read_text())
    return {"uri": file_uri(png), "images": len(info.get("images", {})),
            "rows": info.get("rows"), "cols": info.get("cols"), "embed": info.get("embed"),
            "quality": info.get("quality", {})}, []


def gallery(store: Store, folder: Path, targets: list, kind: str,
            issues: dict[str, int] | None = None, look: dict | None = None) -> Iterator[dict]:
    """Cards of one kind (fp, fn, top) for the page: pictures, score, parts, and the image's
    rank among the label issues (``issues``: stored path → rank) when it is one. With ``look``
    (the renderer's colormap, alpha, normalize, vmin, vmax) each heatmap's picture is drawn
    again from its saved map, as the heatmap stage drew it, and its PNG rewritten: a new look
    needs no model call."""
    rank = 0
    for k, row in targets:
        if k != kind:
            continue
        rank += 1
        card = {"rank": rank, "path": display(row.file), "label": row.label, "score": row.score,
                "parts": store.parts(row.id), "original": None, "overlay": None, "error": None,
                "label_issue": (issues or {}).get(row.path)}
        done = store.heatmap(row.id)
        if done is not None:
            card["overlay"] = file_uri(folder / done["png"])
            card["png"] = done["png"]
            card["reading"] = _reading(folder / done["npy"])
        frame = None if done is None else judged_frame(folder / done["npy"])
        try:
            pixels, _ = audit_pixels(row.file, max_pixels=DEFAULT_MAX_PIXELS, notes=[],
                                     frame=frame)
            card["original"] = data_uri(draw_parts(pixels, card["parts"]), DISPLAY_SIDE)
        except ExplainError as exc:
            card["error"] = display(str(exc))
            pixels = None
        if done is not None and look is not None and pixels is not None:
            stem = (folder / done["npy"]).with_suffix("")
            saved = Heatmap.load(stem)
            drawn = record(saved, {k: v for k, v in look.items() if k != "alpha"})
            png, _ = write_map(stem, saved, extra=drawn, pictures={
                ".png": figure(shrink(pixels, SAVED_SIDE), saved, **look)})
            card["overlay"], card["reading"] = file_uri(png), drawn["reading"]
        yield card


def _reading(npy: Path) -> str | None:
    """What the colours of a card's picture mean, as its map's JSON records it (None for a
    map written before it did)."""
    try:
        return json.loads(npy.with_suffix(".json").read_text()).get("reading")
    except (OSError, ValueError):
        return None


THUMB = 128
EXAMPLES = 4


def thumbnail_uri(path: str, frame: int | None = None) -> str | None:
    """A small picture of a stored path for the page (None when it cannot be read); a clip
    shows the frame it was judged by (``frame``, recorded when it was scored)."""
    try:
        pixels, _ = audit_pixels(from_storable(path), max_pixels=DEFAULT_MAX_PIXELS, notes=[],
                                 frame=0 if frame is None else frame)
    except ExplainError:
        return None
    return data_uri(shrink(pixels, THUMB), THUMB)


def slice_section(found: Findings) -> dict:
    """The page's slices: the flagged ones first, each with up to :data:`EXAMPLES` of the
    errors it is flagged for (false positives highest score first, false negatives lowest first),
    then the others."""
    flagged = []
    for row in found.slices:
        if not row["flagged"]:
            continue
        members = [x for x in found.images if (row["slice"], row["value"]) in x.slices]
        wrong = [x for x in members if x.called != x.positive
                 and (("fpr" in row["flagged"] and not x.positive)
                      or ("fnr" in row["flagged"] and x.positive))]
        wrong.sort(key=lambda x: x.score if x.positive else -x.score)
        examples = [{"path": display(from_storable(x.path)), "score": x.score,
                     "uri": thumbnail_uri(x.path, x.frame)} for x in wrong[:EXAMPLES]]
        flagged.append({**row, "examples": examples})
    return {"flagged": flagged, "others": [r for r in found.slices if not r["flagged"]]}


def issue_section(found: Findings, shown: int = 24) -> dict:
    """The page's label issues: the first ``shown`` with a picture each."""
    cards = [{**row, "name": display(from_storable(row["path"])),
              "uri": thumbnail_uri(row["path"], row["frame"])} for row in found.issues[:shown]]
    return {"cards": cards, "total": len(found.issues), "source": found.issue_source}


def cluster_section(found: Findings) -> list[dict]:
    """The page's error clusters, each with its exemplars' pictures."""
    out = []
    for c in found.clusters:
        exemplars = [{"name": display(from_storable(found.images[i].path)),
                      "score": found.images[i].score,
                      "uri": thumbnail_uri(found.images[i].path, found.images[i].frame)}
                     for i in c.exemplars]
        out.append({"kind": c.kind, "cluster": c.cluster, "errors": len(c.members),
                    "region": c.region, "rate": c.error_rate, "low": c.interval[0],
                    "high": c.interval[1], "cue": c.cue, "cue_share": c.cue_share,
                    "exemplars": exemplars})
    return out


def _gallery_kinds(labeled: bool, target: str, threshold: float) -> list[tuple[str, str, str]]:
    if not labeled:
        return [("top", "Highest scores", f"highest p({target}) first")]
    return [("fp", "False positives", f"true label is not {target}, p({target}) ≥ "
             f"{threshold:g}; highest score first"),
            ("fn", "False negatives", f"true label is {target}, p({target}) < {threshold:g}; "
             "lowest score first")]


def cue_section(folder: Path, cues: Cues) -> dict:
    """The page's cue section: per shown cue a patch mosaic and two before/after paste pictures,
    written under ``folder/cues/``, and how the cues were found."""
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
            png = save_png(sheet, folder / "cues" / f"cue_{c.cue:02d}.png")
            card["mosaic"] = file_uri(png)
        for k, paste in enumerate(sorted(c.pastes, key=lambda q: -q.gain)[:2], 1):
            picture = paste_picture(paste, image)
            if picture is not None:
                png = save_png(picture, folder / "cues" / f"cue_{c.cue:02d}_paste_{k}.png")
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
    return section


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


def write_page(path: Path, store: Store, page: dict, *, targets: list, files: dict[str, Path]
               ) -> Path:
    """``audit.html`` at ``path``: ``page`` (the run's counts, metrics, tables, notes and
    sections, as :func:`explain.audit.outputs.write_outputs` gathers them) completed with the
    run's identity, the plots in ``files``, the concept matrix and the galleries of ``targets``;
    returns ``path``."""
    folder = path.parent
    found = page.get("findings")
    o = page["options"]
    look = {"colormap": o.colormap, "alpha": o.alpha, "normalize": o.normalize, "vmin": o.vmin,
            "vmax": o.vmax}
    issues = {row["path"]: row["rank"] for row in found.issues} if found is not None else {}
    page = {
        **page,
        "params": {k: display(v) if isinstance(v, str) else v for k, v in store.params.items()},
        "key": store.key, "run": store.run, "resumed": store.resumed,
        "created": datetime.fromtimestamp(store.created(), timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"),
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "previous": store.previous_runs(),
        "histogram": file_uri(files["histogram"]) if "histogram" in files else None,
        "roc": file_uri(files["roc"]) if "roc" in files else None,
        "reliability": file_uri(files["reliability"]) if "reliability" in files else None,
        "slices": slice_section(found) if found is not None else None,
        "issues": issue_section(found) if found is not None and found.issue_source else None,
        "clusters": cluster_section(found) if found is not None else [],
        "concept_rows": concept_matrix(page["concepts"]),
        "galleries": [
            {"kind": kind, "title": title, "help": text,
             "cards": list(gallery(store, folder, targets, kind, issues, look))}
            for kind, title, text in _gallery_kinds(bool(page["labels"]), page["target"],
                                                    page["threshold"])],
    }
    write_text(path, environment().get_template("audit.html.j2").render(a=page))
    return path
