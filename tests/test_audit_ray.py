"""The audit's Ray engine (explain/audit/ray_engine.py) against a real local Ray: the same answers
as the local engine on real photos with broken files, an actor killed with SIGKILL mid-run loses
and duplicates nothing, a killed driver leaves a run that the local engine resumes, and without
Ray `--engine ray` is one clear error naming the extra."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import need_module
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from explain.audit import AuditOptions, audit
from explain.audit.options import RayOptions
from explain.cli import app
from explain.errors import ModelError

FAKE = '''
import os, time
import numpy as np

def score(batch):
    """p(nsfw) = mean brightness; each call leaves its process id in PIDS and takes a while."""
    if PIDS:
        open(os.path.join(PIDS, str(os.getpid())), "w").close()
    time.sleep(SLEEP)
    s = batch.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0
    return np.stack([1.0 - s, s], axis=1)

score.class_names = ["sfw", "nsfw"]
'''


def _fake(folder: Path, pids: Path | None = None, sleep: float = 0.0) -> str:
    """A `file.py:function` model spec (workers read the file; environment variables set after
    Ray started would not reach them)."""
    path = folder / "fake.py"
    path.write_text(f"PIDS = {str(pids or '')!r}\nSLEEP = {sleep!r}\n" + FAKE)
    return f"{path}:score"


@pytest.fixture(scope="module")
def cluster():
    """One local Ray for the module: 3 CPUs, so that 2 actors leave one to decode."""
    need_module("ray.data", "ray", "Ray engine tests")
    ray = need_module("ray", "ray", "Ray engine tests")
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory) -> Path:
    """Real photos (crops of scikit-image's) labelled sfw/nsfw, an animated GIF of three of them,
    plus three broken files."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.retina()]
    for i in range(12):
        img = sources[i % len(sources)]
        h, w = img.shape[:2]
        y, x = int(rng.integers(0, h // 3)), int(rng.integers(0, w // 3))
        crop = cv2.resize(np.ascontiguousarray(img[y:y + 2 * h // 3, x:x + 2 * w // 3]),
                          (160, 128), interpolation=cv2.INTER_AREA)
        label = "nsfw" if i % 3 == 0 else "sfw"
        (root / label).mkdir(exist_ok=True)
        Image.fromarray(crop).save(root / label / f"photo{i:02d}.jpg", quality=90)
    # an animated GIF: the audit judges it by its max frame, which the Ray engine must find too
    frames = [Image.open(root / "sfw" / f"photo{i:02d}.jpg").convert("RGB") for i in (1, 2, 4)]
    frames[0].save(root / "sfw" / "clip.gif", save_all=True, append_images=frames[1:],
                   duration=100, loop=0)
    # the same GIF cut just inside the second frame's header: Pillow raised IndexError and
    # struct.error there, a traceback that stopped the audit on every resume, on Ray too
    gif = (root / "sfw" / "clip.gif").read_bytes()
    second = gif.index(b"\x21\xf9\x04", gif.index(b"\x21\xf9\x04") + 1)
    (root / "sfw" / "cut1.gif").write_bytes(gif[:second + 1])
    (root / "sfw" / "cut4.gif").write_bytes(gif[:second + 4])
    (root / "sfw" / "empty.jpg").write_bytes(b"")
    (root / "sfw" / "text.png").write_bytes(b"not an image at all")
    good = (root / "nsfw" / "photo00.jpg").read_bytes()
    (root / "nsfw" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    return root


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_ray_engine_gives_the_local_answers(cluster, photos_dir, tmp_path):
    options = AuditOptions(threshold=0.02, top=2, box=64, stride=48, cues=False, mosaic=0,
                           batch_size=4)
    local = audit(photos_dir, tmp_path / "local", model="open-nsfw:onnx", device="cpu",
                  options=options)
    on_ray = audit(photos_dir, tmp_path / "ray", model="open-nsfw:onnx", device="cpu",
                   options=options, engine="ray", ray=RayOptions(actors=2))
    assert (local.images, local.scored, local.failed) == (18, 13, 5)
    assert (on_ray.images, on_ray.scored, on_ray.failed, on_ray.key) == \
        (local.images, local.scored, local.failed, local.key)
    a, b = _rows(tmp_path / "local" / "scores.csv"), _rows(tmp_path / "ray" / "scores.csv")
    assert [r["path"] for r in a] == [r["path"] for r in b]
    exact = _stored_scores(tmp_path / "local"), _stored_scores(tmp_path / "ray")
    assert exact[0].keys() == exact[1].keys() and len(exact[0]) == 13
    for path, score in exact[0].items():  # onnxruntime's threads differ: 1e-7 apart at most
        assert abs(exact[1][path] - score) <= 1e-6
    for x, y in zip(a, b, strict=True):  # scores.csv: 6 decimals, so compared above
        assert {k: v for k, v in x.items() if k != "score" and not k.startswith("p_")} == \
            {k: v for k, v in y.items() if k != "score" and not k.startswith("p_")}
    # bad files: the same rows, with the local engine's reasons word for word
    assert (tmp_path / "local" / "errors.csv").read_bytes() == \
        (tmp_path / "ray" / "errors.csv").read_bytes()
    assert local.metrics.keys() == on_ray.metrics.keys()
    for key, value in local.metrics.items():
        if isinstance(value, float):
            assert on_ray.metrics[key] == pytest.approx(value, abs=1e-6), key
        elif key in ("fp", "fn", "tp", "tn", "confusion"):
            assert on_ray.metrics[key] == value, key
    for name in ("concepts.csv", "parts.csv"):
        x, y = _rows(tmp_path / "local" / name), _rows(tmp_path / "ray" / name)
        assert len(x) == len(y) > 0, name
        for r, s in zip(x, y, strict=True):
            assert r.keys() == s.keys()
            for k in r:
                try:
                    assert float(r[k]) == pytest.approx(float(s[k]), abs=1e-6), (name, k)
                except ValueError:
                    assert r[k] == s[k], (name, k)
    maps = sorted(p.name for p in (tmp_path / "local" / "heatmaps").glob("*.npy"))
    assert maps and maps == sorted(p.name for p in (tmp_path / "ray" / "heatmaps").glob("*.npy"))
    for name in maps:
        np.testing.assert_allclose(np.load(tmp_path / "ray" / "heatmaps" / name),
                                   np.load(tmp_path / "local" / "heatmaps" / name), atol=1e-6)


def _stored_scores(folder: Path) -> dict[str, float]:
    with sqlite3.connect(folder / "audit.sqlite") as con:
        return dict(con.execute("SELECT path, score FROM images WHERE score IS NOT NULL"))


def _small_dataset(root: Path, n: int) -> None:
    rng = np.random.default_rng(1)
    for i in range(n):
        label = "nsfw" if i % 2 else "sfw"
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            root / label / f"img{i:03d}.png")


def _scored(db: Path) -> int:
    """Images with a score in the database at ``db`` (0 while it is still being created)."""
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT COUNT(*) FROM images WHERE score IS NOT NULL"
                               ).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _expected_scores(root: Path) -> dict[str, float]:
    return {str(p): float(np.asarray(Image.open(p).convert("RGB"), np.float64).mean() / 255.0)
            for p in sorted(root.rglob("*.png"))}


def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(cluster, tmp_path):
    _small_dataset(tmp_path / "data", 40)
    pids = tmp_path / "pids"
    pids.mkdir()
    spec = _fake(tmp_path, pids, 0.2)
    killed: list[tuple[int, int]] = []

    def kill_an_actor() -> None:
        db = tmp_path / "out" / "audit.sqlite"
        deadline = time.time() + 120
        while time.time() < deadline:
            actors = [int(p.name) for p in pids.iterdir() if int(p.name) != os.getpid()]
            if actors and db.exists() and _scored(db) >= 4:
                os.kill(actors[0], signal.SIGKILL)
                killed.append((actors[0], _scored(db)))
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_an_actor)
    killer.start()
    result = audit(tmp_path / "data", tmp_path / "out", model=spec,
                   options=AuditOptions(top=0, concepts=False, cues=False, mosaic=0,
                                        batch_size=4),
                   engine="ray", ray=RayOptions(actors=1))
    killer.join()
    assert killed and killed[0][1] < 40, "the actor was not killed mid-run"
    assert {int(p.name) for p in pids.iterdir()} - {killed[0][0], os.getpid()}, \
        "no actor took over after the kill"
    assert (result.images, result.scored, result.failed) == (40, 40, 0)
    expected = _expected_scores(tmp_path / "data")
    assert sorted(r["path"] for r in _rows(tmp_path / "out" / "scores.csv")) == sorted(expected)
    assert _stored_scores(tmp_path / "out") == pytest.approx(expected, abs=1e-6)  # float32


def test_a_killed_driver_leaves_a_run_the_local_engine_resumes(cluster, tmp_path):
    _small_dataset(tmp_path / "data", 40)
    spec = _fake(tmp_path, sleep=0.2)
    args = [str(tmp_path / "data"), "--model", spec, "--top", "2", "--no-concepts", "--no-cues",
            "--mosaic", "0", "-b", "4", "--quiet"]
    address = cluster.get_runtime_context().gcs_address
    driver = subprocess.Popen([sys.executable, "-m", "explain", "audit", *args, "-o",
                               str(tmp_path / "out"), "--engine", "ray", "--address", address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = tmp_path / "out" / "audit.sqlite"
    deadline = time.time() + 120
    while time.time() < deadline and driver.poll() is None:
        if db.exists() and _scored(db) >= 4:
            break
        time.sleep(0.05)
    assert driver.poll() is None, driver.stderr.read().decode()
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    done = _scored(db)
    assert 4 <= done < 40
    options = AuditOptions(top=2, concepts=False, cues=False, mosaic=0, batch_size=4)
    resumed = audit(tmp_path / "data", tmp_path / "out", model=spec, options=options)
    fresh = audit(tmp_path / "data", tmp_path / "fresh", model=spec, options=options)
    assert resumed.resumed and (resumed.key, resumed.scored) == (fresh.key, 40)
    assert (tmp_path / "out" / "scores.csv").read_bytes() == \
        (tmp_path / "fresh" / "scores.csv").read_bytes()


def test_a_broken_model_stops_the_ray_run_with_the_local_error(cluster, tmp_path):
    _small_dataset(tmp_path / "data", 4)
    model = tmp_path / "broken.py"
    model.write_text(  # answers in this process (the driver's checks), fails on the actors
        f"import os\nimport numpy as np\ndef score(batch):\n"
        f"    if os.getpid() != {os.getpid()}:\n        raise RuntimeError('server down')\n"
        f"    return np.full((len(batch), 2), 0.5)\nscore.class_names = ['sfw', 'nsfw']\n")
    with pytest.raises(ModelError, match="raised RuntimeError: server down"):
        audit(tmp_path / "data", tmp_path / "out", model=f"{model}:score",
              options=AuditOptions(concepts=False, cues=False, mosaic=0, batch_size=2),
              engine="ray", ray=RayOptions(actors=1))
    assert _scored(tmp_path / "out" / "audit.sqlite") == 0  # nothing recorded as a bad image


def test_engine_ray_without_ray_is_one_clear_error(tmp_path, monkeypatch):
    _small_dataset(tmp_path / "data", 2)
    spec = _fake(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    out = CliRunner().invoke(app, ["audit", str(tmp_path / "data"), "--model", spec,
                                   "--engine", "ray", "-o",
                                   str(tmp_path / "out"), "--quiet"])
    assert out.exit_code == 2, out.output
    assert "pip install 'explain[ray]'" in out.output
    assert "Traceback" not in out.output
    assert not (tmp_path / "out" / "audit.sqlite").exists()


def test_ray_options_need_engine_ray(tmp_path):
    out = CliRunner().invoke(app, ["audit", str(tmp_path), "--actors", "2", "-o",
                                   str(tmp_path / "out")])
    assert out.exit_code == 2
    assert "--engine ray" in out.output
