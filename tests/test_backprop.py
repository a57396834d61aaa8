"""Deconvnet and guided backprop: hand-computed maps, neuron mode, geometry, safety of the hooks."""

from __future__ import annotations

import copy

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
    """hand_net's ReLUs applied as functions (``how``), not modules."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.net = hand_net()
        self.how = how

    def act(self, y: torch.Tensor) -> torch.Tensor:
        if self.how == "F.relu":
            return F.relu(y)
        if self.how == "method":
            return y.relu()
        if self.how == "torch.relu_":
            return torch.relu_(y)
        return F.hardtanh(y, 0.0, 1e9, True)  # a ReLU written as an in-place Hardtanh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.net[0](x))
        y = self.act(self.net[2](y))
        return self.net[5](self.net[4](y))


@pytest.mark.parametrize("how", ["F.relu", "method", "torch.relu_", "F.hardtanh inplace"])
def test_functional_activations_get_the_rule(how):
    """A ReLU applied as a function gets the same rule as an nn.ReLU (it used to be refused)."""
    clf = tiny(FunctionalRelu(how))
    np.testing.assert_allclose(deconvnet(clf, PIXELS, target="b").values, DECONV, atol=1e-6)
    np.testing.assert_allclose(guided_backprop(clf, PIXELS, target="b").values, GUIDED,
                               atol=1e-6)
    assert not torch._C._len_torch_function_stack() and _hooks(clf.module) == 0


def rectifier_net(act: nn.Module) -> nn.Sequential:
    """1×1 conv 3→2 → act → 1×1 conv 2→1 → act → flatten → linear 4→2, weights large enough
    that ReLU6 saturates: on PIXELS the first layer's pre-activations are (6.9, −0.3),
    (−1.5, 4.5), (4.9, −0.3), (−0.9, −1.7) per pixel."""
    conv1 = nn.Conv2d(3, 2, 1)
    conv2 = nn.Conv2d(2, 1, 1)
    fc = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        conv1.weight.copy_(torch.tensor([[7.0, -2.0, -1.0], [-1.0, 4.0, -3.0]]).view(2, 3, 1, 1))
        conv1.bias.fill_(0.5)
        conv2.weight.copy_(torch.tensor([0.5, 1.0]).view(1, 2, 1, 1))
        conv2.bias.fill_(-0.5)
        fc.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, -1.0, 3.0, 0.5]]))
    return nn.Sequential(conv1, act, conv2, copy.deepcopy(act), nn.Flatten(), fc).eval()


def hand_rules(net: nn.Sequential, f, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray,
                                                                      np.ndarray]:
    """Deconvnet, guided backprop and the plain gradient of class 1 of :func:`rectifier_net`
    on PIXELS, written out pixel by pixel in numpy: ``f`` the activation, guided passes where
    lo < x < hi."""
    w1 = net[0].weight.detach().numpy()[:, :, 0, 0]
    b1 = net[0].bias.detach().numpy()
    w2 = net[2].weight.detach().numpy()[0, :, 0, 0]
    b2 = float(net[2].bias.detach())
    u = net[5].weight.detach().numpy()[1]
    x = PIXELS.reshape(4, 3).astype(np.float64) / 255
    z1 = x @ w1.T + b1                       # (4 pixels, 2)
    z2 = f(z1) @ w2 + b2                     # (4,)
    eps = 1e-3                               # the plain gradient of f, by central differences
    df1, df2 = ((f(z + eps) - f(z - eps)) / (2 * eps) for z in (z1, z2))
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    passes = lambda z: ((z > lo) & (z < hi)).astype(np.float64)  # noqa: E731
    deconv = relu(relu(u)[:, None] * w2) @ w1
    guided = (relu((relu(u) * passes(z2))[:, None] * w2) * passes(z1)) @ w1
    plain = ((u * df2)[:, None] * w2 * df1) @ w1
    return tuple(v.reshape(2, 2, 3).astype(np.float32) for v in (deconv, guided, plain))


RECTIFIERS = {
    "ReLU6": (nn.ReLU6(), lambda z: np.clip(z, 0, 6), 0.0, 6.0),
    "Hardtanh(-1, 5)": (nn.Hardtanh(-1.0, 5.0), lambda z: np.clip(z, -1, 5), 0.0, 5.0),
    "Hardtanh(0.5, 6)": (nn.Hardtanh(0.5, 6.0), lambda z: np.clip(z, 0.5, 6), 0.5, 6.0),
    "LeakyReLU(0.2)": (nn.LeakyReLU(0.2), lambda z: np.where(z > 0, z, 0.2 * z), 0.0, np.inf),
    "PReLU(-0.5)": (nn.PReLU(init=-0.5), lambda z: np.where(z > 0, z, -0.5 * z), 0.0, np.inf),
}


@pytest.mark.parametrize("name", list(RECTIFIERS))
def test_rectifier_rules_equal_hand_written_ones(name):
    """ReLU6, Hardtanh, LeakyReLU and PReLU get their rule (module docstring) at every
    activation: exactly the hand-written maps, which differ from the plain gradient."""
    act, f, lo, hi = RECTIFIERS[name]
    net = rectifier_net(act)
    deconv, guided, plain = hand_rules(net, f, lo, hi)
    clf = tiny(net)
    d = deconvnet(clf, PIXELS, target="b")
    g = guided_backprop(clf, PIXELS, target="b")
    np.testing.assert_allclose(d.values, deconv, atol=1e-5)
    np.testing.assert_allclose(g.values, guided, atol=1e-5)
    assert np.abs(g.values - plain).max() > 0.5 and np.abs(d.values - plain).max() > 0.5
    assert np.abs(g.values).max() > 0.5


@pytest.mark.parametrize("how", ["F.relu6", "F.hardtanh_", "F.leaky_relu_", "torch.prelu"])
def test_functional_rectifiers_get_their_rule(how):
    """The same activations called as functions (in place too) inside the model's forward."""
    name = {"F.relu6": "ReLU6", "F.hardtanh_": "ReLU6", "F.leaky_relu_": "LeakyReLU(0.2)",
            "torch.prelu": "PReLU(-0.5)"}[how]
    act, f, lo, hi = RECTIFIERS[name]
    net = rectifier_net(act)

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def act(self, y: torch.Tensor) -> torch.Tensor:
            if how == "F.relu6":
                return F.relu6(y)
            if how == "F.hardtanh_":
                return F.hardtanh_(y, 0.0, 6.0)
            if how == "F.leaky_relu_":
                return F.leaky_relu_(y, 0.2)
            return torch.prelu(y, torch.tensor([-0.5]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net[5](self.net[4](self.act(self.net[2](self.act(self.net[0](x))))))

    deconv, guided, _ = hand_rules(net, f, lo, hi)
    clf = tiny(Functional())
    np.testing.assert_allclose(deconvnet(clf, PIXELS, target="b").values, deconv, atol=1e-5)
    np.testing.assert_allclose(guided_backprop(clf, PIXELS, target="b").values, guided,
                               atol=1e-5)


class Gated(nn.Module):
    """A conv block with an activation that has no guided/deconvnet rule."""

    def __init__(self, act: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.act = nn.SiLU() if act == "SiLU" else nn.Identity()
        self.how = act
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x))
        if self.how == "sigmoid":
            y = y * torch.sigmoid(y)
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize(("act", "message"), [
    ("SiLU", r"no rule for SiLU, which module '0\.act' \(SiLU\) applies"),
    ("sigmoid", r"no rule for Sigmoid, which module '0' \(Gated\) applies")])
def test_activation_without_a_rule_is_refused(act, message):
    """SiLU as a module, a sigmoid gate as a function: refused, naming the module that ran it,
    never the plain gradient under the method's name."""
    model = nn.Sequential(Gated(act))
    clf = tiny(model)
    for fn, title in ((deconvnet, "deconvnet"), (guided_backprop, "guided backprop")):
        with pytest.raises(WhiteBoxError, match=f"{title} has {message}"):
            fn(clf, PIXELS, target="b")
        assert not torch._C._len_torch_function_stack() and _hooks(model) == 0
    with pytest.raises(WhiteBoxError, match=r"which the forward of Gated applies"):
        guided_backprop(tiny(Gated("sigmoid")), PIXELS, target="b")


def test_neuron_mode_ignores_what_runs_after_the_layer():
    """ReLU6 → conv (the layer) → SiLU: class mode is refused, but the neuron of the conv
    depends only on the ReLU6 before it, so neuron mode runs: the hand-written maps."""
    net = rectifier_net(nn.ReLU6())
    net[3] = nn.SiLU()
    clf = tiny(net)
    with pytest.raises(WhiteBoxError, match="no rule for SiLU"):
        guided_backprop(clf, PIXELS, target="b")
    w1 = net[0].weight.detach().numpy()[:, :, 0, 0]
    w2 = net[2].weight.detach().numpy()[0, :, 0, 0]
    x = PIXELS.reshape(4, 3).astype(np.float64) / 255
    z1 = x @ w1.T + net[0].bias.detach().numpy()
    top = int(np.argmax(np.clip(z1, 0, 6) @ w2))
    passes = ((z1[top] > 0) & (z1[top] < 6)).astype(np.float64)
    for fn, g_z1 in ((deconvnet, np.maximum(w2, 0)), (guided_backprop, np.maximum(w2, 0) * passes)):
        r = fn(clf, PIXELS, target="b", layer="2")
        assert r.neuron == (0, top // 2, top % 2)
        expected = np.zeros((4, 3), np.float32)
        expected[top] = g_z1 @ w1
        np.testing.assert_allclose(r.values, expected.reshape(2, 2, 3), atol=1e-5)
        assert np.abs(r.values).max() > 0.5


def relu_zoo() -> nn.Module:
    """A random ReLU net with what captum's hooks must handle: in-place ReLUs, max pooling, a
    residual addition."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(2))
            self.branch = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                                        nn.Conv2d(6, 6, 3, padding=1))
            self.relu = nn.ReLU()
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.stem(x)
            return self.head(self.relu(y + self.branch(y)))

    torch.manual_seed(5)
    return Net().eval()


@pytest.mark.parametrize("method", ["deconvnet", "guided_backprop"])
def test_relu_nets_equal_captum(method, photos):
    """On ReLU nets the rules are captum's exactly, in class and in neuron mode."""
    from captum.attr import (
        Deconvolution,
        GuidedBackprop,
        NeuronDeconvolution,
        NeuronGuidedBackprop,
    )

    rule, neuron_rule = ((Deconvolution, NeuronDeconvolution) if method == "deconvnet"
                         else (GuidedBackprop, NeuronGuidedBackprop))
    fn = deconvnet if method == "deconvnet" else guided_backprop
    net = relu_zoo()
    img = photos["chelsea"][100:148, 200:260]
    x = to_tensor(img).requires_grad_(True)
    ours = fn(tiny(net), img, target="b")
    theirs = rule(net).attribute(x, target=1)[0].permute(1, 2, 0).detach().numpy()
    assert np.abs(theirs).max() > 0
    np.testing.assert_allclose(ours.values, theirs, rtol=1e-5, atol=1e-7)
    neuron = fn(tiny(net), img, target="b", layer="branch.1", neuron=(2, 5, 7))
    theirs = neuron_rule(net, net.branch[1]).attribute(x, (2, 5, 7))[0]
    np.testing.assert_allclose(neuron.values, theirs.permute(1, 2, 0).detach().numpy(),
                               rtol=1e-5, atol=1e-7)


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
