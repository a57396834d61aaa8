"""``explain compare``'s cues: each cue of run A re-measured under model B, and B's new cues.

The cues are the ones each audit published (``cues.csv`` and ``cue_patches.csv``, tied to the
harvest in its store whose patches they list). Everything below is measured, not matched:

- **One shared embedding.** Every cue patch of both runs (its box cropped from the image file,
  plain pixels: each model's own heat would make the space depend on the model) is embedded
  by one :class:`~explain.audit.cue_harvest.PatchEmbedder` that any two runs can use:
  open_nsfw's penultimate features (``embed="open-nsfw"``, bundled, whatever the two models
  are), or 32×32 pixels (``embed="pixels"``). Vectors are centred on the mean of both runs'
  patches and L2-normalised (as the audit's clustering does).
- **Membership.** A cue is the centroid of its patches (normalised mean) and a radius, the
  lowest cosine of its own patches to it. A patch of either run *carries* the cue when that
  cue is its nearest centroid among its home run's cues and the cosine is at least the radius.
- **Measures, the same rule for both runs.** ``fp_share``: the run's harvested false positives
  with a patch carrying the cue / its harvested false positives; ``tn_share`` the same for its
  true-negative sample; ``mean_drop`` over its carrying false-positive patches (the drops its
  own model measured); ``strength`` the audit's
  (:func:`~explain.audit.cue_groups.strength`). ``paste_gain_a`` is A's published paste test;
  ``paste_gain_b`` is the same test run here with model B (reloaded from run B's recorded
  spec): the cue's false-positive patches (any of its patches when it has none) pasted into
  B's true negatives (those its cue discovery sampled, else a seeded sample of
  :data:`NEGATIVES`), as many pairs as A's test, seeded by the compare's seed + the cue id.
- **Matching.** A cue of A and a cue of B match when at least :data:`MATCH_SHARE` of either
  one's patches carry the other (each measured in its home run's cues); ``cue_b`` is the
  matching B cue of the largest such share. A cue of B that matches no cue of A is ``new``
  when B's audit proved it (strength above 0, paste gain above the floor; else ``unproven``);
  its A side is measured by the same rule (no paste test under A: model A is not loaded), so
  ``paste_gain_a`` and ``strength_a`` stay empty.
- **Status** of each cue of A (thresholds, once): ``unproven`` when A's own audit did not prove
  it (strength 0, or a paste gain at most :data:`GAIN_FLOOR`: adding it never raised A's score,
  so nothing can persist or vanish); ``unmeasured`` when B gave neither a paste gain nor a
  strength (model B could not be reloaded or pasted into, and B's errors held none of its
  patches), never read as ``persists``; else ``vanished`` when B's paste gain is at most
  :data:`GAIN_FLOOR` (pasting it moves B's score by at most two points), B's strength is at
  most :data:`VANISHED_SHARE` of A's (or unmeasured) and hiding it in B's false positives drops
  B's score by at most :data:`GAIN_FLOOR` on average (a region B still leans on has not
  vanished, even when it is not specific to B's errors); else ``weakened`` when B's strength
  or paste gain is at most :data:`WEAKENED_SHARE` of A's (it fell by half or more); else
  ``persists``. Paste gains over 16 pairs move by a few points between seeds, hence a floor
  rather than 0. Strengths and shares on both sides are re-measured by one rule in the shared
  embedding, so A's differ from the ones in A's own ``cues.csv``.

The embeddings and B's paste tests are kept in ``OUT/`` :data:`CACHE` (written atomically),
keyed by both runs' cue data, B's recipients and scores, B's spec, the embedder and the seed:
a resumed compare makes no model call. A model B that cannot be reloaded (a function spec
that does not import, an endpoint down) or that fails while pasting leaves the cue section
with the reason; the rest of the comparison is written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from explain.audit.cue_groups import PASTE_FLOOR as GAIN_FLOOR
from explain.audit.cue_groups import paste_test, strength
from explain.audit.cue_harvest import (
    Counting,
    CueImage,
    Patch,
    PatchEmbedder,
    decode,
    kept_pixels,
)
from explain.audit.finished import Run
from explain.audit.options import CueOptions
from explain.choices import CUE_EMBEDS
from explain.errors import ExplainError, ModelError, OptionError
from explain.files import display, write_bytes
from explain.images import DEFAULT_MAX_PIXELS

VANISHED_SHARE = 0.1
WEAKENED_SHARE = 0.5
NEGATIVES = CueOptions().negatives
CACHE = "cue_changes.cache.npz"
CUE_COLUMNS = ("cue_a", "cue_b", "status", "strength_a", "strength_b", "fp_share_a",
               "fp_share_b", "paste_gain_a", "paste_gain_b")
SHOWN_PATCHES = 6
MATCH_SHARE = 0.5
RADIUS_SLACK = 1e-6  # float32 embeddings: an identical patch must fall inside its cue


@dataclass
class CuePatch:
    """A published cue patch: the run's image id, role, box, drop and cue id."""

    image: int
    role: str
    box: tuple[int, int, int, int]
    drop: float
    cue: int


