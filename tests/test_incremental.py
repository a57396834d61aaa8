"""Incremental inference (explain.incremental): the same scores as full re-inference on
open_nsfw, a plain CNN and a ResNet-style net at odd sizes, every fill, windows at the borders;
the propagated rectangles contain every activation that really changes (brute force); the
automatic / required / never switch and its errors; the approximate threshold tau."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explain import occlusion_map
from explain.choices import FILLS
from explain.errors import OptionError
from explain.incremental import Incremental, network_for, pays, window_scores
from explain.incremental.regions import layout
from explain.models import Preprocess, load
from explain.models.adapters import CallableClassifier


class PlainCNN(nn.Module):
    """Convolutions of several kernels, strides, dilations and paddings, pools, eval BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 5, stride=2, padding=2), nn.BatchNorm2d(6), nn.LeakyReLU(0.1),
            nn.AvgPool2d(3, 1, padding=1), nn.Conv2d(6, 6, 3, dilation=2, padding=1),
            nn.MaxPool2d(3, 2, padding=1, ceil_mode=True), nn.Conv2d(6, 8, 1), nn.Sigmoid())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.body(x), 1).flatten(1))


class Block(nn.Module):
    """A residual block with a stride-2 1×1 projection shortcut (or none), ``out += shortcut``."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(cin, cout, 3, stride, 1)
        self.b = nn.Conv2d(cout, cout, 3, 1, 1)
        self.short = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.b(torch.relu(self.a(x)))
        out += x if self.short is None else self.short(x)
        return F.relu(out)


class SmallResNet(nn.Module):
    """open_nsfw's stem (conv, −inf pad, max-pool), residual stages, a concat, a global pool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 7, 2, 3)
        self.pad = nn.ConstantPad2d((0, 1, 0, 1), float("-inf"))
        self.pool = nn.MaxPool2d(3, 2)
        self.stages = nn.Sequential(Block(8, 8, 1), Block(8, 12, 2), Block(12, 16, 2))
        self.side = nn.Conv2d(16, 4, 3, padding=1)
        self.fc = nn.Linear(20, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.pad(F.relu(self.stem(x))))
        x = self.stages(F.pad(x, (1, 0, 0, 2)))
        x = torch.cat([x, self.side(x) * 0.5], dim=1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean(dim=(2, 3))
        return y if y.sum() > 0 else -y


class Doubled(nn.Conv2d):
    """A convolution subclass with its own forward: not a plain Conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


class Unusual(nn.Module):
    """A local start, then a Conv2d subclass, a hooked convolution and a global pool."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 3), Doubled(4, 4, 3, padding=1), \
            nn.Conv2d(4, 2, 3)
        self.c.register_forward_hook(lambda m, i, out: out * 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(self.a(x)))).amax(dim=(2, 3))


def tiny(module: nn.Module, **pre: object):
    torch.manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
        if isinstance(m, nn.Linear):  # a steep head: scores near 0.5, maps well above float noise
            m.weight.data *= 2
            m.bias.data.zero_()
    return load(module, "cpu", preprocess=Preprocess(**pre), logits=True)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: these many small ops wait on each other's threads on a busy box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (45, 39, 3), dtype=np.uint8)


def both(clf, image, **kw):
    exact = occlusion_map(clf, image, incremental=False, **kw)
    fast = occlusion_map(clf, image, incremental=True, **kw)
    assert fast.params["incremental"] is True and exact.params["incremental"] is False
    return exact, fast


@pytest.mark.parametrize("fill", FILLS)
@pytest.mark.parametrize("net", [PlainCNN, SmallResNet])
def test_equal_to_full_inference_on_tiny_nets_at_odd_sizes(net, fill, image):
    # stride 5 with a flush last window: windows on every border, of several sizes
    clf = tiny(net(), input_size=None, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25),
               channel_order="BGR")
    exact, fast = both(clf, image, box=(9, 7), stride=5, fill=fill, target=1, batch_size=7)
    assert fast.score == pytest.approx(exact.score, abs=1e-6)
    np.testing.assert_allclose(fast.values, exact.values, atol=1e-6)
    assert np.abs(exact.values).max() > 5e-5  # the map is not trivially zero


