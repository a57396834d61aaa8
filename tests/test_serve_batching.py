"""The service's engine without HTTP (no serve extra needed): cross-job batching
(explain.serve.batching) — the occluded copies of several images share model calls, oldest job
first, images of one work size per call, every map equal to the library's `occlusion_map` — and
a worker thread running the other methods through the registry."""

from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from explain.choices import FAST_DRILL_DOWN
from explain.grad_cam import gradcam
from explain.methods import Models
from explain.models import load
from explain.occlusion import occlusion_map, plan_occlusion
from explain.serve.batching import OcclusionRun, score_step
from explain.serve.jobs import JobStore
from explain.serve.worker import INPUT, Worker
from explain.sliding import sliding_window_map


def counting_model(calls: list[int]):
    """A tiny black box without an input size (each image is scored at its own size): p(b) is
    the mean red of the top-left 6×6 pixels; ``calls`` gets each batch's size."""
    def score(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        p = batch[:, :6, :6, 0].reshape(len(batch), -1).mean(axis=1) / 255.0
        return np.stack([1.0 - p, p], axis=1)
    return load(score, class_names=["a", "b"])


def drain(worker: Worker, store: JobStore) -> None:
    """Start ``worker`` and stop it once the store has no job queued or running."""
    worker.start()
    try:
        while store.pending():
            worker.wake.wait(0.05)
    finally:
        worker.stop()
        worker.join()


def queue(store: JobStore, pictures: list[np.ndarray]) -> list[str]:
    """Occlusion jobs (box = stride = 8, gray, target b) of ``pictures`` queued in ``store``,
    their uploads written as PNG; their ids."""
    ids = []
    for picture in pictures:
        ids.append(store.new_id())
        store.folder(ids[-1]).mkdir()
        Image.fromarray(picture).save(store.folder(ids[-1]) / INPUT, format="PNG")
        store.add(ids[-1], "", "occlusion", {"box": 8, "stride": 8, "fill": "gray",
                                            "target": "b"})
    return ids


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
    # each: the intact image, the baseline (the whole image filled) and its windows
    assert [r.plan.n for r in runs] == [11, 6, 11, 11]
    stepped = []
    while batch := score_step(clf, runs, 16):
        stepped.append([r.key for r in batch])
    # one call holds job 0 and the head of job 2 (same size); job 1 (16×16) never shares a tensor
    assert stepped == [["0", "2"], ["1"], ["2", "3"], ["3"]]
    assert calls == [16, 6, 16, 1]
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
    assert calls == [4, 4, 3] and run.complete
    assert score_step(clf, [run], 4) == []


def test_drill_down_runs_share_batches_and_give_the_librarys_drilled_maps():
    """``fast`` (drill-down) runs join the shared batches, a level at a time, beside plain runs
    and each other: every copy is scored once, in fewer model calls than run alone, and each
    map is bit-equal to ``occlusion_map(..., drill_down=...)`` (params and score included)."""
    calls: list[int] = []
    clf = counting_model(calls)
    rng = np.random.default_rng(3)
    pictures = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    asked = [("gray", FAST_DRILL_DOWN), ("black", None), ("mean", 0.5)]
    runs = [OcclusionRun(str(i), plan_occlusion(clf, img, box=8, stride=3, fill=fill,
                                                target="b"), drill)
            for i, (img, (fill, drill)) in enumerate(zip(pictures, asked, strict=True))]
    shared = []
    while batch := score_step(clf, runs, 16):
        shared.append({r.key for r in batch})
    assert all(r.complete for r in runs)
    assert any(len(keys) > 1 for keys in shared)
    assert {"0", "1", "2"} <= set().union(*(k for k in shared if len(k) > 1))
    shared_calls, copies = len(calls), sum(calls)
    alone = 0
    evaluated = 0
    for run, img, (fill, drill) in zip(runs, pictures, asked, strict=True):
        calls.clear()
        expected = occlusion_map(clf, img, box=8, stride=3, fill=fill, target="b",
                                 batch_size=16, drill_down=drill)
        alone += len(calls)
        got = run.heatmap(0.0, 16)
        np.testing.assert_array_equal(got.values, expected.values)
        assert got.score == expected.score and got.params == expected.params
        assert run.n == sum(calls) == expected.params["windows_evaluated"] + 2
        evaluated += expected.params["windows_evaluated"] + 2
    assert runs[0].heatmap(0.0, 16).params["windows_evaluated"] < runs[0].plan.n - 2
    assert copies == evaluated and shared_calls < alone


def test_a_fast_job_shares_the_workers_batches(tmp_path, monkeypatch):
    """In the worker, a ``fast`` occlusion job is held beside a plain one and their copies share
    model batches (built on a preparation thread, scored on the model's); its drill-down levels
    are planned on a preparation thread too; its map is bit-equal to the library's drill-down
    map and its progress ends complete."""
    import explain.serve.worker as worker_module

    batches: list[set[str]] = []
    real = worker_module.build

    def spy(parts, *rest):
        batches.append({r.key for r, _, _ in parts})
        return real(parts, *rest)

    monkeypatch.setattr(worker_module, "build", spy)
    planners: list[str] = []
    plan_level = OcclusionRun.plan_level

    def planned(run):
        planners.append(threading.current_thread().name)
        return plan_level(run)

    monkeypatch.setattr(OcclusionRun, "plan_level", planned)
    calls: list[int] = []
    clf = counting_model(calls)
    rng = np.random.default_rng(4)
    pictures = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(2)]
    store = JobStore(tmp_path)
    ids = []
    for picture, fast in zip(pictures, (True, False), strict=True):
        ids.append(store.new_id())
        store.folder(ids[-1]).mkdir()
        Image.fromarray(picture).save(store.folder(ids[-1]) / INPUT, format="PNG")
        store.add(ids[-1], "", "occlusion", {"box": 8, "stride": 3, "fill": "gray",
                                            "target": "b", "fast": fast})
    worker = Worker(store, Models(clf, None), threading.Event(), batch_size=16,
                    max_pixels=10**6, prepare=2, name="model-thread")
    drain(worker, store)
    assert set(ids) in batches
    assert planners and all(name.startswith("model-thread-prepare") for name in planners)
    for job_id, picture, drill in zip(ids, pictures, (FAST_DRILL_DOWN, None), strict=True):
        job = store.get(job_id)
        expected = occlusion_map(clf, picture, box=8, stride=3, target="b", batch_size=16,
                                 drill_down=drill)
        assert job.status == "done" and job.done == job.total, job
        np.testing.assert_array_equal(np.load(store.folder(job_id) / "heatmap.npy"),
                                      expected.values)
        assert job.score == expected.score
        saved = json.loads((store.folder(job_id) / "heatmap.json").read_text())["params"]
        assert saved["drill_down"] == drill
        assert saved["windows_evaluated"] == expected.params["windows_evaluated"]


