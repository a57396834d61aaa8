"""``explain counterexamples``: the images of a pool that carry an audit's cues, to label and add
to the negative (SFW) training data, and synthetic ones made by pasting the cues.

For each pool image (streamed: one decoded image at a time), the model's occlusion map gives its
top windows exactly as cue harvesting does (:func:`explain.audit.cue_harvest.harvest`, with the
run's box, stride, fill, target and cue options): at most ``per_image`` box-sized windows of
highest positive heat, each with its **drop** ``p_t(image) − p_t(image with the window filled
with the run's fill)`` and its vector in the embedder the run's cues were embedded by. Then, for
each cue:

- **similarity** of a window: the cosine between its vector and the cue's centroid, both centred
  by the mean vector of every patch of the run's cues (the centring the clustering used, so that
  the large part all CNN features share does not make every pair look alike); the centroid is the
  normalised mean of the cue's centred, normalised patch vectors;
- an image's **cue-like window** is its window of highest similarity; its ``score`` column is
  that window's drop: how much the window raises the model's score (the model's confirmation);
- images are ranked by ``similarity × score``, highest first (ties: higher similarity, then
  path); an image whose cue-like window has a similarity or a drop ≤ 0 does not carry the cue
  and is not listed; at most ``top`` images per cue.

Outputs (in ``OUT``, written atomically): ``counterexamples.csv`` (``cue, rank, path,
similarity, score, top, left, bottom, right, p_target``; the window in original image pixels,
``p_target`` the image's own p(target), a clip's first frame's (the frame scanned): whether
the model already flags it),
``counterexamples.html`` (self-contained: each cue's patches, then the listed images with the
window outlined), ``pool_failed.csv`` (``path, reason``) for the pool images that could not be
read, and with ``synthesize`` N: N images per cue under ``synthetic/``, each a true negative of
the run with one of the cue's false-positive patches pasted by the paste test's own
:func:`explain.audit.cue_groups.paste` (seeded), only for a cue the audit proved (false-positive
patches, and a paste gain above :data:`~explain.audit.cue_groups.PASTE_FLOOR`; any other gets a
note instead: its pastes would not be errors of the model, or would carry what it is right
about into images labelled negative), listed in
``synthetic.csv`` (``path, label, cue, source, patch, patch_top, patch_left, patch_bottom,
patch_right, top, left, bottom, right``: a manifest an audit reads, ``label`` the recipient's).

Each pool image's windows are committed as computed in ``OUT/counterexamples.sqlite``
(:class:`explain.audit.store.MiningStore`, keyed by the audit run, its cue setting, the
embedding and the pool), so a rerun scores only the images not yet scanned; one that cannot be
read is recorded as failed and the scan goes on.
"""

from __future__ import annotations

import csv
import heapq
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from explain.audit.cue_groups import PASTE_FLOOR, paste
from explain.audit.cue_harvest import Counting, CueImage, PatchEmbedder, harvest, kept_pixels
from explain.audit.cues import Cues
from explain.audit.options import CueOptions
from explain.audit.outputs import csv_cell, write_table
from explain.audit.store import DB_NAME, MiningStore, Store
from explain.choices import DEFAULT_MAX_PIXELS
from explain.errors import ExplainError, ImageError, OptionError
from explain.files import (
    check_output_dir,
    check_outputs,
    display,
    from_storable,
    to_storable,
    write_text,
)
from explain.html import environment
from explain.images import iter_image_files, load_image
from explain.models import Classifier, load, resolve_target
from explain.render import data_uri, save_png, shrink
from explain.windows import WindowPlan

TOP = 50
SHOWN = 24
THUMB = 192
TILES = 8
RECIPIENTS = 500
OUTLINE = (255, 0, 255)
COLUMNS = ("cue", "rank", "path", "similarity", "score", "top", "left", "bottom", "right",
           "p_target")
SYNTHETIC_COLUMNS = ("path", "label", "cue", "source", "patch", "patch_top", "patch_left",
                     "patch_bottom", "patch_right", "top", "left", "bottom", "right")
FAILED_COLUMNS = ("path", "reason")

Progress = Callable[[int, int, str], None]


@dataclass
class MinedCue:
    """One cue as the mining needs it: its unit ``centroid`` in the centred space and the
    patches to paste (stored path, box in its image's pixels): its false positives' patches, or
    all of them when it has none (``from_fps`` False)."""

    cue: int
    rank: int
    centroid: np.ndarray
    donors: list[tuple[str, tuple[int, int, int, int]]]
    from_fps: bool = True
    strength: float | None = None
    paste_gain: float | None = None


