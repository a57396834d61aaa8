"""RISE: the closed form of a linear score, the region that drives a score, reproducibility,
open_nsfw, the CLI's pictures and the report's ranking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from explain import build_report, rise_map
from explain.cli import app
from explain.errors import OptionError
from explain.images import load_image
from explain.models import CallableClassifier
from explain.models.base import BaseClassifier
from explain.render import figure, side_by_side
from explain.report import Options

REGION = (slice(8, 16), slice(4, 12))  # rows 8–15, columns 4–11


class RegionMean(BaseClassifier):
    """p(1) = mean over REGION and the channels of the [0, 1] input: exactly linear (no uint8
    rounding), so RISE's expectation has the closed form of the module docstring."""

    name = "region-mean"

    def __init__(self) -> None:
        self.class_names = ["rest", "region"]

    def _scores(self, batch: torch.Tensor) -> torch.Tensor:
        p = batch[:, :, REGION[0], REGION[1]].mean((1, 2, 3))
        return torch.stack([1 - p, p], 1)


def region_brightness(batch: np.ndarray) -> np.ndarray:
    """The same score as a plain Python function of uint8 images."""
    p = batch[:, REGION[0], REGION[1]].reshape(len(batch), -1).mean(1) / 255.0
    return np.stack([1 - p, p], axis=1)


def expected_rise(image: np.ndarray, cell: int, p: float) -> np.ndarray:
    """E[S(u)] for RegionMean: Σ_v a_v I(v) (p + (1 − p) k(u, v)), with k(u, v) the mean over
    every shift of Σ_c w_c(u) w_c(v), w_c the bilinear up-sampling of cell c's one-hot grid."""
    h, w = image.shape[:2]
    ch, cw = math.ceil(h / cell), math.ceil(w / cell)
    one_hot = torch.eye(cell * cell, dtype=torch.float64).view(-1, 1, cell, cell)
    up = F.interpolate(one_hot, size=((cell + 1) * ch, (cell + 1) * cw), mode="bilinear",
                       align_corners=False)[:, 0]
    a = np.zeros((h, w))
    a[REGION] = 1.0 / a[REGION].size
    contribution = torch.from_numpy(a * image.mean(2) / 255.0).reshape(-1)
    blurred = torch.zeros(h * w, dtype=torch.float64)
    for dy in range(ch):
        for dx in range(cw):
            weights = up[:, dy:dy + h, dx:dx + w].reshape(cell * cell, -1)  # cells × pixels
            blurred += weights.T @ (weights @ contribution)
    blurred /= ch * cw
    return (p * contribution.sum() + (1 - p) * blurred).view(h, w).numpy()


@pytest.mark.slow
def test_expectation_matches_the_closed_form(photos):
    """3000 masks, p = 0.3, a 28×20 photo (cells of 4×3 px, 12 shifts): every pixel of the
    estimate within 5 standard errors of the exact expectation."""
    image = photos["astronaut"][100:128, 200:220]
    h = rise_map(RegionMean(), image, masks=3000, cell=7, p=0.3, target="region", seed=3)
    expected = expected_rise(image, cell=7, p=0.3)
    error = h.params["standard_error"]
    assert 0 < error < 0.5 / (0.3 * math.sqrt(3000))  # sd of a score × mask in [0, 1] ≤ 0.5
    assert expected.max() - expected.min() > 10 * error  # the test can tell a wrong map
    assert np.abs(h.values - expected).max() < 5 * error
    assert h.score == pytest.approx(image[REGION].mean() / 255.0, abs=1e-6)


@pytest.mark.slow
def test_ranks_the_region_that_drives_the_score_highest(photos):
    image = photos["chelsea"][100:128, 150:178]
    clf = CallableClassifier(region_brightness, class_names=["rest", "region"])
    h = rise_map(clf, image, masks=1000, target="region")
    inside = np.zeros(h.shape, bool)
    inside[REGION] = True
    assert inside[np.unravel_index(h.values.argmax(), h.shape)]
    assert h.values[inside].mean() > h.values[~inside].mean() + 5 * h.params["standard_error"]
    assert h.method == "rise" and h.unit == "E[p(region) | pixel kept]"
    assert not h.signed and h.bounds == (0.0, 1.0) and h.no_signal() is None
    assert h.params["masks"] == 1000 and h.params["work_size"] == [28, 28]