def test_a_fast_job_the_model_refuses_fails_alone_in_shared_batches(tmp_path, monkeypatch):
    """A ``fast`` job whose copies the model refuses (an all-black image) shares a batch with a
    plain job; the batch is split, the fast job fails with the model's reason and the plain one
    finishes with the library's map."""
    import explain.serve.worker as worker_module

    batches: list[set[str]] = []
    real = worker_module.build
    monkeypatch.setattr(worker_module, "build",
                        lambda parts, *rest: batches.append({r.key for r, _, _ in parts})
                        or real(parts, *rest))

    def picky(batch: np.ndarray) -> np.ndarray:
        if (batch.reshape(len(batch), -1).max(axis=1) == 0).any():
            raise ValueError("refuses black images")
        p = batch[:, :6, :6, 0].reshape(len(batch), -1).mean(axis=1) / 255.0
        return np.stack([1.0 - p, p], axis=1)

    clf = load(picky, class_names=["a", "b"])
    store = JobStore(tmp_path)
    plain = np.random.default_rng(5).integers(1, 256, (40, 48, 3), dtype=np.uint8)
    ids = []
    for picture, fast in ((plain, False), (np.zeros((40, 48, 3), np.uint8), True)):
        ids.append(store.new_id())
        store.folder(ids[-1]).mkdir()
        Image.fromarray(picture).save(store.folder(ids[-1]) / INPUT, format="PNG")
        store.add(ids[-1], "", "occlusion", {"box": 8, "stride": 3, "fill": "gray",
                                            "target": "b", "fast": fast})
    worker = Worker(store, Models(clf, None), threading.Event(), batch_size=16,
                    max_pixels=10**6, tick_s=0, prepare=0)
    worker._claim()
    while worker._active:
        worker._step()
    worker._tick()
    plain_job, fast_job = (store.get(i) for i in ids)
    assert set(ids) in batches  # the plain job's tail and the fast job's head
    assert fast_job.status == "failed" and "refuses black images" in fast_job.error
    expected = occlusion_map(clf, plain, box=8, stride=3, target="b")
    assert plain_job.status == "done"
    np.testing.assert_array_equal(np.load(store.folder(ids[0]) / "heatmap.npy"), expected.values)