@dataclass
class Mining:
    """What the mining reads of an audit run: its cues, the centring ``mean``, the embedding
    they were made in, the options and windows of their harvest, and the run's true negatives
    ((stored path, label), the paste recipients)."""

    cues: list[MinedCue]
    mean: np.ndarray
    embedding: str
    options: CueOptions
    box: tuple[int, int] | tuple
    stride: tuple[int, int] | tuple
    fill: str
    target: str
    max_pixels: int
    key: dict
    negatives: list[tuple[str, str | None]] = field(default_factory=list)


@dataclass
class CounterExamples:
    """What :func:`counterexamples` found and wrote: ``rows`` as in ``counterexamples.csv``,
    ``calls`` the images the model scored in this call."""

    output: Path
    rows: list[dict]
    scanned: int
    failed: int
    calls: int
    synthetic: int
    files: dict[str, Path]
    notes: list[str] = field(default_factory=list)


def _unit(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)


def _mined(members: dict[tuple[int, int], list[tuple[str, str, tuple, np.ndarray]]],
           strengths: dict[int, float], gains: dict[int, float | None]
           ) -> tuple[list[MinedCue], np.ndarray]:
    """(cue, rank) → [(stored path, role, box, vector)] and cue → its audit strength and
    paste gain → the mined cues and the mean vector."""
    every = np.stack([v for patches in members.values() for *_, v in patches]).astype(np.float64)
    mean = every.mean(0)
    cues = []
    for (cue, rank), patches in sorted(members.items(), key=lambda kv: kv[0][1]):
        vectors = _unit(np.stack([v for *_, v in patches]).astype(np.float64) - mean)
        fp = [(path, box) for path, role, box, _ in patches if role == "fp"]
        cues.append(MinedCue(cue, rank, _unit(vectors.mean(0)),
                             fp or [(path, box) for path, _, box, _ in patches], bool(fp),
                             strengths.get(cue), gains.get(cue)))
    return cues, mean


def from_cues(cues: Cues, store: Store, options: CueOptions, params: dict, threshold: float
              ) -> Mining:
    """The mining of the cues an audit just found (``params``: its run's parameters)."""
    members = {(c.cue, c.rank): [(cues.images[p.image].name, p.role, p.box, p.vector)
                                 for p in c.patches] for c in cues.cues}
    mined, mean = _mined(members, {c.cue: c.strength for c in cues.cues},
                         {c.cue: c.paste_gain for c in cues.cues})
    return _mining(mined, mean, cues.embedding, options, cues.setting, store, params, threshold)


def _mining(mined: list[MinedCue], mean: np.ndarray, embedding: str, options: CueOptions,
            setting: str, store: Store, params: dict, threshold: float) -> Mining:
    target = str(params["target"])
    negatives = [(row.path, row.label) for row in store.sample("tn", target, threshold,
                                                               RECIPIENTS, options.seed)]
    return Mining(mined, mean, embedding, options, tuple(params["box"]),
                  tuple(params["stride"]), str(params["fill"]), target,
                  int(params.get("max_pixels", DEFAULT_MAX_PIXELS)),
                  {"audit": store.key, "setting": setting, "embedding": embedding},
                  negatives)


