"""The audit's image embeddings: one vector per labeled image, in the model's feature space, kept
in the store so that the label-issue and error-cluster steps never embed an image twice (a new
threshold costs no model call).

The embedder is the grid's (:class:`explain.grid.Embedder`): the classifier's penultimate
features when it has ``features()``, else raw pixels (32×32 RGB), which need no model call (a
black box's class probabilities would be one number for two classes, too little to cluster).
A clip is embedded by the frame the audit judged it by (recorded when it was scored; a clip scored
before that was recorded is judged again). Vectors longer than :data:`DIMENSIONS`
are projected to that many dimensions by a fixed seeded Gaussian matrix (scaled by 1/√d, which
keeps distances within a few per cent on average): the store and the steps that read every
vector then need 512 bytes per image, whatever the network.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from explain.audit.clip_frame import audit_pixels
from explain.audit.options import AuditOptions
from explain.audit.store import Store
from explain.errors import ExplainError
from explain.images import collect_warnings
from explain.models import Classifier, HasFeatures
from explain.models.base import model_name
from explain.progress import LabelledProgress

if TYPE_CHECKING:
    from explain.grid.embed import Embedder

DIMENSIONS = 128
BATCH = 32


def embedder_for(classifier: Classifier) -> tuple[Embedder, str]:
    """The grid's embedder for ``classifier`` and the name its vectors are stored under."""
    from explain.grid import Embedder

    if isinstance(classifier, HasFeatures):
        return Embedder("features", classifier), f"features:{model_name(classifier, '?')}"
    return Embedder("pixels", None), "pixels"


def project(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` (N×D) at most :data:`DIMENSIONS` wide, float32 (the module docstring)."""
    d = vectors.shape[1]
    if d <= DIMENSIONS:
        return vectors.astype(np.float32)
    matrix = np.random.default_rng(0).standard_normal((d, DIMENSIONS)) / np.sqrt(DIMENSIONS)
    return (vectors.astype(np.float64) @ matrix).astype(np.float32)


def embed_labeled(store: Store, classifier: Classifier, o: AuditOptions,
                  progress: LabelledProgress | None = None
                  ) -> tuple[dict[int, np.ndarray], str, list[str]]:
    """(image id → vector, what the vectors are in words, notes) for every labeled scored
    image; only images without a stored vector are read and embedded (batch by batch, each
    batch committed). An image that can no longer be read is left out with a note; a model
    whose ``features()`` refuses is embedded by pixels."""
    from explain.grid import Embedder

    embedder, name = embedder_for(classifier)
    notes: list[str] = []
    with collect_warnings(), ThreadPoolExecutor(max_workers=o.workers) as pool:
        try:
            stored = _embed_missing(store, classifier, o, embedder, name, pool, notes, progress)
        except _NoFeatures:
            embedder, name = Embedder("pixels", None), "pixels"
            stored = _embed_missing(store, classifier, o, embedder, name, pool, notes, progress)
    what = "raw pixels (32×32 RGB; the model gives no features)" if name == "pixels" else \
        f"penultimate features of {name.split(':', 1)[1]}"
    return ({i: np.frombuffer(v, dtype=np.float32) for i, v in stored.items()}, what, notes)


class _NoFeatures(Exception):
    """The classifier's ``features()`` refused: the grid's embedder fell back to
    probabilities."""


def _embed_missing(store: Store, classifier: Classifier, o: AuditOptions, embedder: object,
                   name: str, pool: ThreadPoolExecutor, notes: list[str],
                   progress: LabelledProgress | None) -> dict[int, bytes]:
    from explain.files import display, from_storable
    from explain.grid.embed import resize

    stored = store.embeddings(name)
    rows = [(r[0], r[1], json.loads(r[6]).get("frame") if r[6] else None)
            for r in store.slice_rows() if r[0] not in stored]

    def read(row: tuple[int, str, int | None]) -> tuple[int, np.ndarray | str]:
        try:
            rgb, _ = audit_pixels(from_storable(row[1]), max_pixels=o.max_pixels, notes=[],
                                  classifier=None if row[2] is not None else classifier,
                                  target=o.target, frame=row[2])
        except ExplainError as exc:
            return row[0], f"no embedding for {display(from_storable(row[1]))}: {exc}"
        return row[0], resize(rgb, embedder.size)

    for lo in range(0, len(rows), BATCH):
        got = list(pool.map(read, rows[lo:lo + BATCH]))
        notes += [x for _, x in got if isinstance(x, str)]
        good = [(i, x) for i, x in got if not isinstance(x, str)]
        if good:
            vectors = embedder([x for _, x in good])
            if embedder.mode == "probabilities":
                raise _NoFeatures
            batch = [(i, v.tobytes()) for (i, _), v in
                     zip(good, project(vectors), strict=True)]
            store.save_embeddings(name, batch)
            stored.update(batch)
        if progress is not None:
            progress(min(lo + BATCH, len(rows)), len(rows), "embeddings")
    return stored