def test_a_deleted_fast_job_stops_between_its_levels(tmp_path, monkeypatch):
    """A ``fast`` job deleted while it is held is dropped after the batch in flight, between
    two ticks of the table too (the worker's read of the jobs gone): at most the batch already
    built holds its copies, no later level is planned or scored, nothing is written."""
    import explain.serve.worker as worker_module

    batches: list[set[str]] = []
    real = worker_module.build
    monkeypatch.setattr(worker_module, "build",
                        lambda parts, *rest: batches.append({r.key for r, _, _ in parts})
                        or real(parts, *rest))
    clf = counting_model([])
    store = JobStore(tmp_path)
    job_id = store.new_id()
    store.folder(job_id).mkdir()
    picture = np.random.default_rng(6).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(picture).save(store.folder(job_id) / INPUT, format="PNG")
    store.add(job_id, "", "occlusion", {"box": 8, "stride": 3, "fill": "gray", "target": "b",
                                        "fast": True})
    worker = Worker(store, Models(clf, None), threading.Event(), batch_size=4,
                    max_pixels=10**6, tick_s=3600, prepare=0)
    worker._claim()
    worker._step()
    run = worker._active[0].run
    first_level = run.n
    assert store.delete(job_id, "")
    worker._step()  # scores the batch built meanwhile; its tick finds the job gone
    built = len(batches)
    while worker._active:
        worker._step()
    assert len(batches) == built and run.dropped and run.n == first_level
    assert store.get(job_id) is None and not store.folder(job_id).exists()


