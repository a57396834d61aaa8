"""Error slices found without a list of slices (in the spirit of Domino, Eyuboglu et al. 2022): the
false positives and the false negatives, each kind apart, clustered in the model's feature space
(:mod:`explain.audit.embedding`).

Each kind's errors are grouped by :func:`explain.audit.cue_groups.cluster` (the vectors centred on
the errors' mean and L2-normalised, seeded k-means, k by silhouette, at most one cluster per 8
errors; fewer than 16 errors stay one cluster). A cluster's *region* is the ball around its centre
whose radius is its farthest member, in the space of all labeled images' vectors centred on their
mean and L2-normalised (centred on the errors alone, a single cluster's ball would hold
everything); its **error rate** is the share of errors among the labeled images of the same true
side (negatives for false positives, positives for false negatives) that fall in the region and
nearer to this centre than to the kind's other centres, with a Wilson 95 % interval. Its
**exemplars** are the members nearest its centre. A false-positive cluster **matches a cue**
(:mod:`explain.audit.cues`) when at least half its members have a region in that cue; the cue with
the largest share is named.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from explain.audit.cue_groups import MIN_CLUSTER, cluster
from explain.audit.cues import Cues
from explain.audit.metrics import wilson

MAX_CLUSTERS = 8
EXEMPLARS = 4
CUE_SHARE = 0.5


@dataclass
class ErrorCluster:
    """One cluster of errors of one ``kind`` (fp, fn); ``members`` and ``exemplars`` are indices
    into the images given."""

    kind: str
    cluster: int
    members: list[int]
    region: int
    region_errors: int
    exemplars: list[int]
    cue: int | None = None
    cue_share: float | None = None
    interval: tuple[float | None, float | None] = field(default=(None, None))

    @property
    def error_rate(self) -> float | None:
        return self.region_errors / self.region if self.region else None


def _space(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    v = vectors.astype(np.float64) - mean
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)


def error_clusters(vectors: np.ndarray, positive: np.ndarray, called: np.ndarray,
                   ids: list[int], cues: Cues | None = None, seed: int = 0
                   ) -> list[ErrorCluster]:
    """The clusters of false positives and of false negatives among these labeled images
    (``vectors`` one row each, ``positive`` their label is the target, ``called`` their score
    is at or above the threshold, ``ids`` their store ids, used to match cues), largest error
    rate first within each kind."""
    out: list[ErrorCluster] = []
    mean = vectors.astype(np.float64).mean(0)
    for kind, side, wrong in (("fp", ~positive, called), ("fn", positive, ~called)):
        errors = np.flatnonzero(side & wrong)
        if len(errors) < 2:
            continue
        labels = np.zeros(len(errors), dtype=np.int64) if len(errors) < 2 * MIN_CLUSTER else \
            cluster(vectors[errors].astype(np.float64), MAX_CLUSTERS, seed)[0]
        space = _space(vectors[errors], mean)
        k = int(labels.max()) + 1
        centres = np.stack([space[labels == j].mean(0) for j in range(k)])
        radius = np.array([np.linalg.norm(space[labels == j] - centres[j], axis=1).max()
                           for j in range(k)])
        same_side = np.flatnonzero(side)
        d = np.linalg.norm(_space(vectors[same_side], mean)[:, None] - centres[None], axis=2)
        nearest = d.argmin(1)
        inside = d[np.arange(len(same_side)), nearest] <= radius[nearest] + 1e-9
        found = []
        for j in range(k):
            members = errors[labels == j]
            region = same_side[inside & (nearest == j)]
            region_errors = int(wrong[region].sum())
            dist = np.linalg.norm(space[labels == j] - centres[j], axis=1)
            c = ErrorCluster(kind, j, members.tolist(), len(region), region_errors,
                             members[np.argsort(dist, kind="stable")[:EXEMPLARS]].tolist())
            c.interval = wilson(region_errors, len(region))
            if kind == "fp" and cues is not None:
                member_ids = {ids[i] for i in members}
                best = max(((len(member_ids & {p.image for p in cue.patches}) / len(member_ids),
                             cue.cue) for cue in cues.cues), default=(0.0, None))
                if best[0] >= CUE_SHARE:
                    c.cue_share, c.cue = best
            found.append(c)
        found.sort(key=lambda c: (-(c.error_rate or 0.0), -len(c.members)))
        for n, c in enumerate(found):
            c.cluster = n + 1
        out += found
    return out
