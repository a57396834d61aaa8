"""Cue discovery: the image regions a model reacts to in its mistakes, found and tested
automatically (black-box; in the spirit of ACE, Ghorbani et al. 2019).

1. **Harvest.** Each image's occlusion map (the audit's own map for a false positive; one computed
   here for the contrast images: a seeded sample of true negatives and true positives) gives at
   most ``per_image`` patches: box-sized windows (the occlusion box, placed at any pixel) of
   highest mean positive heat, chosen greedily without overlap, each re-centred on the centre of
   mass of the heat around it (the map is flat in stride-sized steps), kept while its mean is at
   least the ``percentile``-th percentile of all window positions' means and half the best
   one's (:func:`top_windows`). Each patch's **drop** is ``p_t(image) − p_t(image with the
   patch filled)`` (one batched call per image, :func:`explain.audit.concepts.score_drops`).
2. **Embed and group.** Patches are embedded by the model's own ``features()`` when it has them,
   by open_nsfw's penultimate features otherwise, by 32×32 pixels as the last resort, each patch
   faded to gray where its heat is low (:func:`focus`); vectors are centred, L2-normalised and
   grouped by seeded k-means (k-means++ starts, best of 8), k in 2..``max_cues`` (at most one
   cluster per 8 patches) chosen by the largest silhouette (the smallest k on ties).
3. **Measure** each cluster: ``fp_share`` (false positives with a patch in it / false positives
   harvested), ``tn_share`` and ``tp_share`` (the same for the contrast samples), ``mean_drop``
   (over its false-positive patches) and the **paste test**: ``paste_pairs`` seeded (donor patch,
   recipient) pairs, the donor a false-positive patch of the cluster (any of its patches when it
   has none), the recipient a true negative of the sample other than the donor's image, the
   patch scaled to keep its share of the image area and pasted at a seeded position;
   ``paste_gain`` is the mean of ``p_t(recipient with patch) − p_t(recipient)``.
4. **Rank** by ``strength = max(fp_share − tn_share, 0) · (max(mean_drop, 0) +
   max(paste_gain, 0))``: common in the mistakes, rare in the correct negatives, and causal
   (hiding it lowers the score, adding it raises it). Ties: larger paste gain, more
   false-positive images, lower cue id. Cue ids number the clusters in order of their first
   patch, so they do not depend on the ranking.

Model evaluations (images through ``predict``): ``windows + 1`` per contrast image (none for a
false positive whose map is given), one per patch for the drops, ``paste_pairs`` per cluster, plus
one per image given a map but no score; the embedder's evaluations (one per patch) are counted
apart. Every
result goes into a :class:`CueCache` as it is computed (the audit's is its SQLite store), so a
second call does only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from explain.audit.cue_groups import Paste, cluster, paste_test, put, strength
from explain.audit.cue_harvest import (
    Counting,
    CueImage,
    Patch,
    PatchEmbedder,
    decode,
    harvest,
    top_windows,
)
from explain.audit.options import CueOptions
from explain.choices import DEFAULT_FILL, check_occlusion_fill
from explain.errors import ImageError
from explain.files import display
from explain.images import DEFAULT_MAX_PIXELS
from explain.models import Classifier, resolve_target
from explain.windows import DEFAULT_BOX, DEFAULT_STRIDE, Size, WindowPlan, window_plan

__all__ = ["Cue", "CueCache", "CueImage", "CueOptions", "Cues", "Harvested", "MemoryCache",
           "Paste", "Patch", "StoreCache", "discover_cues", "find_cues", "put", "top_windows"]

ROLES = ("fp", "tn", "tp")

if TYPE_CHECKING:
    from explain.audit.store import Store

CueProgress = Callable[[str, int, int], None]


@dataclass
class Harvested:
    """What the cache keeps per image: its score, the model's and the embedder's evaluations
    spent on it, the embedding used, or why it could not be read."""

    role: str
    score: float | None
    calls: int
    embed_calls: int
    embedding: str
    error: str | None = None


@dataclass
class Cue:
    """A cluster of patches with its measurements (see the module docstring)."""

    cue: int
    rank: int
    patches: list[Patch]
    fp_images: int
    fp_share: float
    tn_share: float | None
    tp_share: float | None
    mean_drop: float | None
    paste_gain: float | None
    paste_images: int
    strength: float
    pastes: list[Paste] = field(default_factory=list)


@dataclass
class Cues:
    """The ranked cues (best first) and how they were found. ``calls`` counts the images the
    model scored for them, over every call that built them (``new_calls``: this call only);
    ``embed_calls`` the embedder's images; ``setting`` the cache's key of the options they
    were found under (the audit's: :meth:`CueOptions.setting`; empty in memory)."""

    cues: list[Cue]
    images: dict[int, CueImage]
    embedding: str
    k: int
    silhouette: float | None
    calls: int
    new_calls: int
    embed_calls: int
    fp_images: int
    tn_images: int
    tp_images: int
    notes: list[str] = field(default_factory=list)
    setting: str = ""


class CueCache(Protocol):
    """Where results are kept as they are computed (the audit: its store)."""

    def harvested(self) -> dict[int, Harvested]: ...

    def patches(self) -> list[Patch]: ...

    def save_image(self, image: CueImage, done: Harvested, patches: list[Patch]) -> None: ...

    def pastes(self, signature: str) -> tuple[list[Paste], int] | None: ...

    def save_pastes(self, signature: str, pastes: list[Paste], calls: int) -> None: ...


class MemoryCache:
    """A :class:`CueCache` in memory (the library's default)."""

    def __init__(self) -> None:
        self._images: dict[int, Harvested] = {}
        self._patches: list[Patch] = []
        self._pastes: dict[str, tuple[list[Paste], int]] = {}

    def harvested(self) -> dict[int, Harvested]:
        return dict(self._images)

    def patches(self) -> list[Patch]:
        return list(self._patches)

    def save_image(self, image: CueImage, done: Harvested, patches: list[Patch]) -> None:
        self._images[image.key] = done
        self._patches.extend(patches)

    def pastes(self, signature: str) -> tuple[list[Paste], int] | None:
        return self._pastes.get(signature)

    def save_pastes(self, signature: str, pastes: list[Paste], calls: int) -> None:
        self._pastes[signature] = (pastes, calls)


class StoreCache:
    """A :class:`CueCache` in the audit's store, under one ``setting`` (the options' hash)."""

    def __init__(self, store: Store, setting: str) -> None:
        self.store = store
        self.setting = setting

    def harvested(self) -> dict[int, Harvested]:
        return {r[0]: Harvested(*r[1:]) for r in self.store.cue_images(self.setting)}

    def patches(self) -> list[Patch]:
        return [Patch(image, n, role, (t, le, b, r), heat, drop, np.frombuffer(v, np.float32))
                for image, role, n, t, le, b, r, heat, drop, v
                in self.store.cue_patches(self.setting)]

    def save_image(self, image: CueImage, done: Harvested, patches: list[Patch]) -> None:
        self.store.save_cue_image(
            self.setting, image.key, (done.role, done.score, done.calls, done.embed_calls,
                                      done.embedding, done.error),
            [(p.n, *p.box, p.heat, p.drop, np.asarray(p.vector, np.float32).tobytes())
             for p in patches])

    def pastes(self, signature: str) -> tuple[list[Paste], int] | None:
        kept = self.store.cue_pastes(self.setting, signature)
        if kept is None:
            return None
        rows, calls = kept
        return [Paste(r["donor"], tuple(r["donor_box"]), r["recipient"], tuple(r["box"]),
                      r["before"], r["after"]) for r in json.loads(rows)], calls

    def save_pastes(self, signature: str, pastes: list[Paste], calls: int) -> None:
        self.store.save_cue_pastes(self.setting, signature,
                                   json.dumps([asdict(p) for p in pastes]), calls)


def _signature(members: list[Patch], recipients: list[int], options: CueOptions) -> str:
    text = json.dumps([[(p.image, p.n) for p in members], recipients, options.paste_pairs,
                       options.seed])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _share(images: set[int], of: int) -> float | None:
    return len(images) / of if of else None


# --- the whole discovery ------------------------------------------------------------------------

def find_cues(classifier: Classifier, images: Sequence[CueImage], *,
              options: CueOptions | None = None, target: str | int = "nsfw",
              box: Size = DEFAULT_BOX, stride: Size = DEFAULT_STRIDE,
              fill: str = DEFAULT_FILL, batch_size: int | None = None,
              max_pixels: int = DEFAULT_MAX_PIXELS, cache: CueCache | None = None,
              progress: CueProgress | None = None, windows: WindowPlan | None = None) -> Cues:
    """Harvest, group, measure and rank (the module docstring) over ``images``, keeping every
    result in ``cache`` as it is computed; what the cache already holds is not recomputed.
    An image that cannot be read is recorded with its reason and skipped; a model error stops
    the call (what was committed stays, and the next call goes on from there). ``windows``:
    the window plan of ``box`` and ``stride`` when the caller made it (the audit's, once per
    run); every image's occlusion map and patches use it."""
    o = options or CueOptions()
    o.check()
    check_occlusion_fill(fill)
    grid = window_plan(box, stride, windows)
    cache = cache if cache is not None else MemoryCache()
    counted = Counting(classifier)
    t = resolve_target(classifier, target)
    by_key = {im.key: im for im in images}
    done = cache.harvested()
    todo = [im for im in images if im.key not in done]
    embed: PatchEmbedder | None = None
    decoded: dict[int, np.ndarray | None] = {}
    notes: list[str] = []
    for i, image in enumerate(todo):
        calls, embed_calls = counted.calls, embed.calls if embed is not None else 0
        if embed is None:  # its probe counts for the first image
            embed = PatchEmbedder(classifier, o.embed)
        try:
            rgb = decode(image, max_pixels)
        except ImageError as exc:
            score, patches, error = None, [], display(exc.reason)
        else:
            score, patches = harvest(counted, image, rgb, t, embed, windows=grid, fill=fill,
                                     batch_size=batch_size, options=o)
            error = None
        cache.save_image(image, Harvested(image.role, score, counted.calls - calls,
                                          embed.calls - embed_calls, embed.describe, error),
                         patches)
        if progress is not None:
            progress("harvest", i + 1, len(todo))
    done = cache.harvested()
    for key, record in done.items():
        if record.error and key in by_key:
            notes.append(f"cue discovery skipped {display(by_key[key].name)}: {record.error}")
    alive = {k: r for k, r in done.items() if k in by_key and r.error is None}
    counts = {role: sum(1 for r in alive.values() if r.role == role) for role in ROLES}
    order = {im.key: i for i, im in enumerate(images)}
    patches = sorted((p for p in cache.patches() if p.image in alive),
                     key=lambda p: (order[p.image], p.n))
    embedding = "; ".join(sorted({r.embedding for r in alive.values()}))
    mine = [r for k, r in done.items() if k in by_key]
    result = Cues([], by_key, embedding, 0, None, sum(r.calls for r in mine), 0,
                  sum(r.embed_calls for r in mine), counts["fp"], counts["tn"], counts["tp"],
                  notes)
    if not any(p.role == "fp" for p in patches):
        notes.append("cue discovery found no regions that raise the score in the false positives")
        result.new_calls = counted.calls
        return result
    labels, result.silhouette = cluster(np.stack([p.vector for p in patches]).astype(np.float64),
                                        o.max_cues, o.seed)
    result.k = int(labels.max()) + 1
    recipients = sorted((k for k, r in alive.items() if r.role == "tn"), key=order.__getitem__)
    scores = {k: r.score for k, r in alive.items()}

    def pixels(key: int) -> np.ndarray | None:
        if key not in decoded:
            if len(decoded) > 64:
                decoded.clear()
            try:
                decoded[key] = decode(by_key[key], max_pixels)
            except ImageError:
                decoded[key] = None
        return decoded[key]

    for c in range(result.k):
        members = [p for p, lab in zip(patches, labels, strict=True) if lab == c]
        fp = [p for p in members if p.role == "fp"]
        signature = _signature(members, recipients, o)
        kept = cache.pastes(signature)
        if kept is None:
            before = counted.calls
            pastes = paste_test(counted, fp or members, recipients, pixels, scores, t,
                                o.paste_pairs, o.seed + c, batch_size)
            kept = (pastes, counted.calls - before)
            cache.save_pastes(signature, *kept)
        pastes = kept[0]
        result.calls += kept[1]
        fp_images = {p.image for p in fp}
        tn_share = _share({p.image for p in members if p.role == "tn"}, counts["tn"])
        mean_drop = float(np.mean([p.drop for p in fp])) if fp else None
        gain = float(np.mean([p.gain for p in pastes])) if pastes else None
        fp_share = len(fp_images) / counts["fp"] if counts["fp"] else 0.0
        result.cues.append(Cue(
            cue=c + 1, rank=0, patches=members, fp_images=len(fp_images), fp_share=fp_share,
            tn_share=tn_share, tp_share=_share({p.image for p in members if p.role == "tp"},
                                               counts["tp"]),
            mean_drop=mean_drop, paste_gain=gain, paste_images=len({p.recipient for p in pastes}),
            strength=strength(fp_share, tn_share, mean_drop, gain), pastes=pastes))
    result.cues.sort(key=lambda q: (-q.strength, -(q.paste_gain or 0.0), -q.fp_images, q.cue))
    for rank, cue in enumerate(result.cues, 1):
        cue.rank = rank
    if counts["tn"] == 0:
        notes.append("no true negatives to contrast with and paste into: tn_share and paste_gain "
                     "are empty")
    result.new_calls = counted.calls
    return result


def discover_cues(classifier: Classifier, false_positives: Sequence[object],
                  true_negatives: Sequence[object] = (), true_positives: Sequence[object] = (),
                  *, heatmaps: Sequence[np.ndarray | None] | None = None,
                  scores: Sequence[float | None] | None = None, target: str | int = "nsfw",
                  box: Size = DEFAULT_BOX, stride: Size = DEFAULT_STRIDE,
                  fill: str = DEFAULT_FILL, batch_size: int | None = None,
                  options: CueOptions | None = None, progress: CueProgress | None = None
                  ) -> Cues:
    """The cues a model reacts to in its false positives (see the module docstring).

    Images are paths or RGB arrays; ``heatmaps[i]`` / ``scores[i]``, when given, are the
    occlusion map (any scale) and p_target of ``false_positives[i]`` and spare their model
    calls. ``true_negatives`` are the contrast sample and the paste recipients; ``true_positives``
    only add a ``tp_share``.
    """
    items: list[CueImage] = []
    for role, group in (("fp", false_positives), ("tn", true_negatives), ("tp", true_positives)):
        for i, src in enumerate(group):
            name = os.fsdecode(src) if isinstance(src, str | bytes | os.PathLike) else \
                f"{role}[{i}]"
            item = CueImage(len(items), role, src, name)
            if role == "fp":
                item.heatmap = heatmaps[i] if heatmaps is not None else None
                item.score = scores[i] if scores is not None else None
            items.append(item)
    return find_cues(classifier, items, options=options, target=target, box=box, stride=stride,
                     fill=fill, batch_size=batch_size, progress=progress)
