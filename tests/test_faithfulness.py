"""Deletion/insertion AUC on a model with a known answer, and on the real open_nsfw."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from explain import Heatmap, faithfulness
from explain.errors import OptionError
from explain.models import Preprocess, load
from explain.models.base import resize

SIDE, STEPS = 8, 4  # 64 pixels, 16 per step: the region below is exactly one step


class RegionMean(nn.Module):
    """p(target) = mean brightness of the top-left 4×4 region; the rest of the image is ignored."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, :, :4, :4].mean(dim=(1, 2, 3))
        return torch.stack([1 - s, s], dim=1)


class Counting:
    """A classifier wrapper that counts predict calls and their batch sizes."""

    def __init__(self, clf):
        self.clf, self.batches = clf, []
        self.class_names, self.device, self.input_size = clf.class_names, clf.device, None

    def predict(self, batch):
        self.batches.append(batch.shape[0])
        return self.clf.predict(batch)


@pytest.fixture(scope="module")
def region_model():
    return load(RegionMean(), "cpu", preprocess=Preprocess(input_size=None),
                class_names=["other", "target"])


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    img = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    img[:4, :4] = 255
    return img


def region_map(inside: float, outside: float) -> np.ndarray:
    m = np.full((SIDE, SIDE), outside, dtype=np.float32)
    m[:4, :4] = inside
    return m


def blur_in_region(image: np.ndarray) -> np.ndarray:
    """The insertion canvas over the region, computed independently: scipy, σ 1 px, edges
    replicated."""
    blur = ndimage.gaussian_filter(image[:, :, 0] / 255.0, sigma=1.0, mode="nearest", truncate=3.0)
    return blur[:4, :4]


def test_ideal_map_exact_values(region_model, image):
    r = faithfulness(region_model, image, region_map(1, 0), steps=STEPS, target="target",
                     fill="black")
    b = blur_in_region(image).mean()
    assert r["fractions"] == [0, 0.25, 0.5, 0.75, 1]
    assert r["deletion"] == pytest.approx([1, 0, 0, 0, 0], abs=1e-6)
    assert r["insertion"] == pytest.approx([b, 1, 1, 1, 1], abs=1e-6)
    assert r["deletion_auc"] == pytest.approx(0.125, abs=1e-6)
    assert r["insertion_auc"] == pytest.approx(0.125 * b + 0.875, abs=1e-6)
    assert r["insertion_minus_deletion"] == pytest.approx(0.125 * b + 0.75, abs=1e-6)
    assert r["score"] == pytest.approx(1.0, abs=1e-6) and r["target"] == "target"
    assert 0.5 < b < 0.9  # the canvas really is blurred


def test_worst_map_exact_values(region_model, image):
    r = faithfulness(region_model, image, Heatmap(region_map(0, 1), "inverse", "target"),
                     steps=STEPS, target=1, fill="black")
    b = blur_in_region(image).mean()
    assert r["deletion"] == pytest.approx([1, 1, 1, 1, 0], abs=1e-6)
    assert r["insertion"] == pytest.approx([b, b, b, b, 1], abs=1e-6)
    assert r["deletion_auc"] == pytest.approx(0.875, abs=1e-6)
    assert r["insertion_auc"] == pytest.approx(0.875 * b + 0.125, abs=1e-6)


def test_random_map_is_worse_and_counted_by_hand(region_model, image):
    rand = np.random.default_rng(3).random((SIDE, SIDE)).astype(np.float32)
    ideal = faithfulness(region_model, image, region_map(1, 0), steps=STEPS, target="target",
                         fill="black")
    r = faithfulness(region_model, image, rand, steps=STEPS, target="target", fill="black")
    order = np.argsort(-rand.ravel(), kind="stable")
    inside = np.zeros((SIDE, SIDE), bool)
    inside[:4, :4] = True
    blur = np.zeros((SIDE, SIDE))
    blur[:4, :4] = blur_in_region(image)
    deletion, insertion = [], []
    for k in range(STEPS + 1):
        top = np.zeros(SIDE * SIDE, bool)
        top[order[: 16 * k]] = True
        top = top.reshape(SIDE, SIDE)
        deletion.append(1 - (top & inside).sum() / 16)
        insertion.append(((top & inside).sum() + blur[~top & inside].sum()) / 16)
    assert r["deletion"] == pytest.approx(deletion, abs=1e-6)
    assert r["insertion"] == pytest.approx(insertion, abs=1e-6)
    assert ideal["deletion_auc"] < r["deletion_auc"]
    assert ideal["insertion_auc"] > r["insertion_auc"]


