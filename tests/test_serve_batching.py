"""Cross-job batching (explain.serve.batching): the occluded copies of several images share model
calls, oldest job first, images of one work size per call, and every map equals the library's
`occlusion_map` for the same image and options."""

from __future__ import annotations

import numpy as np

from explain.models import load
from explain.occlusion import occlusion_map, plan_occlusion
from explain.serve.batching import OcclusionRun, score_step


def counting_model(calls: list[int]):
    """A tiny black box without an input size (each image is scored at its own size): p(b) is
    the mean red of the top-left 6×6 pixels; ``calls`` gets each batch's size."""
    def score(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        p = batch[:, :6, :6, 0].reshape(len(batch), -1).mean(axis=1) / 255.0
        return np.stack([1.0 - p, p], axis=1)
    return load(score, class_names=["a", "b"])


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for h, w in ((20, 24), (16, 16), (20, 24), (20, 24))]


def test_runs_share_model_calls_and_give_the_librarys_maps():
    calls: list[int] = []
    clf = counting_model(calls)
    fills = ["gray", "black", "mean", "blur"]
    runs = [OcclusionRun(str(i), plan_occlusion(clf, img, box=8, stride=8, fill=fill,
                                                target="b"))
            for i, (img, fill) in enumerate(zip(images(), fills, strict=True))]
    assert [r.plan.n for r in runs] == [10, 5, 10, 10]
    stepped = []
    while batch := score_step(clf, runs, 16):
        stepped.append([r.key for r in batch])
    # one call holds job 0 and the head of job 2 (same size); job 1 (16×16) never shares a tensor
    assert stepped == [["0", "2"], ["1"], ["2", "3"]]
    assert calls == [16, 5, 14]
    for run, img, fill in zip(runs, images(), fills, strict=True):
        calls.clear()
        expected = occlusion_map(clf, img, box=8, stride=8, fill=fill, target="b",
                                 batch_size=16)
        got = run.plan.heatmap(run.probabilities(), 0.0, 16)
        np.testing.assert_allclose(got.values, expected.values, atol=1e-6)
        assert got.score == expected.score and got.params == expected.params


def test_without_other_jobs_a_run_scores_as_the_library_batches():
    calls: list[int] = []
    clf = counting_model(calls)
    run = OcclusionRun("only", plan_occlusion(clf, images()[0], box=8, stride=8, target="b"))
    while score_step(clf, [run], 4):
        pass
    assert calls == [4, 4, 2] and run.complete
    assert score_step(clf, [run], 4) == []