def test_seeded_reproducible_and_independent_of_the_batch_size(photos):
    image = photos["coffee"][:30, :40]
    clf = RegionMean()
    first = rise_map(clf, image, masks=100, target=1, seed=5, batch_size=16)
    np.testing.assert_array_equal(first.values,
                                  rise_map(clf, image, masks=100, target=1, seed=5,
                                           batch_size=16).values)
    for batch_size in (1, 7, 100):
        again = rise_map(clf, image, masks=100, target=1, seed=5, batch_size=batch_size)
        np.testing.assert_allclose(again.values, first.values, rtol=0, atol=1e-7)
    other = rise_map(clf, image, masks=100, target=1, seed=6)
    assert np.abs(other.values - first.values).max() > 1e-3


def test_open_nsfw_onnx_map_in_original_coordinates(nsfw_onnx, photos):
    """open_nsfw works at 256×256; the map comes back at the photo's 300×400."""
    calls = []
    image = photos["astronaut"][:300, :400]
    h = rise_map(nsfw_onnx, image, masks=64, batch_size=16,
                 progress=lambda done, total: calls.append((done, total)))
    assert h.shape == (300, 400) and np.isfinite(h.values).all()
    assert h.params["work_size"] == [256, 256] and h.values.min() >= 0
    assert calls == [(16, 64), (32, 64), (48, 64), (64, 64)]
    from explain.images import to_tensor
    assert h.score == pytest.approx(float(nsfw_onnx.predict(to_tensor(image))[0, 1]), abs=1e-5)


@pytest.mark.parametrize(("options", "word"), [
    ({"masks": 0}, "masks"), ({"cell": 0}, "cell"), ({"p": 0.0}, "p "), ({"p": 1.5}, "p "),
    ({"seed": -1}, "seed"), ({"masks": 2.5}, "masks"),
])
def test_bad_settings_are_refused(options, word):
    with pytest.raises(OptionError, match=word):
        rise_map(RegionMean(), np.zeros((8, 8, 3), np.uint8), target=1, **options)


TINY = '''
import numpy as np

def score(batch):
    """p(1) = mean brightness of rows 8-15, columns 4-11 of each uint8 NxHxWx3 image."""
    p = batch[:, 8:16, 4:12].reshape(len(batch), -1).mean(1) / 255.0
    return np.stack([1 - p, p], axis=1)
'''


def test_cli_writes_the_library_picture(tmp_path, photos, monkeypatch, cli_picture):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(photos["chelsea"][:40, :50]).save("cat.png")
    (tmp_path / "tiny.py").write_text(TINY)
    result = CliRunner().invoke(app, [
        "rise", "cat.png", "--model", "tiny.py:score", "--target", "1", "--masks", "200",
        "--cell", "5", "--p", "0.4", "--seed", "2", "--save-npy", "--side-by-side", "-o", "out"])
    assert result.exit_code == 0, result.output
    assert "200 masks" in result.output and "out/cat.rise.png" in result.output
    image = load_image("cat.png")
    clf = CallableClassifier(region_brightness, class_names=["0", "1"])
    expected = rise_map(clf, image, masks=200, cell=5, p=0.4, seed=2, target=1)
    cli_picture(tmp_path / "out/cat.rise.png", figure, image, expected)
    cli_picture(tmp_path / "out/cat.rise.side.png", side_by_side, image, expected)
    saved = np.load(tmp_path / "out/cat.rise.npy")
    np.testing.assert_allclose(saved, expected.values, atol=1e-7)
    bad = CliRunner().invoke(app, ["rise", "cat.png", "--model", "tiny.py:score", "--p", "0",
                                   "-o", "out"])
    assert bad.exit_code == 2 and "p (the probability" in bad.output
    assert "Traceback" not in bad.output


@pytest.mark.slow
def test_report_ranks_rise_among_the_methods(tmp_path, photos):
    """A region-brightness model on two photos (deleted pixels go black, so both have a signal):
    RISE is run, timed, scored and ranked with the other black-box methods."""
    paths = []
    for name in ("astronaut", "coffee"):
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(photos[name][:32, :32]).save(paths[-1])
    model = CallableClassifier(region_brightness, class_names=["rest", "region"],
                               input_size=(32, 32))
    r = build_report(paths, model=model, methods="occlusion,sliding,rise",
                     options=Options(box=8, stride=8, steps=8, masks=300, target="region",
                                     fill="black"))
    assert r.ranking == "3 methods ranked on 2 of 2 images, the same for every method"
    rows = {s["method"]: s for s in r.summary}
    assert rows.keys() == {"occlusion", "sliding", "rise"} and rows["rise"]["title"] == "RISE"
    rise = [m for img in r.images for m in img.methods if m.method == "rise"]
    assert all(m.rank is not None and m.params["masks"] == 300 for m in rise)