@pytest.mark.parametrize(("fill", "value"), [("gray", 0.5), ("black", 0.0), ("mean", 0.25)])
def test_deletion_fills(region_model, image, fill, value):
    r = faithfulness(region_model, image, region_map(1, 0), steps=STEPS, target="target",
                     fill=fill)
    assert r["deletion"] == pytest.approx([1, value, value, value, value], abs=3e-3)
    assert r["fill"] == fill


def test_blur_fill_deletes_to_the_canvas(region_model, image):
    r = faithfulness(region_model, image, region_map(1, 0), steps=STEPS, target="target")
    b = blur_in_region(image).mean()
    assert r["fill"] == "blur"
    assert r["deletion"] == pytest.approx([1, b, b, b, b], abs=1e-6)


def test_batching_same_numbers_fewer_calls(region_model, image):
    rand = np.random.default_rng(0).random((SIDE, SIDE))
    counted = Counting(region_model)
    whole = faithfulness(counted, image, rand, steps=STEPS, target="target")
    assert counted.batches == [2 * (STEPS + 1)]
    counted.batches.clear()
    split = faithfulness(counted, image, rand, steps=STEPS, target="target", batch_size=3)
    assert counted.batches == [3, 3, 3, 1]
    assert split["deletion"] == pytest.approx(whole["deletion"], abs=1e-7)
    assert split["insertion"] == pytest.approx(whole["insertion"], abs=1e-7)


def test_steps_not_dividing_pixels_uses_true_fractions(region_model, image):
    r = faithfulness(region_model, image, region_map(1, 0), steps=3, target="target",
                     fill="black")
    assert r["fractions"] == pytest.approx([0, 21 / 64, 43 / 64, 1])
    assert r["deletion"] == pytest.approx([1, 0, 0, 0], abs=1e-6)
    assert r["deletion_auc"] == pytest.approx(21 / 64 / 2, abs=1e-6)


def test_nan_heatmap_values_rank_last(region_model, image):
    m = region_map(1, 0.5)
    m[4:, :] = np.nan
    r = faithfulness(region_model, image, m, steps=STEPS, target="target", fill="black")
    assert r["deletion"] == pytest.approx([1, 0, 0, 0, 0], abs=1e-6)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps": 0}, "steps"), ({"fill": "pink"}, "fill"), ({"batch_size": 0}, "batch_size"),
])
def test_bad_options(region_model, image, kwargs, message):
    with pytest.raises(OptionError, match=message):
        faithfulness(region_model, image, region_map(1, 0), target="target", **kwargs)


def test_heatmap_of_another_size_is_refused(region_model, image):
    with pytest.raises(OptionError, match="coordinates"):
        faithfulness(region_model, image, np.zeros((4, 4)), target="target")


def test_real_open_nsfw_end_points(nsfw_onnx, photos):
    img = photos["chelsea"][::2, ::2]
    heat = np.random.default_rng(1).random(img.shape[:2])
    r = faithfulness(nsfw_onnx, img, heat, steps=5, fill="gray")
    x = resize(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255, (256, 256))
    p = nsfw_onnx.predict(torch.cat([x, torch.full_like(x, 0.5)]))[:, 1].tolist()
    assert r["size"] == [256, 256]
    assert r["deletion"][0] == pytest.approx(p[0], abs=1e-5)
    assert r["insertion"][-1] == pytest.approx(p[0], abs=1e-5)
    assert r["deletion"][-1] == pytest.approx(p[1], abs=1e-5)
    assert all(0 <= v <= 1 for v in r["deletion"] + r["insertion"])


@pytest.mark.parametrize(("value", "saturated", "flat"), [
    (0, True, True),      # p = 0 whatever is deleted or inserted
    (255, True, True),    # p = 1, and the blur fill / canvas of a white image is white
    (128, False, True),   # p = 0.502 throughout: nothing moves, but nothing is pinned either
])
def test_saturated_and_flat_flags(region_model, value, saturated, flat):
    img = np.full((SIDE, SIDE, 3), value, dtype=np.uint8)
    r = faithfulness(region_model, img, region_map(1, 0), steps=STEPS, target="target")
    assert (r["saturated"], r["flat"]) == (saturated, flat)


def test_a_curve_that_moves_is_neither_saturated_nor_flat(region_model, image):
    r = faithfulness(region_model, image, region_map(1, 0), steps=STEPS, target="target",
                     fill="black")
    assert (r["saturated"], r["flat"]) == (False, False)
