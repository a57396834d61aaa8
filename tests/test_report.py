"""`explain report` and the report library: numbers, failed rows, skipped methods, escaping, CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from explain import build_report, render_html, report_json, write_report
from explain.cli import app
from explain.errors import OptionError
from explain.methods import DEFAULT_METHODS
from explain.models import CallableClassifier, Preprocess, load
from explain.report import METHODS, Options, parse_methods, tie_ranks

FAST = Options(box=16, stride=16, steps=4, masks=64)
HOSTILE = "<script>alert(1)</script>"


class TinyNet(nn.Module):
    """conv → ReLU → global pool → linear: every white-box method works on it, in milliseconds.
    Random weights scaled so that p(nsfw) is about 0.1, not saturated at 0."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def tiny_model(class_names: tuple[str, str] = ("sfw", "nsfw")):
    return load(TinyNet(), "cpu", preprocess=Preprocess(input_size=(32, 32)),
                class_names=list(class_names), logits=True)


def write_images(folder: Path, photos: dict[str, np.ndarray], *, hostile: bool = False
                 ) -> list[Path]:
    """Two small real photos and one broken file; with ``hostile``, a path that holds HOSTILE."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("astronaut", "coffee"):
        path = folder / f"{name}.png"
        Image.fromarray(photos[name][::6, ::6]).save(path)
        paths.append(path)
    if hostile:
        target = folder / "<script>alert(1)<" / "script>.png"
        target.parent.mkdir()
        paths[1].rename(target)
        paths[1] = target
        assert HOSTILE in str(target)
    broken = folder / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 this is not a jpeg")
    return [paths[0], broken, paths[1]]


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory, photos):
    paths = write_images(tmp_path_factory.mktemp("imgs"), photos)
    return build_report(paths, model=tiny_model(), methods=list(METHODS), options=FAST)


@pytest.mark.slow
def test_every_method_on_every_good_image(tiny_report):
    r = tiny_report
    assert r.methods == list(METHODS) and r.notes == []
    good = [img for img in r.images if img.error is None]
    assert len(good) == 2
    for img in good:
        assert [m.method for m in img.methods] == list(METHODS)
        for m in img.methods:
            assert m.error is None and m.skipped is None, (m.method, m.error, m.skipped)
            assert m.seconds > 0 and m.faith_seconds > 0
            assert m.overlay_uri.startswith("data:image/jpeg;base64,")
            assert m.raw_uri.startswith("data:image/jpeg;base64,")
            f = m.faithfulness
            assert len(f["deletion"]) == len(f["insertion"]) == FAST.steps + 1
            assert f["size"] == [32, 32]
        assert img.scores.keys() == {"sfw", "nsfw"}
        assert img.score == pytest.approx(img.scores["nsfw"])
    occlusion = good[0].methods[0]
    assert occlusion.params["box"] == [16, 16] and occlusion.params["stride"] == [16, 16]


def test_bad_image_is_a_failed_row_with_its_reason(tiny_report):
    failed = [img for img in tiny_report.images if img.error]
    assert [Path(img.path).name for img in failed] == ["broken.jpg"]
    assert "cannot decode" in failed[0].error or "not an image" in failed[0].error
    assert failed[0].methods == []


def test_ranks_per_image_and_overall(tiny_report):
    """Every ranked method is ranked on the same images, by tie_ranks of ins − del there."""
    r = tiny_report
    ranked = [s["method"] for s in r.summary]
    assert set(ranked) | set(r.not_ranked) == set(METHODS) and ranked
    compared = [img for img in r.images if img.error is None and img.left_out is None]
    assert compared
    for img in r.images:
        by_name = {m.method: m for m in img.methods}
        if img in compared:
            ms = [by_name[n] for n in ranked]
            assert [m.rank for m in ms] == tie_ranks([m.faithfulness["insertion_minus_deletion"]
                                                      for m in ms])
        assert all(m.rank is None for n, m in by_name.items() if img not in compared
                   or n not in ranked)
    means = {s["method"]: s["insertion_minus_deletion"] for s in r.summary}
    assert [s["rank"] for s in r.summary] == sorted(tie_ranks(list(means.values())))
    for s in r.summary:
        mine = [m for img in compared for m in img.methods if m.method == s["method"]]
        assert s["images"] == len(compared)
        assert s["deletion_auc"] == pytest.approx(np.mean([m.faithfulness["deletion_auc"]
                                                           for m in mine]))
        assert s["wins"] == sum(m.rank == 1 and not m.tied for m in mine)


def test_html_is_self_contained(tiny_report):
    html = render_html(tiny_report)
    sources = re.findall(r'src="([^"]*)"', html)
    good = [img for img in tiny_report.images if not img.error]
    assert len(sources) == sum(2 + 2 * len(img.methods) for img in good)
    assert all(s.startswith("data:image/") for s in sources)
    assert not re.search(r"(href|src)=\"(https?:)?//", html)
    assert "<script" not in html and "<link" not in html
    for i in range(len(tiny_report.images)):
        assert f'id="img-{i}"' in html and f'href="#img-{i}"' in html
    assert "failed: " in html and "broken.jpg" in html
    for title in (m.title for m in METHODS.values()):
        assert f"<h4>{title}" in html


def test_json_has_the_same_numbers(tiny_report):
    data = json.loads(json.dumps(report_json(tiny_report)))
    html = render_html(tiny_report)
    assert data["methods"] == list(METHODS) and data["target"] == "nsfw"
    assert data["options"]["box"] == 16 and data["options"]["steps"] == 4
    first = data["images"][0]
    assert first["error"] is None and first["best"]
    assert data["ranking"]["verdict"] == tiny_report.ranking
    for m in first["methods"]:
        f = m["faithfulness"]
        assert f"{f['deletion_auc']:.3f}" in html and f"{f['insertion_auc']:.3f}" in html
    assert data["images"][1]["error"] and data["images"][1]["methods"] == []
    assert data["summary"] == tiny_report.summary


def _scores_by_brightness(batch: np.ndarray) -> np.ndarray:
    p = batch.reshape(len(batch), -1).mean(1) / 255.0
    return np.stack([1 - p, p], axis=1)


def test_black_box_model_skips_white_box_methods_with_a_note(tmp_path, photos):
    clf = CallableClassifier(_scores_by_brightness, class_names=["dark", "bright"],
                             input_size=(32, 32))
    paths = write_images(tmp_path / "imgs", photos)[:1]
    r = write_report(paths, tmp_path / "r.html", model=clf, options=Options(
        box=16, stride=16, steps=4, target="bright"))
    by_name = {m.method: m for m in r.images[0].methods}
    for name in ("occlusion", "sliding"):
        assert by_name[name].faithfulness is not None
    for name in ("deconv", "guided", "gradcam"):
        assert by_name[name].skipped and by_name[name].faithfulness is None
    assert len(r.notes) == 3 and all("skipped" in n for n in r.notes)
    html = (tmp_path / "r.html").read_text()
    assert html.count('class="note"') >= 3 + 3
    assert "Deconvnet skipped" in html


def test_constant_map_is_shown_but_not_ranked(tmp_path, photos):
    clf = CallableClassifier(lambda b: np.tile([0.25, 0.75], (len(b), 1)),
                             class_names=["a", "b"])
    paths = write_images(tmp_path / "imgs", photos)[:1]
    r = build_report(paths, model=clf, methods="occlusion", options=Options(
        box=40, stride=40, steps=2, target="b"))
    m = r.images[0].methods[0]
    assert m.faithfulness["constant"] and m.rank is None and r.summary == []
    assert "not ranked" in render_html(r)


def test_untrusted_names_are_escaped(tmp_path, photos):
    paths = write_images(tmp_path / "imgs", photos, hostile=True)
    r = build_report(paths, model=tiny_model(("<b>safe</b>", "nsfw")), methods="occlusion",
                     options=FAST)
    html = render_html(r)
    assert HOSTILE not in html and "<b>safe</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;safe&lt;/b&gt;" in html


@pytest.mark.slow
def test_every_registered_method_but_rise_runs_by_default(tmp_path, photos):
    """The report's methods come from the registry; RISE (thousands of model calls per image)
    runs only when asked for."""
    assert list(METHODS) == ["occlusion", "sliding", "rise", "deconv", "guided", "gradcam"]
    assert all(name == m.name for name, m in METHODS.items())
    assert DEFAULT_METHODS == tuple(n for n in METHODS if n != "rise")
    r = build_report(write_images(tmp_path, photos)[:1], model=tiny_model(), options=FAST)
    assert r.methods == list(DEFAULT_METHODS)
    assert [m.method for m in r.images[0].methods] == list(DEFAULT_METHODS)


def test_parse_methods():
    assert parse_methods("gradcam, occlusion,gradcam") == ["gradcam", "occlusion"]
    with pytest.raises(OptionError, match="lime"):
        parse_methods("occlusion,lime")
    with pytest.raises(OptionError, match="none given"):
        parse_methods(" , ")


@pytest.mark.slow
def test_cli_default_model_html_and_json(tmp_path, photos):
    paths = write_images(tmp_path / "imgs", photos)
    runner = CliRunner()
    args = ["report", *map(str, paths), "--methods", "occlusion,gradcam", "--box", "48",
            "--stride", "48", "--steps", "3"]
    out = tmp_path / "r.json"
    res = runner.invoke(app, [*args, "--format", "json", "-o", str(out)])
    assert res.exit_code == 2, res.output
    assert "broken.jpg" in res.output and "Traceback" not in res.output
    data = json.loads(out.read_text())
    assert data["model"] == "open-nsfw:onnx" and data["white_model"] == "open-nsfw"
    assert [img["error"] is None for img in data["images"]] == [True, False, True]
    assert data["images"][0]["methods"][0]["params"]["windows"] == 4
    html = tmp_path / "r.html"
    res = runner.invoke(app, [*args[:2], "-o", str(html), "--methods", "occlusion", "--box",
                              "48", "--stride", "48", "--steps", "3"])
    assert res.exit_code == 0, res.output
    assert html.read_text().startswith("<!DOCTYPE html>")


def test_cli_python_function_model_and_literal_names(tmp_path, photos):
    module = tmp_path / "brightness.py"
    module.write_text("import numpy as np\n\n"
                      "def score(batch):\n"
                      "    p = batch.reshape(len(batch), -1).mean(1) / 255.0\n"
                      "    return np.stack([1 - p, p], axis=1)\n")
    folder = tmp_path / "imgs"
    write_images(folder, photos)
    res = CliRunner().invoke(app, [
        "report", str(folder), "--model", f"{module}:score", "--classes",
        "dark,[bold]bright[/bold]", "--target", "1", "--methods", "occlusion,gradcam",
        "--box", "40", "--stride", "40", "--steps", "2", "-o", str(tmp_path / "r.json"),
        "--format", "json"])
    assert res.exit_code == 2, res.output  # the folder holds broken.jpg
    assert "[bold]bright[/bold]" in res.output and "Grad-CAM skipped" in res.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["target"] == "[bold]bright[/bold]"
    names = [Path(img["path"]).name for img in data["images"]]
    assert names == ["astronaut.png", "broken.jpg", "coffee.png"]
    assert data["images"][0]["methods"][1]["skipped"]


def test_each_panel_says_what_its_colours_mean_from_its_map(tiny_report):
    """Issue 22: the words under a panel come from the map (unit, sign, drawn scale), the
    overlay is shown at its native size (its legend readable), and only occlusion, the one
    signed map, speaks of working against the target."""
    img = next(i for i in tiny_report.images if i.error is None)
    readings = {m.method: m.reading for m in img.methods}
    assert readings["occlusion"].startswith("Colour = drop in p(nsfw): red where the region "
                                            "supports nsfw")
    assert readings["gradcam"].startswith("Colour = Grad-CAM of logit(nsfw) (>= 0), from 0 ")
    for name in ("sliding", "rise", "deconv", "guided", "gradcam"):
        assert "works against" not in readings[name] and "no sign" in readings[name], name
    html = render_html(tiny_report)
    assert readings["gradcam"].replace("(>= 0)", "(&gt;= 0)") in html
    assert 'class="legend" src="data:image/jpeg' in html
    assert "img.legend { max-width: none; }" in html


# --- several models: a column per model ------------------------------------------------------

def test_several_models_get_a_column_each_with_their_own_numbers(tmp_path, photos):
    from explain.report import models_json, write_reports

    def dark(batch: np.ndarray) -> np.ndarray:
        return _scores_by_brightness(batch)[:, ::-1].copy()

    clf = CallableClassifier(dark, class_names=["x", "dark"], input_size=(32, 32))
    paths = write_images(tmp_path / "imgs", photos)  # astronaut, broken, coffee
    o = Options(box=16, stride=16, steps=4, target=1)
    out = tmp_path / "r.html"
    reports = write_reports(paths, out, models=[tiny_model(), clf],
                            methods="occlusion,gradcam", options=o)
    assert [r.model for r in reports] == [tiny_model().name, "dark"]
    alone = build_report(paths, model=clf, methods="occlusion,gradcam", options=o)
    # each column holds exactly what that model's own report holds
    assert reports[1].images[0].methods[0].faithfulness == alone.images[0].methods[0].faithfulness
    assert reports[1].images[2].score == alone.images[2].score
    untimed = [[{k: v for k, v in s.items() if "seconds" not in k} for s in r.summary]
               for r in (reports[1], alone)]
    assert untimed[0] == untimed[1] and reports[1].notes == alone.notes
    # white-box methods only on the model that can run them
    assert reports[0].images[0].methods[1].faithfulness is not None
    assert reports[1].images[0].methods[1].skipped and reports[1].images[0].methods[1].seconds \
        is None
    page = out.read_text()
    heads = re.findall(r'<h3 class="model">([^<]*)</h3>', page)
    # one header row above the rankings and one above each of the two good images
    assert heads == [reports[0].model, "dark"] * 3
    assert "dark: Grad-CAM skipped" in page and page.count('class="panel"') == 2 * 2 * 2
    assert page.count('alt="original"') == 2  # each image shown once, above its columns
    assert f"{alone.images[0].score:.4f}" in page
    data = models_json(reports)
    assert [m["model"] for m in data["models"]] == [reports[0].model, "dark"]
    assert data["models"][1]["images"][0]["methods"][0]["faithfulness"] == \
        alone.images[0].methods[0].faithfulness


def test_cli_report_with_two_models_writes_both_into_the_json(tmp_path, photos):
    module = tmp_path / "brightness.py"
    module.write_text("import numpy as np\n\n"
                      "def bright(batch):\n"
                      "    p = batch.reshape(len(batch), -1).mean(1) / 255.0\n"
                      "    return np.stack([1 - p, p], axis=1)\n\n"
                      "def dark(batch):\n"
                      "    return bright(batch)[:, ::-1].copy()\n")
    paths = write_images(tmp_path / "imgs", photos)
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, [
        "report", str(paths[0]), str(paths[2]), "-m", f"{module}:bright", "-m",
        f"{module}:dark", "--target", "1", "--methods", "occlusion,gradcam", "--box", "40",
        "--stride", "40", "--steps", "2", "-o", str(out), "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert [m["model"] for m in data["models"]] == [f"{module}:bright", f"{module}:dark"]
    for m in data["models"]:
        assert [Path(img["path"]).name for img in m["images"]] == ["astronaut.png", "coffee.png"]
        assert m["images"][0]["methods"][1]["skipped"]
    scores = [m["images"][0]["score"] for m in data["models"]]
    assert scores[0] == pytest.approx(1 - scores[1])
    text = " ".join(res.output.split())
    for name in ("bright", "dark"):
        assert f"note: {module}:{name}: Grad-CAM skipped" in text
        assert f"{module}:{name}: ranking (target 1)" in text
