"""``Heatmap``: a per-pixel map in ORIGINAL image coordinates plus how it was made."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from explain.files import atomic_write, write_text


@dataclass
class Heatmap:
    """``values`` is float32 (H, W) aligned with the original image; the rest is metadata.

    ``score`` is the unperturbed probability of ``target``; ``box``/``stride``/``windows`` are set
    by window methods, ``params`` holds anything else a method wants to record.
    """

    values: np.ndarray
    method: str
    target: str
    score: float | None = None
    box: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    windows: int | None = None
    seconds: float | None = None
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape  # type: ignore[return-value]

    def metadata(self) -> dict:
        meta = asdict(self)
        del meta["values"]
        meta["shape"] = list(self.shape)
        meta["min"], meta["max"] = float(self.values.min()), float(self.values.max())
        return meta

    def save(self, stem: str | Path) -> tuple[Path, Path]:
        """Write ``<stem>.npy`` (values) and ``<stem>.json`` (metadata), atomically; return both
        paths."""
        stem = Path(stem)
        npy, meta = stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".json")
        with atomic_write(npy) as f:
            np.save(f, self.values)
        write_text(meta, json.dumps(self.metadata(), indent=2, default=_jsonable))
        return npy, meta

    @classmethod
    def load(cls, stem: str | Path) -> Heatmap:
        stem = Path(stem)
        meta = json.loads(stem.with_name(stem.name + ".json").read_text())
        for key in ("shape", "min", "max"):
            meta.pop(key, None)
        for key in ("box", "stride"):
            if meta.get(key) is not None:
                meta[key] = tuple(meta[key])
        return cls(values=np.load(stem.with_name(stem.name + ".npy")), **meta)


def _jsonable(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
