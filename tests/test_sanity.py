"""The model-randomisation sanity check (explain.sanity, `explain report --sanity`): a map that
ignores the model is flagged, Grad-CAM on a tiny net is not, a black box is not checked."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from test_gradcam import tiny_net
from test_report import tiny_model, write_images
from typer.testing import CliRunner

from explain import build_report, render_html, report_json
from explain.cli import app
from explain.errors import OptionError
from explain.heatmap import Heatmap
from explain.methods import METHODS, Method
from explain.models import CallableClassifier, Preprocess, load
from explain.report import Options
from explain.sanity import cascade, rank_correlation, top_layers

SANE = Options(box=16, stride=16, steps=4, masks=64, sanity=True, sanity_layers=2)


def _edges(models, image: np.ndarray, o) -> Heatmap:  # noqa: ANN001
    """A 'method' made insensitive on purpose: the image's edge strength, whatever the model."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    values = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    return Heatmap(values=values, method="edges", target="nsfw")


def cam_model():
    """Two convolutions and a linear layer at full resolution: a Grad-CAM that is not constant
    on the test photos."""
    return load(tiny_net(), "cpu", preprocess=Preprocess(input_size=None),
                class_names=["sfw", "nsfw"], logits=True)


@pytest.fixture
def edges(monkeypatch):
    monkeypatch.setitem(METHODS, "edges", Method("edges", "Edges (test)", True, _edges))


def test_cascade_reinitialises_the_top_layers_of_a_copy_only():
    clf = tiny_model()
    before = {k: v.clone() for k, v in clf.module.state_dict().items()}
    assert top_layers(clf.module, 5) == ["fc", "conv"]
    steps = [(name, {k: v.clone() for k, v in m.module.state_dict().items()})
             for name, m in cascade(clf, 2)]
    assert [name for name, _ in steps] == ["fc", "conv"]
    first, second = steps[0][1], steps[1][1]
    assert not torch.equal(first["fc.weight"], before["fc.weight"])
    assert torch.equal(first["conv.weight"], before["conv.weight"])
    assert not torch.equal(second["conv.weight"], before["conv.weight"])
    assert torch.equal(second["fc.weight"], first["fc.weight"])  # cumulative
    assert all(torch.equal(v, clf.module.state_dict()[k]) for k, v in before.items())
    again = [{k: v.clone() for k, v in m.module.state_dict().items()} for _, m in cascade(clf, 2)]
    assert all(torch.equal(again[1][k], second[k]) for k in second)  # a fixed seed


def test_rank_correlation():
    a = np.arange(12.0).reshape(3, 4)
    assert rank_correlation(a, a ** 3) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, np.zeros_like(a)) is None


@pytest.mark.slow
def test_flags_an_edge_map_and_passes_gradcam(tmp_path, photos, edges):
    paths = write_images(tmp_path, photos)
    report = build_report(paths, model=cam_model(), methods=["gradcam", "edges", "occlusion"],
                          options=SANE)
    rows = [img for img in report.images if not img.error]
    assert len(rows) == 2
    for img in rows:
        checks = {m.method: m.sanity for m in img.methods}
        assert checks["edges"]["flagged"] and checks["edges"]["correlations"] == [1.0, 1.0]
        assert checks["edges"]["layers"] == ["6", "2"]  # the Linear, then the last Conv2d
        assert checks["gradcam"]["checked"] and not checks["gradcam"]["flagged"]
        assert checks["gradcam"]["correlations"][-1] is None or (
            checks["gradcam"]["correlations"][-1] < 0.5)
        assert checks["occlusion"]["checked"]  # a torch model: black-box methods are checked
    assert any(n.startswith("Sanity check: Edges (test) FLAGGED on 2 of 2 images")
               for n in report.notes)
    assert "Sanity check: Grad-CAM passes on 2 images" in " ".join(report.notes)
    page = render_html(report)
    assert page.count('class="failed sanity"') == 2 and "FLAGGED: the map still" in page
    data = report_json(report)
    assert data["images"][0]["methods"][1]["sanity"]["flagged"] is True
    assert data["options"]["sanity"] is True and data["options"]["sanity_layers"] == 2


def test_a_constant_map_is_not_checked(tmp_path, photos):
    paths = write_images(tmp_path, photos)
    report = build_report(paths[:1], model=tiny_model(), methods=["gradcam"], options=SANE)
    check = report.images[0].methods[0].sanity
    assert check["checked"] is False and "the map is constant" in check["note"]
    assert report.notes == ["Sanity check: Grad-CAM cannot be checked: the map is constant: it "
                            "orders no pixel before another, so there is nothing to compare "
                            "with a randomised model's map"]


@pytest.mark.slow
def test_a_black_box_model_cannot_be_checked_and_says_so(tmp_path, photos):
    def brightness(images: np.ndarray) -> np.ndarray:
        s = images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0
        return np.stack([1 - s, s], axis=1)

    clf = CallableClassifier(brightness, class_names=["sfw", "nsfw"])
    paths = write_images(tmp_path, photos)
    report = build_report(paths, model=clf, methods=["occlusion"], options=SANE)
    check = report.images[0].methods[0].sanity
    assert check["checked"] is False and check["flagged"] is False
    assert "is a black box (CallableClassifier) whose weights cannot be randomised" in (
        check["note"])
    assert any(n.startswith("Sanity check: Occlusion cannot be checked: model")
               for n in report.notes)
    assert 'class="note sanity">sanity check: model' in render_html(report)


@pytest.mark.slow
def test_cli_sanity_flag_and_layers(tmp_path, photos, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = write_images(tmp_path, photos)
    (tmp_path / "model.py").write_text(BRIGHTNESS)
    args = ["report", str(paths[0]), "--methods", "occlusion", "-m", "model.py:brightness",
            "--classes", "sfw,nsfw", "--box", "16", "--stride", "16", "--steps", "4"]
    result = CliRunner().invoke(app, [*args, "--sanity", "--format", "json", "-o", "r.json"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["images"][0]["methods"][0]["sanity"]["checked"] is False
    assert "Occlusion cannot be checked" in " ".join(data["notes"])
    bad = CliRunner().invoke(app, [*args, "--sanity", "--sanity-layers", "0"])
    assert bad.exit_code == 2 and "--sanity-layers" in bad.output
    with pytest.raises(OptionError, match="--sanity-layers must be at least 1"):
        Options(sanity_layers=0).check()


BRIGHTNESS = """import numpy as np
def brightness(images):
    s = images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0
    return np.stack([1 - s, s], axis=1)
"""
