"""Sliding-window maps: crops scored alone equal scoring each crop separately; hand-computed
answers; crops resized to the classifier's input size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_occlusion import region_model

from explain import sliding_window_map
from explain.windows import window_grid


def test_hand_computed_map_at_box_size():
    # the model reads the top-left pixel of what it is given; with no input size, each crop is
    # fed at the box size, so a crop's score is the brightness of its own top-left pixel
    img = np.zeros((4, 6, 3), np.uint8)
    img[0, 3] = 255
    hm = sliding_window_map(region_model(0, 1, 0, 1), img, box=(2, 3), stride=(2, 3),
                            target="bright")
    assert hm.windows == 4 and hm.box == (2, 3) and hm.method == "sliding"
    expected = np.zeros((4, 6))
    expected[:2, 3:] = 1.0
    np.testing.assert_allclose(hm.values, expected, atol=1e-7)
    assert hm.score == pytest.approx(0.0)


def test_equals_scoring_each_crop_alone(nsfw_onnx, photos):
    img = photos["coffee"][:200, :300]
    hm = sliding_window_map(nsfw_onnx, img, box=(160, 200), stride=(40, 100), batch_size=3)
    assert hm.params["crop_size"] == [256, 256]
    windows = window_grid(img.shape[:2], (160, 200), (40, 100))
    alone = []
    for t, le, b, r in windows:
        crop = torch.from_numpy(np.ascontiguousarray(img[t:b, le:r])).permute(2, 0, 1)[None]
        alone.append(float(nsfw_onnx.predict(crop.float() / 255.0)[0, 1]))
    total, count = np.zeros(img.shape[:2]), np.zeros(img.shape[:2])
    for (t, le, b, r), p in zip(windows, alone, strict=True):
        total[t:b, le:r] += p
        count[t:b, le:r] += 1
    np.testing.assert_allclose(hm.values, total / count, atol=1e-5)
    assert 0.0 <= hm.values.min() and hm.values.max() <= 1.0


def test_progress_and_batches():
    clf = region_model(0, 1, 0, 1)
    done = []
    img = np.random.default_rng(0).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    hm = sliding_window_map(clf, img, box=4, stride=2, target="bright", batch_size=7,
                            progress=lambda d, n: done.append((d, n)))
    assert done[-1] == (hm.windows, hm.windows) and len(done) == -(-hm.windows // 7)
    # box 4 stride 2: a pixel's value is the mean brightness of the covering windows' corners
    assert hm.values[0, 0] == pytest.approx(img[0, 0].mean() / 255.0, abs=1e-6)
