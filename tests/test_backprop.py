"""Deconvnet and guided backprop: hand-computed maps, neuron mode, geometry, safety of the hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explain import Reconstruction, deconvnet, guided_backprop, layers
from explain.errors import ImageError, OptionError, WhiteBoxError
from explain.images import to_tensor
from explain.models import CallableClassifier, Preprocess, TorchClassifier, load

RAW = Preprocess(input_size=None)

# A 2×2 RGB image; per pixel (R, G, B) / 255.
PIXELS = np.array([[[255, 51, 51], [0, 255, 0]],
                   [[255, 204, 255], [0, 51, 255]]], dtype=np.uint8)


def hand_net(relu: type[nn.Module] = nn.ReLU, **relu_kwargs: object) -> nn.Sequential:
    """1×1 conv (R−G, G−B) → ReLU → 1×1 conv (a0 + a1 − 0.5) → ReLU → flatten → linear.

    Class 1's logit is u · a2 with u = (1, 3, 2, −0.5) over the four pixels (row-major).
    """
    conv1 = nn.Conv2d(3, 2, 1, bias=False)
    conv2 = nn.Conv2d(2, 1, 1)
    fc = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        conv1.weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]]).view(2, 3, 1, 1))
        conv2.weight.copy_(torch.tensor([1.0, 1.0]).view(1, 2, 1, 1))
        conv2.bias.fill_(-0.5)
        fc.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 3.0, 2.0, -0.5]]))
    return nn.Sequential(conv1, relu(**relu_kwargs), conv2, relu(**relu_kwargs), nn.Flatten(),
                         fc).eval()


def tiny(module: nn.Module) -> TorchClassifier:
    return load(module, "cpu", preprocess=RAW, class_names=["a", "b"], logits=True)


# Forward pass of hand_net on PIXELS, pixel by pixel (p0 p1 / p2 p3):
#   z1 = (R−G, G−B): p0 (0.8, 0), p1 (−1, 1), p2 (0.2, −0.2), p3 (−0.2, −0.8)
#   z2 = relu(z1) summed − 0.5: p0 0.3, p1 0.5, p2 −0.3, p3 −0.5
# Backward from class 1, top signal u = (1, 3, 2, −0.5):
#   deconvnet: g_z2 = relu(u) = (1, 3, 2, 0); g_z1 = relu(g_z2·(1, 1)) → g_x = g_z2·(1, 0, −1)
#   guided:    g_z2 = relu(u)·[z2>0] = (1, 3, 0, 0); g_z1 = g_z2·(1, 1)·[z1>0]
#              p0: (1, 0) → (1, −1, 0);  p1: (0, 3) → (0, 3, −3)
DECONV = np.array([[[1, 0, -1], [3, 0, -3]], [[2, 0, -2], [0, 0, 0]]], dtype=np.float32)
GUIDED = np.array([[[1, -1, 0], [0, 3, -3]], [[0, 0, 0], [0, 0, 0]]], dtype=np.float32)
# Neuron "max" of layer "3" (a2 = (0.3, 0.5, 0, 0)) is p1 = (0, 0, 1), value 0.5:
#   deconvnet g_x(p1) = (1, 0, −1); guided g_x(p1) = (0, 1, −1) (z1 mask (0, 1)).
NEURON_DECONV = np.zeros((2, 2, 3), np.float32)
NEURON_DECONV[0, 1] = (1, 0, -1)
NEURON_GUIDED = np.zeros((2, 2, 3), np.float32)
NEURON_GUIDED[0, 1] = (0, 1, -1)


def test_class_mode_equals_hand_computed_maps():
    clf = tiny(hand_net())
    d = deconvnet(clf, PIXELS, target="b")
    g = guided_backprop(clf, PIXELS, target="b")
    np.testing.assert_allclose(d.values, DECONV, atol=1e-6)
    np.testing.assert_allclose(g.values, GUIDED, atol=1e-6)
    assert isinstance(d, Reconstruction) and d.method == "deconvnet" and d.target == "b"
    np.testing.assert_allclose(d.magnitude.values, np.abs(DECONV).max(axis=2), atol=1e-6)
    logits = clf.module(to_tensor(PIXELS))[0]
    assert d.score == pytest.approx(torch.softmax(logits, 0)[1].item(), rel=1e-6)


def test_neuron_mode_equals_hand_computed_maps():
    clf = tiny(hand_net())
    d = deconvnet(clf, PIXELS, layer="3", target="b")
    g = guided_backprop(clf, PIXELS, layer="3", target="b", neuron="max")
    assert d.neuron == g.neuron == (0, 0, 1)
    assert d.activation == pytest.approx(0.5, abs=1e-6) and d.layer == "3"
    np.testing.assert_allclose(d.values, NEURON_DECONV, atol=1e-6)
    np.testing.assert_allclose(g.values, NEURON_GUIDED, atol=1e-6)
    explicit = guided_backprop(clf, PIXELS, layer="3", target="b", neuron=(0, 0, 0))
    assert explicit.neuron == (0, 0, 0) and explicit.activation == pytest.approx(0.3, abs=1e-6)
    expected = np.zeros((2, 2, 3), np.float32)
    expected[0, 0] = (1, -1, 0)
    np.testing.assert_allclose(explicit.values, expected, atol=1e-6)
    assert deconvnet(clf, PIXELS, layer="3", target="b", neuron="0,1,0").neuron == (0, 1, 0)


@pytest.mark.parametrize("fn", [deconvnet, guided_backprop])
def test_class_mode_equals_neuron_max_when_the_logit_is_the_max(fn, photos):
    """Logit 1 = max over the last ReLU's output, so both modes reconstruct the same neuron."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 1, 3), nn.ReLU(),
                        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(1, 2, bias=False))
    with torch.no_grad():
        net[6].weight.copy_(torch.tensor([[-1.0], [1.0]]))
    clf = tiny(net)
    images = [photos["coffee"][:40, :48], photos["chelsea"][:40, :48]]
    by_class = fn(clf, images, target="b")
    by_neuron = fn(clf, images, layer="3", target="b")
    for c, n in zip(by_class, by_neuron, strict=True):
        assert np.abs(c.values).max() > 0
        np.testing.assert_allclose(c.values, n.values, atol=1e-6)


