"""Parquet manifests (explain/audit/dataset.py): a ``path`` column and an optional ``label``
column read by the same rules as a path,label CSV, and a whole audit from one."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import need_module
from PIL import Image

from explain.audit import AuditOptions, audit, open_dataset
from explain.errors import OptionError


def _write(path, columns: dict) -> None:
    pa = need_module("pyarrow", "ray", "Parquet manifest tests")
    need_module("pyarrow.parquet", "ray", "Parquet manifest tests")
    pa.parquet.write_table(pa.table(columns), path)


def test_a_parquet_manifest_reads_like_a_csv(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / "imgs").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / f"{name}.png")
    manifest = tmp_path / "m.parquet"
    _write(manifest, {"path": ["imgs/a.png", str(tmp_path / "imgs/b.png"), "imgs/c.png",
                               "imgs/../imgs/a.png"],
                      "label": ["NSFW", "sfw", None, "nsfw"]})
    ds = open_dataset(manifest, ["sfw", "nsfw"])
    assert [(p.path.name, p.label) for p in ds] == [("a.png", "nsfw"), ("b.png", "sfw"),
                                                    ("c.png", None)]
    _write(manifest, {"path": ["imgs/a.png"]})  # no label column: unlabeled
    assert [p.label for p in open_dataset(manifest, ["sfw", "nsfw"])] == [None]
    _write(manifest, {"path": ["imgs/a.png", "imgs/b.png"], "label": ["sfw", "porn"]})
    with pytest.raises(OptionError, match=r"m.parquet:2: label 'porn' is not a class"):
        open_dataset(manifest, ["sfw", "nsfw"])
    _write(manifest, {"file": ["imgs/a.png"]})
    with pytest.raises(OptionError, match=r"no 'path' column \(columns: file\)"):
        open_dataset(manifest, ["sfw", "nsfw"])
    manifest.write_bytes(b"PAR1 not really")
    with pytest.raises(OptionError, match="not a readable Parquet file"):
        open_dataset(manifest, ["sfw", "nsfw"])


def test_an_audit_from_a_parquet_manifest(tmp_path):
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(6):
        path = tmp_path / "imgs" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)
        paths.append(f"imgs/{i}.png")
        labels.append("nsfw" if i % 2 else "sfw")
    paths.append("imgs/missing.png")
    labels.append("sfw")
    _write(tmp_path / "m.parquet", {"path": paths, "label": labels})

    def brightness(batch: np.ndarray) -> np.ndarray:
        s = batch.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0
        return np.stack([1.0 - s, s], axis=1)

    brightness.class_names = ["sfw", "nsfw"]
    result = audit(tmp_path / "m.parquet", tmp_path / "out", model=brightness,
                   options=AuditOptions(top=0, concepts=False, cues=False, mosaic=0))
    assert (result.images, result.scored, result.failed) == (7, 6, 1)
    assert result.metrics["auc"] is not None


def test_extra_manifest_columns_become_slice_values(tmp_path):
    """A manifest's other columns (Parquet's schema, a CSV's header) are kept with each row, as
    text; a CSV without a header has none."""
    from explain.files import to_storable

    (tmp_path / "imgs").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / f"{name}.png")
    a, b = (to_storable(tmp_path / "imgs" / f"{n}.png") for n in ("a", "b"))
    _write(tmp_path / "m.parquet", {"path": ["imgs/a.png", "imgs/b.png"], "label": ["sfw", None],
                                    "source": ["web", None], "year": [2021, 2024]})
    columns = open_dataset(tmp_path / "m.parquet", ["sfw", "nsfw"]).columns()
    assert columns == {"source": {a: "web", b: ""}, "year": {a: "2021", b: "2024"}}
    (tmp_path / "m.csv").write_text("path,label,skin_tone\nimgs/a.png,sfw,V\nimgs/b.png,nsfw,II\n")
    assert open_dataset(tmp_path / "m.csv", ["sfw", "nsfw"]).columns() == \
        {"skin_tone": {a: "V", b: "II"}}
    (tmp_path / "m.csv").write_text("imgs/a.png,sfw,V\n")
    assert open_dataset(tmp_path / "m.csv", ["sfw", "nsfw"]).columns() == {}
