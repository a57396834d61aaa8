"""Issue 22, items 1 and 3: a white-box map says what its values are and says "no signal" when
there is none.

Known answer: a network whose output does not depend on its input (its last layer's weights are
zero, so the output is its bias) has gradients of exactly 0, so its Grad-CAM, guided backprop
and deconvnet maps are all zero: each must say "no signal" in its map, its JSON, its picture
and the CLI's line. The same network with its weights back is not flagged, and neither are
open_nsfw's real maps of the scikit-image photos.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from explain import deconvnet, gradcam, guided_backprop
from explain.cli import app
from explain.heatmap import WHITE_BOX_FLOOR, Heatmap
from explain.models import Preprocess, load
from explain.render import NOTE_COLOUR, figure

FLAT = '''
import torch
from torch import nn

torch.manual_seed(3)
net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1),
                    nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).eval()
with torch.no_grad():
    net[6].weight.zero_()
    net[6].bias.copy_(torch.tensor([0.3, -0.2]))
'''


def tiny_net(flat: bool) -> nn.Sequential:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).eval()
    if flat:
        with torch.no_grad():
            net[6].weight.zero_()
    return net


def tiny(flat: bool):
    return load(tiny_net(flat), "cpu", preprocess=Preprocess(input_size=None),
                class_names=["a", "b"], logits=True)


def test_a_network_that_ignores_its_input_has_no_signal(photos):
    img = photos["chelsea"][:24, :20]
    cam = gradcam(tiny(True), img, target="b")
    assert not cam.values.any() and cam.signal == 0.0
    assert cam.unit == "Grad-CAM of logit(b) (>= 0)" and not cam.signed
    assert cam.no_signal() == "no signal: largest |Grad-CAM of logit(b) (>= 0)| 0 < 1e-06"
    for make in (guided_backprop, deconvnet):
        rec = make(tiny(True), img, target="b")
        assert not rec.values.any()
        assert rec.magnitude.no_signal() is not None
        assert rec.magnitude.unit.endswith("of logit(b)|, max over RGB")
        meta = rec.metadata()
        assert meta["signed"] is True and meta["unit"].endswith("of logit(b) per RGB value")
        assert meta["magnitude"]["signal"] == 0.0 and meta["magnitude"]["no_signal"]
    # the same network with its weights: real maps, not flagged
    live = gradcam(tiny(False), img, target="b")
    assert live.signal > 10 * WHITE_BOX_FLOOR and live.no_signal() is None
    assert guided_backprop(tiny(False), img, target="b").magnitude.no_signal() is None


def test_the_raw_magnitude_is_saved_and_the_picture_says_no_signal(photos, tmp_path):
    img = photos["chelsea"][:60, :80]
    cam = gradcam(tiny(True), img, target="b")
    cam.save(tmp_path / "cam")
    meta = json.loads((tmp_path / "cam.json").read_text())
    assert meta["signal"] == 0.0 and meta["noise_floor"] == WHITE_BOX_FLOOR
    assert meta["no_signal"].startswith("no signal")
    back = Heatmap.load(tmp_path / "cam")
    assert back.unit == cam.unit and back.no_signal() == cam.no_signal()
    picture = figure(img, cam)
    assert np.all(picture[60 + 12:] == NOTE_COLOUR, axis=2).any()  # the red note
    live = figure(img, gradcam(tiny(False), img, target="b"))
    assert not np.all(live[60 + 12:] == NOTE_COLOUR, axis=2).any()  # below the colour bar


def test_a_tiny_signal_is_drawn_flat_not_as_a_hot_spot():
    values = np.zeros((20, 20), np.float32)
    values[5:10, 5:10] = 1e-9  # rounding noise: min-max would stretch it to a red blob
    noise = Heatmap(values, "gradcam", "nsfw", unit="Grad-CAM of logit(nsfw) (>= 0)",
                    noise_floor=WHITE_BOX_FLOOR)
    img = np.full((20, 20, 3), 128, np.uint8)
    for normalize in (None, "minmax", "percentile"):
        drawn = figure(img, noise, normalize=normalize, legend=False)
        assert np.abs(drawn.astype(int) - drawn[0, 0].astype(int)).max() <= 1


def test_cli_line_says_no_signal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flat.py").write_text(FLAT)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)).save(
        "x.png")
    for command, json_name in (("gradcam", "x.gradcam.json"), ("guided", "x.guided.json")):
        res = CliRunner().invoke(app, [command, "x.png", "-m", "flat.py:net", "--logits",
                                       "--classes", "a,b", "-t", "b", "-o", "out"])
        assert res.exit_code == 0, res.output
        assert "(no signal: largest |" in res.output, res.output
        meta = json.loads((tmp_path / "out" / json_name).read_text())
        assert "no signal" in json.dumps(meta)
        # the JSON says how its overlay was drawn and what the colours mean
        about = meta if command == "gradcam" else meta["overlay"]
        assert about["drawn"]["colormap"] == "jet" and about["drawn"]["lo"] == 0.0
        assert about["reading"].startswith("Colour = ") and "No signal" in about["reading"]
        assert "against" not in about["reading"]


@pytest.mark.slow
def test_open_nsfw_real_maps_are_far_above_the_floor(nsfw_torch, photos):
    # chelsea's Grad-CAM for nsfw is all zero after the ReLU (nothing raises the nsfw logit),
    # yet the model depends on the cat: its signal is measured before the ReLU
    for name, img in photos.items():
        cam = gradcam(nsfw_torch, img, target="nsfw")
        rec = guided_backprop(nsfw_torch, img, target="nsfw")
        for hm in (cam, rec.magnitude):
            assert hm.no_signal() is None, (name, hm.method)
            assert hm.signal > 100 * WHITE_BOX_FLOOR, (name, hm.method, hm.signal)


def test_the_signal_of_a_finite_map_is_read_off_its_max_and_min():
    """A map without NaN or inf takes its signal from its max and min; the same float as over
    its finite values, signed or on a range; with NaN or inf, over the finite values only."""
    rng = np.random.default_rng(3)
    for trial in range(300):
        values = (rng.normal(size=(7, 9)) * 10.0 ** rng.uniform(-9, 2)).astype(np.float32)
        values += np.float32(rng.uniform(-1, 1)) * (trial % 3)  # all negative, mixed, positive
        if trial % 5 == 0:
            values[rng.integers(7), rng.integers(9)] = (np.nan, np.inf, -np.inf)[trial % 3]
        for bounds in (None, (0.0, 1.0)):
            finite = values[np.isfinite(values)]
            want = float(np.abs(finite).max() if bounds is None else finite.max() - finite.min())
            assert Heatmap(values, "m", "t", bounds=bounds).signal == want
    assert Heatmap(np.full((3, 3), np.nan, np.float32), "m", "t").signal == 0.0
    assert Heatmap(np.zeros((0, 4), np.float32), "m", "t").signal == 0.0