def test_open_nsfw_real_photo_in_original_coordinates(nsfw_torch, photos):
    img = photos["astronaut"][:300, :400]
    for fn in (deconvnet, guided_backprop):
        r = fn(nsfw_torch, img)
        assert r.values.shape == (300, 400, 3) and r.magnitude.shape == (300, 400)
        assert np.isfinite(r.values).all() and r.values.std() > 0
        # resize 400×300 → 256², centre crop 224: the model sees rows 18.75–281.25 and
        # columns 25–375; the antialiased resize reaches ~2 px further.
        outside = np.ones((300, 400), bool)
        outside[16:284, 22:378] = False
        assert not r.values[outside].any()
        assert np.abs(r.values[30:270, 40:360]).max() > 0
        assert 0.0 <= r.score <= 1.0


def test_open_nsfw_neuron_max_is_the_argmax_activation(nsfw_torch, photos):
    img = photos["coffee"]
    seen = {}
    handle = nsfw_torch.module.stages[3].register_forward_hook(
        lambda m, i, o: seen.setdefault("out", o.detach()))
    try:
        with torch.no_grad():
            nsfw_torch.module(nsfw_torch.model_input(to_tensor(img)))
    finally:
        handle.remove()
    out = seen["out"][0]
    position = tuple(int(v) for v in np.unravel_index(int(out.argmax()), out.shape))
    r = guided_backprop(nsfw_torch, img, layer="stages.3")
    assert r.neuron == position and len(position) == 3
    assert r.activation == pytest.approx(out.max().item(), rel=1e-5)
    assert r.values.shape == img.shape and np.isfinite(r.values).all() and r.values.std() > 0


def test_batches_equal_single_images_mixed_sizes(photos):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2))
    clf = load(net, "cpu", preprocess=Preprocess(input_size=(32, 32)), class_names=["a", "b"],
               logits=True)
    images = [photos["coffee"][:50, :60], photos["chelsea"][:40, :30],
              photos["astronaut"][:50, :60]]
    batched = guided_backprop(clf, images, target="b", batch_size=2)
    for img, r in zip(images, batched, strict=True):
        single = guided_backprop(clf, img, target="b")
        assert r.values.shape == img.shape
        np.testing.assert_allclose(r.values, single.values, rtol=1e-4, atol=1e-7)


def test_inplace_relu_handled_and_restored():
    plain = deconvnet(tiny(hand_net()), PIXELS, target="b")
    net = hand_net(inplace=True)
    for fn, expected in ((deconvnet, DECONV), (guided_backprop, GUIDED)):
        np.testing.assert_allclose(fn(tiny(net), PIXELS, target="b").values, expected,
                                   atol=1e-6)
    np.testing.assert_allclose(plain.values, DECONV, atol=1e-6)
    assert all(m.inplace for m in net.modules() if isinstance(m, nn.ReLU))


class FunctionalRelu(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.fc = nn.Linear(2, 2)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = F.relu(y) if self.how == "F.relu" else y.relu() if self.how == "method" \
            else torch.relu_(y)
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("how", ["F.relu", "method", "torch.relu_"])
def test_functional_relu_is_refused(how):
    clf = tiny(FunctionalRelu(how))
    with pytest.raises(WhiteBoxError, match="as functions"):
        guided_backprop(clf, PIXELS, target="b")
    assert not torch._C._len_torch_function_stack()


def test_black_box_and_torchscript_models_are_refused(tmp_path, nsfw_onnx):
    fn = CallableClassifier(lambda batch: np.full((len(batch), 2), 0.5), class_names=["a", "b"])
    for model in (fn, nsfw_onnx):
        with pytest.raises(WhiteBoxError, match="explain occlude"):
            deconvnet(model, PIXELS, target="a")
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(hand_net()), str(path))
    with pytest.raises(WhiteBoxError, match="TorchScript"):
        guided_backprop(str(path), PIXELS, target=1)