@pytest.mark.slow
def test_drill_down_runs_through_incremental_inference_with_the_same_answer(image,
                                                                            monkeypatch):
    """Drill-down and incremental inference combine: every pass of drill-down is scored by
    incremental inference and the drilled map equals the one from full re-inference."""
    import explain.occlusion

    scored = []

    def counted(*args, **kwargs):
        out = window_scores(*args, **kwargs)
        scored.append(len(out))
        return out

    monkeypatch.setattr(explain.occlusion, "window_scores", counted)
    clf = tiny(SmallResNet(), input_size=None)
    exact, fast = both(clf, image, box=6, stride=2, fill="gray", target=1, drill_down=0.3)
    # the coarse pass (with the intact image and the baseline) and each round went through
    # incremental inference
    assert len(scored) >= 2 and sum(scored) == fast.params["windows_evaluated"] + 2
    assert fast.params["drill_down"] == exact.params["drill_down"] == 0.3
    assert fast.params["windows_evaluated"] == exact.params["windows_evaluated"] < \
        exact.params["windows_total"]
    np.testing.assert_allclose(fast.values, exact.values, atol=1e-6)
    assert np.abs(exact.values).max() > 5e-5


def test_equal_with_a_centre_crop_and_windows_outside_it(image):
    clf = tiny(SmallResNet(), input_size=None, crop=(33, 29))
    exact, fast = both(clf, image, box=6, stride=4, fill="blur", target=0)
    np.testing.assert_allclose(fast.values, exact.values, atol=1e-6)
    assert np.abs(exact.values[:4]).max() == 0.0  # the rows outside the crop change nothing


def test_equal_to_full_inference_on_open_nsfw(nsfw_torch, photos):
    for fill in ("gray", "blur"):
        exact, fast = both(nsfw_torch, photos["astronaut"], box=160, stride=120, fill=fill)
        assert exact.windows == 16
        np.testing.assert_allclose(fast.values, exact.values, atol=1e-4)


def test_scores_equal_predict_for_every_window_at_the_borders(nsfw_torch, photos):
    x = torch.from_numpy(photos["coffee"][:256, :256]).permute(2, 0, 1)[None].float() / 255
    fill = torch.full((1, 3, 1, 1), 0.5)
    bounds = torch.tensor([[0, 0, 0, 0], [0, 0, 40, 30], [230, 0, 256, 256], [0, 240, 256, 256],
                           [0, 0, 16, 16], [100, 100, 101, 140], [17, 17, 239, 239]])
    p = window_scores(nsfw_torch, network_for(nsfw_torch, True), x, fill, bounds, 1, 4)
    rows, cols = torch.arange(256).view(1, -1, 1), torch.arange(256).view(1, 1, -1)
    b = bounds[:, :, None]
    hidden = (rows >= b[:, 0:1]) & (rows < b[:, 2:3]) & (cols >= b[:, 1:2]) & (cols < b[:, 3:4])
    q = nsfw_torch.predict(torch.where(hidden[:, None], fill, x))[:, 1]
    torch.testing.assert_close(p, q, atol=1e-4, rtol=0)
    assert p[4] == p[0]  # a window in the cropped-off corner: the intact score, not run


@pytest.mark.parametrize("net", [PlainCNN, SmallResNet])
def test_rectangles_contain_every_activation_that_changes(net):
    clf = tiny(net(), input_size=None)
    graph = network_for(clf, True)
    rng = np.random.default_rng(0)
    x = torch.rand(1, 3, 41, 35)
    fill = torch.rand(1, 3, 41, 35)
    intact = Incremental(graph, x, fill)
    for _ in range(12):
        y0, x0 = rng.integers(-5, 41), rng.integers(-5, 35)
        rect = np.array([[max(y0, 0), max(x0, 0), min(y0 + rng.integers(1, 12), 41),
                          min(x0 + rng.integers(1, 12), 35)]])
        if (rect[:, 2:] <= rect[:, :2]).any():
            continue
        hidden = x.clone()
        hidden[..., rect[0, 0]:rect[0, 2], rect[0, 1]:rect[0, 3]] = \
            fill[..., rect[0, 0]:rect[0, 2], rect[0, 1]:rect[0, 3]]
        occluded = Incremental(graph, hidden, fill)
        regions = layout(graph, intact.rules, intact.shapes, rect, most=float("inf"))
        checked = 0
        for name, region in regions.items():
            if region is None:
                continue
            changed = (occluded.base[name] != intact.base[name]).any(dim=1)[0]
            inside = torch.zeros_like(changed)
            y0, x0, y1, x1 = region.rect[0]
            inside[y0:y1, x0:x1] = True
            assert not (changed & ~inside).any(), (name, region.rect[0])
            checked += 1
        assert checked >= 10