@dataclass
class Published:
    """One run's published cues: ``cues`` (cue id → its ``cues.csv`` row, numbers read),
    ``patches`` (every patch of the harvest), ``roles`` (harvested image id → role, unreadable
    images left out), ``files`` (image id → stored path)."""

    cues: dict[int, dict]
    patches: list[CuePatch]
    roles: dict[int, str]
    files: dict[int, str]
    setting: str | None


@dataclass
class CueChanges:
    """What the cue section holds: ``rows`` (:data:`CUE_COLUMNS` and more), ``reason`` when no
    cue could be re-measured, the embedder, B's model calls made by this call."""

    rows: list[dict] = field(default_factory=list)
    reason: str | None = None
    embedding: str | None = None
    calls: int = 0
    notes: list[str] = field(default_factory=list)


def _plain(cell: str) -> str:
    """A CSV cell as it was before :func:`explain.audit.outputs.csv_cell` neutralised it."""
    from explain.audit.outputs import FORMULA_STARTS

    if cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS):
        return cell[1:]
    return cell


def _number(cell: str) -> float | None:
    return float(cell) if cell not in ("", None) else None


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def published(run: Run, name: str) -> tuple[Published | None, str | None]:
    """Run ``name``'s published cues, or None and why."""
    folder = run.folder
    if not (folder / "cues.csv").is_file() or not (folder / "cue_patches.csv").is_file():
        return None, (f"run {name} published no cues (its audit ran without cue discovery, "
                      "or skipped it: see its notes)")
    ids = {path: image for image, path, *_ in run.store.content_rows()}
    try:
        cues = {int(r["cue"]): {"rank": int(r["rank"]), "strength": float(r["strength"]),
                                "fp_share": _number(r["fp_share"]),
                                "paste_gain": _number(r["paste_gain"]),
                                "paste_pairs": int(r["paste_pairs"])}
                for r in _rows(folder / "cues.csv")}
        listed = [(int(r["cue"]), ids.get(_plain(r["path"])), r["role"],
                   (int(r["top"]), int(r["left"]), int(r["bottom"]), int(r["right"])))
                  for r in _rows(folder / "cue_patches.csv")]
    except (OSError, KeyError, ValueError, TypeError):
        return None, (f"run {name}'s cues.csv or cue_patches.csv cannot be read; run the same "
                      "`explain audit` command again to rewrite them")
    wanted = {(image, box) for _, image, _, box in listed}
    for setting in run.store.cue_settings():
        stored = {(image, (t, le, b, r)): (role, drop)
                  for image, role, _, t, le, b, r, _, drop, _ in run.store.cue_patches(setting)}
        if set(stored) != wanted:
            continue
        by_cue = {(image, box): cue for cue, image, _, box in listed}
        patches = [CuePatch(image, role, box, float(drop), by_cue[(image, box)])
                   for (image, box), (role, drop) in sorted(stored.items())]
        roles = {r[0]: r[1] for r in run.store.cue_images(setting) if r[6] is None}
        files = {v: k for k, v in ids.items()}
        return Published(cues, patches, roles, files, setting), None
    if not listed:
        return Published(cues, [], {}, {v: k for k, v in ids.items()}, None), None
    return None, (f"run {name}'s cue_patches.csv does not match the cue harvest in its store; "
                  "run the same `explain audit` command again to rewrite its outputs")


