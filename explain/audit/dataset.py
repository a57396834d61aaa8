"""What to audit: image paths with their true labels, read lazily.

Three inputs are accepted:

- a folder whose first-level sub-folders name the true label (``sfw/``, ``nsfw/``, any class name
  of the model, case-insensitive); images elsewhere in the folder are unlabeled;
- a manifest of ``path,label`` rows: a CSV (header optional) or a Parquet file with a ``path``
  and an optional ``label`` column (relative paths are taken from the manifest's folder), or a
  folder plus ``labels=`` such a manifest (relative paths then start at the folder); a CSV's
  header (or a Parquet file's schema) names further columns (``source``, ``skin_tone``, …),
  kept with each item as slices for the report (:mod:`explain.audit.slices`), never part of the
  run key;
- a folder without label sub-folders: every image is unlabeled and the audit ranks by score only.

Folders are searched recursively (:func:`explain.images.iter_image_files`); an audit's own output
folder and every folder holding an earlier audit (``audit.sqlite``) are left out, so an audit
whose ``-o`` lies inside DATA never audits its outputs. Folder items are yielded one by one so
that a listing of 100k files never needs more than the paths themselves.

A manifest is read and checked whole before any work: a CSV must be UTF-8 (an error names the file
and how to convert it); paths are normalised (``a/../a/x.jpg`` is ``a/x.jpg``); a file listed
twice with the same label is listed once, with two different labels it is an error naming both
lines.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from explain.audit.store import DB_NAME
from explain.errors import OptionError
from explain.files import display, to_storable
from explain.frames import CLIP_SUFFIXES
from explain.images import iter_image_files


@dataclass(frozen=True)
class Item:
    """One image to audit; ``label`` is a class name of the model or ``None`` (unlabeled);
    ``extra`` holds a manifest's other columns as (name, value) pairs (report-only: they are
    slices of the audit, not part of its run key)."""

    path: Path
    label: str | None
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Dataset:
    """A resolved audit input: where it is and how labels are read."""

    root: Path
    labels_csv: Path | None
    class_names: tuple[str, ...]
    exclude: tuple[Path, ...] = ()
    rows: tuple[Item, ...] = field(default=(), repr=False)

    @property
    def source(self) -> str:
        """A stable description of the input, part of the run key: with a label CSV, also a
        digest of its rows, so that an edited CSV starts a new run instead of resuming one whose
        labels (and so metrics) are stale."""
        if self.labels_csv is None:
            return str(self.root)
        digest = hashlib.sha256()
        for item in self.rows:
            digest.update(f"{to_storable(item.path)}\0{item.label or ''}\n".encode())
        return f"{self.root} labels={self.labels_csv} rows={digest.hexdigest()[:16]}"

    @property
    def base(self) -> Path:
        """The folder that ``folder`` slices are relative to: the data folder, or the
        manifest's."""
        return self.root if self.root.is_dir() else self.root.parent

    def columns(self) -> dict[str, dict[str, str]]:
        """A manifest's extra columns: column → stored path → value (empty for a folder)."""
        out: dict[str, dict[str, str]] = {}
        for item in self.rows:
            for name, value in item.extra:
                out.setdefault(name, {})[to_storable(item.path)] = value
        return out

    def __iter__(self) -> Iterator[Item]:
        if self.labels_csv is not None:
            yield from self.rows
            return
        yield from folder_items(self.root, self.class_names, self.exclude)


def _resolved(path: str | os.PathLike, what: str) -> Path:
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as exc:  # Python < 3.13 raises RuntimeError on a loop
        raise OptionError(f"{what} {display(path)} cannot be resolved: {exc}; a symbolic link "
                          "loop? give the real folder or file") from None


def open_dataset(data: str | os.PathLike, class_names: Sequence[str], *,
                 labels: str | os.PathLike | None = None,
                 exclude: Sequence[str | os.PathLike] = ()) -> Dataset:
    """Check ``data`` (folder or CSV) and ``labels`` (CSV) and describe the input; folders in
    ``exclude`` (the audit's output) are left out of a folder listing, and may not be the data
    folder itself (the outputs would be written over its images)."""
    root = _resolved(data, "DATA")
    if not root.exists():
        raise OptionError(f"{display(data)} does not exist; give a folder of images or a "
                          "path,label CSV")
    csv_path = _resolved(labels, "labels file") if labels is not None else None
    if csv_path is None and root.is_file():
        if root.suffix.lower() not in (".csv", ".parquet"):
            raise OptionError(f"{display(data)} is a file but not a .csv or .parquet; give a "
                              "folder of images or a path,label manifest")
        csv_path = root
    if csv_path is not None and not csv_path.is_file():
        raise OptionError(f"labels file {display(labels or csv_path)} not found")
    outputs = tuple(_resolved(p, "output") for p in exclude)
    if root.is_dir() and root in outputs:
        raise OptionError(f"the output folder {display(data)} is the data folder: the audit's "
                          "pictures, tables and heatmaps would be written among its images (an "
                          "image named grid.png or roc.png would be replaced); give another "
                          "folder with -o, inside the data folder or beside it")
    rows: tuple[Item, ...] = ()
    if csv_path is not None:
        base = root if root.is_dir() else csv_path.parent
        rows = tuple(read_labels_csv(csv_path, base, class_names))
    return Dataset(root=root, labels_csv=csv_path, class_names=tuple(class_names),
                   exclude=outputs, rows=rows)


def _label_map(class_names: Sequence[str]) -> dict[str, str]:
    return {name.lower(): name for name in class_names}


