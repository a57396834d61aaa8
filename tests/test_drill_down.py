"""Adaptive drill-down (explain.drill_down): the rule on known grids; through occlusion_map equal
to the exact map where it refines and everywhere at r = 1, each window scored once, fewer
requests to an HTTP model on 127.0.0.1; bad fractions refused; the CLI's --fast / --drill-down."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from test_http import ScoringServer
from torch import nn
from typer.testing import CliRunner

import explain.occlusion as occlusion
from explain import occlusion_map
from explain.audit.options import AuditOptions
from explain.choices import FAST_DRILL_DOWN
from explain.cli import app
from explain.drill_down import (
    MIN_WINDOWS,
    ROUNDS,
    check_drill_down,
    coarse_indices,
    coarse_mask,
    drilled_drops,
    exact_pixels,
)
from explain.errors import OptionError
from explain.models import HttpClassifier, Preprocess, load
from explain.report import Options
from explain.windows import window_grid, window_mean


class SmallCNN(nn.Module):
    """conv 5×5/2 → ReLU → mean → linear, fixed random weights: a map with structure, in ms."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 5, 2)
        self.fc = nn.Linear(8, 2)
        with torch.no_grad():
            for p, scale in ((self.conv.weight, 0.2), (self.conv.bias, 0.2),
                             (self.fc.weight, 0.3), (self.fc.bias, 0.0)):
                p.copy_(scale * torch.randn(p.shape, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class Counting:
    """A classifier that keeps every image it is asked to score (and counts its calls)."""

    def __init__(self, inner) -> None:
        self.inner, self.calls, self.seen = inner, 0, []
        self.class_names, self.device, self.input_size = inner.class_names, inner.device, None

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.seen.extend(img.numpy().tobytes() for img in batch)
        return self.inner.predict(batch)


@pytest.fixture(scope="module")
def small():
    return load(SmallCNN().eval(), "cpu", preprocess=Preprocess(input_size=None),
                class_names=["a", "b"], logits=True)


@pytest.fixture(scope="module")
def photo(photos) -> np.ndarray:
    return np.ascontiguousarray(photos["astronaut"][40:120:2, 150:246:2])  # 40×48


def smooth_grid(shape, seed=0) -> np.ndarray:
    """Window drops with structure: two bumps and a little noise."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    bumps = np.exp(-((i - 5) ** 2 + (j - 9) ** 2) / 8) \
        - 0.5 * np.exp(-((i - 14) ** 2 + j ** 2) / 20)
    return bumps + 0.01 * rng.standard_normal(shape)


def test_coarse_indices_end_on_the_last_window():
    assert coarse_indices(9, 4).tolist() == [0, 4, 8]
    assert coarse_indices(10, 4).tolist() == [0, 4, 8, 9]
    assert coarse_indices(1, 4).tolist() == [0]


@pytest.mark.parametrize("r", [0.1, 0.3, 0.6])
def test_the_rule_keeps_every_score_and_is_exact_where_it_refines(r):
    shape = (19, 23)
    truth = smooth_grid(shape)
    asked: list[tuple[int, int]] = []

    def score(points):
        asked.extend(map(tuple, points.tolist()))
        return truth[points[:, 0], points[:, 1]]

    est, known = drilled_drops(shape, score, r)
    assert len(asked) == len(set(asked)) == known.sum() < truth.size  # each window once
    coarse = coarse_mask(shape)
    assert coarse[np.ix_(coarse_indices(19, 4), coarse_indices(23, 4))].all()
    assert coarse[2::4, 2::4].all() and coarse.sum() == 6 * 7 + 5 * 6 - 1
    assert (known >= coarse).all()
    left = truth.size - coarse.sum()
    assert known.sum() - coarse.sum() == min(left, ROUNDS * math.ceil(r * left / ROUNDS))
    np.testing.assert_array_equal(est[known], truth[known])
    windows = window_grid((44, 52), 8, 2)
    assert len(windows) == truth.size
    exact, approx = (window_mean((44, 52), windows, g.ravel()) for g in (truth, est))
    inside = exact_pixels((44, 52), windows, known)
    assert inside.any() and not inside.all()
    np.testing.assert_allclose(approx[inside], exact[inside], rtol=0, atol=1e-12)
    assert np.abs(approx - exact)[~inside].max() > 0


def test_the_rule_refines_where_the_map_varies():
    shape = (17, 17)
    truth = np.zeros(shape)
    truth[9:, 9:] = 1.0  # a step: only the cells across its edges need more windows
    est, known = drilled_drops(shape, lambda p: truth[p[:, 0], p[:, 1]], 0.2)
    added = known & ~coarse_mask(shape)
    assert added.sum() == 3 * 17 and not added[:7, :7].any()  # none in the flat corner
    np.testing.assert_array_equal(est, truth)  # found the whole edge
    coarse_only, _ = drilled_drops(shape, lambda p: truth[p[:, 0], p[:, 1]], 1e-9)
    assert np.abs(coarse_only - truth).max() > 0.5


@pytest.mark.slow
def test_r_one_is_the_exact_map_and_each_window_is_scored_once(small, photo):
    drill_model = Counting(small)
    exact = occlusion_map(small, photo, box=8, stride=2, target="b", batch_size=7)
    full = occlusion_map(drill_model, photo, box=8, stride=2, target="b", batch_size=7,
                         drill_down=1.0)
    np.testing.assert_allclose(full.values, exact.values, rtol=0, atol=1e-6)
    assert full.score == pytest.approx(exact.score, abs=1e-6)
    assert full.params["windows_evaluated"] == full.params["windows_total"] == exact.windows
    assert len(drill_model.seen) == len(set(drill_model.seen)) == exact.windows + 2


@pytest.mark.slow
def test_drilled_map_equals_the_exact_map_where_it_refines(small, photo, monkeypatch):
    kept = {}

    def keep(*args):
        est, known = drilled_drops(*args)
        kept["known"] = known
        return est, known

    monkeypatch.setattr(occlusion, "drilled_drops", keep)
    model = Counting(small)
    exact = occlusion_map(small, photo, box=8, stride=2, target="b")
    fast = occlusion_map(model, photo, box=8, stride=2, target="b", drill_down=0.25)
    p = fast.params
    assert p["drill_down"] == 0.25 and p["incremental"] is False
    assert p["windows_total"] == exact.windows and p["windows_evaluated"] == kept["known"].sum()
    assert p["windows_evaluated"] < exact.windows / 2
    assert len(model.seen) == len(set(model.seen)) == p["windows_evaluated"] + 2
    inside = exact_pixels(photo.shape[:2], window_grid(photo.shape[:2], 8, 2), kept["known"])
    assert 0 < inside.sum() < inside.size
    np.testing.assert_allclose(fast.values[inside], exact.values[inside], rtol=0, atol=1e-6)
    assert exact.params["drill_down"] is None
    assert exact.params["windows_evaluated"] == exact.params["windows_total"] == exact.windows


@pytest.mark.slow
def test_a_model_input_smaller_than_the_grid(photo):
    # 40×48 image, stride 1, at a 10×12 model input: several windows share a top there; the grid
    # is the original's, and r = 1 is still the exact map
    clf = load(SmallCNN().eval(), "cpu", preprocess=Preprocess(input_size=(10, 12)),
               class_names=["a", "b"], logits=True)
    exact = occlusion_map(clf, photo, box=12, stride=1, target="b")
    for r in (0.05, 1.0):
        hm = occlusion_map(clf, photo, box=12, stride=1, target="b", drill_down=r)
        assert hm.params["windows_total"] == exact.windows == 29 * 37
        if r == 1.0:
            np.testing.assert_allclose(hm.values, exact.values, rtol=0, atol=1e-6)


def test_progress_counts_the_windows_scored(small, photo):
    seen = []
    hm = occlusion_map(small, photo, box=8, stride=2, target="b", drill_down=0.3,
                       progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (hm.params["windows_evaluated"],) * 2
    assert all(d <= t for d, t in seen) and [d for d, _ in seen] == sorted(d for d, _ in seen)


@pytest.mark.slow
def test_fewer_requests_to_an_http_model(small, photo):
    server = ScoringServer(small)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        client = HttpClassifier(server.url, class_names=["a", "b"], max_batch=8)
        exact = occlusion_map(client, photo, box=8, stride=2, target="b", batch_size=8)
        exact_requests = len(server.requests)
        server.requests.clear()
        fast = occlusion_map(client, photo, box=8, stride=2, target="b", batch_size=8,
                             drill_down=0.2)
    finally:
        server.shutdown()
        server.server_close()
    images = sum(len(r["images"]) for r in server.requests)
    assert images == fast.params["windows_evaluated"] + 2
    assert exact_requests == -(-(exact.windows + 2) // 8)
    calls = 1 + ROUNDS  # one partial batch at most per call: the coarse pass and each round
    assert len(server.requests) <= -(-images // 8) + calls
    ratio = exact.windows / fast.params["windows_evaluated"]
    assert ratio > 3 and exact_requests / len(server.requests) > ratio * 0.75
    np.testing.assert_allclose(fast.score, exact.score, atol=1e-6)


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, float("nan"), "half", True])
def test_bad_fractions_are_refused(small, photo, bad):
    with pytest.raises(OptionError, match="drill-down fraction"):
        occlusion_map(small, photo, box=8, stride=2, drill_down=bad)
    with pytest.raises(OptionError, match="drill-down fraction"):
        Options(drill_down=bad).check()
    with pytest.raises(OptionError, match="drill-down fraction"):
        AuditOptions(drill_down=bad).check()
    assert check_drill_down(None) is None and check_drill_down(1) == 1.0


TINY = '''
import numpy as np

def score(batch):
    """p(1) = mean brightness of the top-left quarter of each uint8 NxHxWx3 image."""
    h, w = batch.shape[1] // 2, batch.shape[2] // 2
    p = batch[:, :h, :w].reshape(len(batch), -1).mean(1) / 255.0
    return np.stack([1 - p, p], axis=1)
'''


@pytest.mark.parametrize("flags,r", [(["--fast"], FAST_DRILL_DOWN), (["--drill-down", "0.4"], 0.4),
                                     (["--fast", "--drill-down", "1"], 1.0)])
@pytest.mark.slow
def test_cli_fast_and_drill_down(tmp_path, monkeypatch, photos, flags, r):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(photos["chelsea"][:60, :80]).save("cat.png")
    (tmp_path / "tiny.py").write_text(TINY)
    result = CliRunner().invoke(app, ["occlude", "cat.png", "-m", "tiny.py:score", "-t", "1",
                                      "--box", "16", "--stride", "4", "--save-npy", "-o", "out",
                                      *flags])
    assert result.exit_code == 0, result.output
    expected = occlusion_map(load("tiny.py:score"), np.asarray(Image.open("cat.png")), box=16,
                             stride=4, target=1, drill_down=r)
    np.testing.assert_allclose(np.load("out/cat.occlusion.npy"), expected.values, atol=1e-6)
    params = json.loads((tmp_path / "out" / "cat.occlusion.json").read_text())["params"]
    assert params["drill_down"] == r
    assert f"{params['windows_evaluated']}/{params['windows_total']} windows" in result.output


@pytest.mark.parametrize("command", ["occlude", "report", "audit"])
def test_cli_refuses_a_bad_fraction_in_one_line(tmp_path, monkeypatch, photos, command):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(photos["chelsea"][:60, :80]).save("cat.png")
    target = ["cat.png"] if command != "audit" else [".", "-o", "audit"]
    result = CliRunner().invoke(app, [command, *target, "--drill-down", "1.5"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "drill-down fraction must be in (0, 1]" in result.output


def test_a_grid_of_fewer_than_100_windows_is_scored_in_full(small, photo):
    # 40x48, box 16 stride 8: 4 x 5 windows; drill-down would score few of them and miss the top
    exact = occlusion_map(small, photo, box=16, stride=8, target="b")
    fast = occlusion_map(small, photo, box=16, stride=8, target="b", drill_down=FAST_DRILL_DOWN)
    assert fast.params["windows_evaluated"] == fast.params["windows_total"] == 20
    np.testing.assert_allclose(fast.values, exact.values, atol=1e-6)
    assert MIN_WINDOWS == 100 and coarse_mask((9, 11)).all() and not coarse_mask((10, 10)).all()


@pytest.mark.slow
def test_drill_down_reaches_clip_frames(small, photo):
    # a clip's frames drill down exactly as a still does: each scored frame's map IS the
    # still's drilled map, an identical frame takes it, r = 1 is the exact sequence
    from explain.frame_reuse import occlusion_maps

    still_a = np.ascontiguousarray(photo[:24, :30])  # 11×14 windows of 4 at stride 2
    still_b = np.ascontiguousarray(still_a[::-1])
    frames = [still_a, still_a, still_b]
    maps = occlusion_maps(small, frames, box=4, stride=2, target="b", drill_down=0.25)
    for frame, hm in zip((still_a, still_b), (maps[0], maps[2]), strict=True):
        still = occlusion_map(small, frame, box=4, stride=2, target="b", drill_down=0.25)
        np.testing.assert_array_equal(hm.values, still.values)
        assert hm.params["windows_evaluated"] == hm.params["rescored"] \
            == still.params["windows_evaluated"] < hm.windows
        assert hm.params["drill_down"] == 0.25
    np.testing.assert_array_equal(maps[1].values, maps[0].values)
    assert maps[1].params["reuse"] == "identical" and maps[1].params["rescored"] == 0
    exact = occlusion_maps(small, frames, box=4, stride=2, target="b")
    full = occlusion_maps(small, frames, box=4, stride=2, target="b", drill_down=1.0)
    assert "drill_down" not in exact[0].params
    for a, b in zip(full, exact, strict=True):
        np.testing.assert_allclose(a.values, b.values, rtol=0, atol=1e-6)
    with pytest.raises(OptionError, match="region reuse"):
        occlusion_maps(small, frames, box=4, stride=2, target="b", reuse="region",
                       drill_down=0.25)