def reload_model(spec: str) -> object:
    """Model B from the spec its run recorded: a spec :func:`explain.models.load` reads,
    followed by the CLI's model options as ``explain audit`` records them (``--logits``,
    ``--sigmoid``, ``--classes A,B``, ``--channels``, ``--scale``, ``--input-size``, ``--mean``,
    ``--std``); :class:`~explain.errors.ModelError` when it cannot be loaded."""
    from explain.models import Preprocess, load

    model, *options = spec.split(" --")
    kwargs: dict = {}
    size = mean = std = None
    for option in options:
        flag, _, value = option.partition(" ")
        if flag in ("logits", "sigmoid") and not value:
            kwargs[flag] = True
        elif flag == "classes" and value:
            kwargs["class_names"] = [c.strip() for c in value.split(",")]
        elif flag == "channels" and value:
            kwargs["channels"] = value
        elif flag == "scale" and value:
            kwargs["scale"] = float(value)
        elif flag == "input-size" and value:
            size = int(value)
        elif flag in ("mean", "std") and value:
            numbers = tuple(float(v) for v in value.split(","))
            mean, std = (numbers, std) if flag == "mean" else (mean, numbers)
        else:
            raise ModelError(f"the recorded model {spec!r} has an option compare cannot "
                             f"read back (--{option})")
    if size is not None or mean is not None or std is not None:
        kwargs["preprocess"] = Preprocess(input_size=(size, size) if size else None,
                                          mean=mean or (0.0, 0.0, 0.0),
                                          std=std or (1.0, 1.0, 1.0))
    return load(model, None, **kwargs)


def _pixels_of(files: dict[int, str]) -> Callable[[int], np.ndarray | None]:
    """image id → its RGB pixels (a few kept decoded), None when the file cannot be read."""
    from explain.files import from_storable

    return kept_pixels(lambda image: decode(CueImage(image, "", from_storable(files[image]),
                                                     files[image]), DEFAULT_MAX_PIXELS))


def crops(patches: list[CuePatch], pixels: Callable[[int], np.ndarray | None]
          ) -> list[np.ndarray | None]:
    out: list[np.ndarray | None] = []
    for p in patches:
        rgb = pixels(p.image)
        t, le, b, r = p.box
        out.append(None if rgb is None else np.ascontiguousarray(rgb[t:b, le:r]))
    return out


def _embed(embedder: PatchEmbedder, images: list[np.ndarray | None]) -> np.ndarray:
    """One vector per crop; a crop that cannot be read gets a row of NaN."""
    rows = [k for k, c in enumerate(images) if c is not None]
    dim = embedder([np.zeros((8, 8, 3), np.uint8)]).shape[1]
    out = np.full((len(images), dim), np.nan, np.float32)
    for lo in range(0, len(rows), 64):
        part = rows[lo:lo + 64]
        out[part] = embedder([images[k] for k in part])
    return out


def _normalised(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)


@dataclass
class Space:
    """The cues of one home run in the shared space: ids, centroids, radii."""

    ids: list[int]
    centroids: np.ndarray
    radii: np.ndarray

    @classmethod
    def of(cls, patches: list[CuePatch], vectors: np.ndarray) -> Space:
        ids = sorted({p.cue for p in patches})
        cents, radii = [], []
        for cue in ids:
            own = np.array([k for k, p in enumerate(patches)
                            if p.cue == cue and not np.isnan(vectors[k]).any()], dtype=np.int64)
            if len(own) == 0:
                cents.append(np.full(vectors.shape[1], np.nan))
                radii.append(np.inf)
                continue
            c = _normalised(vectors[own].mean(0))
            cents.append(c)
            radii.append(float((vectors[own] @ c).min()) - RADIUS_SLACK)
        width = vectors.shape[1] if vectors.ndim == 2 else 0
        return cls(ids, np.array(cents).reshape(len(ids), width), np.array(radii))

    def carried(self, vectors: np.ndarray) -> list[int | None]:
        """The cue each vector carries (module docstring), or None."""
        if not self.ids or len(vectors) == 0:
            return [None] * len(vectors)
        sims = np.nan_to_num(vectors @ np.nan_to_num(self.centroids, nan=0.0).T, nan=-np.inf)
        best = sims.argmax(1)
        return [self.ids[j] if sims[k, j] >= self.radii[j] else None
                for k, j in enumerate(best)]


def measure(run: Published, carried: list[int | None], cue: int) -> dict:
    """fp_share, tn_share and mean_drop of ``cue`` in ``run`` (``carried``: each patch's cue)."""
    fp = [p for p, c in zip(run.patches, carried, strict=True) if c == cue and p.role == "fp"]
    tn = {p.image for p, c in zip(run.patches, carried, strict=True)
          if c == cue and p.role == "tn"}
    n_fp = sum(1 for r in run.roles.values() if r == "fp")
    n_tn = sum(1 for r in run.roles.values() if r == "tn")
    return {"fp_share": len({p.image for p in fp}) / n_fp if n_fp else 0.0,
            "tn_share": len(tn) / n_tn if n_tn else None,
            "mean_drop": float(np.mean([p.drop for p in fp])) if fp else None}


