"""Models as they come: one-column (binary) outputs, multi-label sigmoid columns, ONNX graphs with
a fixed batch and size, BGR and 0-255 inputs, and the error for a graph that cannot run."""

from __future__ import annotations

import json
import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from explain import guided_backprop
from explain.cli import app
from explain.cli.common import ModelOptions
from explain.errors import ModelError
from explain.images import to_tensor
from explain.models import OnnxClassifier, Preprocess, check_scores, load


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_one_column_logits_are_a_binary_sigmoid():
    out = check_scores([[2.0], [-0.5], [0.0]], 3, None, logits=True, name="m")
    expected = [[1 - sig(2.0), sig(2.0)], [1 - sig(-0.5), sig(-0.5)], [0.5, 0.5]]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)


def test_one_column_probability_is_read_as_two_classes():
    out = check_scores([[0.3], [0.9]], 2, 2, logits=False, name="m")
    np.testing.assert_allclose(out.numpy(), [[0.7, 0.3], [0.1, 0.9]], rtol=1e-6)
    with pytest.raises(ModelError, match="look like logits"):
        check_scores([[3.0]], 1, 2, logits=False, name="m")


def test_sigmoid_reads_independent_columns():
    z = [[0.0, 2.0, -1.0], [4.0, 4.0, -3.0]]
    out = check_scores(z, 2, 3, logits=False, sigmoid=True, name="m")
    np.testing.assert_allclose(out.numpy(), [[sig(v) for v in row] for row in z], rtol=1e-6)
    assert out.sum(dim=1)[1] > 1.5  # independent labels: no softmax


def one_logit(images: np.ndarray) -> np.ndarray:
    """A binary model with one logit column: 8 × (mean brightness − 0.5)."""
    return (8 * (images.astype(np.float64).mean(axis=(1, 2, 3)) / 255 - 0.5))[:, None]


def test_one_logit_model_through_load_names_and_scores(photos):
    images = [photos["coffee"], photos["astronaut"]]
    unnamed = load(one_logit, logits=True)
    assert unnamed.class_names == ["not-positive", "positive"]
    named = load(one_logit, logits=True, class_names=["nsfw"])
    assert named.class_names == ["not-nsfw", "nsfw"]
    pair = load(one_logit, logits=True, class_names=["safe", "unsafe"])
    assert pair.class_names == ["safe", "unsafe"]
    for img in images:
        p = pair.predict(to_tensor(img))[0]
        z = 8 * (img.astype(np.float64).mean() / 255 - 0.5)
        assert p[1].item() == pytest.approx(sig(z), rel=1e-5)
        assert p[0].item() == pytest.approx(1 - sig(z), rel=1e-5)


