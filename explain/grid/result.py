"""A laid-out grid (:class:`SimilarityGrid`) and its ``grid.json`` document, written and read."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from explain.errors import ExplainError
from explain.files import display, to_storable, write_text
from explain.grid.quality import GridQuality

GRID_JSON_VERSION = 1


@dataclass
class SimilarityGrid:
    """A laid-out grid: where every image sits, what it was embedded with, and how good it is.

    Arrays are aligned with ``names``: ``cells`` N×2 (row, col), ``coords`` N×2 t-SNE points
    (the cells as (x, y) for a layout without t-SNE), ``embedding`` N×D, ``thumbnails``
    N×t×t×3 uint8, ``scores`` N (target probability) or None. ``layout`` names the layout kept
    (:mod:`explain.grid.arrange`), ``tried`` the DPQ16 of every layout measured.
    """

    names: list[str]
    cells: np.ndarray
    coords: np.ndarray
    shape: tuple[int, int]
    embedding: np.ndarray
    embed: str
    quality: GridQuality
    perplexity: float
    seed: int
    thumbnails: np.ndarray
    scores: np.ndarray | None = None
    target: str | None = None
    labels: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    layout: str = "tsne-jv"
    tried: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The ``grid.json`` document, a JSON-ready dict (version :data:`GRID_JSON_VERSION`).

        ``images`` maps each name (the path as given, in :func:`explain.files.to_storable` form,
        so any byte name is kept exactly in strict UTF-8) to ``{"cell": [row, col], "xy": [x, y]}``
        plus ``"score"`` and ``"label"`` when known; ``skipped`` lists unreadable images with the
        reason, ``left_out`` the images sampled out to fit a fixed grid; ``layout`` the layout
        kept and ``layouts_tried`` the DPQ16 of each one measured (``auto`` measures several).
        """
        images = {}
        for i, name in enumerate(self.names):
            entry: dict[str, object] = {"cell": [int(self.cells[i, 0]), int(self.cells[i, 1])],
                                        "xy": [float(self.coords[i, 0]), float(self.coords[i, 1])]}
            if self.scores is not None:
                entry["score"] = float(self.scores[i])
            if self.labels is not None:
                entry["label"] = self.labels[i]
            images[to_storable(name)] = entry
        return {
            "version": GRID_JSON_VERSION,
            "rows": self.shape[0], "cols": self.shape[1],
            "embed": self.embed, "embedding_dim": int(self.embedding.shape[1]),
            "perplexity": self.perplexity, "seed": self.seed, "target": self.target,
            "layout": self.layout, "layouts_tried": dict(self.tried),
            "quality": self.quality.to_json(),
            "images": images,
            "skipped": [{"path": to_storable(p), "reason": display(r)} for p, r in self.skipped],
            "left_out": list(self.left_out),
            "notes": list(self.notes),
        }

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_json` to ``path``, atomically; returns the path written."""
        return write_text(path, json.dumps(self.to_json(), indent=1))


def read_grid_json(path: str | os.PathLike) -> dict:
    """Read a ``grid.json`` written by :meth:`SimilarityGrid.save_json` at ``path``.

    Returns the document as a dict; ExplainError when the file cannot be read or is not a
    grid.json of this version.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ExplainError(f"cannot read grid file {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("version") != GRID_JSON_VERSION or "images" not in doc:
        raise ExplainError(f"{path} is not a grid.json (version {GRID_JSON_VERSION}) of "
                           "`explain grid`")
    return doc