def status(strength_a: float | None, strength_b: float | None, gain_a: float | None,
           gain_b: float | None, drop_b: float | None = None) -> str:
    """persists | weakened | vanished (the module docstring's thresholds); unproven when A's own
    audit did not prove the cue (no strength, or a paste gain at most :data:`GAIN_FLOOR`: it
    never showed that adding it raises A's score, so nothing can persist or vanish);
    unmeasured when B gave neither a paste gain nor a strength. ``drop_b``: B's mean drop when
    the cue's patches are hidden in its false positives; a cue B still leans on that much
    (above :data:`GAIN_FLOOR`) has not vanished. Where the product cannot tell, it says so."""
    if not strength_a or strength_a <= 0 or gain_a is None or gain_a <= GAIN_FLOOR:
        return "unproven"
    if gain_b is None and strength_b is None:
        return "unmeasured"
    gone_gain = gain_b is None or gain_b <= GAIN_FLOOR
    gone_strength = strength_b is None or strength_b <= VANISHED_SHARE * strength_a
    gone_drop = drop_b is None or drop_b <= GAIN_FLOOR
    if gone_gain and gone_strength and gone_drop:
        return "vanished"
    for a, b in ((strength_a, strength_b), (gain_a, gain_b)):
        if b is not None and b <= WEAKENED_SHARE * a:
            return "weakened"
    return "persists"


def new_status(strength_b: float | None, gain_b: float | None) -> str:
    """A cue of B that matches none of A's: ``new`` when B's own audit proved it (the rule of
    :func:`status` for A's cues: strength above 0 and a paste gain above :data:`GAIN_FLOOR`),
    else ``unproven``: a cluster of B's patches that adding does not raise B's score is no new
    cue."""
    if not strength_b or strength_b <= 0 or gain_b is None or gain_b <= GAIN_FLOOR:
        return "unproven"
    return "new"


def _key(parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode("utf-8")).hexdigest()


def _load_cache(path: Path, key: str) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("key") != key:
                return None
            return {"meta": meta, "va": z["va"], "vb": z["vb"]}
    except (OSError, ValueError, KeyError):
        return None


def _save_cache(path: Path, meta: dict, va: np.ndarray, vb: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), va=va, vb=vb)
    write_bytes(path, buf.getvalue())


def _thumbs(patches: list[CuePatch], pixels: Callable[[int], np.ndarray | None]) -> list[str]:
    """Data URIs of up to :data:`SHOWN_PATCHES` patches (false positives first)."""
    from explain.render import data_uri

    order = sorted(patches, key=lambda p: (p.role != "fp", p.image))[:SHOWN_PATCHES]
    out = []
    for crop in crops(order, pixels):
        if crop is not None and crop.size:
            side = 96
            scale = side / max(crop.shape[:2])
            size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
            out.append(data_uri(cv2.resize(crop, size, interpolation=cv2.INTER_NEAREST
                                           if scale > 1 else cv2.INTER_AREA), side))
    return out