def test_required_on_a_model_that_is_not_torch_is_a_clear_error(image):
    clf = CallableClassifier(lambda b: np.full((len(b), 2), 0.5), class_names=["a", "b"])
    with pytest.raises(OptionError, match="not a torch module"):
        occlusion_map(clf, image, box=16, stride=16, target=1, incremental=True)
    hm = occlusion_map(clf, image, box=16, stride=16, target=1)
    assert hm.params["incremental"] is False


def test_untraceable_module_falls_back_or_says_why(image):
    clf = tiny(Untraceable(), input_size=None)
    hm = occlusion_map(clf, image, box=16, stride=16, target=1)
    assert hm.params["incremental"] is False
    with pytest.raises(OptionError, match="torch.fx cannot trace"):
        occlusion_map(clf, image, box=16, stride=16, target=1, incremental=True)


def test_subclasses_and_hooks_run_whole_and_stay_exact(image):
    clf = tiny(Unusual(), input_size=None)
    exact, fast = both(clf, image, box=7, stride=5, target=1)
    np.testing.assert_allclose(fast.values, exact.values, atol=1e-6)
    rules = {s.name: type(s.rule).__name__ for s in network_for(clf, True).steps}
    # torch.fx traces into the subclass: its F.conv2d (weights as arguments) runs whole
    assert rules["a"] == "Window" and rules["conv2d"] == rules["c"] == "Full"


def test_a_network_that_starts_with_a_global_op_reuses_nothing(image):
    clf = tiny(nn.Sequential(nn.Flatten(), nn.Linear(45 * 39 * 3, 2)), input_size=None)
    clf.class_names = ["a", "b"]  # no probe: the linear layer takes this image size only
    assert occlusion_map(clf, image, box=16, stride=16, target=1).params["incremental"] is False
    with pytest.raises(OptionError, match="is not local"):
        occlusion_map(clf, image, box=16, stride=16, target=1, incremental=True)


