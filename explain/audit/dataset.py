"""What to audit: image paths with their true labels, read lazily.

Three inputs are accepted:

- a folder whose first-level sub-folders name the true label (``sfw/``, ``nsfw/``, any class name
  of the model, case-insensitive); images elsewhere in the folder are unlabeled;
- a CSV file of ``path,label`` rows (header optional; relative paths are taken from the CSV's
  folder), or a folder plus ``labels=`` such a CSV (relative paths then start at the folder);
- a folder without label sub-folders: every image is unlabeled and the audit ranks by score only.

Folders are searched recursively (:func:`explain.images.iter_image_files`). Items are yielded one
by one so that a listing of 100k files never needs more than the paths themselves.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from explain.errors import OptionError
from explain.images import iter_image_files


@dataclass(frozen=True)
class Item:
    """One image to audit; ``label`` is a class name of the model or ``None`` (unlabeled)."""

    path: Path
    label: str | None


@dataclass(frozen=True)
class Dataset:
    """A resolved audit input: where it is and how labels are read."""

    root: Path
    labels_csv: Path | None
    class_names: tuple[str, ...]

    @property
    def source(self) -> str:
        """A stable description of the input, part of the run key."""
        csv_part = f" labels={self.labels_csv}" if self.labels_csv else ""
        return f"{self.root}{csv_part}"

    def __iter__(self) -> Iterator[Item]:
        if self.labels_csv is not None:
            base = self.root if self.root.is_dir() else self.labels_csv.parent
            yield from read_labels_csv(self.labels_csv, base, self.class_names)
            return
        yield from folder_items(self.root, self.class_names)


def open_dataset(data: str | os.PathLike, class_names: Sequence[str], *,
                 labels: str | os.PathLike | None = None) -> Dataset:
    """Check ``data`` (folder or CSV) and ``labels`` (CSV) and describe the input."""
    root = Path(data).resolve()
    if not root.exists():
        raise OptionError(f"{data} does not exist; give a folder of images or a path,label CSV")
    csv_path = Path(labels).resolve() if labels is not None else None
    if csv_path is None and root.is_file():
        if root.suffix.lower() != ".csv":
            raise OptionError(f"{data} is a file but not a .csv; give a folder of images or a "
                              "path,label CSV")
        csv_path = root
    if csv_path is not None and not csv_path.is_file():
        raise OptionError(f"labels file {labels} not found")
    return Dataset(root=root, labels_csv=csv_path, class_names=tuple(class_names))


def _label_map(class_names: Sequence[str]) -> dict[str, str]:
    return {name.lower(): name for name in class_names}


def folder_items(root: Path, class_names: Sequence[str]) -> Iterator[Item]:
    """Every image under ``root``; the first sub-folder names its label when it is a class."""
    names = _label_map(class_names)
    for path in iter_image_files([root]):
        first = path.relative_to(root).parts[0]
        label = names.get(first.lower()) if len(path.relative_to(root).parts) > 1 else None
        yield Item(path, label)


def read_labels_csv(csv_path: Path, base: Path, class_names: Sequence[str]) -> Iterator[Item]:
    """Rows ``path,label`` of ``csv_path``; an empty label means unlabeled.

    A label that is not a class of the model is a user error (probably a typo): it stops the
    audit before any work with the line number, rather than silently auditing without it.
    """
    names = _label_map(class_names)
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row or not any(cell.strip() for cell in row):
                continue
            if line == 1 and row[0].strip().lower() == "path":
                continue
            if len(row) < 2:
                raise OptionError(f"{csv_path}:{line}: expected 'path,label', got {row!r}")
            text, label = row[0].strip(), row[1].strip()
            path = Path(text) if Path(text).is_absolute() else base / text
            if label and label.lower() not in names:
                raise OptionError(
                    f"{csv_path}:{line}: label {label!r} is not a class of the model "
                    f"({', '.join(class_names)})"
                )
            yield Item(path, names[label.lower()] if label else None)
