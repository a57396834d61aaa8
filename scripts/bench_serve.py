"""Benchmark `explain serve` against the library's own loop, in the same run.

50 occlusion jobs (box 64, stride 48: 25 windows + the intact image = 26 masked copies each) on
distinct 256×256 images, submitted at once over HTTP to a real `explain serve` (a subprocess on
127.0.0.1, the same model, one worker), against:

- the library's loop: ``occlusion_map`` on the same images one after another, in this process,
  at its default batch size and with all of an image's copies in one call (the best of the two
  is the peer), alone, plus the time to write what a finished job writes (the map's
  .npy/.json; the worker's own ``write_results``), and plus that and the three result pictures
  (overlay, side by side, original), which the service renders only on a client's first request
  for each; after the jobs, the time to GET every job's overlay.png is printed too;
- raw model throughput: the network alone on model-ready batches of the worker's batch size,
  the same number of inputs (the limit of full re-inference).

Prints total throughput (jobs/s) and the service's overhead over the library's best loop, p50 and
p95 job latency (created → finished, from the API), and the gain of cross-job batching at a queue
of 1, 4 and 16 jobs: the worker's scheduler (:func:`explain.serve.batching.score_step`) on q
jobs at once versus the same jobs one after another (``--interleave 1``), in this process, with
the number of model calls of each (best of two rounds in alternating order). CPU:
onnxruntime's cost grows with the batch, so the gain is mostly the calls saved; on a GPU a batch
of 64 costs about what a batch of 9 does.

    python scripts/bench_serve.py [--jobs 50] [--model open-nsfw:onnx] [--device cpu]

Without ``--device`` the model runs where ``explain serve`` would put it (CUDA when torch sees a
GPU, named; else "no GPU on this machine" and the CPU).

``--null``: the service's own pace. A model that costs nothing (:func:`null_onnx`: an ONNX graph
whose every answer is 0.5/0.5, at a 256×256 input, so the copies are built as for a real
model's input), :data:`NULL_JOBS` occlusion jobs of 256×256 PNGs at box = stride = 64 (16
windows + the intact image and the baseline), submitted by :data:`CLIENTS` client threads to a
real `explain serve` as users run it; jobs/s from the first submission to the last finished job,
best (and median) of ``--rounds``, with the load average, for each ``explain serve
--processes`` count of ``--processes`` (default ``1,2``; the counts alternate within each
round). The server's CPU is summed over all its processes. Everything measured is the service's
work. The client threads open a connection per job (urllib, as the tests' client does);
``--connections kept`` has each keep one open (:class:`KeepAlive`, what a client sending many
jobs does), ``both`` runs the two kinds in turn.

    python scripts/bench_serve.py --null [--jobs 400] [--rounds 3] [--processes 1,2]
                                  [--connections kept|new|both]
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # also under python -P
from bench_occlusion import time_raw  # noqa: E402
from serve_client import Reply, Server, multipart  # noqa: E402

from explain.models import load  # noqa: E402
from explain.models.base import device_label, gpu_line  # noqa: E402
from explain.occlusion import occlusion_map, plan_occlusion  # noqa: E402
from explain.render import figure, save_png, side_by_side  # noqa: E402
from explain.serve.batching import OcclusionRun, score_step  # noqa: E402
from explain.serve.worker import write_results  # noqa: E402
from explain.windows import default_batch_size  # noqa: E402

BOX, STRIDE, SIDE = 64, 48, 256
NULL_BOX = 64
NULL_JOBS = 400
CLIENTS = 8
CONNECTION = {True: "connections kept", False: "a connection per job"}


def make_images(n: int) -> list[np.ndarray]:
    """``n`` distinct 256×256 RGB images: crops of scikit-image's photos at varied offsets and
    scales, mirrored every other one."""
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(min(h, w) * (0.6 + 0.4 * ((i * 7) % 10) / 10))
        top, left = (i * 13) % (h - side + 1), (i * 29) % (w - side + 1)
        crop = photo[top:top + side, left:left + side]
        img = cv2.resize(crop, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
        out.append(np.ascontiguousarray(img[:, ::-1] if i % 2 else img))
    return out


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def library_loop(clf, images: list[np.ndarray], batch_size: int | None
                 ) -> tuple[float, list]:
    start = time.perf_counter()
    maps = [occlusion_map(clf, img, box=BOX, stride=STRIDE, batch_size=batch_size)
            for img in images]
    return time.perf_counter() - start, maps


def writing(images: list[np.ndarray], maps: list, pictures: bool = False) -> float:
    """Seconds to write what a finished job writes for every map (the worker's own
    ``write_results``: the map's .npy/.json), so that the loop can be timed doing the same;
    ``pictures``: also render and write the three result pictures (what the service renders
    only when a client asks for them, :func:`explain.serve.worker.picture`)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for i, (img, heatmap) in enumerate(zip(images, maps, strict=True)):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            write_results(folder, heatmap)
            if pictures:
                save_png(img, folder / "original.png")
                save_png(figure(img, heatmap), folder / "overlay.png")
                save_png(side_by_side(img, heatmap), folder / "side.png")
        return time.perf_counter() - start


def raw_predict(clf, inputs: int, batch_size: int) -> float:
    """:func:`bench_occlusion.time_raw`: the network alone on model-ready batches."""
    return time_raw(clf, inputs, batch_size)


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def service(images: list[np.ndarray], model: str, device: str | None
            ) -> tuple[float, list[float], float]:
    """Seconds from the first submission to the last finished job, each job's latency, and the
    seconds to then GET every job's overlay.png (rendered on that first request)."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = ["--device", device] if device else []
        server = Server(Path(tmp) / "data", *extra, model=model).start()
        try:
            bodies = [png(img) for img in images]
            start = time.time()
            with ThreadPoolExecutor(16) as pool:
                replies = list(pool.map(lambda b: server.submit(b, box=str(BOX),
                                                                stride=str(STRIDE)), bodies))
            refused = [r for r in replies if r.status != 202]
            if refused:
                raise RuntimeError(f"{len(refused)} submissions refused, e.g. HTTP "
                                   f"{refused[0].status}: {refused[0].body[:300]!r}; server log: "
                                   + Path(f"{server.data}.log").read_text(errors="replace")[-3000:])
            jobs = [server.wait(r.json()["id"], timeout=3600) for r in replies]
            start_get = time.time()
            for job in jobs:
                got = server.call("GET", f"/v1/visualizations/{job['id']}/overlay.png")
                if got.status != 200:
                    raise RuntimeError(f"overlay.png of job {job['id']}: HTTP {got.status}")
            overlays = time.time() - start_get
        finally:
            server.stop()
    failed = [j for j in jobs if j["status"] != "done"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs did not finish: {failed[0]}")
    finished = [parse_time(j["finished"]) for j in jobs]
    latencies = [f - parse_time(j["created"]) for f, j in zip(finished, jobs, strict=True)]
    return max(finished) - start, latencies, overlays


def interleaved(clf, images: list[np.ndarray], batch_size: int, together: bool
                ) -> tuple[float, int]:
    """The worker's scheduler over ``images`` (all at once, or one job after another): seconds
    and model calls."""
    runs = [OcclusionRun(str(i), plan_occlusion(clf, img, box=BOX, stride=STRIDE))
            for i, img in enumerate(images)]
    calls = 0
    start = time.perf_counter()
    for group in ([runs] if together else [[r] for r in runs]):
        while score_step(clf, group, batch_size):
            calls += 1
    return time.perf_counter() - start, calls


def null_onnx(side: int = SIDE) -> bytes:
    """An ONNX model that costs nothing: input ``x`` N×3×side×side, output N×2 all 0.5 (its
    batch size read from the input's shape, nothing computed on the pixels)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Shape", ["x"], ["n"], start=0, end=1),
             helper.make_node("Concat", ["n", "two"], ["shape"], axis=0),
             helper.make_node("ConstantOfShape", ["shape"], ["probs"],
                              value=helper.make_tensor("half", TensorProto.FLOAT, [1], [0.5]))]
    graph = helper.make_graph(
        nodes, "null", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                      ["N", 3, side, side])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 2])],
        initializer=[helper.make_tensor("two", TensorProto.INT64, [1], [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds so far of process ``pid`` and of every process under it (the
    serving processes of ``--processes``), all their threads."""
    children: dict[int, list[int]] = {}
    spent: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = entry.joinpath("stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue  # gone meanwhile
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            spent[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        one = todo.pop()
        total += spent.get(one, 0.0)
        todo += children.get(one, [])
    return total


class KeepAlive:
    """A client whose every thread keeps one HTTP/1.1 connection open (as requests' Session,
    httpx or any load balancer does), where :class:`serve_client.Client` opens a connection per
    request (urllib): the server then accepts and closes no connection per job."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()
        self.opened: list[http.client.HTTPConnection] = []

    def close(self) -> None:
        for connection in self.opened:
            connection.close()

    def submit(self, image: bytes, **fields: str) -> Reply:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=60)
            self.opened.append(connection)
        body, kind = multipart(fields, image)
        connection.request("POST", "/v1/visualizations", body=body,
                           headers={"Content-Type": kind})
        answer = connection.getresponse()
        return Reply(answer.status, dict(answer.headers), answer.read())


def null_round(bodies: list[bytes], model: Path, data: Path, processes: int = 1,
               keep_alive: bool = False) -> tuple[float, int, float]:
    """One round of ``--null``: seconds from the first submission to the last finished job,
    the number of jobs done (every one must be) and the server's CPU seconds meanwhile (HTTP
    included); the clients open a connection per job, or with ``keep_alive`` keep one each
    open (:class:`KeepAlive`)."""
    server = Server(data, "--classes", "sfw,nsfw", "--processes", str(processes),
                    model=str(model)).start()
    try:
        assert server.proc is not None
        cpu = cpu_seconds(server.proc.pid)
        start = time.time()
        kept = KeepAlive(server.port)
        send = kept.submit if keep_alive else server.submit
        with ThreadPoolExecutor(CLIENTS) as pool:
            replies = list(pool.map(lambda b: send(b, box=str(NULL_BOX), stride=str(NULL_BOX)),
                                    bodies))
        kept.close()
        refused = [r for r in replies if r.status != 202]
        if refused:
            raise RuntimeError(f"{len(refused)} submissions refused, e.g. HTTP "
                               f"{refused[0].status}: {refused[0].body[:300]!r}")
        while server.call("GET", "/healthz").json()["pending"]:
            time.sleep(0.05)
        cpu = cpu_seconds(server.proc.pid) - cpu
        jobs = []
        page = "/v1/visualizations?limit=100"
        while page:
            got = server.call("GET", page).json()
            jobs += got["items"]
            page = got["next"]
    finally:
        server.stop()
    done = [j for j in jobs if j["status"] == "done"]
    if len(done) != len(bodies):
        raise RuntimeError(f"{len(bodies) - len(done)} jobs did not finish: "
                           f"{next(j for j in jobs if j['status'] != 'done')}")
    return max(parse_time(j["finished"]) for j in done) - start, len(done), cpu


def null_bench(jobs: int, rounds: int, processes: list[int],
               connections: list[bool]) -> None:
    """``--null`` (see the module docstring): each round runs every ``--processes`` count in
    turn, with each kind of client connection of ``connections`` (True: kept open), interleaved
    so each sees the same load; the best round of each is kept."""
    bodies = [png(img) for img in make_images(jobs)]
    print(f"--null: {jobs} occlusion jobs, {SIDE}x{SIDE} PNG, box = stride = {NULL_BOX} "
          f"({(SIDE // NULL_BOX) ** 2} windows), {CLIENTS} client threads, a model that costs "
          f"nothing; {os.cpu_count()} CPUs")
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}")
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "null.onnx"
        model.write_bytes(null_onnx())
        runs = [(n, keep) for keep in connections for n in processes]
        rates: dict[tuple[int, bool], list[float]] = {run: [] for run in runs}
        for i in range(rounds):
            for n, keep in runs:
                seconds, done, cpu = null_round(bodies, model, Path(tmp) / f"data{i}-{n}{keep}",
                                                n, keep)
                rates[n, keep].append(done / seconds)
                print(f"round {i + 1}, --processes {n}, {CONNECTION[keep]}: {done} jobs in "
                      f"{seconds:.2f} s = {rates[n, keep][-1]:.1f} jobs/s; server CPU "
                      f"{1000 * cpu / done:.1f} ms a job", flush=True)
    for n, keep in runs:
        print(f"best, --processes {n}, {CONNECTION[keep]}: {max(rates[n, keep]):.1f} jobs/s "
              f"(median {statistics.median(rates[n, keep]):.1f})")
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=None,
                        help="jobs (default 50; --null: 400)")
    parser.add_argument("--model", default="open-nsfw:onnx")
    parser.add_argument("--device", default=None)
    parser.add_argument("--null", action="store_true",
                        help="the service's own pace, with a model that costs nothing")
    parser.add_argument("--rounds", type=int, default=3, help="--null: rounds (best kept)")
    parser.add_argument("--processes", default="1,2",
                        help="--null: explain serve --processes counts to compare, e.g. 1,2")
    parser.add_argument("--connections", default="new",
                        help="--null: how the client threads connect, kept (one connection "
                        "each, kept open), new (one per job, as urllib does) or both")
    args = parser.parse_args()
    print(gpu_line(), flush=True)
    if args.null:
        kinds = {"kept": [True], "new": [False], "both": [True, False]}
        if args.connections not in kinds:
            parser.error(f"--connections is kept, new or both, not {args.connections!r}")
        null_bench(NULL_JOBS if args.jobs is None else args.jobs, args.rounds,
                   [int(n) for n in args.processes.split(",")], kinds[args.connections])
        return
    args.jobs = 50 if args.jobs is None else args.jobs
    images = make_images(args.jobs)
    clf = load(args.model, args.device)
    batch = default_batch_size(clf.device, clf.input_size)
    copies = 26
    print(f"{args.jobs} occlusion jobs, box {BOX} stride {STRIDE}, {SIDE}x{SIDE} images, "
          f"{copies} masked copies each; model {args.model} on {device_label(clf.device)}, batch "
          f"{batch}")
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}")
    occlusion_map(clf, images[0], box=BOX, stride=STRIDE)  # warm-up
    runs = {f"batch {batch} (default)": library_loop(clf, images, None),
            f"batch {copies} (one call per image)": library_loop(clf, images, copies)}
    loops = {name: seconds for name, (seconds, _) in runs.items()}
    best_name, best = min(loops.items(), key=lambda kv: kv[1])
    written = writing(images, runs[best_name][1])
    loops[f"{best_name} + the same result files (.npy/.json)"] = best + written
    pictured = writing(images, runs[best_name][1], pictures=True)
    loops[f"{best_name} + those files and the three pictures"] = best + pictured
    raw = raw_predict(clf, args.jobs * copies, batch)
    served, latencies, overlays = service(images, args.model, args.device)
    print("\n| run | seconds | jobs/s | vs library's best loop |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| raw predict, {args.jobs * copies} inputs | {raw:.2f} | {args.jobs / raw:.2f} | "
          f"{best / raw:.2f}x faster |")
    for name, seconds in loops.items():
        print(f"| library loop, {name} | {seconds:.2f} | {args.jobs / seconds:.2f} | "
              f"{seconds / best:.2f}x time |")
    equal = best + written
    print(f"| explain serve, {args.jobs} jobs at once over HTTP | {served:.2f} | "
          f"{args.jobs / served:.2f} | overhead {100 * (served / best - 1):+.1f} % (maps "
          f"only), {100 * (served / equal - 1):+.1f} % (maps + files) |")
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    print(f"| then GET every job's overlay.png (rendered on that first request) | "
          f"{overlays:.2f} | | |")
    print(f"\njob latency (created → finished): p50 {statistics.median(ordered):.2f} s, "
          f"p95 {p95:.2f} s (peer: {best_name})")
    print("\n| queue | one job at a time | cross-job batching | calls | gain |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for q in (1, 4, 16):  # best of two rounds, in alternating order: the load drifts
        first = [interleaved(clf, images[:q], batch, together=False),
                 interleaved(clf, images[:q], batch, together=True)]
        second = [interleaved(clf, images[:q], batch, together=True),
                  interleaved(clf, images[:q], batch, together=False)]
        alone, alone_calls = min(first[0], second[1])
        shared, shared_calls = min(first[1], second[0])
        print(f"| {q} | {alone:.2f} s | {shared:.2f} s | {alone_calls} → {shared_calls} | "
              f"{alone / shared:.2f}x |")
    print(f"\nload average after: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