def test_the_service_hands_no_batch_to_a_model_itself():
    """The service's batches are built and scored by the engine's loop
    (explain.perturbation.build_parts / score_built): no model or builder call in serve/."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "explain" / "serve"
    sites = [f"{p.name}:{i}" for p in root.rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\.(predict|predict_input|score|build)\(", line)]
    assert sites == []


def test_a_worker_runs_every_other_method_through_the_registry(tmp_path, nsfw_onnx, nsfw_torch,
                                                               photos):
    """A worker thread over a job store: sliding (black box, onnx) and Grad-CAM (white box, the
    torch port) jobs give the library's maps, and so does a ``fast`` occlusion job (drill-down,
    run on its own); a job whose upload is not an image fails with the reason and the worker
    goes on."""
    image = cv2.resize(photos["coffee"], (96, 64), interpolation=cv2.INTER_AREA)
    store = JobStore(tmp_path)
    options = {"box": 0.5, "stride": 0.5, "fill": "gray", "target": "nsfw", "masks": 8}
    ids = {}
    for method in ("sliding", "gradcam", "fast", "broken"):
        ids[method] = store.new_id()
        folder = store.folder(ids[method])
        folder.mkdir()
        if method == "broken":
            (folder / INPUT).write_bytes(b"not an image")
        else:
            Image.fromarray(image).save(folder / INPUT, format="PNG")
        if method == "fast":
            store.add(ids[method], "", "occlusion", {**options, "box": 0.25, "stride": 0.0625,
                                                      "fast": True})  # 13 x 13 windows
        else:
            store.add(ids[method], "", "sliding" if method == "broken" else method, options)
    worker = Worker(store, Models(nsfw_onnx, nsfw_torch), threading.Event(), max_pixels=10**6)
    drain(worker, store)
    expected = {"sliding": sliding_window_map(nsfw_onnx, image, box=0.5, stride=0.5),
                "gradcam": gradcam(nsfw_torch, image),
                "fast": occlusion_map(nsfw_onnx, image, box=0.25, stride=0.0625,
                                      drill_down=FAST_DRILL_DOWN)}
    for method, heatmap in expected.items():
        job = store.get(ids[method])
        assert job.status == "done", job
        values = np.load(store.folder(job.id) / "heatmap.npy")
        np.testing.assert_allclose(values, heatmap.values, atol=1e-6)
        assert job.score == pytest.approx(heatmap.score, abs=1e-6)
    saved = json.loads((store.folder(ids["fast"]) / "heatmap.json").read_text())["params"]
    assert saved["drill_down"] == FAST_DRILL_DOWN
    assert saved["windows_evaluated"] < saved["windows_total"]
    broken = store.get(ids["broken"])
    assert broken.status == "failed" and broken.error.startswith("not an image")


def test_the_job_store_orders_pages_isolates_and_survives_restarts(tmp_path):
    store = JobStore(tmp_path)
    ids = [store.new_id() for _ in range(5)]
    for i, job_id in enumerate(ids):
        store.add(job_id, "a" if i != 2 else "b", "occlusion", {"box": 64})
    assert store.claim().id == ids[0] and store.pending() == 5
    page = store.page("a", 2)
    assert [j.id for j in page] == [ids[4], ids[3]]
    assert [j.id for j in store.page("a", 2, before=ids[3])] == [ids[1], ids[0]]
    assert store.page("a", 2, before=ids[2]) == []  # another tenant's id is no cursor
    assert store.get(ids[2], "a") is None and store.get(ids[2], "b").tenant == "b"
    assert not store.delete(ids[2], "a") and store.delete(ids[2], "b")
    store.close()
    store = JobStore(tmp_path)  # a restart: the running job is queued again, in its place
    assert store.requeue_running() == 1
    job = store.claim()
    assert (job.id, job.attempts, job.status) == (ids[0], 2, "running")
    for bad in ("../../etc", "", "00000000-0000-0000-0000-000000000000", ids[0].upper()):
        with pytest.raises(ValueError):
            store.folder(bad)


def test_a_job_that_keeps_killing_the_server_is_failed(tmp_path, nsfw_onnx):
    store = JobStore(tmp_path)
    job_id = store.new_id()
    store.add(job_id, "", "occlusion", {})
    for _ in range(3):
        store.claim()
        store.requeue_running()
    worker = Worker(store, Models(nsfw_onnx, None), threading.Event(), max_pixels=10**6)
    worker._claim()
    job = store.get(job_id)
    assert job.status == "failed" and "3 times" in job.error


def test_a_shared_batch_the_model_refuses_fails_only_the_culprit(tmp_path):
    """The model raises on an all-black image: its job fails with the model's reason, the two
    jobs that shared its batches finish with the library's maps."""
    def picky(batch: np.ndarray) -> np.ndarray:
        if (batch.reshape(len(batch), -1).max(axis=1) == 0).any():
            raise ValueError("refuses black images")
        p = batch[:, :6, :6, 0].reshape(len(batch), -1).mean(axis=1) / 255.0
        return np.stack([1.0 - p, p], axis=1)

    clf = load(picky, class_names=["a", "b"])
    store = JobStore(tmp_path)
    pictures = [images()[0], np.zeros((20, 24, 3), np.uint8), images()[2]]
    ids = queue(store, pictures)
    worker = Worker(store, Models(clf, None), threading.Event(), batch_size=16,
                    max_pixels=10**6, tick_s=0)
    worker._claim()
    while worker._active:
        worker._step()
    jobs = [store.get(i) for i in ids]
    assert [j.status for j in jobs] == ["done", "failed", "done"]
    assert "refuses black images" in jobs[1].error
    for job, picture in zip(jobs[::2], pictures[::2], strict=True):
        expected = occlusion_map(clf, picture, box=8, stride=8, target="b")
        np.testing.assert_allclose(np.load(store.folder(job.id) / "heatmap.npy"),
                                   expected.values, atol=1e-6)