def cue_changes(a: Run, b: Run, to_a: dict[int, int], out: Path, *, seed: int,
                embed: str, model_b: object | None = None) -> CueChanges:
    """The cue section of the comparison of ``a`` and ``b`` (module docstring); ``to_a`` maps
    B's image ids to A's where the two runs matched an image by content; ``model_b``, a
    classifier or spec, replaces run B's recorded spec."""
    if embed not in CUE_EMBEDS:
        raise OptionError(f"unknown cue embedding {embed!r}; use one of {', '.join(CUE_EMBEDS)}")
    result = CueChanges()
    pa, why_a = published(a, "A")
    pb, why_b = published(b, "B")
    if pa is None:
        result.reason = why_a
        return result
    if why_b:
        result.notes.append(why_b + "; B's cue shares are unmeasured and no cue of B can be "
                            "new")
    recipients_b = ([i for i, r in pb.roles.items() if r == "tn"] if pb is not None and
                    pb.setting is not None else [])
    if not recipients_b:
        recipients_b = [row.id for row in b.store.sample("tn", b.target, b.threshold, NEGATIVES,
                                                         seed)]
    scores_b = {image: score for image, _, _, score, _ in b.store.content_rows()}
    # one key space: A's ids, B's images matched to A's by content, B's others below 0
    key_b = {i: to_a.get(i, -1 - i) for i in scores_b}
    files = dict(pa.files)
    for image, path, *_ in b.store.content_rows():
        if key_b[image] < 0:
            files[key_b[image]] = path
    pixels = _pixels_of(files)
    patches_b = pb.patches if pb is not None else []
    spec_b = model_b if isinstance(model_b, str) else b.model
    key = _key([a.key, pa.setting, [(p.image, p.role, p.box, p.cue) for p in pa.patches],
                pa.cues, b.key, pb.setting if pb else None,
                [(p.image, p.role, p.box, p.cue) for p in patches_b],
                sorted((i, scores_b[i]) for i in recipients_b), spec_b, embed, seed])
    cache_path = out / CACHE
    cached = _load_cache(cache_path, key)
    if cached is not None:
        meta, va, vb = cached["meta"], cached["va"], cached["vb"]
    else:
        try:
            embedder = PatchEmbedder(None, embed)  # type: ignore[arg-type]
        except (ExplainError, ImportError, OSError, RuntimeError) as exc:
            result.reason = f"the shared cue embedder ({embed}) cannot be loaded: {exc}"
            return result
        va = _embed(embedder, crops(pa.patches, pixels))
        vb = _embed(embedder, crops(patches_b, lambda i: pixels(key_b[i]))) if patches_b else \
            np.zeros((0, va.shape[1]), np.float32)
        meta = {"key": key, "embedding": embedder.describe, "pastes": {}, "calls": 0}
        try:
            if pa.cues:  # model B is loaded only when A has a cue to test
                classifier = model_b if model_b is not None and not isinstance(model_b, str) \
                    else reload_model(spec_b)
                meta.update(_paste_under_b(classifier, pa, b, recipients_b, key_b, scores_b,
                                           pixels, seed))
        except ExplainError as exc:
            result.reason = (f"model B ({display(str(spec_b))}) cannot be run again to test "
                             f"A's cues: {getattr(exc, 'reason', None) or exc}")
            return result
        _save_cache(cache_path, meta, va, vb)
        result.calls = meta["calls"]
    result.embedding = meta["embedding"]
    _rows_of(result, pa, pb, va, vb, meta["pastes"], pixels, key_b)
    return result


def _paste_under_b(classifier: object, pa: Published, b: Run, recipients: list[int],
                   key_b: dict[int, int], scores_b: dict[int, float],
                   pixels: Callable[[int], np.ndarray | None], seed: int) -> dict:
    """B's paste test of each cue of A: {"pastes": cue → [before, after] pairs, "calls"}."""
    from explain.models import load, resolve_target

    counted = Counting(load(classifier))
    t = resolve_target(counted.classifier, b.target)
    keys = [key_b[i] for i in recipients]
    scores = {key_b[i]: float(scores_b[i]) for i in recipients}
    pastes: dict[str, list] = {}
    for cue, row in pa.cues.items():
        members = [p for p in pa.patches if p.cue == cue]
        donors = [p for p in members if p.role == "fp"] or members
        made = paste_test(counted, [Patch(p.image, 0, p.role, p.box, 0.0, p.drop,
                                          np.zeros(0, np.float32)) for p in donors],
                          keys, pixels, scores, t, row["paste_pairs"] or
                          CueOptions().paste_pairs, seed + cue, None)
        pastes[str(cue)] = [[q.before, q.after] for q in made]
    return {"pastes": pastes, "calls": counted.calls}


def _carried_share(patches: list[CuePatch], carried: list[int | None], own: int, other: int
                   ) -> float:
    """The share of cue ``own``'s patches that carry cue ``other`` of the other run."""
    mine = [c for p, c in zip(patches, carried, strict=True) if p.cue == own]
    return sum(1 for c in mine if c == other) / len(mine) if mine else 0.0


