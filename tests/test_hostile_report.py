"""Issue #10, item 12 (and item 3's report part): the report's ranking counts only images with a
signal, compares methods on the same images, shows ties as ties; any byte file name is written.

The models here have known answers: a Python function that scores the mean brightness of the
top-left quadrant, a linear torch net that reads the same quadrant (no ReLU, so deconvnet and
guided backprop both give its plain gradient), models with no signal at all, and the real
open_nsfw on samples/astronaut.jpg.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from explain import build_report, render_html, report_json, write_report
from explain.files import from_storable
from explain.models import CallableClassifier, Preprocess, load
from explain.report import METHODS, ImageResult, MethodResult, Options, rank, tie_ranks

SIDE = 32
# one window per quadrant and one faithfulness step per quadrant (1024 pixels / 4 steps)
QUADRANTS = Options(box=16, stride=16, steps=4, fill="black", target="bright")
SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "astronaut.jpg"


def top_left(batch: np.ndarray) -> np.ndarray:
    """p(bright) = mean brightness of the input's top-left quadrant."""
    p = batch[:, : SIDE // 2, : SIDE // 2].reshape(len(batch), -1).mean(1) / 255.0
    return np.stack([1 - p, p], axis=1)


def quadrant_model() -> CallableClassifier:
    return CallableClassifier(top_left, class_names=["dark", "bright"], input_size=(SIDE, SIDE))


def quadrants(folder: Path, name: str, tl: int, br: int) -> Path:
    """A 32×32 image: top-left quadrant ``tl``, bottom-right ``br``, the other two black."""
    img = np.zeros((SIDE, SIDE, 3), np.uint8)
    img[:16, :16], img[16:, 16:] = tl, br
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    Image.fromarray(img).save(path)
    return path


def by_name(img: ImageResult) -> dict[str, MethodResult]:
    return {m.method: m for m in img.methods}


def test_tie_ranks_group_on_the_best_of_each_group():
    assert tie_ranks([0.5, 0.495, 0.3]) == [1, 1, 3]
    assert tie_ranks([0.3, 0.295, 0.292]) == [1, 1, 1]  # 0.292 is within 0.01 of 0.3
    assert tie_ranks([0.285, 0.3, 0.295]) == [3, 1, 1]  # 0.285 is 0.015 below the group's best
    assert tie_ranks([0.0, 0.0, 0.0]) == [1, 1, 1]
    assert tie_ranks([]) == []


def test_only_the_image_with_a_signal_decides(tmp_path):
    """Image 1: the model reads the top-left quadrant (200), the brighter bottom-right (255) is
    ignored. Occlusion finds the top-left; sliding puts the bottom-right crop first. Image 2 is
    black: every score is 0, nothing can be learned there."""
    paths = [quadrants(tmp_path, "signal", 200, 255), quadrants(tmp_path, "black", 0, 0)]
    r = build_report(paths, model=quadrant_model(), methods="occlusion,sliding",
                     options=QUADRANTS)
    signal, black = r.images
    p = 200 / 255
    occ, sld = by_name(signal)["occlusion"], by_name(signal)["sliding"]
    assert occ.faithfulness["deletion"] == pytest.approx([p, 0, 0, 0, 0], abs=1e-6)
    assert sld.faithfulness["deletion"] == pytest.approx([p, p, 0, 0, 0], abs=1e-6)
    b = occ.faithfulness["insertion"][0]  # the blurred canvas's top-left quadrant
    assert occ.faithfulness["insertion"] == pytest.approx([b, p, p, p, p], abs=1e-6)
    assert sld.faithfulness["insertion"] == pytest.approx([b, b, p, p, p], abs=1e-6)
    assert (occ.rank, occ.tied, sld.rank, sld.tied) == (1, False, 2, False)
    assert signal.left_out is None and [m.title for m in signal.best] == ["Occlusion"]

    assert black.left_out == ("no signal: score saturated (p(bright) of the image, of its fully "
                              "deleted copy and of the blurred canvas all within 0.01 of 0)")
    assert all(m.rank is None for m in black.methods) and black.best == []
    assert by_name(black)["occlusion"].faithfulness["saturated"]

    assert r.ranking == "2 methods ranked on 1 of 2 images, the same for every method"
    assert [(s["method"], s["rank"], s["images"], s["wins"]) for s in r.summary] == [
        ("occlusion", 1, 1, 1), ("sliding", 2, 1, 0)]
    assert r.summary[0]["insertion_minus_deletion"] == pytest.approx(
        occ.faithfulness["insertion_minus_deletion"])
    assert r.not_ranked == {}
    html = render_html(r)
    assert "Left out of the ranking (1 of 2 images)" in html and "black.png</a>: no signal" in html
    data = report_json(r)
    assert data["images"][1]["left_out"] == black.left_out and data["images"][1]["best"] == []
    assert data["images"][0]["best"] == ["occlusion"]


class TopLeftLinear(nn.Module):
    """Logit of "bright" = 8·(mean of the top-left quadrant − 0.4); no ReLU, so deconvnet and
    guided backprop both return the plain gradient: uniform on the quadrant, 0 elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * SIDE * SIDE, 2)
        weight = torch.zeros(2, 3, SIDE, SIDE)
        weight[1, :, :16, :16] = 8.0 / (3 * 16 * 16)
        with torch.no_grad():
            self.fc.weight.copy_(weight.flatten(1))
            self.fc.bias.copy_(torch.tensor([0.0, -3.2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_tied_methods_share_a_rank(tmp_path):
    """Occlusion, deconvnet and guided backprop all order the top-left quadrant first, then the
    rest in raster order: identical curves, one shared rank. Sliding puts the brighter but
    ignored bottom-right first and comes 4th (competition ranking: 1, 1, 1, 4)."""
    model = load(TopLeftLinear(), "cpu", preprocess=Preprocess(input_size=(SIDE, SIDE)),
                 class_names=["dark", "bright"], logits=True)
    r = build_report([quadrants(tmp_path, "img", 200, 255)], model=model,
                     methods="occlusion,sliding,deconv,guided", options=QUADRANTS)
    ms = by_name(r.images[0])
    gaps = {n: m.faithfulness["insertion_minus_deletion"] for n, m in ms.items()}
    assert gaps["occlusion"] == gaps["deconv"] == gaps["guided"] > gaps["sliding"] + 0.01
    assert {n: (m.rank, m.tied) for n, m in ms.items()} == {
        "occlusion": (1, True), "deconv": (1, True), "guided": (1, True), "sliding": (4, False)}
    assert [(s["method"], s["rank"], s["tied"], s["wins"], s["shared_wins"])
            for s in r.summary] == [("occlusion", 1, True, 0, 1), ("deconv", 1, True, 0, 1),
                                    ("guided", 1, True, 0, 1), ("sliding", 4, False, 0, 0)]
    html = render_html(r)
    assert html.count('<span class="tied">tied</span>') == 3 + 3 + 1  # summary, image, images row
    assert "Occlusion = Deconvnet = Guided backprop" in html
    data = report_json(r)
    assert [(m["method"], m["rank"], m["tied"]) for m in data["images"][0]["methods"]] == [
        ("occlusion", 1, True), ("sliding", 4, False), ("deconv", 1, True), ("guided", 1, True)]
    assert data["ranking"]["tie_tolerance"] == 0.01


def test_a_method_that_fails_on_one_image_is_compared_on_the_rest(tmp_path, monkeypatch):
    paths = [quadrants(tmp_path, name, tl, 255) for name, tl in
             (("a", 200), ("fails", 180), ("c", 160))]
    sliding = METHODS["sliding"]

    def sliding_failing_on_180(models, image, o):
        if image[0, 0, 0] == 180:
            raise ValueError("no map for this one")
        return sliding.run(models, image, o)

    monkeypatch.setitem(METHODS, "sliding", replace(sliding, run=sliding_failing_on_180))
    r = build_report(paths, model=quadrant_model(), methods="occlusion,sliding",
                     options=QUADRANTS)
    a, fails, c = r.images
    assert by_name(fails)["sliding"].error == "no map for this one"
    assert fails.left_out == "not comparable: Sliding window failed"
    assert by_name(fails)["occlusion"].faithfulness is not None
    assert by_name(fails)["occlusion"].rank is None
    for img in (a, c):
        assert img.left_out is None
        assert [(m.method, m.rank) for m in img.methods] == [("occlusion", 1), ("sliding", 2)]
    assert r.ranking == "2 methods ranked on 2 of 3 images, the same for every method"
    assert [(s["method"], s["images"]) for s in r.summary] == [("occlusion", 2), ("sliding", 2)]
    mean = np.mean([by_name(img)["occlusion"].faithfulness["insertion_minus_deletion"]
                    for img in (a, c)])
    assert r.summary[0]["insertion_minus_deletion"] == pytest.approx(mean)


def _curves(gap: float | None, *, constant: bool = False, error: str | None = None
            ) -> dict | None:
    if error:
        return None
    return {"insertion_minus_deletion": gap, "deletion_auc": 0.5 - gap / 2,
            "insertion_auc": 0.5 + gap / 2, "constant": constant, "saturated": False,
            "flat": False, "score": 0.5}


def _image(i: int, **gaps: float | str) -> ImageResult:
    """An image result by hand: a float is the method's ins − del, "failed"/"constant" say so."""
    img = ImageResult(path=f"{i}.png", anchor=f"img-{i}", size=(8, 8), score=0.5)
    for name, gap in gaps.items():
        m = MethodResult(name, METHODS[name].title, seconds=1.0, faith_seconds=1.0)
        if gap == "failed":
            m.error = "boom"
        else:
            m.faithfulness = _curves(0.0 if gap == "constant" else gap,
                                     constant=gap == "constant")
        img.methods.append(m)
    return img


def test_methods_sharing_no_image_are_not_ranked_never_first():
    """Occlusion has a usable map on image 0 only, sliding on image 1 only, Grad-CAM on both:
    no image is shared by all three, so the compared set is the first pair that shares one
    (occlusion + Grad-CAM on image 0); sliding is not ranked although its number is the best."""
    images = [_image(0, occlusion=0.3, sliding="failed", gradcam=0.1),
              _image(1, occlusion="constant", sliding=0.9, gradcam=0.25)]
    verdict, not_ranked, summary = rank(images, ["occlusion", "sliding", "gradcam"], "nsfw")
    assert verdict == "2 methods ranked on 1 of 2 images, the same for every method"
    assert not_ranked == {"sliding": "shares no image with a signal with the ranked methods"}
    assert [(s["method"], s["rank"]) for s in summary] == [("occlusion", 1), ("gradcam", 2)]
    assert images[1].left_out == "not comparable: Occlusion has a constant map"
    assert all(m.rank is None for m in images[1].methods)


def untrained_net() -> nn.Module:
    """An untrained net whose last layer starts at zero: p = 0.5 whatever the image."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2))
    nn.init.zeros_(net[4].weight)
    nn.init.zeros_(net[4].bias)
    return net


def barely(batch: np.ndarray) -> np.ndarray:
    """Moves by at most 0.004 whatever the image: maps are not constant, the curves are flat."""
    p = 0.5 + 0.004 * (batch.reshape(len(batch), -1).mean(1) / 255.0 - 0.5)
    return np.stack([1 - p, p], axis=1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["untrained", "barely"])
def test_a_model_with_no_signal_gives_no_ranking(tmp_path, photos, kind):
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for name in ("astronaut", "coffee"):
        paths.append(folder / f"{name}.png")
        Image.fromarray(photos[name][::16, ::16]).save(paths[-1])
    if kind == "untrained":
        model = load(untrained_net(), "cpu", preprocess=Preprocess(input_size=(SIDE, SIDE)),
                     class_names=["sfw", "nsfw"], logits=True)
        methods = list(METHODS)
    else:
        model = CallableClassifier(barely, class_names=["sfw", "nsfw"], input_size=(SIDE, SIDE))
        methods = ["occlusion", "sliding"]
    r = build_report(paths, model=model, methods=methods,
                     options=Options(box=12, stride=12, steps=4, masks=64))
    flat = ("no signal: curves flat (every method's deletion and insertion curves stay within "
            "0.01)")
    assert [img.left_out for img in r.images] == [flat, flat]
    assert all(m.rank is None and m.faithfulness is not None for img in r.images
               for m in img.methods)
    if kind == "barely":  # the maps do order pixels: only the flat curves say "no signal"
        assert not any(m.faithfulness["constant"] for img in r.images for m in img.methods)
    assert r.ranking == "no ranking: no image had a signal"
    assert r.summary == [] and r.not_ranked == dict.fromkeys(methods, "no image had a signal")
    html = render_html(r)
    assert '<p class="failed">no ranking: no image had a signal</p>' in html
    assert 'class="summary"' not in html and 'class="rank"' not in html
    assert html.count("no signal: curves flat") == 2 * 3  # list, images table, image section


@pytest.mark.slow
def test_real_open_nsfw_still_ranks_the_sample_photo():
    r = build_report([SAMPLE], methods="occlusion,gradcam",
                     options=Options(box=128, stride=128, steps=5))
    img = r.images[0]
    assert img.error is None and img.left_out is None
    assert r.ranking == "2 methods ranked on 1 of 1 image, the same for every method"
    ranks = {s["method"]: s["rank"] for s in r.summary}
    assert sorted(ranks.values()) == [1, 2] and r.not_ranked == {}
    gaps = {m.method: m.faithfulness["insertion_minus_deletion"] for m in img.methods}
    assert ranks == {n: 1 if gaps[n] == max(gaps.values()) else 2 for n in gaps}
    assert abs(gaps["occlusion"] - gaps["gradcam"]) > 0.01


@pytest.mark.slow
def test_non_utf8_file_name_is_written_and_shown(tmp_path):
    """A name with an undecodable byte used to crash after all the work and leave a 0-byte HTML."""
    name = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.jpg")
    shutil.copyfile(SAMPLE, name)
    model = CallableClassifier(barely, class_names=["sfw", "nsfw"])
    options = Options(box=256, stride=256, steps=2)
    html = tmp_path / "r.html"
    write_report([name], html, model=model, methods="occlusion", options=options)
    text = html.read_text(encoding="utf-8")
    assert "caf\ufffd.jpg" in text and text.rstrip().endswith("</html>")
    out = tmp_path / "r.json"
    write_report([name], out, format="json", model=model, methods="occlusion", options=options)
    data = json.loads(out.read_bytes().decode("utf-8"))
    assert data["images"][0]["path"].endswith("/caf\\xe9.jpg")
    assert from_storable(data["images"][0]["path"]) == name
    assert data["images"][0]["error"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [os.fsdecode(b"caf\xe9.jpg"), "r.html",
                                                           "r.json"]  # no temporary file left


def test_no_readable_image_gives_no_ranking(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    r = build_report([broken], model=quadrant_model(), methods="occlusion", options=QUADRANTS)
    assert r.images[0].error and r.images[0].left_out is None
    assert r.ranking == "no ranking: no image could be read"
    assert r.summary == [] and r.not_ranked == {"occlusion": "no image could be read"}