def test_a_failed_write_fails_only_its_job(tmp_path, monkeypatch):
    """A finished job's map is written, then the job is done; a write that fails (a full disk,
    say) fails that job with the reason, and the next job is written."""
    import explain.serve.worker as worker_module

    real = worker_module.write_results
    calls = []

    def flaky(folder, heatmap):
        calls.append(folder)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        real(folder, heatmap)

    monkeypatch.setattr(worker_module, "write_results", flaky)
    clf = load(lambda b: np.stack([1 - b.mean((1, 2, 3)) / 255, b.mean((1, 2, 3)) / 255], 1),
               class_names=["a", "b"])
    store = JobStore(tmp_path)
    ids = queue(store, images()[:2])
    worker = Worker(store, Models(clf, None), threading.Event(), interleave=1, batch_size=64,
                    max_pixels=10**6, tick_s=0)
    for _ in ids:
        worker._claim()
        while worker._active:
            worker._step()
    first, second = (store.get(i) for i in ids)
    assert first.status == "failed" and "No space left" in first.error
    assert second.status == "done" and (store.folder(ids[1]) / "heatmap.npy").exists()
    assert not (store.folder(ids[1]) / "overlay.png").exists()  # rendered when first asked
    assert len(calls) == 2


def test_the_job_store_answers_many_threads_at_once(tmp_path):
    """The HTTP threads, the worker and its writer share one SQLite connection: every answer is
    read under the store's lock. Reading a cursor after the lock was released once gave a
    submission None for the queue count (a 500 on a 16-core GPU machine; on 2 cores it did not
    show), so this hammers the same statements from 12 threads and checks every answer."""
    store = JobStore(tmp_path)
    ids = []
    for _ in range(6):
        ids.append(store.new_id())
        store.folder(ids[-1]).mkdir()
        store.add(ids[-1], "t", "occlusion", {})
    for _ in range(3):
        store.claim()
    errors = []

    def hammer(k: int) -> None:
        try:
            for n in range(300):
                assert store.pending() == 6
                assert store.get(ids[(n + k) % 6]) is not None
                assert len(store.page("t", 4)) == 4
                store.progress(ids[k % 3], n, 300)
        except Exception as exc:  # noqa: BLE001 — reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_the_model_thread_only_scores_while_preparation_threads_do_the_rest(tmp_path,
                                                                           monkeypatch):
    """With preparation threads, an occlusion job's decode and plan, the building of its
    batches' copies and the writing of its map run on them; the worker's own thread makes
    every model call. Every map equals the library's, and a job whose upload is not an image
    fails with the reason while the others finish."""
    import explain.serve.worker as worker_module

    threads: dict[str, set[str]] = {"predict": set(), "plan": set(), "build": set(),
                                    "write": set()}

    def spy(kind, real):
        def wrapped(*args, **kwargs):
            threads[kind].add(threading.current_thread().name)
            return real(*args, **kwargs)
        return wrapped

    calls: list[int] = []
    clf = counting_model(calls)
    clf.fn = spy("predict", clf.fn)
    monkeypatch.setattr(worker_module, "plan_occlusion", spy("plan", plan_occlusion))
    monkeypatch.setattr(worker_module, "build", spy("build", worker_module.build))
    monkeypatch.setattr(worker_module, "write_results",
                        spy("write", worker_module.write_results))
    store = JobStore(tmp_path)
    ids = []
    for i, picture in enumerate([*images(), None]):
        ids.append(store.new_id())
        store.folder(ids[-1]).mkdir()
        if picture is None:
            (store.folder(ids[-1]) / INPUT).write_bytes(b"not an image")
        else:
            Image.fromarray(picture).save(store.folder(ids[-1]) / INPUT, format="PNG")
        store.add(ids[-1], "", "occlusion", {"box": 8, "stride": 4 + i, "fill": "gray",
                                            "target": "b"})
    worker = Worker(store, Models(clf, None), threading.Event(), batch_size=16,
                    max_pixels=10**6, prepare=2, name="model-thread")
    drain(worker, store)
    assert threads["predict"] == {"model-thread"}
    for kind in ("plan", "build", "write"):
        assert threads[kind] and all(name.startswith("model-thread-prepare")
                                     for name in threads[kind]), (kind, threads[kind])
    *jobs, broken = [store.get(i) for i in ids]
    assert broken.status == "failed" and broken.error.startswith("not an image")
    for i, (job, picture) in enumerate(zip(jobs, images(), strict=True)):
        expected = occlusion_map(clf, picture, box=8, stride=4 + i, target="b")
        assert (job.status, job.done, job.total) == ("done", *[expected.windows + 2] * 2), job
        np.testing.assert_array_equal(np.load(store.folder(job.id) / "heatmap.npy"),
                                      expected.values)
        assert job.score == expected.score


