"""Every adapter with a real model of its kind: nn.Module, TorchScript file, ONNX file, callable.

(The HTTP adapter has its own file, tests/test_http.py.)
"""

from __future__ import annotations

import importlib
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from explain.errors import ModelError
from explain.images import to_tensor
from explain.models import (
    CallableClassifier,
    Classifier,
    OnnxClassifier,
    Preprocess,
    TorchClassifier,
    load,
    open_nsfw,
)
from explain.models.base import resize

WEIGHTS = torch.tensor([[4.0, -2.0], [0.0, 1.0], [-3.0, 5.0]])


class ChannelMean(nn.Module):
    """Logits = per-channel mean (in the model's channel order) @ WEIGHTS; known by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x) @ WEIGHTS

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class TinyConvNet(nn.Module):
    """A small real CNN with seeded weights (NCHW)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


class NHWCSoftmax(nn.Module):
    """TinyConvNet taking channels-last input and answering probabilities (like open-nsfw.onnx)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = TinyConvNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.inner(x.permute(0, 3, 1, 2)), dim=1)


PRE = Preprocess(input_size=(16, 16), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                 channel_order="BGR")


def _export_onnx(module: nn.Module, example: torch.Tensor, path, dynamic: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, input_names=["x"],
                          output_names=["scores"], dynamic_axes={"x": dynamic})


def test_torch_module_with_preprocess_known_answer():
    pre = Preprocess(input_size=None, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5),
                     channel_order="BGR", value_scale=1.0)
    clf = load(ChannelMean(), "cpu", preprocess=pre, class_names=["a", "b"], logits=True)
    assert isinstance(clf, TorchClassifier) and isinstance(clf, Classifier)
    batch = torch.tensor([0.9, 0.5, 0.1]).view(1, 3, 1, 1).expand(2, 3, 4, 4).clone()
    batch[1] = 0.3
    # BGR means after normalisation: image 0: ((0.1-0.1)/.5, (0.5-0.2)/.5, (0.9-0.3)/.5)
    means = torch.tensor([[0.0, 0.6, 1.2], [0.4, 0.2, 0.0]])
    expected = torch.softmax(means @ WEIGHTS, dim=1)
    torch.testing.assert_close(clf.predict(batch), expected)
    torch.testing.assert_close(clf.model_input(batch)[:, :, 0, 0], means)
    torch.testing.assert_close(clf.features(batch), means)
    feats, probs = clf.features_and_scores(batch)  # no head declared: features, then forward
    torch.testing.assert_close(feats, means)
    torch.testing.assert_close(probs, expected)
    assert clf.module.training is False


def test_torch_module_input_size_is_applied(photos):
    clf = load(TinyConvNet(), "cpu", preprocess=PRE, class_names=["x", "y", "z"], logits=True)
    assert clf.input_size == (16, 16)
    img = to_tensor(photos["chelsea"])
    assert clf.model_input(img).shape == (1, 3, 16, 16)
    torch.testing.assert_close(clf.predict(img), clf.predict(resize(img, (16, 16))))


def test_torch_module_without_features():
    clf = load(TinyConvNet(), "cpu", preprocess=PRE, logits=True)
    assert clf.class_names == ["0", "1", "2"]
    with pytest.raises(ModelError, match="no features"):
        clf.features(torch.rand(1, 3, 16, 16))
    with pytest.raises(ModelError, match="no features"):
        clf.features_and_scores(torch.rand(1, 3, 16, 16))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("how, suffix", [("script", ".pt"), ("trace", ".ts")])
def test_torchscript_file(tmp_path, monkeypatch, how, suffix):
    net = TinyConvNet().eval()
    example = torch.rand(2, 3, 16, 16)
    scripted = torch.jit.script(net) if how == "script" else torch.jit.trace(net, example)
    scripted.save(str(tmp_path / f"x{suffix}"))
    monkeypatch.chdir(tmp_path)
    clf = load(f"x{suffix}", "cpu", preprocess=PRE, class_names=["x", "y", "z"], logits=True)
    assert isinstance(clf, TorchClassifier)
    assert clf.name == f"x{suffix}" and clf.class_names == ["x", "y", "z"]
    batch = torch.rand(3, 3, 20, 24)
    expected = torch.softmax(net(PRE(batch)), dim=1)
    torch.testing.assert_close(clf.predict(batch), expected)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_corrupt_torchscript_file(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(ModelError, match="cannot load TorchScript file"):
        load(str(path), "cpu")


def test_bundled_onnx_file_through_load(nsfw_onnx, photos):
    path = open_nsfw.onnx_path()
    clf = load(path, "cpu", preprocess=open_nsfw.PREPROCESS, class_names=["sfw", "nsfw"])
    assert isinstance(clf, OnnxClassifier)
    assert clf.layout == "NHWC" and clf.name == "open-nsfw.onnx"
    batch = torch.cat([resize(to_tensor(photo), (256, 256)) for photo in photos.values()])
    probs = clf.predict(batch)
    assert probs.shape == (3, 2)
    assert (probs - nsfw_onnx.predict(batch)).abs().max() < 1e-6


def test_onnx_file_nchw_static_size(tmp_path):
    net = TinyConvNet()
    path = tmp_path / "tiny.onnx"
    _export_onnx(net, torch.rand(1, 3, 16, 16), path, {0: "N"})
    clf = load(str(path), "cpu", logits=True)
    assert clf.layout == "NCHW"
    assert clf.input_size == (16, 16)  # read from the graph
    assert clf.class_names == ["0", "1", "2"]
    batch = torch.rand(4, 3, 40, 30)
    expected = torch.softmax(net(resize(batch, (16, 16))), dim=1)
    torch.testing.assert_close(clf.predict(batch), expected, atol=1e-5, rtol=1e-4)


def test_onnx_provider_follows_the_device_and_is_recorded_in_every_map(tmp_path, monkeypatch):
    """CUDA is asked for only on a CUDA device and only when onnxruntime offers it (the
    ``gpu`` extra); the provider the session really runs on is the classifier's ``provider``
    and every black-box map's ``params["provider"]`` (None for a torch model)."""
    import onnxruntime as ort

    from explain.models.base import onnx_providers
    from explain.occlusion import occlusion_map
    from explain.rise import rise_map
    from explain.sliding import sliding_window_map

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert onnx_providers(cuda) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers(cpu) == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert onnx_providers(cuda) == ["CPUExecutionProvider"]
    monkeypatch.undo()
    net = TinyConvNet()
    path = tmp_path / "tiny.onnx"
    _export_onnx(net, torch.rand(1, 3, 16, 16), path, {0: "N"})
    clf = load(str(path), "cpu", logits=True)
    assert clf.provider == "CPUExecutionProvider" and clf.device == cpu
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    maps = [occlusion_map(clf, image, box=8, stride=8, target=0),
            sliding_window_map(clf, image, box=8, stride=8, target=0),
            rise_map(clf, image, masks=8, cell=2, target=0)]
    assert [hm.params["provider"] for hm in maps] == ["CPUExecutionProvider"] * 3
    torch_clf = load(net, "cpu", preprocess=PRE, logits=True)
    assert occlusion_map(torch_clf, image, box=8, stride=8, target=0).params["provider"] is None


