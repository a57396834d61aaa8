"""Grad-CAM: the formula by hand on a tiny net, geometry on open_nsfw, guided Grad-CAM, safety."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from explain import gradcam, guided_backprop
from explain.errors import OptionError, WhiteBoxError
from explain.grad_cam import default_layer, to_original
from explain.images import to_tensor
from explain.models import CallableClassifier, Preprocess, load
from explain.models.open_nsfw import PREPROCESS


def tiny_net() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).eval()


def tiny(net: nn.Module):
    return load(net, "cpu", preprocess=Preprocess(input_size=None), class_names=["a", "b"],
                logits=True)


def test_equals_the_formula_computed_by_hand(photos):
    """relu(sum_k mean(dS/dA_k) A_k) at the last conv layer, at full resolution (no resize)."""
    net = tiny_net()
    img = photos["chelsea"][:24, :20]
    x = to_tensor(img).requires_grad_(True)
    acts = net[:3](x)
    score = net[3:](acts)[0, 1]
    (grad,) = torch.autograd.grad(score, acts)
    expected = torch.relu((grad.mean((2, 3), keepdim=True) * acts).sum(1))[0].detach().numpy()
    assert default_layer(net) == "2"
    h = gradcam(tiny(net), img, target="b")
    assert h.method == "gradcam" and h.params == {"layer": "2", "layer_shape": (24, 20),
                                                  "model_view": [0, 0, 24, 20]}
    assert expected.max() > 0
    np.testing.assert_allclose(h.values, expected, rtol=1e-5, atol=1e-7)
    assert h.score == pytest.approx(torch.softmax(net(x)[0], 0)[1].item(), rel=1e-6)


def test_to_original_places_the_map_on_the_centre_crop():
    ones = torch.ones(2, 7, 7)
    out = to_original(ones, PREPROCESS, (300, 400)).numpy()
    # 400×300 → 256×256, crop 224 from (16, 16): original rows 18.75–281.25, columns 25–375.
    inside = np.zeros((300, 400), bool)
    inside[19:281, 25:375] = True
    assert out.shape == (2, 300, 400)
    assert (out[:, inside] == 1).all() and (out[:, ~inside] == 0).all()
    same = to_original(ones[:, :5, :6], Preprocess(input_size=None), (5, 6))
    assert torch.equal(same, ones[:, :5, :6])


def test_open_nsfw_real_photo(nsfw_torch, photos):
    img = photos["astronaut"][:300, :400]
    h = gradcam(nsfw_torch, img, target="sfw")
    assert h.shape == (300, 400) and h.params["layer"] == "stages.3"
    assert h.params["layer_shape"] == (7, 7)
    assert np.isfinite(h.values).all() and h.values.min() >= 0 and h.values.std() > 0
    assert not h.values[:, :25].any() and not h.values[:18].any()
    guided = gradcam(nsfw_torch, img, target="sfw", guided=True)
    gb = guided_backprop(nsfw_torch, img, target="sfw")
    assert guided.method == "guided_gradcam" and guided.shape == (300, 400)
    np.testing.assert_allclose(guided.values, h.values * gb.magnitude.values, rtol=1e-4,
                               atol=1e-9)


def test_batches_and_layers(photos):
    net = tiny_net()
    clf = tiny(net)
    images = [photos["coffee"][:16, :16], photos["astronaut"][:20, :12],
              photos["chelsea"][:16, :16]]
    maps = gradcam(clf, images, target="b", layer="0", batch_size=2)
    for img, h in zip(images, maps, strict=True):
        assert h.shape == img.shape[:2]
        np.testing.assert_allclose(h.values, gradcam(clf, img, target="b", layer="0").values,
                                   rtol=1e-4, atol=1e-7)
    with pytest.raises(OptionError, match="N×C×H×W"):
        gradcam(clf, images[0], target="b", layer="6")
    with pytest.raises(OptionError, match="no Conv2d"):
        default_layer(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)))


class DeclaresLayer(nn.Sequential):
    """tiny_net's layers; the model itself names Grad-CAM's layer."""

    default_cam_layer = "0"


def test_default_layer_is_read_from_the_model(photos, nsfw_torch):
    img = photos["chelsea"][:24, :20]
    declares = DeclaresLayer(*tiny_net())
    h = gradcam(tiny(declares), img, target="b")
    assert h.params["layer"] == "0"
    np.testing.assert_array_equal(h.values, gradcam(tiny(declares), img, target="b",
                                                    layer="0").values)
    assert default_layer(nsfw_torch.module) == nsfw_torch.module.default_cam_layer == "stages.3"
    # without the attribute: the documented fallback, the last top-level child with a Conv2d
    assert gradcam(tiny(tiny_net()), img, target="b").params["layer"] == "2"
    declares.default_cam_layer = "stages.3"
    with pytest.raises(OptionError, match=r"DeclaresLayer.default_cam_layer is 'stages.3'"):
        gradcam(tiny(declares), img, target="b")
    assert gradcam(tiny(declares), img, target="b", layer="2").params["layer"] == "2"


class Raise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_errors_leave_no_hooks_and_black_boxes_are_refused(photos):
    net = tiny_net()
    clf = tiny(net)
    with pytest.raises(OptionError, match="no layer"):
        gradcam(clf, photos["coffee"][:8, :8], target="b", layer="9")
    net.insert(4, Raise())
    with pytest.raises(RuntimeError, match="boom"):
        gradcam(clf, photos["coffee"][:8, :8], target="b", layer="2", guided=True)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert not any(p.requires_grad is False for p in net.parameters())
    fn = CallableClassifier(lambda b: np.full((len(b), 2), 0.5), class_names=["a", "b"])
    with pytest.raises(WhiteBoxError, match="explain slide"):
        gradcam(fn, photos["coffee"][:8, :8], target="a")