def read_run(folder: str | os.PathLike) -> tuple[Mining, str]:
    """The cues of the audit in ``folder`` (its last finished run: ``cue_patches.csv`` gives
    each cue's patches, the store their vectors, ``metrics.json`` the options they were found
    under) and the model spec the run recorded; :class:`~explain.errors.OptionError` when it
    has no cues or its outputs do not match its store."""
    folder = Path(folder)
    store = Store.finished(folder)
    try:
        try:
            metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
            found = metrics.get("cues")
            threshold = float(metrics["threshold"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            found, threshold = None, 0.0
        if not found or not (folder / "cue_patches.csv").is_file():
            raise OptionError(f"the audit in {display(folder)} records no discovered cues; run "
                              "`explain audit` with --cues on labeled data (or the same command "
                              "again to rewrite its outputs)")
        setting = found["setting"]
        paths = {image: path for image, path, *_ in store.content_rows()}
        by_cell = {csv_cell(path): path for path in paths.values()}
        vectors = {(paths[image], (t, le, b, r)): np.frombuffer(v, np.float32)
                   for image, _, _, t, le, b, r, _, _, v in store.cue_patches(setting)
                   if image in paths}
        members: dict[tuple[int, int], list] = {}
        with open(folder / "cue_patches.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                path = by_cell.get(row["path"])
                box = tuple(int(row[k]) for k in ("top", "left", "bottom", "right"))
                vector = vectors.get((path, box)) if path is not None else None
                if vector is None:
                    raise OptionError(f"{display(folder / 'cue_patches.csv')} lists a patch its "
                                      "store does not hold; run the same `explain audit` command "
                                      "again to rewrite its outputs")
                members.setdefault((int(row["cue"]), int(row["rank"])), []).append(
                    (path, row["role"], box, vector))
        if not members:
            raise OptionError(f"the audit in {display(folder)} found no cues to mine for")
        with open(folder / "cues.csv", newline="", encoding="utf-8") as f:
            published = list(csv.DictReader(f))
        strengths = {int(r["cue"]): float(r["strength"]) for r in published}
        gains = {int(r["cue"]): float(r["paste_gain"]) if r.get("paste_gain") else None
                 for r in published}
        mined, mean = _mined(members, strengths, gains)
        mining = _mining(mined, mean, found["embedding"], CueOptions(**found["options"]),
                         setting, store, store.params, threshold)
        return mining, str(store.params.get("model"))
    finally:
        store.close()


def _check_pool(pool: str | os.PathLike, out: Path, run: Path | None) -> Path:
    """The pool folder, resolved; refused when it is missing, the run's folder, the output
    folder or inside it (the outputs would be read back as pool images)."""
    p = Path(pool)
    if not p.is_dir():
        raise OptionError(f"pool {display(pool)} is not a folder; give a folder of images with "
                          "--pool")
    p = p.resolve()
    if run is not None and p == run.resolve():
        raise OptionError(f"the pool {display(pool)} is the audit's own folder; give a folder "
                          "of new images with --pool")
    o = out.resolve()
    if p == o or o in p.parents:
        raise OptionError(f"the pool {display(pool)} is the output folder or inside it; the "
                          "outputs would be written among its images: choose another -o")
    return p


def mine(classifier: Classifier, mining: Mining, pool: str | os.PathLike,
         output: str | os.PathLike, *, top: int = TOP, synthesize: int = 0,
         batch_size: int | None = None, progress: Progress | None = None,
         run: Path | None = None) -> CounterExamples:
    """Scan ``pool`` for the cues of ``mining`` and write the outputs into ``output`` (module
    docstring); ``run`` is the audit's folder (refused as a pool)."""
    if top < 1:
        raise OptionError(f"top must be at least 1 image per cue, got {top}")
    if synthesize < 0:
        raise OptionError(f"synthesize must be 0 or more images per cue, got {synthesize}")
    out = check_output_dir(output)
    root = _check_pool(pool, out, run)
    names = ("counterexamples.csv", "counterexamples.html", "pool_failed.csv", "synthetic.csv")
    sources = {from_storable(p) for p, _ in mining.negatives} | {
        from_storable(p) for c in mining.cues for p, _ in c.donors}
    check_outputs([out / name for name in names], sources,
                  folders=[out / "synthetic"] if synthesize else [])
    grid = WindowPlan(mining.box, mining.stride)
    box, stride = grid.box_pair, grid.stride_pair
    store = MiningStore(out, {**mining.key, "pool": str(root),
                              "windows": [list(box), list(stride), mining.fill, mining.target]})
    try:
        calls = _scan(classifier, mining, root, out, store, grid, batch_size, progress)
        rows = ranked(mining, store, top)
        scanned, failed = store.counts()
        failures = [{"path": p, "reason": r} for p, r in store.failed()]
    finally:
        store.close()
    files = {"counterexamples": write_table(out / "counterexamples.csv", COLUMNS, rows)}
    (out / "pool_failed.csv").unlink(missing_ok=True)
    if failures:
        files["failed"] = write_table(out / "pool_failed.csv", FAILED_COLUMNS, failures)
    notes = []
    made: list[dict] = []
    if synthesize:
        made, why = synthesized(mining, synthesize, out)
        files["synthetic"] = write_table(out / "synthetic.csv", SYNTHETIC_COLUMNS, made)
        notes += why
    result = CounterExamples(out, rows, scanned, failed, calls, len(made), files, notes)
    files["html"] = _write_page(out / "counterexamples.html", mining, result, failures, top)
    return result


def _scan(classifier: Classifier, mining: Mining, root: Path, out: Path, store: MiningStore,
          grid: WindowPlan, batch_size: int | None, progress: Progress | None) -> int:
    """Each pool image not yet in ``store``: its top windows on the window plan ``grid``,
    committed one image at a time; returns the images the model scored."""
    done = store.done()
    skipped = out.resolve()

    def skip(folder: Path) -> bool:
        return folder.resolve() == skipped or (folder / DB_NAME).exists()

    todo = [p for p in iter_image_files([root], skip=skip) if to_storable(p) not in done]
    counted = Counting(classifier)
    t = resolve_target(classifier, mining.target)
    embed: PatchEmbedder | None = None
    for i, path in enumerate(todo):
        if embed is None:
            embed = PatchEmbedder(classifier, mining.options.embed)
            embed([np.full((8, 8, 3), 128, np.uint8)])  # its dimension, for the description
            if embed.describe not in mining.embedding.split("; "):
                raise OptionError(f"the run's cues were embedded by {mining.embedding}, this "
                                  f"model gives {embed.describe}; give the run's model "
                                  "(--model)")
        try:
            rgb = load_image(path, max_pixels=mining.max_pixels, notes=[])
            score, patches = harvest(counted, CueImage(0, "pool", path, str(path)), rgb, t,
                                     embed, windows=grid, fill=mining.fill,
                                     batch_size=batch_size, options=mining.options)
        except ImageError as exc:
            store.save_image(path, None, display(exc.reason), [])
        except ExplainError as exc:
            store.save_image(path, None, display(str(exc)), [])
        else:
            store.save_image(path, score, None,
                             [(p.n, *p.box, p.heat, p.drop,
                               np.asarray(p.vector, np.float32).tobytes()) for p in patches])
        if progress is not None:
            progress(i + 1, len(todo), "pool")
    return counted.calls


def ranked(mining: Mining, store: MiningStore, top: int) -> list[dict]:
    """The rows of ``counterexamples.csv`` (module docstring), streamed from ``store``."""
    centroids = np.stack([c.centroid for c in mining.cues])
    heaps: list[list[tuple]] = [[] for _ in mining.cues]
    for path, score, windows in store.windows():
        vectors = _unit(np.stack([np.frombuffer(w[5], np.float32) for w in windows])
                        .astype(np.float64) - mining.mean)
        similarity = vectors @ centroids.T
        for j, best in enumerate(similarity.argmax(0)):
            sim, drop = float(similarity[best, j]), float(windows[best][4])
            if sim <= 0.0 or drop <= 0.0:
                continue
            entry = (sim * drop, sim, path, windows[best][:4], drop, score)
            if len(heaps[j]) < top:
                heapq.heappush(heaps[j], entry)
            elif entry[:2] > heaps[j][0][:2]:
                heapq.heapreplace(heaps[j], entry)
    rows = []
    for cue, heap in zip(mining.cues, heaps, strict=True):
        for rank, (_, sim, path, (t, le, b, r), drop, score) in enumerate(
                sorted(heap, key=lambda e: (-e[0], -e[1], e[2])), 1):
            rows.append({"cue": cue.cue, "rank": rank, "path": path, "similarity": sim,
                         "score": drop, "top": t, "left": le, "bottom": b, "right": r,
                         "p_target": score})
    return rows


def synthesized(mining: Mining, n: int, out: Path) -> tuple[list[dict], list[str]]:
    """``n`` pasted images per cue under ``out/synthetic/`` (module docstring), no model call:
    the manifest rows and notes."""
    if not mining.negatives:
        return [], ["no synthetic counter-examples: the run has no true negatives to paste into"]
    pixels = kept_pixels(lambda path: load_image(from_storable(path),
                                                 max_pixels=mining.max_pixels, notes=[]))

    rows, notes = [], []
    for c in mining.cues:
        if not c.from_fps:
            notes.append(f"cue {c.cue}: no synthetic counter-examples: none of its patches is in "
                         "a false positive, so pasting them would put what the model is right "
                         "about into images labelled negative")
            continue
        if c.paste_gain is None or c.paste_gain <= PASTE_FLOOR:
            gain = "not measured" if c.paste_gain is None else f"{c.paste_gain:+.3g}"
            notes.append(f"cue {c.cue}: no synthetic counter-examples: the audit's paste test "
                         f"did not prove it (paste gain {gain}, at most {PASTE_FLOOR} proves "
                         "nothing), so its pastes would not be errors of the model")
            continue
        rng = np.random.default_rng(mining.options.seed + c.cue)
        donors, recipients = rng.permutation(len(c.donors)), rng.permutation(len(mining.negatives))
        made = 0
        for i in range(4 * n):
            if made == n:
                break
            (source, box) = c.donors[donors[i % len(donors)]]
            recipient, label = mining.negatives[recipients[i % len(recipients)]]
            src, dst = pixels(source), pixels(recipient)
            if recipient == source or src is None or dst is None:
                continue
            t, le, b, r = box
            picture, where = paste(dst, src[t:b, le:r], src.shape[:2], rng)
            name = f"synthetic/cue_{c.cue:02d}/{made:04d}.png"
            save_png(picture, out / name)
            rows.append({"path": name, "label": label or "", "cue": c.cue, "source": recipient,
                         "patch": source, "patch_top": t, "patch_left": le, "patch_bottom": b,
                         "patch_right": r, "top": where[0], "left": where[1],
                         "bottom": where[2], "right": where[3]})
            made += 1
        if made < n:
            notes.append(f"cue {c.cue}: {made} synthetic counter-examples of {n} (too few "
                         "readable true negatives and patches)")
    return rows, notes


def _caveat(c: MinedCue) -> str | None:
    """Why the audit did not prove cue ``c`` (the rule of compare's ``unproven``), or None."""
    if not c.strength or c.strength <= 0:
        return "no strength: not a cue of the audit's errors"
    if c.paste_gain is None or c.paste_gain <= PASTE_FLOOR:
        return "not proven by the paste test"
    return None


def _outlined(path: str, box: tuple[int, int, int, int]) -> str | None:
    """The image as a data URI at :data:`THUMB` pixels (shrunk, or a small one enlarged by
    whole pixels) with ``box`` outlined, or None."""
    try:
        rgb = load_image(from_storable(path), notes=[])
    except ExplainError:
        return None
    factor = max(1, THUMB // max(rgb.shape[:2]))  # a small image enlarged by whole pixels
    small = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1) if factor > 1 else \
        np.ascontiguousarray(shrink(rgb, THUMB)).copy()
    f = small.shape[1] / rgb.shape[1]
    t, le, b, r = box
    cv2.rectangle(small, (round(le * f), round(t * f)), (round(r * f) - 1, round(b * f) - 1),
                  OUTLINE, 2)
    return data_uri(small, THUMB)


def _tile(path: str, box: tuple[int, int, int, int]) -> str | None:
    try:
        rgb = load_image(from_storable(path), notes=[])
    except ExplainError:
        return None
    t, le, b, r = box
    crop = cv2.resize(np.ascontiguousarray(rgb[t:b, le:r]), (64, 64),
                      interpolation=cv2.INTER_AREA)
    return data_uri(crop, 64)


def _write_page(path: Path, mining: Mining, result: CounterExamples,
                failures: list[dict], top: int) -> Path:
    """``counterexamples.html``, one self-contained file (pictures inlined)."""
    cards = []
    for c in mining.cues:
        rows = [r for r in result.rows if r["cue"] == c.cue]
        cards.append({
            "cue": c.cue, "rank": c.rank, "total": len(rows), "from_fps": c.from_fps,
            "strength": c.strength, "paste_gain": c.paste_gain, "caveat": _caveat(c),
            "tiles": [u for u in (_tile(p, b) for p, b in c.donors[:TILES]) if u],
            "images": [{**r, "name": display(from_storable(r["path"])),
                        "uri": _outlined(r["path"], (r["top"], r["left"], r["bottom"],
                                                     r["right"]))} for r in rows[:SHOWN]]})
    env = environment(finalize=lambda v: display(v) if isinstance(v, str) else v)
    page = env.get_template("counterexamples.html.j2").render(
        cards=cards, scanned=result.scanned, n_failed=result.failed,
        failed=[{"path": display(from_storable(f["path"])), "reason": f["reason"]}
                for f in failures[:50]],
        calls=result.calls, synthetic=result.synthetic, embedding=mining.embedding,
        fill=mining.fill, target=mining.target, notes=result.notes, top=top)
    return write_text(path, page)


def counterexamples(run: str | os.PathLike, pool: str | os.PathLike,
                    output: str | os.PathLike, *, model: object = None,
                    device: str | None = None, top: int = TOP, synthesize: int = 0,
                    batch_size: int | None = None, progress: Progress | None = None
                    ) -> CounterExamples:
    """The pool images that carry the cues of the audit in ``run`` (module docstring), written
    into ``output``. ``model``: a spec or a classifier (default: the spec the run recorded; a
    run audited with a model object needs it given again)."""
    mining, spec = read_run(run)
    if model is None:
        try:
            classifier = load(spec, device)
        except ExplainError as exc:
            raise OptionError(f"the run's model {spec!r} cannot be loaded ({exc}); give it with "
                              "--model") from None
    else:
        classifier = load(model, device)
    return mine(classifier, mining, pool, output, top=top, synthesize=synthesize,
                batch_size=batch_size, progress=progress, run=Path(run))


__all__ = ["COLUMNS", "CounterExamples", "Mining", "counterexamples", "from_cues", "mine",
           "ranked", "read_run", "synthesized"]