def test_the_worker_updates_the_table_at_most_once_per_tick_s(tmp_path, monkeypatch):
    """Many small jobs, two model batches each: the worker records progress and marks the
    written jobs done in one transaction per ``tick_s`` at most, not one per batch, and every
    job is recorded done all the same (the last ones when the worker goes idle or stops)."""
    ticks: list[float] = []  # the worker's own time of each transaction
    real = JobStore.tick
    monkeypatch.setattr(JobStore, "tick", lambda self, *a: ticks.append(worker._ticked)
                        or real(self, *a))
    store = JobStore(tmp_path)
    ids = queue(store, images() * 8)
    calls: list[int] = []
    model = load(_slow(calls), class_names=["a", "b"])
    worker = Worker(store, Models(model, None), threading.Event(), batch_size=4,
                    max_pixels=10**6, tick_s=0.2)
    start = time.monotonic()
    drain(worker, store)
    seconds = time.monotonic() - start
    assert len(calls) >= 2 * len(ids)  # model batches
    # at least the first (progress) and the last (done); per batch, they would be one a call
    assert 2 <= len(ticks) <= seconds / 0.2 + 2, (len(ticks), len(calls), seconds)
    assert len(ticks) < len(calls) / 2
    assert (np.diff(ticks[:-1]) >= 0.2).all()  # the last may be the one at the stop
    assert all(store.get(i).status == "done" for i in ids)


def test_a_written_job_waiting_for_its_tick_does_not_spin_the_worker(tmp_path, monkeypatch):
    """One job, ticks 0.5 s apart: once its map is written the worker waits for the tick (or a
    new job), it does not loop on the finished write (it looped about 100,000 times)."""
    idle: list[int] = []
    real = Worker._tick
    monkeypatch.setattr(Worker, "_tick", lambda self: (idle.append(1) if not self._active
                                                       else None) or real(self))
    store = JobStore(tmp_path)
    [job_id] = queue(store, images()[:1])
    worker = Worker(store, Models(counting_model([]), None), threading.Event(), batch_size=4,
                    max_pixels=10**6, tick_s=0.5)
    drain(worker, store)
    assert store.get(job_id).status == "done"
    assert len(idle) < 20, len(idle)


