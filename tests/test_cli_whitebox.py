"""`explain deconv/guided/gradcam/layers` through typer's CliRunner, on the real open_nsfw: each
picture and its metadata equal to what the library computes for the same file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from explain import deconvnet, gradcam, guided_backprop
from explain.cli import app
from explain.images import load_image
from explain.render import figure


@pytest.fixture(scope="module")
def files(tmp_path_factory, photos):
    folder = tmp_path_factory.mktemp("imgs")
    cat = folder / "cat.png"
    Image.fromarray(photos["chelsea"][::4, ::4]).save(cat)
    cup = folder / "cup[red].jpg"
    Image.fromarray(photos["coffee"][::5, ::5]).save(cup)
    broken = folder / "broken.jpg"
    broken.write_bytes(b"not an image")
    return {"cat": cat, "cup": cup, "broken": broken}


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def zeiler(_image: np.ndarray, rec) -> np.ndarray:
    return rec.picture()


def magnitude_overlay(image: np.ndarray, rec, **options) -> np.ndarray:
    return figure(image, rec.magnitude, normalize="percentile", **options)


def assert_metadata(meta: dict, expected: dict) -> None:
    """The written metadata is the library's, numbers to float32 precision, timings aside."""
    for key, value in json.loads(json.dumps(expected)).items():
        if key == "seconds":
            continue
        if isinstance(value, float):
            assert meta[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
        else:
            assert meta[key] == value, key


def test_deconv_writes_pictures_and_goes_on_after_a_bad_image(files, tmp_path, nsfw_torch,
                                                              cli_picture):
    res = run("deconv", str(files["cat"]), str(files["broken"]), str(files["cup"]),
              "-o", str(tmp_path), "--batch-size", "1", "--colormap", "jet", "--alpha", "0.5")
    assert res.exit_code == 2, res.output
    assert "broken.jpg" in res.stderr and res.stderr.count("\n") == 1
    for name, stem, shape in (("cat", "cat", (75, 113)), ("cup", "cup[red]", (80, 120))):
        img = load_image(files[name])
        expected = deconvnet(nsfw_torch, img, target="nsfw")
        meta = json.loads((tmp_path / f"{stem}.deconv.json").read_text())
        assert meta["method"] == "deconvnet" and meta["target"] == "nsfw"
        assert meta["shape"] == [*shape, 3] and meta["layer"] is None
        assert_metadata(meta, expected.metadata())
        cli_picture(tmp_path / f"{stem}.deconv.png", zeiler, img, expected)
        cli_picture(tmp_path / f"{stem}.deconv.overlay.png", magnitude_overlay, img, expected,
                    colormap="jet", alpha=0.5)
    assert not list(tmp_path.glob("broken*"))


def test_guided_neuron_mode(files, tmp_path, nsfw_torch, cli_picture):
    res = run("guided", str(files["cat"]), "--layer", "stages.3", "--neuron", "5,1,2",
              "-o", str(tmp_path), "--colormap", "viridis", "--alpha", "0.6")
    assert res.exit_code == 0, res.output
    img = load_image(files["cat"])
    expected = guided_backprop(nsfw_torch, img, layer="stages.3", neuron=(5, 1, 2))
    meta = json.loads((tmp_path / "cat.guided.json").read_text())
    assert meta["layer"] == "stages.3" and meta["neuron"] == [5, 1, 2]
    assert_metadata(meta, expected.metadata())
    assert "stages.3[5, 1, 2]" in res.stdout
    cli_picture(tmp_path / "cat.guided.png", zeiler, img, expected)
    cli_picture(tmp_path / "cat.guided.overlay.png", magnitude_overlay, img, expected,
                colormap="viridis", alpha=0.6)


def test_gradcam_and_guided_gradcam(files, tmp_path, nsfw_torch, cli_picture):
    img = load_image(files["cup"])
    for guided, normalize, stem in ((False, "minmax", "gradcam"),
                                    (True, "percentile", "guided-gradcam")):
        extra = ("--guided",) if guided else ()
        res = run("gradcam", str(files["cup"]), "-t", "sfw", "-o", str(tmp_path), "--colormap",
                  "jet", "--alpha", "0.5", *extra)
        assert res.exit_code == 0, res.output
        assert "cup[red].jpg" in res.stdout  # printed as is, not as rich markup
        expected = gradcam(nsfw_torch, img, target="sfw", guided=guided)
        meta = json.loads((tmp_path / f"cup[red].{stem}.json").read_text())
        assert meta["params"]["layer"] == "stages.3" and meta["target"] == "sfw"
        assert meta["shape"] == [80, 120]
        assert_metadata(meta, expected.metadata())
        cli_picture(tmp_path / f"cup[red].{stem}.png", figure, img, expected, colormap="jet",
                    alpha=0.5, normalize=normalize)


def test_layers_lists_the_names():
    res = run("layers")
    assert res.exit_code == 0, res.output
    assert "stages.3.2.relu2b" in res.stdout and "1024×7×7" in res.stdout


@pytest.mark.parametrize("args, message", [
    (("deconv", "--model", "open-nsfw:onnx"), "explain occlude"),
    (("gradcam", "--model", "open-nsfw:onnx"), "black box"),
    (("guided", "--layer", "nope"), "no layer 'nope'"),
    (("deconv", "--layer", "stages.3", "--neuron", "a,b"), "neuron must be"),
    (("deconv", "--layer", "stages.3", "--neuron", "0,99,0"), "outside layer"),
    (("gradcam", "--layer", "fc"), "N×C×H×W"),
    (("guided", "--target", "porn"), "unknown target"),
])
def test_errors_are_one_line_exit_2(files, tmp_path, args, message):
    res = run(*args[:1], str(files["cat"]), *args[1:], "-o", str(tmp_path))
    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error:")
    assert message in res.stderr and "Traceback" not in res.output


def test_activation_without_a_rule_is_one_line_exit_2(files, tmp_path, monkeypatch):
    """A SiLU net loaded from a file with the model options: guided backprop refuses it in one
    red line naming the module; Grad-CAM of the same model runs."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "silu_net.py").write_text(
        "from torch import nn\n\n"
        "net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Conv2d(4, 1, 3),\n"
        "                    nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()\n"
    )
    options = ("--model", "silu_net.py:net", "--logits", "--classes", "nsfw", "--input-size",
               "32", "-o", str(tmp_path))
    res = run("guided", str(files["cat"]), *options)
    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error:")
    assert "no rule for SiLU, which module '1' (SiLU) applies" in res.stderr
    res = run("gradcam", str(files["cat"]), *options, "--layer", "2")
    assert res.exit_code == 0, res.output
