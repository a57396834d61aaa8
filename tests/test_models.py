"""The Classifier contract: predict, target resolution, score checking, Preprocess and load()."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from explain.errors import ModelError, TargetError
from explain.models import (
    BUNDLED,
    SPEC_FORMS,
    CallableClassifier,
    Classifier,
    Preprocess,
    TorchClassifier,
    check_scores,
    default_device,
    load,
    resolve_target,
)
from explain.models.base import NO_GPU, center_crop, device_label, gpu_line


class MeanColour(nn.Module):
    """Logits = the mean of each RGB channel times 10: the brightest channel wins."""

    class_names = ("red", "green", "blue")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) * 10


def _solid(*colours: tuple[float, float, float], side: int = 8) -> torch.Tensor:
    return torch.tensor(colours, dtype=torch.float32).view(-1, 3, 1, 1).expand(-1, 3, side, side)


@pytest.fixture
def colour_clf() -> TorchClassifier:
    return load(MeanColour(), "cpu", logits=True)


def test_predict_contract(colour_clf):
    assert isinstance(colour_clf, Classifier)
    assert colour_clf.class_names == ["red", "green", "blue"]
    assert colour_clf.device == torch.device("cpu")
    batch = _solid((1, 0, 0), (0, 0.5, 0), (0.2, 0.2, 0.9))
    probs = colour_clf.predict(batch)
    assert probs.shape == (3, 3) and probs.dtype == torch.float32
    assert not probs.requires_grad
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    expected = torch.softmax(torch.tensor([[10.0, 0, 0], [0, 5, 0], [2, 2, 9]]), dim=1)
    torch.testing.assert_close(probs, expected)
    assert probs.argmax(1).tolist() == [0, 1, 2]


def test_predict_rejects_a_batch_that_is_not_nx3xhxw(colour_clf):
    with pytest.raises(ModelError, match="N×3×H×W"):
        colour_clf.predict(torch.zeros(3, 8, 8))
    with pytest.raises(ModelError, match="N×3×H×W"):
        colour_clf.predict(torch.zeros(1, 4, 8, 8))


def test_logits_without_the_flag_are_an_error():
    clf = load(MeanColour(), "cpu")
    with pytest.raises(ModelError, match="logits") as info:
        clf.predict(_solid((1, 0, 0)))
    assert "MeanColour" in str(info.value)


@pytest.mark.parametrize("target, index", [("red", 0), ("blue", 2), (1, 1), ("2", 2), (0, 0)])
def test_resolve_target(colour_clf, target, index):
    assert resolve_target(colour_clf, target) == index


@pytest.mark.parametrize("target, words", [
    ("nsfw", ["unknown target 'nsfw'", "red, green, blue"]),
    (3, ["out of range", "3 classes"]),
    ("-1", ["out of range"]),
])
def test_resolve_target_errors(colour_clf, target, words):
    with pytest.raises(TargetError) as info:
        resolve_target(colour_clf, target)
    for word in words:
        assert word in str(info.value)


def test_resolve_target_on_open_nsfw(nsfw_onnx):
    assert resolve_target(nsfw_onnx, "nsfw") == 1
    assert resolve_target(nsfw_onnx, "sfw") == 0


def test_check_scores_passes_probabilities_through():
    probs = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    torch.testing.assert_close(check_scores(probs, 2, 2, logits=False, name="m"), probs)
    out = check_scores([[0.5, 0.5]], 1, None, logits=False, name="m")
    assert out.shape == (1, 2) and out.dtype == torch.float32


def test_check_scores_single_row_as_vector():
    out = check_scores([0.1, 0.9], 1, 2, logits=False, name="m")
    torch.testing.assert_close(out, torch.tensor([[0.1, 0.9]]))


def test_check_scores_detects_logits():
    logits = [[2.0, -1.0], [0.0, 3.5]]
    with pytest.raises(ModelError) as info:
        check_scores(logits, 2, 2, logits=False, name="my-model")
    message = str(info.value)
    assert "my-model" in message and "logits" in message and "--logits" in message
    out = check_scores(logits, 2, 2, logits=True, name="my-model")
    torch.testing.assert_close(out, torch.softmax(torch.tensor(logits), dim=1))


@pytest.mark.parametrize("scores, n, n_classes", [
    ([[0.5, 0.5]], 2, 2),                       # too few rows
    ([[0.5, 0.5], [0.5, 0.5]], 1, 2),           # too many rows
    ([[0.2, 0.3, 0.5]], 1, 2),                  # wrong number of classes
    ([[[0.5, 0.5]]], 1, 2),                     # 3-D
    (0.5, 1, 2),                                # a scalar
])
def test_check_scores_wrong_shape(scores, n, n_classes):
    with pytest.raises(ModelError, match=r"model shape-model returned scores of shape"):
        check_scores(scores, n, n_classes, logits=False, name="shape-model")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("logits", [False, True])
def test_check_scores_nan_names_the_model(bad, logits):
    with pytest.raises(ModelError, match="model nan-model returned NaN or infinite"):
        check_scores([[0.5, bad]], 1, 2, logits=logits, name="nan-model")


@pytest.mark.parametrize("junk", [[[0.1, 0.9], [0.5]], "scores", None, {"a": 1}])
def test_check_scores_not_an_array(junk):
    with pytest.raises(ModelError, match="junk-model"):
        check_scores(junk, 2, 2, logits=False, name="junk-model")


def test_nan_model_through_predict():
    def nan_scores(images):
        return [[float("nan"), 1.0]] * len(images)

    clf = CallableClassifier(nan_scores, class_names=["a", "b"], name="nan-fn")
    with pytest.raises(ModelError, match="model nan-fn returned NaN"):
        clf.predict(torch.rand(2, 3, 4, 4))


def test_class_names_are_probed_when_not_given():
    clf = CallableClassifier(lambda images: [[0.2, 0.3, 0.5]] * len(images))
    assert clf.class_names == ["0", "1", "2"]
    assert resolve_target(clf, "2") == 2


def test_preprocess_exact():
    pre = Preprocess(input_size=None, mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0),
                     channel_order="BGR", value_scale=255.0)
    batch = _solid((1.0, 0.0, 0.2), side=2)
    out = pre(batch)
    # BGR: (0.2*255 - 10)/2, (0 - 20)/4, (255 - 30)/5
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([20.5, -5.0, 45.0]))


def test_preprocess_resize_and_crop():
    pre = Preprocess(input_size=(16, 12), crop=(8, 6))
    batch = torch.rand(2, 3, 40, 30)
    assert pre(batch).shape == (2, 3, 8, 6)
    flat = _solid((0.3, 0.6, 0.9), side=40)
    torch.testing.assert_close(pre(flat)[0, :, 3, 3], torch.tensor([0.3, 0.6, 0.9]))
    ramp = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 3, 4, 6)
    torch.testing.assert_close(center_crop(ramp, (2, 2))[0, 0, 0], torch.tensor([2.0, 3.0]))


def test_preprocess_errors():
    with pytest.raises(ModelError, match="channel_order"):
        Preprocess(channel_order="RBG")
    with pytest.raises(ModelError, match="centre-crop"):
        center_crop(torch.zeros(1, 3, 4, 4), (8, 8))


def test_default_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device(None).type == expected
    assert default_device("auto").type == expected
    assert default_device("cpu") == torch.device("cpu")
    with pytest.raises(ModelError, match="unknown device 'gpu'"):
        default_device("gpu")


def test_cuda_index_beyond_the_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert default_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ModelError, match="torch sees 2 CUDA GPU"):
        default_device("cuda:2")


def test_the_device_in_words_names_the_card(monkeypatch):
    """What the benchmarks print first: every GPU by its card's name, or plainly that there is
    none; the device a figure ran on, the card named on CUDA and as torch writes it on the CPU."""
    assert device_label("cpu") == device_label(torch.device("cpu")) == "cpu"
    if not torch.cuda.is_available():
        assert gpu_line() == NO_GPU == "no GPU on this machine"
    names = {0: "NVIDIA H100 80GB HBM3", 1: "NVIDIA H200"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: names[i or 0])
    assert gpu_line() == "GPU: cuda:0 NVIDIA H100 80GB HBM3, cuda:1 NVIDIA H200"
    assert device_label("cuda") == "cuda:0 (NVIDIA H100 80GB HBM3)"
    assert device_label(torch.device("cuda:1")) == "cuda:1 (NVIDIA H200)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_without_a_gpu():
    with pytest.raises(ModelError, match="--device cpu"):
        load(MeanColour(), "cuda")


@pytest.mark.parametrize("spec, words", [
    ("resnet", ["unknown model 'resnet'", "TorchScript"]),
    ("missing.pt", ["missing.pt not found"]),
    ("missing.onnx", ["missing.onnx not found"]),
    ("open-nsfw:tf", ["open-nsfw:tf", "open-nsfw:onnx"]),
    ("json:does_not_exist", ["json", "does_not_exist"]),
    ("no_such_module_xyz:fn", ["cannot import 'no_such_module_xyz'"]),
])
def test_load_errors(spec, words):
    with pytest.raises(ModelError) as info:
        load(spec, "cpu")
    for word in words:
        assert word in str(info.value)


def test_load_refuses_other_objects():
    with pytest.raises(ModelError, match="cannot make a classifier out of a int"):
        load(42)


def test_load_takes_a_function_object_as_its_string_form_does():
    def redness(images):
        return images[..., 0].mean(axis=(1, 2))[:, None] / 255.0 * [1.0, -1.0] + [0.0, 1.0]

    redness.class_names = ["red", "other"]
    clf = load(redness)
    assert isinstance(clf, CallableClassifier) and clf.fn is redness
    assert clf.name == "redness" and clf.class_names == ["red", "other"]
    probs = clf.predict(_solid((1, 0, 0), (0, 1, 0)))
    torch.testing.assert_close(probs, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert load(redness, class_names=["a", "b"]).class_names == ["a", "b"]
    assert load(redness, preprocess=Preprocess(input_size=(4, 4))).input_size == (4, 4)
    with pytest.raises(ModelError, match="uint8 RGB pixels"):
        load(redness, preprocess=Preprocess(input_size=(4, 4), mean=(0.5, 0.5, 0.5)))
    with pytest.raises(ModelError, match="cannot make a classifier out of a type"):
        load(MeanColour)


def test_load_returns_a_classifier_as_is(colour_clf):
    assert load(colour_clf) is colour_clf


def test_spec_forms_name_every_bundled_model():
    assert set(BUNDLED) >= {"open-nsfw", "open-nsfw:onnx", "open-nsfw:auto"}
    for name in BUNDLED:
        assert name in SPEC_FORMS["NAME"]


def test_auto_backend_on_cpu():
    clf = load("open-nsfw:auto", "cpu")
    assert clf.name == "open-nsfw:onnx"
    assert clf.input_size == (256, 256)


def test_load_pair_is_the_default_pair_or_one_model_for_both(monkeypatch):
    """The default open-nsfw runs black-box methods on open-nsfw:auto and white-box ones on the
    torch port (loaded only when asked for); any other model serves both."""
    import explain.models.loading as loading
    from explain.models import load_pair

    asked = []
    monkeypatch.setattr(loading, "load", lambda spec, device=None: asked.append(spec) or spec)
    for spec in ("open-nsfw", "open-nsfw:auto"):
        asked.clear()
        assert load_pair(spec, white=True) == ("open-nsfw:auto", "open-nsfw")
        assert asked == ["open-nsfw:auto", "open-nsfw"]
        asked.clear()
        assert load_pair(spec, white=False) == ("open-nsfw:auto", None)
        assert asked == ["open-nsfw:auto"]
    asked.clear()
    assert load_pair("open-nsfw:onnx", white=True) == ("open-nsfw:onnx", "open-nsfw:onnx")
    assert asked == ["open-nsfw:onnx"]


def test_capabilities_are_declared_protocols(colour_clf, nsfw_onnx):
    """What a model can do is the protocols it satisfies: a torch model is differentiable, with
    a fixed input and features; an ONNX graph has a fixed input and features but no gradients;
    a function is a plain classifier. White-box methods take any Differentiable, and refuse the
    rest once, with the WhiteBoxError that names the black-box commands."""
    from explain.errors import WhiteBoxError
    from explain.models import Differentiable, FixedInput, HasFeatures
    from explain.models.base import pixelwise_input
    from explain.whitebox import white_box

    def declared(clf):
        return [p.__name__ for p in (Classifier, HasFeatures, FixedInput, Differentiable)
                if isinstance(clf, p)]

    function = load(lambda x: x.mean(axis=(1, 2)) / 255)
    assert declared(colour_clf) == ["Classifier", "HasFeatures", "FixedInput", "Differentiable"]
    assert declared(nsfw_onnx) == ["Classifier", "HasFeatures", "FixedInput"]
    assert declared(function) == ["Classifier"]
    assert white_box(colour_clf) is colour_clf
    for black in (nsfw_onnx, function):
        with pytest.raises(WhiteBoxError, match=r"is a black box .* `explain occlude`"):
            white_box(black)
    assert pixelwise_input(nsfw_onnx, (256, 256)) and not pixelwise_input(function, (8, 8))

    from typing_extensions import get_protocol_members

    class Own:
        """A differentiable classifier of the user's own, no adapter of ours: it has every
        member the protocol names (checked statically: a ``__getattr__`` proxy is not seen)."""

        def __init__(self, inner):
            for name in get_protocol_members(Differentiable):
                setattr(self, name, getattr(inner, name))

    own = Own(colour_clf)
    assert isinstance(own, Differentiable) and white_box(own) is own


def test_checking_a_capability_never_calls_the_model():
    """isinstance against a capability reads members statically: the class_names property
    (which probes the model once when the classes are unnamed) does not run."""
    from explain.models import CallableClassifier, Classifier, Differentiable, HasFeatures

    calls = []

    def fn(batch):
        calls.append(len(batch))
        return torch.full((len(batch), 2), 0.5)

    clf = CallableClassifier(fn, name="counting")
    torch_clf = TorchClassifier(nn.Sequential(nn.Flatten(), nn.Linear(192, 2)),
                                Preprocess(input_size=(8, 8)))
    assert isinstance(clf, Classifier) and not isinstance(clf, HasFeatures | Differentiable)
    assert isinstance(torch_clf, Differentiable)
    assert calls == []
    assert torch_clf._class_names is None  # its probe did not run either
