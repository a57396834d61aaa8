"""`explain deconv/guided/gradcam/layers` through typer's CliRunner, on the real open_nsfw."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from explain.backprop import deconvnet
from explain.cli import app
from explain.grad_cam import gradcam
from explain.images import load_image
from explain.render import Scale, figure, with_legend


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


def test_deconv_writes_pictures_and_goes_on_after_a_bad_image(files, tmp_path, nsfw_torch):
    res = run("deconv", str(files["cat"]), str(files["broken"]), str(files["cup"]),
              "-o", str(tmp_path), "--batch-size", "1")
    assert res.exit_code == 2, res.output
    assert "broken.jpg" in res.stderr and res.stderr.count("\n") == 1
    for stem, shape in (("cat", (75, 113)), ("cup[red]", (80, 120))):
        img = load_image(files["cat" if stem == "cat" else "cup"])
        rec = deconvnet(nsfw_torch, img)
        picture = np.array(Image.open(tmp_path / f"{stem}.deconv.png"))
        m = rec.image_scale()
        labelled = replace(rec.magnitude, unit="relevance (a.u.) per channel, grey = 0")
        assert np.array_equal(picture, with_legend(rec.image(), labelled, Scale("gray", -m, m)))
        expected = figure(img, rec.magnitude, normalize="percentile")
        assert np.array_equal(np.array(Image.open(tmp_path / f"{stem}.deconv.overlay.png")),
                              expected)
        meta = json.loads((tmp_path / f"{stem}.deconv.json").read_text())
        assert meta["method"] == "deconvnet" and meta["target"] == "nsfw"
        assert meta["shape"] == [*shape, 3] and meta["layer"] is None
    assert not list(tmp_path.glob("broken*"))


def test_guided_neuron_mode(files, tmp_path):
    res = run("guided", str(files["cat"]), "--layer", "stages.3", "--neuron", "5,1,2",
              "-o", str(tmp_path))
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "cat.guided.json").read_text())
    assert meta["layer"] == "stages.3" and meta["neuron"] == [5, 1, 2]
    assert "stages.3[5, 1, 2]" in res.stdout
    assert (tmp_path / "cat.guided.png").is_file()
    assert (tmp_path / "cat.guided.overlay.png").is_file()


def test_gradcam_and_guided_gradcam(files, tmp_path, nsfw_torch):
    img = load_image(files["cup"])
    for extra, stem in (((), "gradcam"), (("--guided",), "guided-gradcam")):
        res = run("gradcam", str(files["cup"]), "-t", "sfw", "-o", str(tmp_path), *extra)
        assert res.exit_code == 0, res.output
        assert "cup[red].jpg" in res.stdout  # printed as is, not as rich markup
        expected = figure(img, gradcam(nsfw_torch, img, target="sfw", guided=bool(extra)),
                          normalize="percentile" if extra else "minmax")
        assert np.array_equal(np.array(Image.open(tmp_path / f"cup[red].{stem}.png")), expected)
        meta = json.loads((tmp_path / f"cup[red].{stem}.json").read_text())
        assert meta["params"]["layer"] == "stages.3" and meta["target"] == "sfw"


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