def test_onnx_file_nchw_with_preprocess(tmp_path):
    net = TinyConvNet()
    path = tmp_path / "tiny.onnx"
    _export_onnx(net, torch.rand(1, 3, 16, 16), path, {0: "N"})
    clf = load(str(path), "cpu", preprocess=PRE, class_names=["x", "y", "z"], logits=True)
    batch = torch.rand(2, 3, 24, 24)
    torch.testing.assert_close(clf.predict(batch), torch.softmax(net(PRE(batch)), dim=1),
                               atol=1e-5, rtol=1e-4)


def test_onnx_file_nhwc_dynamic_size(tmp_path):
    net = NHWCSoftmax()
    path = tmp_path / "nhwc.onnx"
    _export_onnx(net, torch.rand(1, 16, 16, 3), path, {0: "N", 1: "H", 2: "W"})
    clf = load(str(path), "cpu")
    assert clf.layout == "NHWC"
    assert clf.input_size is None  # dynamic spatial axes: no resize
    batch = torch.rand(2, 3, 12, 20)
    expected = net(batch.permute(0, 2, 3, 1))
    torch.testing.assert_close(clf.predict(batch), expected, atol=1e-5, rtol=1e-4)


def test_onnx_logits_without_the_flag(tmp_path):
    path = tmp_path / "tiny.onnx"
    _export_onnx(TinyConvNet(), torch.rand(1, 3, 16, 16), path, {0: "N"})
    clf = load(str(path), "cpu", class_names=["x", "y", "z"])
    big = torch.ones(1, 3, 16, 16) * 50  # pushes the logits far outside [0, 1]
    with pytest.raises(ModelError, match="tiny.onnx returned values outside"):
        clf.predict(big)


