"""The black-box engine (explain/perturbation): the scoring loop's batches, progress and
cancellation, several builders in one model call, the work-image plan, the window plan that
checks box and stride once, and the one home of model calls."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from explain import occlusion_map, sliding_window_map
from explain.errors import OptionError
from explain.models import Preprocess, load
from explain.models.base import model_view
from explain.occlusion import plan_occlusion
from explain.perturbation import (
    Batch,
    Buffers,
    Cancelled,
    Images,
    WindowPlan,
    at_size,
    build_parts,
    probabilities,
    scale_windows,
    score_all,
    score_parts,
    scored,
    work_image,
    work_size,
)
from explain.windows import window_grid


class Brightness(nn.Module):
    """p(bright) = the mean of the top-left quarter; p(other) = 1 − that."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        p = x[:, :, : h // 2, : w // 2].mean(dim=(1, 2, 3))
        return torch.stack([1 - p, p], dim=1)


def brightness(input_size=None):
    clf = load(Brightness(), "cpu", preprocess=Preprocess(input_size=input_size),
               class_names=["other", "bright"])
    clf.calls = []
    for name in ("predict", "predict_input"):  # the RGB and the model-input door
        setattr(clf, name, _counted(clf, getattr(clf, name)))
    return clf


def _counted(clf, call):
    def counted(batch):
        clf.calls.append(int(batch.shape[0]))
        return call(batch)

    return counted


def test_the_loop_batches_reports_and_keeps_order():
    clf = brightness()
    x = torch.rand(10, 3, 8, 8)
    seen = []
    out = list(scored(Batch(clf, x), 4, progress=lambda d, t: seen.append((d, t))))
    assert clf.calls == [4, 4, 2]
    assert [(lo, hi) for lo, hi, _ in out] == [(0, 4), (4, 8), (8, 10)]
    assert seen == [(4, 10), (8, 10), (10, 10)]
    expected = x[:, :, :4, :4].mean(dim=(1, 2, 3))
    assert torch.equal(score_all(Batch(clf, x), 4, 1), expected)
    assert score_all(Batch(clf, x), 3).shape == (10, 2)


def test_cancel_stops_before_the_next_model_call():
    clf = brightness()
    calls = iter([False, True])
    with pytest.raises(Cancelled):
        score_all(Batch(clf, torch.rand(10, 3, 8, 8)), 4, 1, cancel=lambda: next(calls))
    assert clf.calls == [4]


def test_images_are_batched_in_their_intake():
    clf = brightness()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (6, 6, 3), dtype=np.uint8) for _ in range(5)]
    got = score_all(Images(clf, images), 2, 1).numpy()
    want = [img[:3, :3].astype(np.float32).mean() / 255 for img in images]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert clf.calls == [2, 2, 1]


def test_several_jobs_in_one_model_call_score_as_each_alone():
    # the service's cross-job batches: two images' occluded copies in ONE call, same scores
    clf = brightness()
    rng = np.random.default_rng(1)
    plans = [plan_occlusion(clf, rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), box=4,
                            stride=4, target="bright") for _ in range(2)]
    alone = [score_all(p.copies, 100, 1) for p in plans]
    clf.calls.clear()
    parts = score_parts([(plans[0].copies, 3, plans[0].n), (plans[1].copies, 0, 5)])
    assert clf.calls == [plans[0].n - 3 + 5]
    assert torch.equal(parts[0][:, 1], alone[0][3:]) and torch.equal(parts[1][:, 1], alone[1][:5])
    with pytest.raises(ValueError, match="one kind"):
        score_parts([(plans[0].copies, 0, 1), (Batch(clf, torch.rand(1, 3, 12, 12)), 0, 1)])


@pytest.mark.parametrize("door", ["model input", "rgb"])
def test_a_shared_batch_is_written_in_place_and_equals_each_alone(door, monkeypatch):
    # build_parts writes each builder's rows into ONE batch (copies_into), no concatenation;
    # the batch is bit-equal to each builder's own copies, in the RGB and the model-input door
    clf = brightness()
    if door == "rgb":  # an input transform: windows cannot be hidden in the model input
        clf.input_transform = lambda batch: batch
    rng = np.random.default_rng(2)
    plans = [plan_occlusion(clf, rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), box=4,
                            stride=4, target="bright") for _ in range(3)]
    assert plans[0].copies.in_input == (door == "model input")
    parts = [(plans[0].copies, 2, plans[0].n), (plans[1].copies, 0, 4), (plans[2].copies, 1, 3)]
    alone = torch.cat([b.copies(lo, hi) for b, lo, hi in parts])
    built = []
    kind = type(plans[0].copies)
    monkeypatch.setattr(kind, "copies", lambda self, lo, hi: built.append((lo, hi)))
    batch = build_parts(parts)
    assert built == []  # no builder made a batch of its own to be concatenated
    assert batch.is_contiguous() and torch.equal(batch, alone)


