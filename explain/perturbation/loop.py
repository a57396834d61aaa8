"""The one scoring loop of every black-box method: copies of images, built batch by batch by a
copy builder, scored by the model, one model call per batch.

A *copy builder* (:class:`Copies`) knows how many copies it makes (``len``), builds the copies
``lo:hi`` as one batch (:meth:`Copies.copies`) and scores a batch it built
(:meth:`Copies.score`: the classifier's ``predict`` unless the builder works in the model's own
input, or on cached activations). Builders live beside their method (occluded windows in
:mod:`explain.occlusion`, crops in :mod:`explain.sliding`, blended or boolean masks in
:mod:`explain.perturb`, deletion and insertion steps in :mod:`explain.faithfulness`, windows
scored by incremental inference in :mod:`explain.incremental`); the plain ones (whole images, a
tensor batch) live here.

:func:`scored` runs one builder in batches of ``step`` copies (a size checked against the memory
budget by :func:`explain.windows.check_batch_size` or :func:`~explain.windows.fit_batch`),
calls ``progress(done, total)`` after each batch (:mod:`explain.progress`) and checks
``cancel()`` before each: a True answer raises :class:`Cancelled` before the next model call.
:func:`score_parts` scores the copies of SEVERAL builders (several images or jobs) in one model
call: the service's cross-job batches, built (:func:`build_parts`) on a preparation thread and
scored (:func:`score_built`) on the model's. No other code hands a batch of copies to a model.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from explain.images import to_batch
from explain.models.base import Classifier
from explain.progress import Progress

Cancel = Callable[[], bool]
"""``cancel()``: True once the caller wants the work stopped (checked before each batch)."""


class Cancelled(Exception):  # noqa: N818 — a control signal, not an error
    """Raised by the loop before a model call once ``cancel()`` said True: the work stops after
    the batch in flight, and what it computed so far is the caller's to keep or drop."""


class Copies:
    """A copy builder: ``len(self)`` copies, built ``lo:hi`` at a time, scored by
    ``classifier``. Subclasses implement :meth:`copies`; :meth:`score` is the classifier's
    ``predict`` unless a builder works in the model's own input."""

    classifier: Classifier
    alone: bool = False
    """True for a builder whose :meth:`score` depends on its own image, not only on the batch
    (incremental inference's cached activations): its copies never share a model call with
    another builder's (:func:`build_parts` refuses them)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def copies(self, lo: int, hi: int) -> torch.Tensor:
        """The copies ``lo:hi`` as one batch (what :meth:`score` takes)."""
        raise NotImplementedError

    def score(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N×C) of a batch :meth:`copies` built (or several, concatenated):
        ONE model call."""
        return self.classifier.predict(batch)

    def empty(self, n: int) -> torch.Tensor | None:
        """An uninitialised batch for ``n`` copies, which :meth:`copies_into` fills in place;
        None (the default) when the builder only builds new batches (:meth:`copies`)."""
        return None

    def copies_into(self, out: torch.Tensor, lo: int, hi: int) -> None:
        """Build the copies ``lo:hi`` into ``out`` (rows of a batch :meth:`empty` made): a
        shared batch is then written once, not built and then concatenated."""
        out.copy_(self.copies(lo, hi))


