"""What shapes an audit and what it returns: :class:`AuditOptions` (with the cue discovery's
:class:`CueOptions`) and :class:`AuditResult`.

A module of its own so that the stages, the outputs, the cue discovery and the CLI read the same
types without importing one another (the outputs used to import the orchestration for
``AuditResult`` while the orchestration imported the outputs).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from explain.choices import (
    DEFAULT_FILL,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_PIXELS,
    ENGINES,
    check_occlusion_fill,
)
from explain.drill_down import check_drill_down
from explain.errors import OptionError
from explain.frames import parse_sampling
from explain.render import check_look
from explain.windows import DEFAULT_BOX, DEFAULT_STRIDE, Size, WindowPlan

if TYPE_CHECKING:
    from explain.audit.cues import Cues

EMBEDS = ("auto", "features", "open-nsfw", "pixels")


@dataclass(frozen=True)
class CueOptions:
    """How cues are harvested, grouped and tested; every field shapes the results."""

    per_image: int = 3
    percentile: float = 90.0
    negatives: int = 50
    positives: int = 20
    paste_pairs: int = 16
    max_cues: int = 12
    min_fps: int = 5
    seed: int = 0
    embed: str = "auto"

    def check(self) -> None:
        """Raise :class:`~explain.errors.OptionError` for a value out of its range."""
        if self.per_image < 1:
            raise OptionError(f"cue patches per image must be at least 1, got {self.per_image}")
        if not 0.0 <= self.percentile <= 100.0:
            raise OptionError(f"cue percentile must be in [0, 100], got {self.percentile}")
        if min(self.negatives, self.positives, self.paste_pairs) < 0:
            raise OptionError("cue sample sizes and paste pairs must be 0 or more")
        if self.max_cues < 2:
            raise OptionError(f"max_cues must be at least 2, got {self.max_cues}")
        if self.min_fps < 1:
            raise OptionError(f"min_fps must be at least 1, got {self.min_fps}")
        if self.embed not in EMBEDS:
            raise OptionError(f"unknown cue embedding {self.embed!r}; use one of "
                              f"{', '.join(EMBEDS)}")

    def setting(self, **more: object) -> str:
        """A short hash of these options and ``more`` (the windows, fill, target): the key under
        which a cache keeps results."""
        text = json.dumps({**self.__dict__, **more}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class AuditOptions:
    """Everything that shapes an audit. Only what changes scores and maps is part of the run key
    (``box``, ``stride``, ``fill``, ``drill_down``, ``target``, ``concepts``, ``max_pixels``);
    the operating point (``threshold`` or ``target_precision`` / ``target_recall``) and every
    other option only change what is reported, so a new value reuses the stored scores and
    maps (the cue discovery keeps its results under a hash of its own options; the embeddings
    of the label-issue and error-cluster steps are kept per image).

    ``target_precision`` / ``target_recall`` (at most one) replace ``threshold`` by the one that
    meets them on the labeled images (:func:`explain.audit.metrics.operating_threshold`).
    ``label_issues``: find images whose label the data contradicts (cleanlab);
    ``clusters``: group the errors in the embedder's feature space."""

    threshold: float = 0.5
    target_precision: float | None = None
    target_recall: float | None = None
    top: int = 50
    box: Size = DEFAULT_BOX
    stride: Size = DEFAULT_STRIDE
    fill: str = DEFAULT_FILL
    drill_down: float | None = None
    target: str = "nsfw"
    concepts: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    frames: str = "auto"
    max_frames: int = DEFAULT_MAX_FRAMES
    batch_size: int | None = None
    workers: int = 4
    colormap: str | None = None
    alpha: float = 0.5
    normalize: str | None = None
    vmin: float | None = None
    vmax: float | None = None
    mosaic: int = 256
    cues: bool = True
    cue_options: CueOptions = field(default_factory=CueOptions)
    label_issues: bool = True
    clusters: bool = True

    def check(self) -> None:
        """Raise :class:`~explain.errors.OptionError` for a value out of its range, an unknown
        fill, a bad look or a mosaic over the memory budget (before any work is done)."""
        if not 0.0 <= self.threshold <= 1.0:
            raise OptionError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.target_precision is not None and self.target_recall is not None:
            raise OptionError("give a target precision or a target recall, not both")
        for name in ("target_precision", "target_recall"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise OptionError(f"{name.replace('_', ' ')} must be in (0, 1], got {value}")
        if self.top < 0:
            raise OptionError(f"top must be 0 or more, got {self.top}")
        WindowPlan(self.box, self.stride)
        check_look(self.colormap, self.normalize, self.vmin, self.vmax)
        if self.mosaic < 0:
            raise OptionError(f"mosaic must be 0 or more images, got {self.mosaic}")
        if self.mosaic >= 4:  # the mosaic comes last: refuse an oversized one before any work
            from explain.grid import check_grid_memory

            check_grid_memory(self.mosaic, None, 64)
        check_occlusion_fill(self.fill)
        check_drill_down(self.drill_down)
        parse_sampling(self.frames)
        if self.max_frames < 1:
            raise OptionError(f"max_frames must be at least 1, got {self.max_frames}")
        if self.batch_size is not None and self.batch_size < 1:
            raise OptionError(f"batch size must be at least 1, got {self.batch_size}")
        if self.workers < 1:
            raise OptionError(f"workers must be at least 1, got {self.workers}")
        self.cue_options.check()


@dataclass
class AuditResult:
    """Where the audit went and what it found; ``metrics`` is empty for unlabeled data."""

    output: Path
    run: int
    key: str
    resumed: bool
    images: int
    scored: int
    failed: int
    heatmaps: int
    threshold: float = 0.5
    seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    cues: Cues | None = None


@dataclass(frozen=True)
class RayOptions:
    """Where and how the Ray engine (``audit(..., engine="ray")``) runs; none of it is part of the
    run key, so either engine resumes the other's run.

    ``address``: ``None`` starts a local Ray instance for the audit (shut down at its end),
    ``"auto"`` joins the cluster this machine belongs to, ``"ray://HOST:PORT"`` a remote one.
    ``actors``: scoring (and heatmap) actors, each loading the model once. ``gpus_per_actor``:
    GPUs each actor reserves (``None``: 1 when the cluster has GPUs, else 0). ``loader``: a
    picklable callable that builds the classifier on an actor (default: the model spec loaded on
    the audit's device).
    """

    address: str | None = None
    actors: int = 1
    gpus_per_actor: float | None = None
    loader: Callable[[], object] | None = None

    def check(self, engine: str) -> None:
        """Raise :class:`~explain.errors.OptionError` for an unknown ``engine`` or a value out of
        its range."""
        if engine not in ENGINES:
            raise OptionError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
        if self.actors < 1:
            raise OptionError(f"actors must be at least 1, got {self.actors}")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise OptionError(f"GPUs per actor must be 0 or more, got {self.gpus_per_actor}")
