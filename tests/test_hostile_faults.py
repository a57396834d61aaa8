"""Faults and hostile use, round 3 (issue 28), outside the service and the animations: a grid's
tiles over its inputs, names longer than the file system takes, tracebacks where one clear line
belongs, '#' in a page name, NaN in float TIFFs, odd Parquet manifests, NUL and bidi controls
in names, and other libraries' log lines."""

from __future__ import annotations

import os

import pytest
from PIL import Image
from test_hostile_cli import BRIGHT, PROBS, _one_red_line
from typer.testing import CliRunner

from explain.cli import app
from explain.files import (
    NAME_MAX,
    atomic_write,
    check_outputs,
    display,
    name_bytes,
    output_names,
    write_text,
)

EMOJI = "😀" * 60  # 240 bytes: a legal name, and 60 characters


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def work(tmp_path, photos, monkeypatch):
    """Six small photos in ``imgs/`` of a working folder, and the brightness model."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXPLAIN_TEST_CALLS", str(tmp_path / "calls.log"))
    (tmp_path / "bright.py").write_text(BRIGHT)
    (tmp_path / "imgs").mkdir()
    for i, (name, photo) in enumerate([(n, p) for n in ("a", "b") for p in photos]):
        Image.fromarray(photos[photo][i * 10:i * 10 + 40, :50]).save(
            tmp_path / "imgs" / f"{name}-{photo}.png")
    return tmp_path


GRID = ["--embed", "pixels", "--color-by", "none", "--layout", "flas"]


# --- high: the grid's tiles never replace an input ---

def test_grid_refuses_a_tiles_folder_holding_an_input(runner, work):
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
    from explain.errors import OptionError
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


def test_long_names_are_shortened_before_the_work_and_said(runner, work):
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


def test_an_output_name_too_long_is_refused_before_the_work(runner, work):
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