def test_binary_torch_model_white_box_targets_both_classes():
    """A one-logit module: the positive class explains z, the negative class −z."""
    net = nn.Sequential(nn.Conv2d(3, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    clf = load(net, "cpu", preprocess=Preprocess(input_size=None), logits=True,
               class_names=["nsfw"])
    img = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    pos = guided_backprop(clf, img, target="nsfw")
    neg = guided_backprop(clf, img, target="not-nsfw")
    w = net[0].weight.detach().numpy()[0, :, 0, 0] / 16
    np.testing.assert_allclose(pos.values, np.broadcast_to(w, (4, 4, 3)), rtol=1e-5)
    np.testing.assert_allclose(neg.values, -pos.values, rtol=1e-6)
    z = net(to_tensor(img)).item()
    assert pos.score == pytest.approx(sig(z), rel=1e-5)


class MeanNet(nn.Module):
    """Logits (2 columns) that are a linear function of the channel means of its input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [-1.0, 0.5, 2.0]]))
            self.fc.bias.copy_(torch.tensor([0.1, -0.2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def export(module: nn.Module, example: torch.Tensor, path, dynamic: dict | None = None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), dynamo=False,
                          input_names=["pixels"], output_names=["scores"],
                          dynamic_axes={"pixels": dynamic} if dynamic else None)


def hand_probs(images: list[np.ndarray], size: int, mean, std) -> np.ndarray:
    """MeanNet's softmax for each image resized to size×size (our resize) and normalised."""
    from explain.models.base import resize

    net = MeanNet()
    rows = []
    for img in images:
        x = resize(to_tensor(img), (size, size))
        m = ((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
        rows.append(torch.softmax(net(m), dim=1)[0].detach().numpy())
    return np.array(rows)


@pytest.mark.parametrize("fixed_batch", [1, 2])
def test_onnx_fixed_batch_and_size_with_mean_std_only(tmp_path, photos, fixed_batch):
    path = tmp_path / "fixed.onnx"
    export(MeanNet(), torch.rand(fixed_batch, 3, 12, 12), path)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    clf = load(str(path), "cpu", preprocess=Preprocess(input_size=None, mean=mean, std=std),
               logits=True)
    assert isinstance(clf, OnnxClassifier)
    assert clf.fixed_batch == fixed_batch and clf.input_size == (12, 12)
    images = [photos["coffee"][:60, :80], photos["chelsea"][:60, :80],
              photos["astronaut"][:60, :80]]
    batch = torch.cat([to_tensor(img) for img in images])
    probs = clf.predict(batch).numpy()  # 3 images: chunks of the fixed batch (and padding)
    np.testing.assert_allclose(probs, hand_probs(images, 12, mean, std), rtol=1e-4, atol=1e-6)


def test_onnx_fixed_size_refuses_another_input_size(tmp_path):
    path = tmp_path / "fixed.onnx"
    export(MeanNet(), torch.rand(1, 3, 12, 12), path)
    with pytest.raises(ModelError, match=r"takes input 'pixels' of shape \[1, 3, 12, 12\] "
                                         r"\(float\).*16×16: give --input-size 12"):
        load(str(path), preprocess=Preprocess(input_size=(16, 16)))


class Flat(nn.Module):
    """Runs only on inputs of 3×8×8 per image, whatever the graph declares."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x.reshape(-1, 192)[:, :2], dim=1)


def test_onnx_graph_that_cannot_run_names_its_input(tmp_path, photos):
    path = tmp_path / "flat.onnx"
    export(Flat(), torch.rand(1, 3, 8, 8), path, {0: "N", 2: "H", 3: "W"})
    clf = load(str(path), "cpu")
    with pytest.raises(ModelError, match=r"flat.onnx failed on a batch of shape \(1, 3, 20, 20\)"
                                         r".*takes input 'pixels' of shape \[N, 3, H, W\] "
                                         r"\(float\)"):
        clf.predict(to_tensor(photos["coffee"][:20, :20]))
    gray = tmp_path / "gray.onnx"
    export(nn.Sequential(nn.Conv2d(1, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
           torch.rand(1, 1, 8, 8), gray)
    with pytest.raises(ModelError, match=r"takes input 'pixels' of shape \[1, 1, 8, 8\] "
                                         r"\(float\): 1 channel"):
        load(str(gray))


class ChannelMeans(nn.Module):
    """Its first two input channels' means, as "probabilities" (the input is on 0..255)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))[:, :2] / 255


def test_bgr_and_scale_255_against_a_reference(photos):
    img = photos["coffee"][:40, :50]
    clf = load(ChannelMeans(), "cpu", channels="bgr", scale=255)
    x = to_tensor(img)
    np.testing.assert_allclose(clf.model_input(x).numpy(), x.flip(1).numpy() * 255, rtol=1e-6)
    p = clf.predict(x)[0].numpy()
    expected = img.astype(np.float64).mean(axis=(0, 1))[[2, 1]] / 255  # B, then G
    np.testing.assert_allclose(p, expected, rtol=1e-5)
    caffe = load(MeanNet(), "cpu", preprocess=Preprocess(input_size=None,
                                                         mean=(104.0, 117.0, 123.0)),
                 channels="bgr", scale=255, logits=True)
    want = (x.flip(1) * 255 - torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1))
    np.testing.assert_allclose(caffe.model_input(x).numpy(), want.numpy(), rtol=1e-6)


def test_conventions_refused_where_they_mean_nothing():
    with pytest.raises(ModelError, match="reads its own input and output"):
        load("open-nsfw:onnx", sigmoid=True)
    with pytest.raises(ModelError, match="--channels and --scale apply to torch and ONNX"):
        load(one_logit, scale=255)
    with pytest.raises(ModelError, match="not both"):
        load(MeanNet(), logits=True, sigmoid=True)
    with pytest.raises(ModelError, match="channels must be 'rgb' or 'bgr'"):
        load(MeanNet(), channels="rbg")
    with pytest.raises(ModelError, match="scale must be a positive number"):
        load(MeanNet(), scale=0)
    with pytest.raises(ModelError, match="already sets channel_order='BGR'"):
        load(MeanNet(), preprocess=Preprocess(input_size=None, channel_order="BGR"),
             channels="rgb")


def test_options_travel_to_the_run_key_and_the_loader():
    """The audit's run key (describe) and the Ray actors' loader (ModelOptions.load, pickled
    on its way to them) carry the new options."""
    opts = ModelOptions("net.py:net", sigmoid=True, channels="bgr", scale=255.0)
    assert not opts.plain
    assert opts.describe() == "net.py:net --sigmoid --channels bgr --scale 255"
    assert pickle.loads(pickle.dumps(opts.load)).__self__ == opts


def test_cli_one_logit_model_and_conventions(tmp_path, photos, monkeypatch):
    monkeypatch.chdir(tmp_path)
    img = photos["coffee"][:40, :50]
    Image.fromarray(img).save("coffee.png")
    (tmp_path / "nets.py").write_text(
        "import numpy as np\nfrom torch import nn\n\n\n"
        "def one_logit(images):\n"
        "    return (8 * (images.astype(np.float64).mean(axis=(1, 2, 3)) / 255 - 0.5))[:, None]\n"
        "\n\nclass ChannelMeans(nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x.mean(dim=(2, 3))[:, :2] / 255\n\n\n"
        "means = ChannelMeans()\n"
    )
    runner = CliRunner()
    result = runner.invoke(app, ["score", "coffee.png", "-m", "nets.py:one_logit", "--logits",
                                 "--classes", "nsfw", "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)[0]["scores"]
    z = 8 * (img.astype(np.float64).mean() / 255 - 0.5)
    assert scores["nsfw"] == pytest.approx(sig(z), abs=1e-4)
    assert scores["not-nsfw"] == pytest.approx(1 - sig(z), abs=1e-4)
    result = runner.invoke(app, ["score", "coffee.png", "-m", "nets.py:means", "--channels",
                                 "bgr", "--scale", "255", "--classes", "b,g", "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)[0]["scores"]
    b, g = img.astype(np.float64).mean(axis=(0, 1))[[2, 1]] / 255
    assert scores["b"] == pytest.approx(b, abs=1e-4) and scores["g"] == pytest.approx(g, abs=1e-4)


def test_cli_fixed_batch_graph_with_mean_std_only(tmp_path, photos, monkeypatch):
    """The case that failed: a graph of fixed batch 1 and size 12, three images at the default
    batch size, only --mean/--std given."""
    monkeypatch.chdir(tmp_path)
    export(MeanNet(), torch.rand(1, 3, 12, 12), tmp_path / "fixed.onnx")
    names = ["coffee", "chelsea", "astronaut"]
    images = [photos[name][:60, :80] for name in names]
    for name, img in zip(names, images, strict=True):
        Image.fromarray(img).save(f"{name}.png")
    result = CliRunner().invoke(app, ["score", *(f"{n}.png" for n in names), "-m", "fixed.onnx",
                                      "--mean", "0.4,0.5,0.6", "--std", "0.2,0.3,0.25",
                                      "--logits", "--json"])
    assert result.exit_code == 0, result.output
    got = [[row["scores"]["0"], row["scores"]["1"]] for row in json.loads(result.stdout)]
    want = hand_probs(images, 12, (0.4, 0.5, 0.6), (0.2, 0.3, 0.25))
    np.testing.assert_allclose(got, want, atol=1e-4)