def test_tau_is_approximate_checked_and_recorded(image):
    clf = tiny(SmallResNet(), input_size=None)
    exact = occlusion_map(clf, image, box=8, stride=4, target=1)
    same = occlusion_map(clf, image, box=8, stride=4, target=1, tau=1.0)
    near = occlusion_map(clf, image, box=8, stride=4, target=1, tau=0.3)
    np.testing.assert_allclose(same.values, exact.values, atol=1e-5)
    assert near.params["tau"] == 0.3 and exact.params["tau"] is None
    assert np.corrcoef(near.values.ravel(), exact.values.ravel())[0, 1] > 0.5
    for bad in (0, 1.5, "x"):
        with pytest.raises(OptionError, match="tau must be"):
            occlusion_map(clf, image, box=8, stride=4, tau=bad)
    with pytest.raises(OptionError, match="tau applies to incremental"):
        occlusion_map(clf, image, box=8, stride=4, tau=0.5, incremental=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_equal_on_cuda_without_tf32(image, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    clf = load(SmallResNet(), "cuda", preprocess=Preprocess(input_size=None), logits=True)
    exact, fast = both(clf, image, box=(9, 7), stride=5, fill="blur", target=1)
    np.testing.assert_allclose(fast.values, exact.values, atol=1e-6)


def test_automatic_choice_reuses_activations_only_where_it_pays(image):
    # image: 45x39; windows up to a quarter of the side reuse activations on the CPU, larger
    # ones run in full; CUDA never chooses it by itself (measured to lose there)
    clf = tiny(SmallResNet(), input_size=None)
    assert occlusion_map(clf, image, box=9, stride=5, target=1).params["incremental"] is True
    big = occlusion_map(clf, image, box=20, stride=10, target=1)
    assert big.params["incremental"] is False
    assert occlusion_map(clf, image, box=20, stride=10, target=1,
                         incremental=True).params["incremental"] is True
    assert pays(torch.device("cpu"), (64, 64), (256, 256))
    assert not pays(torch.device("cpu"), (65, 64), (256, 256))
    assert not pays(torch.device("cuda"), (16, 16), (256, 256))


def _engine_runs(monkeypatch):
    """Count the batch sizes IncrementalCopies hands to the cached network (one per batch)."""
    import explain.incremental

    runs = []
    score = explain.incremental.IncrementalCopies.score

    def counted(self, batch):
        runs.append(len(batch))
        return score(self, batch)

    monkeypatch.setattr(explain.incremental.IncrementalCopies, "score", counted)
    return runs


def test_incremental_inference_is_a_copy_builder_of_the_loop(monkeypatch):
    # batching, progress and cancellation are the engine loop's; the copies are the windows
    # that change the input, largest last; the intact image's window runs nothing
    from explain.incremental import IncrementalCopies
    from explain.perturbation import Cancelled, score_all, score_parts, scored

    clf = tiny(SmallResNet(), input_size=None)
    net = network_for(clf, True)
    x, fill = torch.rand(1, 3, 30, 26), torch.full((1, 3, 1, 1), 0.5)
    bounds = torch.tensor([[0, 0, 0, 0], [0, 0, 30, 26], [2, 3, 7, 9], [10, 4, 15, 10],
                           [20, 20, 30, 26], [0, 0, 4, 4], [5, 5, 9, 9]])
    runs = _engine_runs(monkeypatch)
    copies = IncrementalCopies(clf, net, x, fill, bounds)
    assert len(copies) == 6 and copies.rows.tolist() == [5, 6, 2, 3, 4, 1]
    seen = []
    got = score_all(copies, 4, 1, progress=lambda d, t: seen.append((d, t)))
    assert runs == [4, 2] and seen == [(4, 6), (6, 6)]
    p = window_scores(clf, net, x, fill, bounds, 1, 4)
    assert torch.equal(p[torch.from_numpy(copies.rows)], got) and p[0] == copies.intact[0, 1]
    runs.clear()
    calls = iter([False, True])
    with pytest.raises(Cancelled):
        list(scored(copies, 2, cancel=lambda: next(calls)))
    assert runs == [2]
    with pytest.raises(Cancelled):
        window_scores(clf, net, x, fill, bounds, 1, 4, cancel=lambda: True)
    other = IncrementalCopies(clf, net, torch.rand(1, 3, 30, 26), fill, bounds)
    with pytest.raises(ValueError, match="own image"):
        score_parts([(copies, 0, 2), (other, 0, 2)])


def test_progress_and_a_stop_behave_as_for_full_inference(image, monkeypatch):
    # the same callback: after each batch, counting windows, ending at the total; raising
    # from it (the service's DELETE) stops the map before the next batch
    clf = tiny(SmallResNet(), input_size=None)
    runs = _engine_runs(monkeypatch)
    seen = {}
    for incremental in (False, True):
        seen[incremental] = []
        occlusion_map(clf, image, box=9, stride=5, target=1, batch_size=16,
                      incremental=incremental,
                      progress=lambda d, t, k=incremental: seen[k].append((d, t)))
    windows = seen[False][-1][1]
    assert seen[True][-1] == seen[False][-1] == (windows, windows) and windows == 63
    # 65 rows (the intact image, the baseline, the windows) in batches of 16; the intact
    # image's row runs nothing in incremental inference: 64 rows, 4 batches
    assert len(seen[False]) == 5 and len(seen[True]) == len(runs) == 4
    assert all(a[0] < b[0] and a[1] == b[1]
               for a, b in zip(seen[True], seen[True][1:], strict=False))

    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    runs.clear()
    with pytest.raises(Stop):
        occlusion_map(clf, image, box=9, stride=5, target=1, batch_size=16, incremental=True,
                      progress=stop)
    assert runs == [16]


def test_clip_frames_take_incremental_inference_where_a_still_would(image, monkeypatch):
    # frame_reuse scores each frame through the same builder, under the same incremental=None
    # rule (explain.incremental.pays): each frame's map is the still's, bit for bit
    from explain.frame_reuse import occlusion_maps

    clf = tiny(SmallResNet(), input_size=None)
    runs = _engine_runs(monkeypatch)
    frames = [image, np.ascontiguousarray(image[::-1])]
    maps = occlusion_maps(clf, frames, box=9, stride=5, target=1, reuse="none")
    assert len(runs) > 0 and all(m.params["incremental"] is True for m in maps)
    for frame, got in zip(frames, maps, strict=True):
        still = occlusion_map(clf, frame, box=9, stride=5, target=1)
        assert still.params["incremental"] is True
        assert np.array_equal(got.values, still.values) and got.score == still.score
    runs.clear()
    big = occlusion_maps(clf, frames, box=20, stride=10, target=1, reuse="none")
    assert runs == [] and big[0].params["incremental"] is False  # it does not pay: full