def test_written_jobs_stay_held_when_their_tick_fails(tmp_path, monkeypatch):
    """A tick whose transaction fails (the table locked, the disk full) leaves the jobs it was
    to mark done held by the worker: failed by the worker's fault path or put back in the
    queue by the supervisor, never left ``running`` by nobody."""
    import sqlite3

    store = JobStore(tmp_path)
    queue(store, images()[:2])
    worker = Worker(store, Models(counting_model([]), None), threading.Event(), batch_size=64,
                    max_pixels=10**6, tick_s=3600, prepare=0)
    worker._claim()
    while worker._active:
        worker._step()  # the first tick is a full one, then reads only
    waiting = set(worker.held())
    assert waiting and all(store.get(i).status == "running" for i in waiting)

    def locked(*_: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(JobStore, "tick", locked)
    worker._ticked = -np.inf
    with pytest.raises(sqlite3.OperationalError):
        worker._tick()
    assert set(worker.held()) == waiting
    worker.stopping.set()
    worker.run()  # stops at once; its last tick fails too, quietly
    assert set(worker.held()) == waiting
    assert store.requeue(worker.held()) == len(waiting)


def test_a_passing_fault_of_the_table_costs_no_written_map(tmp_path, monkeypatch):
    """One tick's transaction fails once (the table locked past its wait, say): the worker's
    fault path fails the jobs it was still computing, but the jobs whose maps were written
    are kept and marked done by the next tick."""
    import sqlite3

    real = JobStore.tick
    calls = [0]

    def once(self: JobStore, *args: object) -> set[str]:
        calls[0] += 1
        if calls[0] == 2:
            raise sqlite3.OperationalError("database is locked")
        return real(self, *args)

    monkeypatch.setattr(JobStore, "tick", once)
    store = JobStore(tmp_path)
    ids = queue(store, images() * 4)
    worker = Worker(store, Models(load(_slow([]), class_names=["a", "b"]), None),
                    threading.Event(), batch_size=4, max_pixels=10**6, tick_s=0.05)
    drain(worker, store)
    assert calls[0] > 2
    jobs = [store.get(i) for i in ids]
    for job in jobs:  # written: done; failed only with the fault, and then without a map
        written = (store.folder(job.id) / "heatmap.npy").exists()
        assert (job.status, written) in {("done", True), ("failed", False)}, job
        assert job.status == "done" or "database is locked" in job.error
    assert any(job.status == "done" for job in jobs)


def _slow(calls: list[int]):
    """:func:`counting_model`'s black box, 5 ms a batch."""
    def score(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.005)
        calls.append(len(batch))
        p = batch[:, :6, :6, 0].reshape(len(batch), -1).mean(axis=1) / 255.0
        return np.stack([1.0 - p, p], axis=1)
    return score


def test_a_tick_records_every_jobs_progress_and_finish_in_one_transaction(tmp_path):
    """The worker's tick: the progress of every held job and the finished ones marked done in
    ONE transaction (one commit, whatever the number of jobs); the ids deleted meanwhile are
    returned, and a finished job deleted meanwhile has its folder removed."""
    store = JobStore(tmp_path)
    ids = []
    for _ in range(6):
        ids.append(store.new_id())
        store.folder(ids[-1]).mkdir()
        store.add(ids[-1], "", "occlusion", {})
        store.claim()
    assert store.delete(ids[1], "")
    assert store.delete(ids[5], "")
    store.folder(ids[5]).mkdir()  # its map, written as the delete came
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    gone = store.tick({ids[0]: (3, 10), ids[1]: (4, 10), ids[2]: (10, 10), ids[3]: (7, 7)},
                      {ids[3]: (0.25, None), ids[4]: (0.5, {"frame": 2}), ids[5]: (0.75, None)})
    store._db.set_trace_callback(None)
    assert gone == {ids[1]}
    assert [s for s in statements if s.split()[0] in ("BEGIN", "COMMIT")] == \
        ["BEGIN IMMEDIATE", "COMMIT"]
    jobs = {i: store.get(i) for i in ids}
    assert (jobs[ids[0]].done, jobs[ids[0]].total, jobs[ids[0]].status) == (3, 10, "running")
    assert (jobs[ids[3]].status, jobs[ids[3]].score, jobs[ids[3]].done) == ("done", 0.25, 7)
    assert (jobs[ids[4]].status, jobs[ids[4]].clip) == ("done", {"frame": 2})
    assert jobs[ids[1]] is None and jobs[ids[5]] is None
    assert not store.folder(ids[5]).exists() and store.folder(ids[3]).exists()


def test_a_preparation_thread_runs_torch_on_one_thread_and_leaves_the_others_alone():
    # OpenMP's workers busy-wait between a preparation thread's small operations (one
    # preparation thread made the service 6x slower); its team is set to one, per thread
    from explain.serve.worker import one_torch_thread

    before = torch.get_num_threads()
    seen = []

    def prepare() -> None:
        one_torch_thread()
        seen.append(torch.get_num_threads())

    thread = threading.Thread(target=prepare)
    thread.start()
    thread.join()
    assert seen == [1] and torch.get_num_threads() == before