def test_corrupt_onnx_file(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match="cannot load ONNX model"):
        load(str(path), "cpu")


CALLABLE_SOURCE = textwrap.dedent('''
    """Redness: a real scoring function of the callable kind (uint8 NxHxWx3 -> Nx2)."""
    import numpy as np

    seen = []


    def redness(images):
        seen.append((images.dtype, images.shape))
        r = images[..., 0].astype(np.float64).mean(axis=(1, 2)) / 255.0
        return np.stack([1.0 - r, r], axis=1)


    redness.class_names = ["other", "red"]


    def broken(images):
        raise RuntimeError("backend exploded")
''')


def _red_batch() -> torch.Tensor:
    batch = torch.zeros(2, 3, 5, 7)
    batch[0, 0] = 1.0
    batch[1, 0] = 0.2
    return batch


def test_callable_package_module(tmp_path, monkeypatch):
    pkg = tmp_path / "scorers"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "colour.py").write_text(CALLABLE_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    clf = load("scorers.colour:redness")
    assert isinstance(clf, CallableClassifier)
    assert clf.class_names == ["other", "red"]
    probs = clf.predict(_red_batch())
    torch.testing.assert_close(probs, torch.tensor([[0.0, 1.0], [1 - 51 / 255, 51 / 255]]))
    module = importlib.import_module("scorers.colour")
    assert module.seen[-1] == (np.dtype(np.uint8), (2, 5, 7, 3))
    monkeypatch.delitem(sys.modules, "scorers.colour")
    monkeypatch.delitem(sys.modules, "scorers")


def test_callable_file(tmp_path, monkeypatch):
    path = tmp_path / "my_scorer.py"
    path.write_text(CALLABLE_SOURCE)
    clf = load(f"{path}:redness", class_names=["no", "yes"])
    assert clf.class_names == ["no", "yes"]
    torch.testing.assert_close(clf.predict(_red_batch())[:, 1], torch.tensor([1.0, 51 / 255]))
    monkeypatch.chdir(tmp_path)
    assert load("my_scorer.py:redness").class_names == ["other", "red"]


def test_callable_errors(tmp_path):
    path = tmp_path / "my_scorer.py"
    path.write_text(CALLABLE_SOURCE)
    clf = load(f"{path}:broken", class_names=["a", "b"])
    with pytest.raises(ModelError, match="raised RuntimeError: backend exploded"):
        clf.predict(_red_batch())
    with pytest.raises(ModelError, match="no callable named 'missing'"):
        load(f"{path}:missing")
    with pytest.raises(ModelError, match="not found"):
        load(f"{tmp_path / 'nope.py'}:redness")
    (tmp_path / "bad_syntax.py").write_text("def (:\n")
    with pytest.raises(ModelError, match="cannot import"):
        load(f"{tmp_path / 'bad_syntax.py'}:fn")


MODULE_SOURCE = '''
import torch
from torch import nn


class Brightness(nn.Module):
    class_names = ("dark", "bright")

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]).view(2, 3, 1, 1))
            self.conv.bias.zero_()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x)).mean(dim=(2, 3))


net = Brightness()
'''


def test_module_instance_spec_is_a_white_box_torch_model(tmp_path):
    from explain import guided_backprop

    path = tmp_path / "my_net.py"
    path.write_text(MODULE_SOURCE)
    clf = load(f"{path}:net", "cpu", logits=True)
    assert isinstance(clf, TorchClassifier)
    assert clf.class_names == ["dark", "bright"]
    x = torch.full((1, 3, 4, 4), 0.5)
    torch.testing.assert_close(clf.predict(x), torch.softmax(torch.tensor([[0.0, 1.5]]), 1))
    rec = guided_backprop(clf, np.full((4, 4, 3), 128, np.uint8), target="bright")
    # d mean(relu(sum_c x_c)) / dx = 1/16 per channel where the unit is active
    np.testing.assert_allclose(rec.values, np.full((4, 4, 3), 1 / 16), rtol=1e-6)
