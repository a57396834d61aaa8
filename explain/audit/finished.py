"""A finished audit as ``explain compare`` reads it: the folder's store bound to its last
finished run, and the threshold its ``metrics.json`` records."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from explain.audit.store import Store
from explain.errors import OptionError
from explain.files import display


@dataclass
class Run:
    """One audit as the comparison reads it: its store (bound to its last finished run), the
    threshold its ``metrics.json`` records, and what the notes and page name it by."""

    folder: Path
    store: Store
    threshold: float
    model: str
    target: str

    @property
    def key(self) -> str:
        return self.store.key


def open_run(folder: str | os.PathLike) -> Run:
    """The audit in ``folder`` (its last finished run and the threshold its ``metrics.json``
    records); :class:`~explain.errors.OptionError` when there is none."""
    folder = Path(folder)
    store = Store.finished(folder)
    try:
        threshold = json.loads((folder / "metrics.json").read_text())["threshold"]
    except (OSError, ValueError, KeyError, TypeError):
        store.close()
        raise OptionError(f"{display(folder)} has no readable metrics.json with the run's "
                          "threshold; run the same `explain audit` command again to rewrite "
                          "its outputs") from None
    return Run(folder, store, float(threshold), str(store.params.get("model")),
               str(store.params.get("target")))
