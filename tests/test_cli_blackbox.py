"""`explain occlude` / `explain slide` through typer's CliRunner: each map and picture equal to
what the library computes for the same file, bad images reported in one line while the others
go on, bad options refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from explain import occlusion_map, sliding_window_map
from explain.cli import app
from explain.images import load_image
from explain.models import load
from explain.render import figure, side_by_side

TINY = '''
import numpy as np

def score(batch):
    """p(1) = mean brightness of the top-left quarter of each uint8 NxHxWx3 image."""
    h, w = batch.shape[1] // 2, batch.shape[2] // 2
    p = batch[:, :h, :w].reshape(len(batch), -1).mean(1) / 255.0
    return np.stack([1 - p, p], axis=1)
'''


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def files(tmp_path, photos, monkeypatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    Image.fromarray(photos["chelsea"][:120, :160]).save("cat.png")
    Image.fromarray(photos["coffee"][:90, :70]).save("cup.jpg")
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "tiny.py").write_text(TINY)
    return {"cat": "cat.png", "cup": "cup.jpg", "bad": "notes.jpg", "model": "tiny.py:score"}


def test_occlude_default_model_writes_overlay_side_by_side_and_npy(runner, files, nsfw_onnx,
                                                                   cli_picture):
    result = runner.invoke(app, ["occlude", files["cat"], "--box", "64", "--stride", "48",
                                 "-o", "out", "--side-by-side", "--save-npy", "--colormap", "jet",
                                 "--alpha", "0.5"])
    assert result.exit_code == 0, result.output
    img = load_image(files["cat"])
    # the default model on CPU is open-nsfw:onnx
    expected = occlusion_map(nsfw_onnx, img, box=64, stride=48, target="nsfw")
    values = np.load("out/cat.occlusion.npy")
    assert values.shape == (120, 160)
    np.testing.assert_allclose(values, expected.values, rtol=0, atol=1e-6)
    meta = json.loads(open("out/cat.occlusion.json").read())
    # rows 0, 48 + flush 56; columns 0, 48, 96: 3 x 3 windows
    assert meta["windows"] == 9 and meta["method"] == "occlusion"
    assert meta["score"] == pytest.approx(expected.score, abs=1e-6)
    assert f"{expected.score:.4f}" in result.stdout
    cli_picture("out/cat.occlusion.png", figure, img, expected, colormap="jet", alpha=0.5)
    cli_picture("out/cat.occlusion.side.png", side_by_side, img, expected, colormap="jet",
                alpha=0.5)
    assert "9 windows" in result.stdout
    assert "out/cat.occlusion.png" in result.stdout.replace("\n", "")


def test_bad_image_is_one_line_and_the_others_go_on(runner, files, cli_picture):
    result = runner.invoke(app, ["occlude", files["cat"], files["bad"], files["cup"], "-m",
                                 files["model"], "--target", "1", "--box", "32", "--stride", "16",
                                 "-o", "out", "--fill", "black", "--save-npy",
                                 "--colormap", "jet", "--alpha", "0.5"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:")
    assert "notes.jpg" in result.stderr and "not an image" in result.stderr
    tiny = load(files["model"])
    for name in ("cat", "cup"):
        img = load_image(files[name])
        expected = occlusion_map(tiny, img, box=32, stride=16, target=1, fill="black")
        np.testing.assert_allclose(np.load(f"out/{name}.occlusion.npy"), expected.values,
                                   rtol=0, atol=1e-6)
        cli_picture(f"out/{name}.occlusion.png", figure, img, expected, colormap="jet",
                    alpha=0.5)


def test_slide_writes_sliding_png(runner, files, cli_picture):
    result = runner.invoke(app, ["slide", files["cup"], "-m", files["model"], "-t", "1",
                                 "--box", "40,30", "--stride", "20,15", "-o", "out",
                                 "--colormap", "viridis", "--alpha", "0.7", "--save-npy"])
    assert result.exit_code == 0, result.output
    img = load_image(files["cup"])
    expected = sliding_window_map(load(files["model"]), img, box=(40, 30), stride=(20, 15),
                                  target=1)
    np.testing.assert_allclose(np.load("out/cup.sliding.npy"), expected.values, rtol=0,
                               atol=1e-6)
    meta = json.loads(open("out/cup.sliding.json").read())
    assert meta["box"] == [40, 30] and meta["stride"] == [20, 15]
    cli_picture("out/cup.sliding.png", figure, img, expected, colormap="viridis", alpha=0.7)


@pytest.mark.parametrize("args,word", [(["--box", "8", "--stride", "16"], "larger than box"),
                                       (["--box", "big"], "--box"),
                                       (["--colormap", "nope"], "colormap"),
                                       (["--target", "7"], "out of range")])
def test_bad_options_are_one_red_line(runner, files, args, word):
    result = runner.invoke(app, ["occlude", files["cup"], "-m", files["model"], "-o", "out",
                                 "-t", "1", *args])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert result.stderr.count("\n") == 1 and word in result.stderr


def test_paths_with_brackets_are_printed_literally(runner, files):
    Image.open(files["cup"]).save("cup[red].png")
    result = runner.invoke(app, ["slide", "cup[red].png", "-m", files["model"], "-t", "1",
                                 "--box", "30", "--stride", "30", "-o", "out", "--no-legend"])
    assert result.exit_code == 0, result.output
    assert "cup[red].png" in result.stdout
    assert Image.open("out/cup[red].sliding.png").size == (70, 90)


def test_occlude_says_when_the_baseline_is_not_below_the_score_and_fill_auto(runner, files):
    # a white image scores 1 on the tiny model; its mean fill is white too (baseline 1)
    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save("white.png")
    args = ["occlude", "white.png", "--model", files["model"], "--target", "1", "--box", "20",
            "--stride", "20", "--save-npy"]
    mean = runner.invoke(app, [*args, "--fill", "mean", "-o", "mean"])
    assert mean.exit_code == 0, mean.output
    line = " ".join(mean.output.split())
    assert "baseline 1 >= image's p(1) 1: the drops measure the fill (try fill auto)" in line
    meta = json.loads(open("mean/white.occlusion.json").read())
    assert meta["params"]["baseline_score"] == 1.0 and len(meta["warnings"]) == 2
    auto = runner.invoke(app, [*args, "--fill", "auto", "-o", "auto"])
    assert auto.exit_code == 0, auto.output
    assert "baseline" not in auto.output
    meta = json.loads(open("auto/white.occlusion.json").read())
    assert meta["params"]["fill_asked"] == "auto" and meta["params"]["fill"] == "black"
    assert meta["params"]["baseline_score"] == 0.0 and meta["warnings"] == []


@pytest.mark.parametrize("command", ["occlude", "slide"])
def test_one_window_plan_for_all_the_images_of_a_command(runner, files, window_plans,
                                                           command):
    # the checked --box/--stride make one WindowPlan that every image's map gets; the other
    # is the options' check (the registry's); maps equal the library's with box and stride
    Image.fromarray(np.full((50, 60, 3), 90, np.uint8)).save("gray.png")
    args = [command, files["cat"], files["cup"], "gray.png", "--box", "32", "--stride",
            "24,25%", "-m", files["model"], "--target", "1", "--save-npy", "-o", "out"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert window_plans == [(32, (24, 0.25))] * 2
    make = occlusion_map if command == "occlude" else sliding_window_map
    name = "occlusion" if command == "occlude" else "sliding"
    expected = make(load(files["model"]), load_image(files["cup"]), box=32, stride=(24, 0.25),
                    target=1)
    np.testing.assert_array_equal(np.load(f"out/cup.{name}.npy"), expected.values)