def _hooks(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in module.modules())


class Boom(nn.Module):
    """Raises in the forward pass, or (``backward=True``) in the backward pass."""

    def __init__(self, backward: bool = False) -> None:
        super().__init__()
        self.backward = backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.backward:
            raise RuntimeError("boom forward")
        return _RaiseInBackward.apply(x)


class _RaiseInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        raise RuntimeError("boom backward")


@pytest.mark.parametrize("where", ["forward", "backward", "neuron"])
def test_hooks_removed_and_state_restored_after_an_exception(where):
    net = hand_net()
    if where != "neuron":
        net.insert(2, Boom(backward=where == "backward"))
    clf = tiny(net)
    net.train()
    net[-1].eval()
    net[0].weight.requires_grad_(True)
    net[2 if where == "neuron" else 3].weight.requires_grad_(False)
    flags = [p.requires_grad for p in net.parameters()]
    for fn in (deconvnet, guided_backprop):
        if where == "neuron":
            with pytest.raises(OptionError, match="outside layer"):
                fn(clf, PIXELS, layer="3", target="b", neuron=(0, 5, 0))
        else:
            with pytest.raises(RuntimeError, match=f"boom {where}"):
                fn(clf, PIXELS, target="b",
                   layer="4" if where == "backward" else None)
        assert _hooks(net) == 0
        assert [m.training for m in net.modules()] == [True] * len(net) + [False]
        assert [p.requires_grad for p in net.parameters()] == flags
        assert not torch._C._len_torch_function_stack()


def test_model_unchanged(nsfw_torch, photos):
    img = photos["chelsea"][::3, ::3]
    net = nsfw_torch.module
    x = nsfw_torch.model_input(to_tensor(img))
    with torch.no_grad():
        before_out = net(x)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [p.requires_grad for p in net.parameters()]
    deconvnet(nsfw_torch, img)
    guided_backprop(nsfw_torch, img, layer="stages.2")
    with torch.no_grad():
        assert torch.equal(net(x), before_out)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert [p.requires_grad for p in net.parameters()] == flags and not net.training
    assert _hooks(net) == 0


class WithSpare(nn.Module):
    """A module (``spare``) that is registered but never called."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.relu = nn.ReLU()
        self.spare = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x)).mean((2, 3))


def test_bad_options():
    clf = tiny(hand_net())
    with pytest.raises(OptionError, match="no layer 'nope'"):
        deconvnet(clf, PIXELS, target="b", layer="nope")
    with pytest.raises(OptionError, match="neuron must be"):
        deconvnet(clf, PIXELS, layer="3", target="b", neuron="top")
    with pytest.raises(OptionError, match="outside layer"):
        deconvnet(clf, PIXELS, layer="3", target="b", neuron=(0, 0))
    with pytest.raises(ImageError, match=r"outside \[0, 1\]"):
        deconvnet(clf, PIXELS.astype(np.float32), target="b")
    with pytest.raises(OptionError, match="no images"):
        deconvnet(clf, [], target="b")
    with pytest.raises(OptionError, match="does not run"):
        deconvnet(tiny(WithSpare()), PIXELS, target="b", layer="spare")
    shared = nn.ReLU()
    twice = tiny(nn.Sequential(nn.Conv2d(3, 2, 1), shared, nn.Conv2d(2, 2, 1), shared,
                               nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    with pytest.raises(OptionError, match="ran 2 times"):
        guided_backprop(twice, PIXELS, target=0, layer="1")


def test_rendering(photos):
    r = deconvnet(tiny(hand_net()), PIXELS, target="b")
    picture = r.image(percentile=100)
    assert picture.dtype == np.uint8 and picture.shape == (2, 2, 3)
    assert picture[1, 1].tolist() == [128, 128, 128]            # zero → grey
    assert picture[0, 1].tolist() == [255, 128, 0]               # ±max → 255 / 0
    assert picture[0, 0].tolist() == [170, 128, 85]              # ±1/3 of max
    blended = r.overlay(np.zeros((2, 2, 3), np.uint8), alpha=1.0)
    assert blended.shape == (2, 2, 3) and blended.dtype == np.uint8
    assert r.metadata()["neuron"] is None and r.metadata()["shape"] == [2, 2, 3]


def test_layers_lists_names_and_shapes(nsfw_torch):
    table = {name: (kind, shape) for name, kind, shape in layers(nsfw_torch)}
    assert table["conv1"] == ("Conv2d", (64, 112, 112))
    assert table["stages.3"] == ("Sequential", (1024, 7, 7))
    assert table["fc"] == ("Linear", (2,))
    assert _hooks(nsfw_torch.module) == 0
