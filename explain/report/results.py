"""A report's rows: :class:`ImageResult` (one image) holding a :class:`MethodResult` per method.

Their own module, below both the building (:mod:`explain.report.build`) and the ranking
(:mod:`explain.report.ranking`), which read and write them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MethodResult:
    """One method on one image: its numbers, or why there are none; pictures as data URIs."""

    method: str
    title: str
    seconds: float | None = None
    faith_seconds: float | None = None
    params: dict = field(default_factory=dict)
    faithfulness: dict | None = None
    rank: int | None = None
    tied: bool = False
    error: str | None = None
    skipped: str | None = None
    overlay_uri: str | None = None
    raw_uri: str | None = None
    reading: str | None = None
    sanity: dict | None = None


@dataclass
class ImageResult:
    """One image's row; ``path`` is the path as given (``os.fsdecode`` text: any byte name);
    the JSON writes it in :func:`explain.files.to_storable` form, the page through
    :func:`explain.files.display`."""

    path: str
    anchor: str
    error: str | None = None
    size: tuple[int, int] | None = None
    scores: dict[str, float] = field(default_factory=dict)
    score: float | None = None
    original_uri: str | None = None
    thumb_uri: str | None = None
    methods: list[MethodResult] = field(default_factory=list)
    left_out: str | None = None
    clip: str | None = None
    timeline_uri: str | None = None

    @property
    def best(self) -> list[MethodResult]:
        """The methods ranked first on this image (several when tied, none when not ranked)."""
        return [m for m in self.methods if m.rank == 1]

    @property
    def ranked(self) -> list[MethodResult]:
        """The methods best first; skipped and failed ones last."""
        return sorted(self.methods, key=lambda m: (m.rank is None, m.rank or 0))
