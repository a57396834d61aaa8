"""Hostile input to the one image intake (explain.images) and to the audit: mixed image sizes,
every array form a user may pass, odd file names, label files and folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata
from typer.testing import CliRunner

from explain.audit import AuditOptions, audit
from explain.cli import app
from explain.images import load_image, to_tensor


def _save(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _quick(batch_size: int | None = None, **kw) -> AuditOptions:
    return AuditOptions(concepts=False, top=0, mosaic=0, batch_size=batch_size, **kw)


# --- item 1: one image representation through the audit ---------------------------------------

@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory) -> Path:
    """Photos at exactly open_nsfw's input size (256×256) and at other sizes, interleaved so that
    every batch size mixes them."""
    root = tmp_path_factory.mktemp("mixed")
    at_input = lambda rgb: cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_AREA)  # noqa: E731
    images = {
        "a_astronaut256.png": at_input(skdata.astronaut()),
        "b_coffee.png": skdata.coffee()[::2, ::2],
        "c_chelsea256.png": at_input(skdata.chelsea()),
        "d_rocket.png": skdata.rocket()[::2, ::2],
        "e_retina256.png": at_input(skdata.retina()),
        "f_ihc.png": skdata.immunohistochemistry()[::3, ::3],
        "g_coffee256.png": skdata.coffee()[:256, 100:356],
    }
    for name, rgb in images.items():
        _save(root / name, rgb)
    return root


def test_audit_scores_equal_explain_score_for_every_batch_size(mixed_sizes, nsfw_onnx,
                                                               tmp_path):
    paths = sorted(str(p) for p in mixed_sizes.iterdir())
    assert sum(load_image(p).shape[:2] == (256, 256) for p in paths) == 4
    result = CliRunner().invoke(app, ["score", *paths, "--json", "--model", "open-nsfw:onnx",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    cli = {row["path"]: row["scores"]["nsfw"] for row in json.loads(result.stdout)}
    library = {p: float(nsfw_onnx.predict(to_tensor(load_image(p)))[0, 1]) for p in paths}
    assert set(cli) == set(paths)
    for p in paths:
        assert cli[p] == pytest.approx(library[p], abs=1e-6)
    for batch_size in (1, 2, 3, 7):
        out = tmp_path / f"audit{batch_size}"
        audit(mixed_sizes, out, model=nsfw_onnx, options=_quick(batch_size))
        rows = {r["path"]: r for r in _read_csv(out / "scores.csv")}
        assert set(rows) == set(paths)
        for p in paths:
            assert float(rows[p]["score"]) == pytest.approx(cli[p], abs=1e-6), (batch_size, p)
            assert float(rows[p]["p_nsfw"]) == pytest.approx(cli[p], abs=1e-6), (batch_size, p)