def test_building_one_copy_leaves_the_image_untouched():
    # a batch of one occluded copy is a new tensor, not the model input it is built from
    clf = brightness()
    plan = plan_occlusion(clf, np.full((12, 12, 3), 200, np.uint8), box=4, stride=4,
                          target="bright")
    before = plan.copies.x_input.clone()
    one = plan.copies.copies(3, 4)
    assert torch.equal(plan.copies.x_input, before) and not torch.equal(one[0], before[0])
    assert torch.equal(plan.copies.copies(0, 1), before)  # row 0: the intact image


def test_buffers_lend_batches_again_once_given_back():
    # the service's worker builds each batch into a kept one (no fresh memory per batch); a
    # batch is lent again only after it is given back, and foreign tensors are never kept
    clf = brightness()
    rng = np.random.default_rng(3)
    plans = [plan_occlusion(clf, rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), box=4,
                            stride=4, target="bright") for _ in range(2)]
    parts = [(plans[0].copies, 0, 5), (plans[1].copies, 0, 6)]
    want = torch.cat([b.copies(lo, hi) for b, lo, hi in parts])
    buffers = Buffers(keep=2)
    first = build_parts(parts, buffers)
    second = build_parts(parts, buffers)  # the first is not given back: another one
    assert first.data_ptr() != second.data_ptr()
    assert torch.equal(first, want) and torch.equal(second, want)
    buffers.give(first)
    again = build_parts(parts[1:], buffers)  # fewer rows: a view of the kept one
    assert again.data_ptr() == first.data_ptr() and torch.equal(again, want[5:])
    foreign = torch.zeros_like(want)
    buffers.give(foreign)
    buffers.give(second)
    assert build_parts(parts, buffers).data_ptr() == second.data_ptr()


def test_probabilities_is_one_model_call():
    clf = brightness()
    x = torch.rand(3, 3, 8, 8)
    assert torch.equal(probabilities(clf, x)[:, 1], x[:, :, :4, :4].mean(dim=(1, 2, 3)))
    assert clf.calls == [3]


def test_the_work_image_plan():
    clf = load(Brightness(), "cpu", preprocess=Preprocess(input_size=(64, 64), crop=(48, 48)))
    rgb = np.random.default_rng(2).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    work = work_image(clf, rgb)
    assert work.shape == (300, 200) and work.size == (64, 64) == work_size(clf, (300, 200))
    assert work.x.shape == (1, 3, 64, 64)
    windows = window_grid((300, 200), 50, 30)
    np.testing.assert_array_equal(work.to_work(windows),
                                  scale_windows(windows, (300, 200), (64, 64)))
    assert work.view == model_view(clf, (300, 200)) == [38, 25, 263, 175]
    x = torch.rand(1, 3, 5, 7)
    assert at_size(x, (5, 7)) is x and at_size(x, (10, 14)).shape == (1, 3, 10, 14)
    free = load(Brightness(), "cpu", preprocess=Preprocess(input_size=None))
    assert work_size(free, (30, 20)) == (30, 20)


def test_the_window_plan_checks_box_and_stride_once(monkeypatch):
    plan = WindowPlan(0.25, 0.1875)
    np.testing.assert_array_equal(plan.grid((256, 300)), window_grid((256, 300), 0.25, 0.1875))
    assert plan.pixels((256, 300)) == ((64, 64), (48, 48))
    with pytest.raises(OptionError, match="stride"):
        WindowPlan(8, 16)
    with pytest.raises(OptionError, match="box"):
        WindowPlan(0, 4)
    import explain.windows as windows

    checks = []
    as_pair = windows.as_pair
    monkeypatch.setattr(windows, "as_pair", lambda v, n: checks.append(n) or as_pair(v, n))
    clf = brightness()
    image = np.zeros((16, 16, 3), np.uint8)
    occlusion_map(clf, image, box=8, stride=4, target="bright")
    assert checks == ["box", "stride"]
    checks.clear()
    sliding_window_map(clf, image, box=8, stride=4, target="bright")
    assert checks == ["box", "stride"]


def test_model_calls_have_one_home():
    # every black-box copy is scored by the one loop: `.predict(` in explain/ lives there
    root = Path(__file__).resolve().parents[1] / "explain"
    sites = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py")
             if p.relative_to(root).parts[0] != "models"  # the models' own, not the engine's
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\.predict\(", line)]
    assert len(sites) <= 3, sites


def test_a_jobs_window_plan_passed_down_gives_the_same_map():
    # a job (the audit) makes its WindowPlan once and passes it to every image's map: the
    # same map and params as box and stride; a box that is not the plan's is refused
    clf = brightness()
    image = np.random.default_rng(3).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    plan = WindowPlan(8, (4, 0.25))
    passed = occlusion_map(clf, image, windows=plan, target="bright")
    given = occlusion_map(clf, image, box=8, stride=(4, 0.25), target="bright")
    assert np.array_equal(passed.values, given.values)
    assert {k: v for k, v in passed.params.items() if k != "seconds"} == \
        {k: v for k, v in given.params.items() if k != "seconds"}
    assert occlusion_map(clf, image, box=8, windows=plan, target="bright").windows == \
        given.windows
    with pytest.raises(OptionError, match="box 6 differs from the window plan's 8"):
        occlusion_map(clf, image, box=6, windows=plan, target="bright")