def _rows_of(result: CueChanges, pa: Published, pb: Published | None, va: np.ndarray,
             vb: np.ndarray, pastes: dict[str, list], pixels: Callable[[int], np.ndarray | None],
             key_b: dict[int, int]) -> None:
    """The rows of :data:`CUE_COLUMNS` (A's cues by A's rank, then B's new cues)."""
    va, vb = va.astype(np.float64), vb.astype(np.float64)
    allv = np.concatenate([va, vb]) if len(vb) else va
    centre = np.nanmean(allv, axis=0) if len(allv) else 0.0
    va, vb = _normalised(va - centre), _normalised(vb - centre)
    space_a = Space.of(pa.patches, va)
    a_in_a = space_a.carried(va)
    b_in_a = space_a.carried(vb)
    patches_b = pb.patches if pb is not None else []
    space_b = Space.of(patches_b, vb) if patches_b else None
    a_in_b = space_b.carried(va) if space_b is not None else [None] * len(va)
    matched: dict[int, list[tuple[float, int]]] = {}
    for cue_b in (pb.cues if pb is not None else {}):
        for cue in pa.cues:
            overlap = max(_carried_share(patches_b, b_in_a, cue_b, cue),
                          _carried_share(pa.patches, a_in_b, cue, cue_b))
            if overlap >= MATCH_SHARE:
                matched.setdefault(cue, []).append((overlap, cue_b))

    def pixels_b(image: int) -> np.ndarray | None:
        return pixels(key_b[image])

    for cue in sorted(pa.cues, key=lambda c: pa.cues[c]["rank"]):
        row = pa.cues[cue]
        ma = measure(pa, a_in_a, cue)
        gain_a = row["paste_gain"]
        before_after = pastes.get(str(cue), [])
        gain_b = float(np.mean([y - x for x, y in before_after])) if before_after else None
        strength_a = strength(ma["fp_share"], ma["tn_share"], ma["mean_drop"], gain_a)
        if pb is not None and pb.setting is not None:
            mb = measure(pb, b_in_a, cue)
            strength_b = strength(mb["fp_share"], mb["tn_share"], mb["mean_drop"], gain_b)
        else:
            mb = {"fp_share": None, "tn_share": None, "mean_drop": None}
            strength_b = None
        best = sorted(matched.get(cue, []), key=lambda x: (-x[0], x[1]))
        cue_b = best[0][1] if best else None
        shown_b = [p for p in patches_b if p.cue == cue_b] if cue_b is not None else \
            [p for p, c in zip(patches_b, b_in_a, strict=True) if c == cue]
        result.rows.append({
            "cue_a": cue, "cue_b": cue_b,
            "status": status(strength_a, strength_b, gain_a, gain_b, mb["mean_drop"]),
            "strength_a": strength_a, "strength_b": strength_b,
            "fp_share_a": ma["fp_share"], "fp_share_b": mb["fp_share"],
            "paste_gain_a": gain_a, "paste_gain_b": gain_b,
            "tn_share_a": ma["tn_share"], "tn_share_b": mb["tn_share"],
            "mean_drop_a": ma["mean_drop"], "mean_drop_b": mb["mean_drop"],
            "paste_pairs_b": len(before_after), "rank_a": row["rank"],
            "also_b": [c for _, c in best[1:]],
            "thumbs_a": _thumbs([p for p in pa.patches if p.cue == cue], pixels),
            "thumbs_b": _thumbs(shown_b, pixels_b),
        })
    taken = {c for pairs in matched.values() for _, c in pairs}
    if pb is None or space_b is None:
        return
    b_in_b = space_b.carried(vb)
    for cue in sorted(pb.cues, key=lambda c: pb.cues[c]["rank"]):
        if cue in taken:
            continue
        mb = measure(pb, b_in_b, cue)
        ma = measure(pa, a_in_b, cue)
        gain_b = pb.cues[cue]["paste_gain"]
        strength_b = strength(mb["fp_share"], mb["tn_share"], mb["mean_drop"], gain_b)
        result.rows.append({
            "cue_a": None, "cue_b": cue, "status": new_status(strength_b, gain_b),
            "strength_a": None,
            "strength_b": strength_b,
            "fp_share_a": ma["fp_share"], "fp_share_b": mb["fp_share"],
            "paste_gain_a": None, "paste_gain_b": gain_b,
            "tn_share_a": ma["tn_share"], "tn_share_b": mb["tn_share"],
            "mean_drop_a": ma["mean_drop"], "mean_drop_b": mb["mean_drop"],
            "paste_pairs_b": pb.cues[cue]["paste_pairs"], "rank_a": None, "also_b": [],
            "thumbs_a": _thumbs([p for p, c in zip(pa.patches, a_in_b, strict=True)
                                 if c == cue], pixels),
            "thumbs_b": _thumbs([p for p in patches_b if p.cue == cue], pixels_b),
        })


__all__ = ["CUE_COLUMNS", "CUE_EMBEDS", "CueChanges", "cue_changes", "new_status", "published",
           "reload_model", "status"]
