"""Hostile input to the one image intake (explain.images) and to the audit: mixed image sizes,
every array form a user may pass, odd file names, label files and folders."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torch import nn
from typer.testing import CliRunner

from explain.audit import AuditOptions, audit
from explain.backprop import deconvnet, guided_backprop
from explain.cli import app
from explain.errors import ExplainError, ImageError, ModelError
from explain.faithfulness import faithfulness
from explain.grad_cam import gradcam
from explain.images import as_rgb, load_image, to_tensor
from explain.models import Preprocess, load
from explain.occlusion import occlusion_map
from explain.sliding import sliding_window_map


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


# --- item 8: one intake for every method -------------------------------------------------------

def _net() -> nn.Module:
    """Two 3×3 convolutions with fixed weights, global mean, two logits: a white box whose map
    depends on every pixel value."""
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return net.eval()


@pytest.fixture(scope="module")
def white_box_model():
    return load(_net(), "cpu", preprocess=Preprocess(input_size=None), class_names=["a", "b"],
                logits=True)


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)


def _forms(rgb: np.ndarray, folder: Path) -> dict[str, object]:
    path = _save(folder / "img.png", rgb)
    return {"path": path, "str path": str(path), "bytes path": os.fsencode(path),
            "uint8": rgb, "float32 [0,1]": rgb.astype(np.float32) / 255,
            "float64 [0,1]": rgb / 255.0, "int64": rgb.astype(np.int64),
            "uint16 0..255": rgb.astype(np.uint16), "nested list": rgb.tolist(),
            "nested float list": (rgb / 255.0).tolist()}


def _maps(model, image) -> dict[str, np.ndarray]:
    return {
        "occlusion": occlusion_map(model, image, box=4, stride=3, target="b").values,
        "sliding": sliding_window_map(model, image, box=4, stride=3, target="b").values,
        "deconvnet": deconvnet(model, image, target="b").values,
        "guided": guided_backprop(model, image, target="b").values,
        "gradcam": gradcam(model, image, target="b", layer="2").values,
        "faithfulness": np.array(faithfulness(model, image, np.arange(120.0).reshape(12, 10),
                                              steps=4, target="b")["deletion"]),
    }


def test_every_form_of_one_image_gives_the_same_maps(white_box_model, pixels, tmp_path):
    want = _maps(white_box_model, pixels)
    for form, image in _forms(pixels, tmp_path).items():
        got = _maps(white_box_model, image)
        for method in want:
            np.testing.assert_array_equal(got[method], want[method], err_msg=f"{form} {method}")
    assert as_rgb(np.array([[0.5]])).tolist() == [[[128, 128, 128]]]


def test_grayscale_and_rgba_arrays_mean_what_their_files_mean(white_box_model, pixels, tmp_path):
    gray = pixels[:, :, 0]
    for image in (gray, gray[:, :, None], gray / 255.0):
        np.testing.assert_array_equal(as_rgb(image), np.repeat(gray[:, :, None], 3, axis=2))
    rgba = np.dstack([pixels, np.linspace(0, 255, 120).reshape(12, 10).astype(np.uint8)])
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    from_file = load_image(path)
    np.testing.assert_array_equal(as_rgb(rgba), from_file)
    np.testing.assert_array_equal(
        occlusion_map(white_box_model, rgba, box=4, stride=3, target="b").values,
        occlusion_map(white_box_model, path, box=4, stride=3, target="b").values)


BAD_IMAGES = {
    "float 0..255": (np.full((8, 8, 3), 200.0), r"outside \[0, 1\].*image / 255"),
    "float slightly above 1": (np.full((8, 8, 3), 1.5, np.float32), r"outside \[0, 1\]"),
    "negative float": (np.full((8, 8, 3), -0.1), r"outside \[0, 1\]"),
    "int above 255": (np.full((8, 8, 3), 300), r"outside 0\.\.255"),
    "negative int": (np.full((8, 8, 3), -1), r"outside 0\.\.255"),
    "NaN": (np.full((8, 8, 3), np.nan), "NaN"),
    "inf": (np.full((8, 8, 3), np.inf, np.float32), "infinite"),
    "empty": (np.zeros((0, 0, 3), np.uint8), "empty"),
    "empty list": ([[]], "empty"),
    "1-d": (np.zeros(5, np.uint8), "shape"),
    "channels first": (np.zeros((3, 8, 8), np.uint8), "channels last"),
    "two channels": (np.zeros((8, 8, 2), np.uint8), "shape"),
    "4-d": (np.zeros((1, 8, 8, 3), np.uint8), "shape"),
    "bool": (np.ones((8, 8, 3), bool), "bool"),
    "strings": (np.full((8, 8, 3), "x"), "type"),
    "ragged list": ([[1, 2], [3]], "rectangular"),
    "missing file": ("no/such/file.png", "not found"),
}


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_a_bad_image_is_an_image_error_naming_the_fix(white_box_model, name):
    image, message = BAD_IMAGES[name]
    for method in (lambda: occlusion_map(white_box_model, image, box=4, stride=3, target="b"),
                   lambda: deconvnet(white_box_model, image, target="b"),
                   lambda: as_rgb(image)):
        with pytest.raises(ImageError, match=message):
            method()


def test_nan_image_is_not_blamed_on_the_model(white_box_model):
    with pytest.raises(ExplainError) as info:
        occlusion_map(white_box_model, np.full((8, 8, 3), np.nan, np.float32), target="b")
    assert not isinstance(info.value, ModelError)
    assert "NaN" in str(info.value)
