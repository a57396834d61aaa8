"""Faults and hostile use, round 3 (issue 28), outside the service and the animations: a grid's
tiles over its inputs, names longer than the file system takes, tracebacks where one clear line
belongs, '#' in a page name, NaN in float TIFFs, odd Parquet manifests, NUL and bidi controls
in names, and other libraries' log lines."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import test_hostile_cli as hostile
from conftest import need_module
from PIL import Image
from test_hostile_cli import BRIGHT, PROBS, _one_red_line

from explain.audit import AuditOptions, audit, open_dataset
from explain.cli import app
from explain.errors import ImageError, OptionError
from explain.files import (
    NAME_MAX,
    atomic_write,
    check_outputs,
    display,
    name_bytes,
    output_names,
    write_text,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
EMOJI = "😀" * 60  # 240 bytes: a legal name, and 60 characters


runner, work = hostile.runner, hostile.work  # the CLI runner and a working folder, shared


@pytest.fixture
def imgs(work, photos):
    """Six small photos in ``imgs/`` of the working folder of ``work``."""
    (work / "imgs").mkdir()
    for i, (name, photo) in enumerate([(n, p) for n in ("a", "b") for p in photos]):
        Image.fromarray(photos[photo][i * 10:i * 10 + 40, :50]).save(
            work / "imgs" / f"{name}-{photo}.png")
    return work / "imgs"


GRID = ["--embed", "pixels", "--color-by", "none", "--layout", "flas"]


# --- high: the grid's tiles never replace an input ---

def test_grid_refuses_a_tiles_folder_holding_an_input(runner, work, imgs):
    inner = work / "imgs" / "grid_tiles" / "0"
    inner.mkdir(parents=True)
    Image.open(work / "imgs" / "a-coffee.png").convert("RGB").save(inner / "0_0.jpg")
    before = (inner / "0_0.jpg").read_bytes()
    result = runner.invoke(app, ["grid", "imgs", "-o", "imgs/grid.png", *GRID])
    _one_red_line(result, "output folder imgs/grid_tiles holds the input",
                  "imgs/grid_tiles/0/0_0.jpg")
    assert (inner / "0_0.jpg").read_bytes() == before
    assert not (work / "imgs" / "grid.json").exists()  # refused before any work
    # the same folder through a link is the same folder
    os.symlink(work / "imgs" / "grid_tiles", work / "link_tiles")
    linked = runner.invoke(app, ["grid", "imgs", "-o", "link.png", *GRID])
    _one_red_line(linked, "output folder link_tiles holds the input")
    # a tiles folder that is a file is refused too, and an empty one is used
    (work / "x_tiles").write_text("not a folder")
    _one_red_line(runner.invoke(app, ["grid", "imgs", "-o", "x.png", *GRID]),
                  "output folder x_tiles is a file")
    (work / "y_tiles").mkdir()
    result = runner.invoke(app, ["grid", "imgs", "-o", "y.png", *GRID])
    assert result.exit_code == 0, result.output
    assert (work / "y_tiles" / "0" / "0_0.jpg").is_file()


def test_check_outputs_folders(tmp_path):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    inputs = [tmp_path / "imgs" / "a.png", tmp_path / "imgs" / "sub" / "b.png"]
    check_outputs([], inputs, folders=[tmp_path / "imgs_tiles", tmp_path / "imgs" / "new"])
    with pytest.raises(OptionError, match="holds the input .*b.png"):
        check_outputs([], inputs, folders=[tmp_path / "imgs" / "sub"])
    with pytest.raises(OptionError, match="holds the input .*a.png"):
        check_outputs([], inputs, folders=[tmp_path])


# --- names longer than the file system takes ---

def test_temporary_names_fit_any_legal_name(tmp_path):
    target = tmp_path / ("😀" * 62 + "xy.png")  # 254 bytes, 68 characters
    assert name_bytes(target.name) == 254
    with atomic_write(target) as f:
        f.write(b"x")
    assert os.listdir(tmp_path) == [target.name]
    write_text(tmp_path / (os.fsdecode(b"\xff" * 250) + ".txt"), "y")  # undecodable bytes


def test_output_names_are_shortened_uniquely():
    long_a, long_b = "a" * 200 + "-one", "a" * 200 + "-two"
    names = output_names([f"{long_a}.jpg", f"{long_b}.jpg", "short.jpg", f"{EMOJI}.jpg"],
                         room=60)
    assert names[2] == "short"
    assert all(name_bytes(n) <= NAME_MAX - 60 for n in names)
    assert names[0] != names[1] and names[0].startswith("a" * 150)
    assert names[3].startswith("😀" * 40) and "\ufffd" not in names[3]  # cut between characters
    assert names == output_names([f"{long_a}.jpg", f"{long_b}.jpg", "short.jpg", f"{EMOJI}.jpg"],
                                 room=60)  # stable
    assert output_names([f"{long_a}.jpg"]) == [long_a]  # fits: unchanged


def test_long_names_are_shortened_before_the_work_and_said(runner, work, imgs):
    emoji, long = f"{EMOJI}.jpg", "y" * 249 + ".jpg"
    for name in (emoji, long):
        Image.open(work / "imgs" / "a-coffee.png").convert("RGB").save(work / name)
    fits = runner.invoke(app, ["occlude", emoji, *PROBS, "--box", "20", "--stride", "20",
                               "-o", "fits"])
    assert fits.exit_code == 0, fits.output
    assert os.listdir(work / "fits") == [f"{EMOJI}.occlusion.png"]  # 254 bytes: kept whole
    assert "shortened" not in fits.stderr
    result = runner.invoke(app, ["occlude", emoji, long, *PROBS, "--box", "20", "--stride",
                                 "20", "--side-by-side", "--save-npy", "-o", "out"])
    assert result.exit_code == 0, result.output
    written = os.listdir(work / "out")
    assert len(written) == 8 and all(name_bytes(n) <= NAME_MAX for n in written)
    assert result.stderr.count("output name shortened") == 2  # .side.png would not fit
    assert len({n.split(".occlusion")[0] for n in written}) == 2  # one NAME per input
    assert "Traceback" not in result.output


def test_an_output_name_too_long_is_refused_before_the_work(runner, work, imgs):
    report = runner.invoke(app, ["report", "imgs/a-coffee.png", *PROBS, "--methods",
                                 "occlusion", "-o", "r" * 300 + ".html"])
    _one_red_line(report, "bytes, over the 255 bytes")
    grid = runner.invoke(app, ["grid", "imgs", "-o", "g" * 250 + ".png", *GRID])
    _one_red_line(grid, "g" * 250 + "_tiles is 256 bytes")
    assert not (work / "calls.log").exists()


# --- names shown safely: bidirectional controls and NUL ---

def test_display_neutralises_bidi_controls():
    assert display("photo\u202egpj.exe") == "photo\\u202egpj.exe"
    assert display("a\u2066b\u2069c\u200fd\u2028e") == "a\\u2066b\\u2069c\\u200fd\\u2028e"
    assert display("a\x00b") == "a\\x00b"
    assert display("שלום.jpg") == "שלום.jpg"  # right-to-left text itself is kept


# --- one clear line, never a traceback, and nothing crashes after the work ---

def _brightness(batch: np.ndarray) -> np.ndarray:
    s = batch.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0
    return np.stack([1.0 - s, s], axis=1)


def _one_class(batch: np.ndarray) -> np.ndarray:
    """A model of one class: p(nsfw) = mean brightness."""
    return _brightness(batch)[:, 1:]


_brightness.class_names = ["sfw", "nsfw"]
_one_class.class_names = ["nsfw"]


def test_rise_cell_is_checked_against_the_memory_budget(runner, work, imgs, monkeypatch):
    from explain.models import load
    from explain.rise import rise_map
    clf = load(_brightness)
    img = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(OptionError, match=r"RISE masks of 1000000x1000000 cells on a 40x50 work "
                       r"image would need about .* TiB, over the memory budget.*smaller --cell"):
        rise_map(clf, img, cell=1_000_000, masks=4, target="nsfw")
    monkeypatch.setenv("EXPLAIN_MEMORY_BUDGET", "64M")
    with pytest.raises(OptionError, match="batches of 100 RISE masks.*--batch-size"):
        rise_map(clf, img, cell=500, masks=200, batch_size=100, target="nsfw")
    small = rise_map(clf, img, cell=500, masks=8, target="nsfw")  # the default batch: fitted
    assert small.params["batch_size"] < 16 and small.values.shape == (40, 50)
    result = runner.invoke(app, ["rise", "imgs/a-coffee.png", *PROBS, "--cell", "1000000",
                                 "-o", "out"])
    _one_red_line(result, "imgs/a-coffee.png: one of the RISE masks", "--cell")


def test_parquet_manifests_with_two_path_columns_or_binary_paths(tmp_path):
    pa = need_module("pyarrow", "ray", "Parquet manifest tests")
    pq = need_module("pyarrow.parquet", "ray", "Parquet manifest tests")
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["a.png"]), pa.array(["b.png"])],
                                        names=["path", "path"]), manifest)
    with pytest.raises(OptionError, match="m.parquet has 2 'path' columns; keep one"):
        open_dataset(manifest, ["sfw", "nsfw"])
    raw = [b"caf\xe9.png", "é.png".encode(), b"x\x00y.png"]
    pq.write_table(pa.table({"path": pa.array(raw, pa.binary()),
                             "label": pa.array([b"nsfw", None, b"sfw"], pa.binary())}), manifest)
    rows = list(open_dataset(manifest, ["sfw", "nsfw"]))
    assert [os.fsencode(r.path.name) for r in rows] == raw  # the exact bytes, not "b'…'"
    assert [r.label for r in rows] == ["nsfw", None, "sfw"]
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.fsdecode(tmp_path / os.fsdecode(raw[0])))
    result = audit(manifest, tmp_path / "out", model=_brightness,
                   options=AuditOptions(top=0, concepts=False, cues=False, mosaic=0))
    assert (result.images, result.scored, result.failed) == (3, 1, 2)
    text = (tmp_path / "out" / "errors.csv").read_text(encoding="utf-8")
    assert "\x00" not in text  # a NUL would stop every CSV reader
    errors = list(csv.DictReader(text.splitlines()))
    assert sorted(e["path"] for e in errors) == [str(tmp_path / "é.png"),
                                                 f"b:{tmp_path}/x\\x00y.png"]


def test_an_audit_with_a_one_class_model_writes_its_outputs(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(8):
        folder = tmp_path / "data" / ("nsfw" if i % 2 else "other")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    options = AuditOptions(top=2, concepts=False, cues=False, mosaic=0, box=6, stride=6)
    for _ in range(2):  # the run and its resume
        result = audit(tmp_path / "data", tmp_path / "out", model=_one_class, options=options)
        assert (result.images, result.scored) == (8, 8)
    rows = list(csv.DictReader((tmp_path / "out" / "scores.csv").open()))
    assert {r["predicted"] for r in rows} <= {"nsfw", "not-nsfw"}  # one column: a binary pair
    assert result.metrics["confusion_columns"] == ["not-nsfw", "nsfw"]
    assert sum(map(sum, result.metrics["confusion"])) == 4
    assert (tmp_path / "out" / "audit.html").stat().st_size > 0


@pytest.mark.parametrize("embed", ["features", "one"])
def test_grid_of_one_dimensional_embeddings(embed):
    from explain.grid import similarity_grid
    from explain.models import load
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(9)]
    spec = "features" if embed == "features" else f"{__name__}:_one_number"
    result = similarity_grid(images, load(_one_class), embed=spec, layout="tsne-jv")
    # a one-column model's probabilities are its binary pair (1 - p, p); a function's one number
    assert result.embedding.shape == ((9, 2) if embed == "features" else (9, 1))
    assert sorted(map(tuple, result.cells.tolist())) == [(r, c) for r in range(3)
                                                         for c in range(3)]


def _one_number(images: np.ndarray) -> np.ndarray:
    """An --embed function of one number per image."""
    return images.astype(np.float32).mean(axis=(1, 2, 3))[:, None]


def test_float_tiffs_with_nan_or_inf_are_refused_like_arrays(tmp_path):
    from explain.images import as_rgb, load_image
    values = np.full((6, 7), 0.5, np.float32)
    for bad in (np.nan, np.inf):
        values[2, 3] = bad
        path = tmp_path / "f.tif"
        Image.fromarray(values, "F").save(path)
        with pytest.raises(ImageError, match=r"f.tif: contains NaN or infinite values \(1 of 42"):
            load_image(path)
        with pytest.raises(ImageError, match=r"contains NaN or infinite values"):
            as_rgb(values)
    values[2, 3] = 0.25
    Image.fromarray(values, "F").save(tmp_path / "ok.tif")
    assert load_image(tmp_path / "ok.tif")[2, 3].tolist() == [64, 64, 64]


def test_a_model_error_line_names_the_file(runner, work, imgs):
    (work / "nanny.py").write_text(
        "import numpy as np\n"
        "def probs(images):\n"
        "    m = images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0\n"
        "    return np.stack([1 - m, np.full_like(m, np.inf)], axis=1)\n")
    result = runner.invoke(app, ["score", "imgs/a-coffee.png", "-m", "nanny.py:probs",
                                 "--classes", "a,b"])
    _one_red_line(result, "imgs/a-coffee.png: model nanny.py:probs returned NaN or infinite")


@pytest.mark.slow
def test_opencv_and_ffmpeg_print_no_lines_of_their_own(tmp_path):
    import cv2
    writer = cv2.VideoWriter(str(tmp_path / "v.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10,
                             (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(20):
        writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()
    data = bytearray((tmp_path / "v.mp4").read_bytes())
    (tmp_path / "half.mp4").write_bytes(bytes(data[:len(data) // 2]))  # no moov atom
    for k in range(2000, len(data) - 2000, 97):
        data[k] ^= 0xFF
    (tmp_path / "damaged.mp4").write_bytes(bytes(data))
    (tmp_path / "bright.py").write_text(BRIGHT)
    done = subprocess.run([sys.executable, "-m", "explain", "score", "half.mp4", "damaged.mp4",
                           "-m", "bright.py:probs"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    lines = done.stderr.splitlines()
    assert lines and all(line.startswith(("error: ", "note: ")) for line in lines), done.stderr
    assert "error: half.mp4: cannot be opened as a video" in lines[0]


NAN_NET = '''
import torch
from torch import nn

torch.manual_seed(0)


class Net(nn.Module):
    """Two logits; NaN for a bright image."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        out = self.head(torch.relu(self.conv(x))).mean(dim=(2, 3))
        bright = (x.mean(dim=(1, 2, 3)) > 0.6)[:, None]
        return torch.where(bright, torch.full_like(out, float("nan")), out)


net = Net()
'''


def test_a_white_box_batch_names_the_failing_file_and_goes_on(runner, work):
    (work / "nannet.py").write_text(NAN_NET)
    for name, level in (("dark.png", 20), ("white.png", 250), ("grey.png", 100)):
        Image.new("RGB", (30, 30), (level,) * 3).save(work / name)
    result = runner.invoke(app, ["gradcam", "dark.png", "white.png", "grey.png", "-m",
                                 "nannet.py:net", "--logits", "--classes", "a,b", "-t", "b",
                                 "--device", "cpu", "--input-size", "32", "-o", "out"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr == "error: white.png: model nannet.py:net returned NaN or infinite " \
                            "scores\n"
    assert sorted(os.listdir(work / "out")) == ["dark.gradcam.json", "dark.gradcam.png",
                                                "grey.gradcam.json", "grey.gradcam.png"]
