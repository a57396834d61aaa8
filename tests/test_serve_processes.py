"""`explain serve --processes N`: several serving processes over one data folder
(:mod:`explain.serve.processes`), and what makes the store safe across processes
(:mod:`explain.serve.jobs`: member stores, the jobs' cross-process locks, claims with their
process, orphaned jobs put back)."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from serve_client import Server, png

from explain import occlusion_map
from explain.heatmap import Heatmap
from explain.models import load
from explain.serve.jobs import JobStore, process_alive, process_key

if importlib.util.find_spec("fastapi") is None:  # under CI a missing extra fails, never skips
    if os.environ.get("CI"):
        raise ImportError("the serve extra is required in CI: pip install -e '.[dev]'")
    pytest.skip("the serve extra (fastapi) is not installed", allow_module_level=True)

# a function model that takes a while per batch, so that jobs overlap in both processes
SLOW_PY = """import time

import numpy as np


def score(batch):
    time.sleep(0.15)
    p = batch[..., 0].reshape(len(batch), -1).mean(axis=1) / 255.0
    return np.stack([1.0 - p, p], axis=1)
"""


def image(seed: int, side: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


def owners(data: Path) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(data / "jobs.sqlite3") as db:
        return db.execute("SELECT id, status, owner FROM jobs").fetchall()


def wait_until(check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.1)
    return value


def test_a_job_claimed_by_a_process_that_is_gone_goes_back_to_the_queue(tmp_path):
    store = JobStore(tmp_path)
    try:
        assert process_alive(store.me) and store.me == process_key()
        for job_id in (store.new_id(), store.new_id()):
            store.folder(job_id).mkdir(parents=True)
            assert store.add(job_id, "t", "occlusion", {})
        mine, theirs = store.claim(), store.claim()
        assert mine is not None and theirs is not None
        assert store.requeue_orphaned() == 0  # both claimed by this live process
        gone = f"{os.getpid()}:0"  # this pid with another start time: a reused pid
        store._run("UPDATE jobs SET owner = ? WHERE id = ?", (gone, theirs.id))
        assert not process_alive(gone)
        assert store.requeue_orphaned() == 1
        assert store.get(theirs.id).status == "queued"
        assert store.get(mine.id).status == "running"
    finally:
        store.close()


def _hold(data: str, job_id: str, held, release) -> None:
    store = JobStore(Path(data), member=True)  # a serving process's store: no lock of its own
    with store.locked(job_id):
        held.set()
        release.wait(60)
    store.close()


@pytest.mark.slow
def test_a_jobs_lock_holds_across_the_processes_of_one_server(tmp_path):
    store = JobStore(tmp_path)  # the parent's: the folder's lock
    job_id = store.new_id()
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold, args=(str(tmp_path), job_id, held, release))
    other.start()
    try:
        assert held.wait(60)
        entered = threading.Event()

        def take() -> None:
            with store.locked(job_id):
                entered.set()

        taker = threading.Thread(target=take)
        taker.start()
        assert not entered.wait(0.5)  # the other process holds the job's lock
        with store.locked(store.new_id()):  # another job's lock is free meanwhile
            pass
        release.set()
        assert entered.wait(60)
        taker.join()
    finally:
        release.set()
        other.join(60)
        store.close()


def _cross(data: str, hold: str, want: str, errors) -> None:
    store = JobStore(Path(data), member=True)
    held = threading.Event()

    def holder() -> None:
        with store.locked(hold):
            held.set()
            time.sleep(1.0)

    def waiter() -> None:
        held.wait(60)
        time.sleep(0.3)  # the other process holds the job this one wants by now
        try:
            with store.locked(want):
                pass
        except OSError as exc:
            errors.put(repr(exc))

    threads = [threading.Thread(target=holder), threading.Thread(target=waiter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()


@pytest.mark.slow
def test_two_processes_waiting_on_each_others_other_jobs_is_no_deadlock(tmp_path):
    # process A holds job X and waits for Y, process B holds Y and waits for X, each from
    # another thread than the holding one: POSIX record locks (owned by the process) made the
    # kernel fail one wait with EDEADLK; the jobs' locks are the descriptor's own
    store = JobStore(tmp_path)
    x, y = store.new_id(), store.new_id()
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    both = [ctx.Process(target=_cross, args=(str(tmp_path), a, b, errors))
            for a, b in ((x, y), (y, x))]
    for process in both:
        process.start()
    for process in both:
        process.join(60)
    store.close()
    assert [process.exitcode for process in both] == [0, 0]
    assert errors.empty()


def test_a_zombie_is_not_alive():
    # a serving process that died and was not reaped yet still answers kill(pid, 0)
    child = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,))
    child.start()
    key = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()
        if stat[0] == "Z":
            key = f"{child.pid}:{stat[19]}"
            break
        time.sleep(0.05)
    assert key is not None
    assert not process_alive(key)
    child.join()


@pytest.mark.slow
def test_several_processes_share_one_folder_and_take_over_a_dead_ones_jobs(tmp_path):
    """A real `explain serve --processes 2`: jobs are run by both processes, each map is the
    library's, a second server on the folder is refused, and when one serving process is
    killed (kill -9) while it runs jobs, they go back to the queue and finish."""
    model = tmp_path / "model.py"
    model.write_text(SLOW_PY)
    spec = f"{model}:score"
    data = tmp_path / "data"
    server = Server(data, "--classes", "sfw,nsfw", "--processes", "2", "--interleave", "2",
                    model=spec).start()
    try:
        with pytest.raises(RuntimeError, match="in use by another explain serve"):
            Server(tmp_path / "data", "--classes", "sfw,nsfw", model=spec).start()
        jobs = [server.submit(png(image(i)), box="16", stride="16").json()["id"]
                for i in range(12)]
        done = [server.wait(j) for j in jobs]
        assert [j["status"] for j in done] == ["done"] * 12
        keys = {owner for _, _, owner in owners(data)}
        assert len(keys) == 2, keys  # both processes ran jobs
        assert all(int(k.partition(":")[0]) != server.proc.pid for k in keys)
        clf = load(spec, class_names=["sfw", "nsfw"])
        for i in (0, 7):
            got = Heatmap.load(data / "jobs" / jobs[i] / "heatmap")
            want = occlusion_map(clf, image(i), box=16, stride=16)
            np.testing.assert_array_equal(got.values, want.values)
        server.call("GET", f"/v1/visualizations/{jobs[3]}/overlay.png")  # drawn by either
        assert server.call("DELETE", f"/v1/visualizations/{jobs[3]}").status == 204
        assert not (data / "jobs" / jobs[3]).exists()

        more = [server.submit(png(image(100 + i)), box="8", stride="8").json()["id"]
                for i in range(6)]
        running = wait_until(lambda: [o for _, s, o in owners(data) if s == "running"])
        victim = int(running[0].partition(":")[0])
        os.kill(victim, signal.SIGKILL)
        assert [server.wait(j)["status"] for j in more] == ["done"] * 6
        assert not any(int(o.partition(":")[0]) == victim for j, _, o in owners(data)
                       if j in more)  # the killed one's jobs were finished by another
        wait_until(lambda: server.call("GET", "/healthz").status == 200)
    finally:
        server.stop()
    assert "Traceback" not in (tmp_path / "data.log").read_text()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = entry.joinpath("stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(stat[1]) == pid and stat[0] not in "ZX":
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_the_tokens_stay_out_of_the_environment_and_orphans_stop(tmp_path):
    """The settings (tokens) reach the serving processes in a file only the user can read,
    not in their environment; when the parent is killed (kill -9), they stop by themselves."""
    model = tmp_path / "model.py"
    model.write_text(SLOW_PY)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("secret-token-of-tenant-a\n")
    server = Server(tmp_path / "data", "--classes", "sfw,nsfw", "--processes", "2", "--tokens",
                    str(tokens), model=f"{model}:score").start()
    try:
        kids = wait_until(lambda: children(server.proc.pid))
        for kid in kids:
            assert b"secret-token" not in Path(f"/proc/{kid}/environ").read_bytes()
        settings = tmp_path / "data" / "processes.pickle"
        assert settings.stat().st_mode & 0o777 == 0o600
        job = server.submit(png(image(1)), token="secret-token-of-tenant-a", box="16",
                            stride="16").json()["id"]
        assert server.wait(job, token="secret-token-of-tenant-a")["status"] == "done"
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        wait_until(lambda: not any(Path(f"/proc/{k}").exists() and
                                   Path(f"/proc/{k}/stat").read_text().rpartition(")")[2]
                                   .split()[0] not in "ZX" for k in kids), timeout=60)
    finally:
        server.stop()
