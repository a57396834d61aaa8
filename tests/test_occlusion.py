"""Occlusion maps: hand-computed answers, captum equality (tiny CNN and open_nsfw), fills,
pre-resizing to the classifier's input size, bounded batches over 10,000 windows."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from captum.attr import Occlusion
from torch import nn

from explain import Heatmap, occlusion_map
from explain.errors import OptionError, TargetError
from explain.models import Preprocess, load


class RegionBrightness(nn.Module):
    """p(bright) = mean brightness of rows [r0, r1) × cols [c0, c1); p(other) = 1 − that."""

    def __init__(self, r0: int, r1: int, c0: int, c1: int) -> None:
        super().__init__()
        self.region = (r0, r1, c0, c1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r0, r1, c0, c1 = self.region
        p = x[:, :, r0:r1, c0:c1].mean(dim=(1, 2, 3))
        return torch.stack([1 - p, p], dim=1)


def region_model(r0, r1, c0, c1, input_size=None):
    return load(RegionBrightness(r0, r1, c0, c1), "cpu",
                preprocess=Preprocess(input_size=input_size), class_names=["other", "bright"])


WHITE = np.full((4, 4, 3), 255, dtype=np.uint8)


def test_hand_computed_map():
    # score = brightness of the 2x2 top-left block; box 2 stride 1 on a white 4x4 image: a window
    # overlapping the block by k pixels drops the score by 0.5 * k / 4. Per pixel, the mean over
    # covering windows factorises into a_i * a_j / 8 with a = (2, 1.5, 0.5, 0).
    a = np.array([2.0, 1.5, 0.5, 0.0])
    hm = occlusion_map(region_model(0, 2, 0, 2), WHITE, box=2, stride=1, target="bright")
    assert isinstance(hm, Heatmap) and hm.values.dtype == np.float32
    assert hm.score == pytest.approx(1.0)
    assert hm.windows == 9 and hm.box == (2, 2) and hm.stride == (1, 1)
    assert hm.target == "bright" and hm.method == "occlusion"
    np.testing.assert_allclose(hm.values, np.outer(a, a) / 8, atol=1e-7)
    assert hm.values[0, 0] == pytest.approx(0.5)
    other = occlusion_map(region_model(0, 2, 0, 2), WHITE, box=2, stride=1, target=0)
    np.testing.assert_allclose(other.values, -hm.values, atol=1e-7)


@pytest.mark.parametrize("fill,expected", [("gray", 0.5), ("black", 1.0), ("mean", 0.0),
                                           ("blur", 0.0)])
def test_fills_on_a_white_image(fill, expected):
    hm = occlusion_map(region_model(0, 2, 0, 2), np.full((6, 6, 3), 255, np.uint8), box=2,
                       stride=2, fill=fill, target="bright")
    assert hm.values[0, 0] == pytest.approx(expected, abs=1e-6)
    assert np.abs(hm.values[2:, :]).max() < 1e-6 and hm.params["fill"] == fill


def test_mean_and_blur_fill_use_the_image():
    img = np.zeros((8, 8, 3), np.uint8)
    img[:, 4:] = 255  # mean colour 0.5; the block [0,2)x[0,2) is black
    mean = occlusion_map(region_model(0, 2, 0, 2), img, box=2, stride=2, fill="mean",
                         target="bright")
    assert mean.values[0, 0] == pytest.approx(-0.5, abs=1e-6)
    blur = occlusion_map(region_model(0, 2, 0, 2), img, box=2, stride=2, fill="blur",
                         target="bright")
    assert -0.5 < blur.values[0, 0] < 0.0


def test_input_size_resizes_once_and_maps_back_to_original_coordinates():
    # the model reads work pixel (0, 0) of a 4x4 input; an 8x8 image, box 2 stride 2 in
    # original pixels is box 1 stride 1 at the model's size: only the top-left window matters
    seen = []
    clf = region_model(0, 1, 0, 1, input_size=(4, 4))
    clf.module.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape)))
    hm = occlusion_map(clf, np.full((8, 8, 3), 255, np.uint8), box=2, stride=2, target="bright")
    assert seen and {s[-2:] for s in seen} == {(4, 4)}
    assert hm.values.shape == (8, 8) and hm.params["work_size"] == [4, 4]
    expected = np.zeros((8, 8))
    expected[:2, :2] = 0.5
    np.testing.assert_allclose(hm.values, expected, atol=1e-6)


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(4, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(128, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x) * 4.0, dim=1)


def captum_map(forward, img: np.ndarray, box: int, stride: int, target: int,
               baselines: float = 0.5) -> np.ndarray:
    x = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).float() / 255.0
    attr = Occlusion(forward).attribute(x, sliding_window_shapes=(3, box, box),
                                        strides=(3, stride, stride), baselines=baselines,
                                        target=target, perturbations_per_eval=8)
    return (attr.sum(1)[0] / 3).double().numpy()


@pytest.mark.parametrize("box,stride,fill,base", [(4, 2, "gray", 0.5), (5, 3, "black", 0.0),
                                                  (5, 5, "gray", 0.5)])
def test_equals_captum_on_a_tiny_cnn(box, stride, fill, base):
    torch.manual_seed(1)
    module = TinyCNN().eval()
    clf = load(module, "cpu", preprocess=Preprocess(input_size=None),
               class_names=["a", "b", "c"])
    img = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    ours = occlusion_map(clf, img, box=box, stride=stride, fill=fill, target="b", batch_size=5)
    ref = captum_map(module, img, box, stride, target=1, baselines=base)
    assert np.abs(ref).max() > 1e-2
    np.testing.assert_allclose(ours.values, ref, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def astronaut256(photos) -> np.ndarray:
    return cv2.resize(photos["astronaut"], (256, 256), interpolation=cv2.INTER_AREA)


def test_equals_captum_on_open_nsfw(nsfw_torch, astronaut256):
    # a 256x256 image is already open_nsfw's input size: pre-resizing is the identity
    ours = occlusion_map(nsfw_torch, astronaut256, box=64, stride=64, target="nsfw")
    ref = captum_map(nsfw_torch.predict, astronaut256, 64, 64, target=1)
    assert ours.windows == 16 and np.abs(ref).max() > 1e-4
    np.testing.assert_allclose(ours.values, ref, atol=1e-5, rtol=0)
    direct = nsfw_torch.predict(torch.from_numpy(astronaut256).permute(2, 0, 1)[None] / 255.0)
    assert ours.score == pytest.approx(float(direct[0, 1]), abs=1e-5)


def test_onnx_and_torch_backends_agree(nsfw_torch, nsfw_onnx, astronaut256):
    a = occlusion_map(nsfw_torch, astronaut256, box=128, stride=128)
    b = occlusion_map(nsfw_onnx, astronaut256, box=128, stride=128)
    np.testing.assert_allclose(a.values, b.values, atol=1e-4)


def test_10000_windows_in_batches_bounded_by_batch_size():
    # score = mean brightness of the whole 100x100 image; box 1 occludes one pixel, so the map
    # is exactly (brightness - 0.5) / 10000 per pixel
    img = np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    clf = region_model(0, 100, 0, 100)
    batches = []
    clf.module.register_forward_pre_hook(lambda _, args: batches.append(args[0].shape[0]))
    done = []
    hm = occlusion_map(clf, img, box=1, stride=1, target="bright", batch_size=64,
                       progress=lambda d, n: done.append((d, n)))
    # the windows, the intact image and the baseline
    assert hm.windows == 10_000 and max(batches) == 64 and sum(batches) == 10_002
    assert done[-1] == (10_000, 10_000) and len(done) == len(batches)
    expected = (img.astype(np.float64).mean(2) / 255.0 - 0.5) / 10_000
    np.testing.assert_allclose(hm.values, expected, atol=3e-7)  # float32 scores near 0.5


def test_path_input_and_bad_options(tmp_path):
    path = tmp_path / "white.png"
    cv2.imwrite(str(path), np.full((8, 8, 3), 255, np.uint8))
    clf = region_model(0, 2, 0, 2)
    assert occlusion_map(clf, path, box=2, stride=2, target="bright").values[0, 0] > 0.4
    with pytest.raises(OptionError, match="fill"):
        occlusion_map(clf, WHITE, box=2, stride=1, fill="pink", target="bright")
    with pytest.raises(TargetError):
        occlusion_map(clf, WHITE, box=2, stride=1, target="nsfw")
    with pytest.raises(OptionError, match="batch_size"):
        occlusion_map(clf, WHITE, box=2, stride=1, target="bright", batch_size=0)


def _generic(classifier):
    """``classifier`` seen as a black box: only ``predict``, so copies are masked RGB images."""
    class Box:
        class_names = classifier.class_names
        device = classifier.device
        input_size = classifier.input_size

        def predict(self, batch):
            return classifier.predict(batch)

    return Box()


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fill", ["gray", "black", "mean", "blur"])
def test_copies_in_the_model_input_equal_masked_rgb_copies(fill, device):
    # open_nsfw's preprocessing (resize to 256, centre crop 224, BGR, ×255 − mean): the copies
    # built in the model's input must score exactly as the filled RGB copies through predict,
    # windows over the crop's border and outside it included
    from explain.models.base import pixelwise_input
    from explain.occlusion import OccludedCopies

    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)
    for name in ("open-nsfw", "open-nsfw:onnx"):
        clf = load(name, device)
        assert pixelwise_input(clf, (256, 256)) and not pixelwise_input(clf, (300, 260))
        fast = occlusion_map(clf, img, box=40, stride=24, fill=fill, incremental=False)
        slow = occlusion_map(_generic(clf), img, box=40, stride=24, fill=fill)
        assert fast.score == pytest.approx(slow.score, abs=1e-6)
        np.testing.assert_allclose(fast.values, slow.values, atol=1e-6)
    clf = load("open-nsfw", device)  # the one that runs on the GPU too
    x = torch.rand(1, 3, 256, 256, device=clf.device)
    gray = torch.full((1, 3, 1, 1), 0.5, device=clf.device)
    copies = OccludedCopies(clf, x, gray)
    bounds = torch.tensor([[0, 0, 0, 0], [0, 0, 16, 16], [10, 20, 60, 250], [240, 0, 256, 256]])
    built = copies.build(bounds)
    rgb = OccludedCopies(_generic(clf), x, gray).build(bounds)
    np.testing.assert_array_equal(built.cpu().numpy(), clf.model_input(rgb).cpu().numpy())
    assert torch.equal(built[0], built[3])  # the last window misses the 224 crop: intact