def scored(builder: Copies, step: int, *, progress: Progress | None = None,
           cancel: Cancel | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
    """For each batch of at most ``step`` copies of ``builder``, in order: ``(lo, hi, probs)``,
    ``probs`` the class probabilities (hi−lo × C) of copies ``lo:hi``. ``progress(hi, len)``
    after each batch; ``cancel()`` before each (True: :class:`Cancelled`)."""
    n = len(builder)
    for lo in range(0, n, step):
        if cancel is not None and cancel():
            raise Cancelled
        hi = min(lo + step, n)
        probs = builder.score(builder.copies(lo, hi))
        if progress is not None:
            progress(hi, n)
        yield lo, hi, probs


def score_all(builder: Copies, step: int, target: int | None = None, *,
              progress: Progress | None = None, cancel: Cancel | None = None) -> torch.Tensor:
    """Every copy of ``builder`` scored (:func:`scored`), on the CPU: p(``target``) of each
    (length ``len(builder)``), or every class (len × C) when ``target`` is None."""
    out = [probs if target is None else probs[:, target]
           for _, _, probs in scored(builder, step, progress=progress, cancel=cancel)]
    if not out:
        return torch.zeros(0)
    return torch.cat(out).cpu()


Part = tuple[Copies, int, int]
"""The copies ``lo:hi`` of one builder, in a batch shared with other builders."""


def build_parts(parts: Sequence[Part], buffers: Buffers | None = None) -> torch.Tensor:
    """ONE model batch of the copies ``lo:hi`` of several builders (one image or job each;
    builders of one kind and one classifier, whose copies have one shape), in order: what
    :func:`score_built` takes. Building may run on another thread than the model calls (the
    service's preparation threads). With ``buffers``, the batch is written into one of theirs
    (:class:`Buffers`: give it back once scored)."""
    if parts[0][0].alone and any(b is not parts[0][0] for b, _, _ in parts):
        raise ValueError(f"{type(parts[0][0]).__name__} scores its own image only: its copies "
                         "cannot share a model call with another builder's")
    first = parts[0][0]
    if any(type(b) is not type(first) or b.classifier is not first.classifier
           for b, _, _ in parts):
        raise ValueError("score_parts needs builders of one kind over one classifier")
    total = sum(hi - lo for _, lo, hi in parts)
    out = buffers.take(first, total) if buffers is not None else None
    if out is None and len(parts) == 1:
        return first.copies(parts[0][1], parts[0][2])
    out = first.empty(total) if out is None else out
    if out is None:
        return torch.cat([b.copies(lo, hi) for b, lo, hi in parts])
    row = 0
    for b, lo, hi in parts:  # each builder writes its rows in place: the batch is written once
        b.copies_into(out[row:row + hi - lo], lo, hi)
        row += hi - lo
    return out


class Buffers:
    """Batches kept for reuse by a caller that builds batches of one shape again and again (the
    service's worker): a fresh batch of 64 copies of a 256² input is 50 MB of new memory, whose
    pages the system maps and zeroes on first touch at every batch. :meth:`take` lends one
    (a view of ``n`` rows of a kept batch, or a new one), :meth:`give` takes it back once its
    scores are in; at most ``keep`` are kept. Safe across threads."""

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep
        self._free: list[torch.Tensor] = []
        self._made: dict[int, weakref.ref[torch.Tensor]] = {}  # by id: the batches made here
        self._lock = threading.Lock()

    def take(self, builder: Copies, n: int) -> torch.Tensor | None:
        """``n`` rows to build ``builder``'s copies into; None for a builder that builds only
        new batches (:meth:`Copies.empty`)."""
        like = builder.empty(0)
        if like is None:
            return None
        with self._lock:
            for i, kept in enumerate(self._free):
                if (kept.shape[1:] == like.shape[1:] and kept.dtype == like.dtype
                        and kept.device == like.device and len(kept) >= n):
                    return self._free.pop(i)[:n]
        made = builder.empty(n)
        assert made is not None
        with self._lock:
            self._made = {k: r for k, r in self._made.items() if r() is not None}
            self._made[id(made)] = weakref.ref(made)
        return made[:n]

    def give(self, batch: torch.Tensor) -> None:
        """Take back a batch :meth:`take` lent (any other tensor is ignored): its rows may be
        overwritten from now on."""
        base = batch if batch._base is None else batch._base
        with self._lock:
            ref = self._made.get(id(base))
            if (ref is not None and ref() is base and len(self._free) < self.keep
                    and all(kept is not base for kept in self._free)):
                self._free.append(base)


def score_built(parts: Sequence[Part], batch: torch.Tensor) -> list[torch.Tensor]:
    """``batch`` (:func:`build_parts` of ``parts``) scored in ONE model call: each part's class
    probabilities, in order."""
    probs = parts[0][0].score(batch)
    bounds = np.cumsum([0] + [hi - lo for _, lo, hi in parts])
    return [probs[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def score_parts(parts: Sequence[Part]) -> list[torch.Tensor]:
    """The copies ``lo:hi`` of several builders scored in ONE model call (:func:`build_parts`,
    then :func:`score_built`): each part's class probabilities, in order. The service's
    cross-job batches (:mod:`explain.serve.batching`) go through these two steps."""
    return score_built(parts, build_parts(parts))


class Batch(Copies):
    """The images of a tensor batch (N×3×H×W in [0, 1], on the classifier's device), unchanged:
    how a plain score goes through the loop."""

    def __init__(self, classifier: Classifier, x: torch.Tensor) -> None:
        self.classifier, self.x = classifier, x

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def copies(self, lo: int, hi: int) -> torch.Tensor:
        return self.x[lo:hi]


class Images(Copies):
    """RGB uint8 images of one size (H×W×3 arrays), turned into a batch on the classifier's
    device ``lo:hi`` at a time (:func:`explain.images.to_batch`)."""

    def __init__(self, classifier: Classifier, images: Sequence[np.ndarray]) -> None:
        self.classifier, self.images = classifier, images

    def __len__(self) -> int:
        return len(self.images)

    def copies(self, lo: int, hi: int) -> torch.Tensor:
        return to_batch(self.images[lo:hi], self.classifier.device)


@torch.no_grad()
def probabilities(classifier: Classifier, x: torch.Tensor) -> torch.Tensor:
    """Class probabilities (N×C, where the classifier answers) of the batch ``x`` (N ≥ 1) in one
    model call: a plain score, through the loop."""
    return next(scored(Batch(classifier, x), int(x.shape[0])))[2]
