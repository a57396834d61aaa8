"""What an audit returns: :class:`AuditResult`, the folder it wrote and what it found.

Apart from the options (:mod:`explain.audit.options`), which the cue discovery reads, so that the
options import nothing of the audit and the result can hold the cues.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from explain.audit.cues import Cues


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

    def measured_nothing(self) -> str | None:
        """Why this run measured nothing (no image found, or none read and scored), else None:
        its report is written all the same, but a caller must not pass it for a run (the CLI
        exits 2, the service fails the job)."""
        if self.scored:
            return None
        if not self.images:
            return "the audit found no image: it measured nothing"
        return (f"none of the {self.images} images could be read and scored: the audit "
                "measured nothing (errors.csv says why)")