def folder_items(root: Path, class_names: Sequence[str], exclude: Sequence[Path] = ()
                 ) -> Iterator[Item]:
    """Every image under ``root``; the first sub-folder names its label when it is a class.
    Folders in ``exclude`` and folders holding an audit database are skipped."""
    names = _label_map(class_names)
    skipped = set(exclude)

    def skip(folder: Path) -> bool:
        return folder in skipped or (folder / DB_NAME).exists()

    for path in iter_image_files([root], skip=skip, suffixes=CLIP_SUFFIXES):
        first = path.relative_to(root).parts[0]
        label = names.get(first.lower()) if len(path.relative_to(root).parts) > 1 else None
        yield Item(path, label)


def read_labels_csv(csv_path: Path, base: Path, class_names: Sequence[str]) -> Iterator[Item]:
    """Rows ``path,label`` of a manifest: a CSV (header optional), or a Parquet file (``.parquet``)
    with a ``path`` column and an optional ``label`` column; an empty label means unlabeled.

    A label that is not a class of the model is a user error (probably a typo): it stops the
    audit before any work with the line (CSV) or row (Parquet, from 1) number, rather than
    silently auditing without it. So do a file given two different labels, and a CSV that is not
    UTF-8 text.
    """
    names = _label_map(class_names)
    seen: dict[str, tuple[int, str | None]] = {}
    rows = _parquet_rows(csv_path) if csv_path.suffix.lower() == ".parquet" else \
        _csv_rows(csv_path)
    for line, text, label, extra in rows:
        if label and label.lower() not in names:
            raise OptionError(
                f"{display(csv_path)}:{line}: label {display(repr(label))} is not a "
                f"class of the model ({', '.join(class_names)})"
            )
        value = names[label.lower()] if label else None
        path = os.path.normpath(text if Path(text).is_absolute() else base / text)
        if path in seen:
            first, known = seen[path]
            if known != value:
                raise OptionError(
                    f"{display(csv_path)}: {display(path)} has two labels: "
                    f"{known or '(none)'} on line {first} and {value or '(none)'} on "
                    f"line {line}; keep one")
            continue
        seen[path] = (line, value)
        yield Item(Path(path), value, extra)


def _csv_rows(csv_path: Path) -> Iterator[tuple[int, str, str, tuple[tuple[str, str], ...]]]:
    """(line, path, label, extra columns) of each row of a ``path,label[,…]`` CSV, stripped;
    a header (first cell ``path``) is skipped and names the extra columns (without one, there
    are none)."""
    names: list[str] = []
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            for line, row in enumerate(csv.reader(f), start=1):
                if not row or not any(cell.strip() for cell in row):
                    continue
                if line == 1 and row[0].strip().lower() == "path":
                    names = [cell.strip() for cell in row]
                    continue
                if len(row) < 2:
                    raise OptionError(f"{display(csv_path)}:{line}: expected 'path,label', got "
                                      f"{display(repr(row))}")
                extra = tuple((name, row[i].strip()) for i, name in enumerate(names)
                              if i >= 2 and name and i < len(row))
                yield line, row[0].strip(), row[1].strip(), extra
    except UnicodeDecodeError as exc:
        raise OptionError(
            f"{display(csv_path)} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
            f"offset {exc.start}); save it as UTF-8, e.g. iconv -f latin1 -t utf-8 (or -f "
            "utf-16) < labels.csv > labels-utf8.csv") from None
    except csv.Error as exc:
        raise OptionError(f"{display(csv_path)} is not a readable CSV ({exc}); a UTF-16 file? "
                          "save it as UTF-8 text with path,label rows") from None


def _parquet_rows(path: Path) -> Iterator[tuple[int, str, str, tuple[tuple[str, str], ...]]]:
    """(row number from 1, path, label, extra columns as text) of a Parquet manifest, read a
    record batch at a time; a missing or null label (or extra value) is ``""``."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise OptionError(f"{display(path)}: reading a Parquet manifest needs pyarrow: pip "
                          "install 'explain[ray]' (or pyarrow), or give a path,label CSV") from None
    try:
        manifest = pq.ParquetFile(path)
        columns = manifest.schema_arrow.names
        if "path" not in columns:
            raise OptionError(f"{display(path)} has no 'path' column (columns: "
                              f"{', '.join(columns) or 'none'}); a manifest needs path and, "
                              "optionally, label")
        for name in ("path", "label"):
            if columns.count(name) > 1:
                raise OptionError(f"{display(path)} has {columns.count(name)} '{name}' columns; "
                                  "keep one")
        wanted = ["path"] + (["label"] if "label" in columns else [])
        others = [c for c in columns if c not in wanted]
        number = 0
        for batch in manifest.iter_batches(columns=wanted + others, batch_size=4096):
            paths = batch.column("path").to_pylist()
            labels = batch.column("label").to_pylist() if "label" in wanted else \
                [None] * len(paths)
            extras = [batch.column(c).to_pylist() for c in others]
            for k, (value, label) in enumerate(zip(paths, labels, strict=True)):
                number += 1
                text = _path_text(value)
                if not text.strip():
                    raise OptionError(f"{display(path)}:{number}: empty path")
                extra = tuple((c, "" if v[k] is None else str(v[k]).strip())
                              for c, v in zip(others, extras, strict=True))
                yield number, text.strip(), _label_text(label, path, number), extra
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise OptionError(f"{display(path)} is not a readable Parquet file ({exc})") from None


def _path_text(value: object) -> str:
    """A Parquet path cell as a path: a binary cell is the file-system bytes (``os.fsdecode``,
    lossless, as :func:`explain.files.from_storable` gives), a null is empty."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return os.fsdecode(value)
    return str(value)


def _label_text(value: object, manifest: Path, number: int) -> str:
    """A Parquet label cell as text (a binary cell as UTF-8; a null is ``""``)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise OptionError(f"{display(manifest)}:{number}: the label is not UTF-8 text"
                              ) from None
    return str(value).strip()
