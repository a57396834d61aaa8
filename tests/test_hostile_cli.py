"""The command line under bad input (issue #10): outputs that would collide with each other or
with the inputs, output locations that cannot be written, unreadable files among good ones,
file names that are not UTF-8 or hold control characters, user models that need --classes or
answer logits, and output that stays whole when piped."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from typer.main import get_command
from typer.testing import CliRunner

from explain.cli import app
from explain.cli.common import ModelOptions
from explain.files import output_names
from explain.occlusion import occlusion_map
from explain.render import figure
from explain.sliding import sliding_window_map

BRIGHT = '''
import os

import numpy as np

LOG = os.environ.get("EXPLAIN_TEST_CALLS")


def _mean(images):
    if LOG:
        with open(LOG, "a") as f:
            f.write(f"{len(images)}\\n")
    return images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0


def probs(images):
    """Two classes, no names: p(1) = mean brightness."""
    m = _mean(images)
    return np.stack([1 - m, m], axis=1)


def logits(images):
    """Logits whose softmax gives p(1) = sigmoid(10 m - 5)."""
    m = _mean(images)
    return np.stack([np.zeros_like(m), 10 * m - 5], axis=1)
'''

TINY_NET = '''
import torch
from torch import nn

torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1),
                    nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
'''
NET_OPTIONS = ["-m", "tinynet.py:net", "--logits", "--classes", "a,b", "--input-size", "32",
               "-t", "b", "--device", "cpu"]
PROBS = ["-m", "bright.py:probs", "--classes", "dark,bright", "-t", "bright"]
SHARED_MODEL_OPTIONS = {"--model", "--device", "--logits", "--classes", "--input-size", "--mean",
                        "--std"}
MODEL_COMMANDS = ("score", "occlude", "slide", "rise", "deconv", "guided", "gradcam", "layers",
                  "grid", "report", "audit")
# a name the operating system refuses even to root (255 bytes is the limit of one name)
TOO_LONG = "x" * 300 + ".png"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def work(tmp_path, photos, monkeypatch):
    """Three different small photos with the same stem in a working folder, and the models."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXPLAIN_TEST_CALLS", str(tmp_path / "calls.log"))
    (tmp_path / "bright.py").write_text(BRIGHT)
    (tmp_path / "tinynet.py").write_text(TINY_NET)
    for folder, name, photo in (("sfw", "photo.jpg", "coffee"), ("nsfw", "photo.jpg", "chelsea"),
                                (".", "photo.png", "astronaut")):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.fromarray(photos[photo][:60, :80]).save(tmp_path / folder / name)
    return tmp_path


def _rgb(path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def _one_red_line(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:"), result.stderr
    for word in words:
        assert word in result.stderr


# --- item 4: unique output names, never over an input or another output ---

def test_output_names_rule():
    assert output_names(["a/x.jpg", "b/y.jpg"]) == ["x", "y"]
    assert output_names(["sfw/photo.jpg", "nsfw/photo.jpg", "photo.png"]) == [
        "sfw__photo.jpg", "nsfw__photo.jpg", "photo.png"]
    assert output_names(["d/a/p.jpg", "d/b/c/p.jpg"]) == ["a__p.jpg", "b__c__p.jpg"]
    assert output_names(["Photo.jpg", "photo.png"]) == ["Photo.jpg", "photo.png"]  # any case
    assert output_names(["p.jpg", "./p.jpg"]) == ["p.jpg", "p.jpg~2"]  # the same file twice
    odd = os.fsdecode(b"caf\xe9.jpg")
    assert os.fsencode(output_names([odd])[0]) == b"caf\xe9"  # lossless


def test_same_stem_inputs_each_get_their_own_map(runner, work):
    result = runner.invoke(app, ["occlude", "sfw", "nsfw/photo.jpg", "photo.png", *PROBS,
                                 "--box", "20", "--stride", "20", "-o", "out"])
    assert result.exit_code == 0, result.output
    from explain.models import load
    clf = load("bright.py:probs", class_names=["dark", "bright"])
    for source, name in (("sfw/photo.jpg", "sfw__photo.jpg"),
                         ("nsfw/photo.jpg", "nsfw__photo.jpg"), ("photo.png", "photo.png")):
        img = _rgb(source)
        expected = figure(img, occlusion_map(clf, img, box=20, stride=20, target="bright"))
        assert np.abs(_rgb(work / "out" / f"{name}.occlusion.png").astype(int)
                      - expected).max() <= 1, name
        assert f"out/{name}.occlusion.png" in result.stdout
    assert len(list((work / "out").iterdir())) == 3


def test_an_output_never_replaces_an_input(runner, work):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save("photo.occlusion.png")
    before = (work / "photo.occlusion.png").read_bytes()
    result = runner.invoke(app, ["occlude", "photo.png", "photo.occlusion.png", *PROBS])
    _one_red_line(result, "would replace the input", "photo.occlusion.png")
    report = runner.invoke(app, ["report", "photo.png", "-o", "photo.png", *PROBS,
                                 "--methods", "occlusion"])
    _one_red_line(report, "would replace the input photo.png")
    grid = runner.invoke(app, ["grid", "sfw", "-o", "sfw/photo.jpg", "--embed", "pixels",
                               "--color-by", "none"])
    _one_red_line(grid, "would replace the input")
    assert (work / "photo.occlusion.png").read_bytes() == before
    assert Image.open("photo.png").size == (80, 60) and Image.open("sfw/photo.jpg").size == (80, 60)
    assert not (work / "calls.log").exists()  # refused before any model call


def test_grid_json_output_is_not_the_mosaic(runner, work):
    result = runner.invoke(app, ["grid", ".", "-o", "x.json", "--embed", "pixels",
                                 "--color-by", "none"])
    _one_red_line(result, "two outputs", "x.json")
    assert not (work / "x.json").exists()


# --- item 5: the output location is checked before the work ---

FOLDER_OUTPUTS = ("occlude", "slide", "rise", "deconv", "guided", "gradcam", "audit")
FILE_OUTPUTS = ("report", "grid")


@pytest.mark.parametrize("command, where", [
    *((c, w) for c in FOLDER_OUTPUTS for w in ("file", "proc")),
    *((c, w) for c in FILE_OUTPUTS for w in ("folder", "proc")),
])
def test_output_location_refused_before_any_work(runner, work, command, where):
    """A folder output at a file, a file output at a folder, an unwritable mount (root
    included): one red line, and no model call has happened."""
    wants_file = command in FILE_OUTPUTS
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(work / "existing.png")
    (work / "existing").mkdir()
    target = {"file": "existing.png", "folder": "existing", "proc": "/proc/explain-out"}[where]
    if where == "proc" and wants_file:
        target += "/r.html"
    model = NET_OPTIONS if command in ("deconv", "guided", "gradcam") else PROBS
    data = ["sfw"] if command in ("grid", "audit") else ["photo.png"]
    extra = ["--methods", "occlusion"] if command == "report" else []
    result = runner.invoke(app, [command, *data, *model, *extra, "-o", target])
    _one_red_line(result, "output" if where != "proc" else "cannot write")
    assert not (work / "calls.log").exists()


# --- item 6: one unreadable path is that file's error, the rest go on ---

def _bad_paths(work) -> list[str]:
    os.mkfifo(work / "fifo.jpg")
    os.symlink(work / "nowhere.jpg", work / "dangling.jpg")
    (work / "folder.jpg").mkdir()
    (work / "folder.jpg" / "inner.txt").write_text("not an image")
    return ["missing.jpg", "fifo.jpg", "dangling.jpg", "folder.jpg/inner.txt", TOO_LONG]


@pytest.mark.parametrize("command", ["score", "occlude", "gradcam"])
def test_unreadable_files_are_per_file_errors(runner, work, command):
    bad = _bad_paths(work)
    model = NET_OPTIONS if command == "gradcam" else PROBS
    extra = [] if command == "score" else ["-o", "out"]
    result = runner.invoke(app, [command, "photo.png", *bad, "sfw/photo.jpg", *model, *extra])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = result.stderr.splitlines()
    assert len(errors) == len(bad) and all(line.startswith("error:") for line in errors)
    assert "too long" in errors[-1].lower()
    assert "photo.png" in result.stdout and "sfw/photo.jpg" in result.stdout


# --- item 9: every command that loads a model takes the same model options ---

def test_every_model_command_has_the_same_model_options():
    group = get_command(app)
    for name in MODEL_COMMANDS:
        options = {o for p in group.commands[name].params for o in p.opts}
        assert SHARED_MODEL_OPTIONS <= options, (name, SHARED_MODEL_OPTIONS - options)


@pytest.mark.parametrize("command, make_map", [("occlude", occlusion_map),
                                               ("slide", sliding_window_map)])
def test_black_box_commands_take_classes_and_logits(runner, work, command, make_map):
    from explain.models import load
    img = _rgb("photo.png")
    for spec, flags in (("bright.py:probs", []), ("bright.py:logits", ["--logits"])):
        result = runner.invoke(app, [command, "photo.png", "-m", spec, *flags, "--classes",
                                     "dark,bright", "-t", "bright", "--box", "20", "--stride",
                                     "20", "--save-npy", "-o", spec.split(":")[1]])
        assert result.exit_code == 0, result.output
        clf = load(spec, class_names=["dark", "bright"], logits=bool(flags))
        expected = make_map(clf, img, box=20, stride=20, target="bright")
        method = "occlusion" if command == "occlude" else "sliding"
        got = np.load(work / spec.split(":")[1] / f"photo.{method}.npy")
        np.testing.assert_allclose(got, expected.values, atol=1e-6)
    no_flag = runner.invoke(app, [command, "photo.png", "-m", "bright.py:logits", "--classes",
                                  "dark,bright", "-t", "bright", "-o", "x"])
    assert no_flag.exit_code == 2 and "--logits" in no_flag.stderr


def test_model_options_describe_keeps_the_old_audit_key():
    assert ModelOptions("open-nsfw:auto").describe() == "open-nsfw:auto"
    assert ModelOptions("m.py:f", logits=True).describe() == "m.py:f --logits"
    assert ModelOptions("m.py:f", classes="a,b", input_size=32).describe() == \
        "m.py:f --classes a,b --input-size 32"


# --- items 3, 10 and 12: any file name, safe on the terminal, whole lines, no empty table ---

@pytest.mark.slow
def test_undecodable_and_control_character_names(runner, work):
    odd, esc = os.fsdecode(b"caf\xe9.png"), "esc\x1b[31mred.png"
    for name in (odd, esc):
        Image.open("photo.png").save(work / name)
    result = runner.invoke(app, ["occlude", odd, esc, *PROBS, "--box", "30", "--stride", "30",
                                 "-o", "out"])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output
    assert "caf\ufffd.png" in result.stdout and "esc\\x1b[31mred.png" in result.stdout
    assert sorted(os.listdir(os.fsencode(work / "out"))) == [
        b"caf\xe9.occlusion.png", b"esc\x1b[31mred.occlusion.png"]
    score = runner.invoke(app, ["score", odd, esc, *PROBS, "--json"])
    assert [row["path"] for row in json.loads(score.stdout)] == ["b:caf\\xe9.png", esc]
    (work / "odd").mkdir()
    for name in (odd, esc, "photo.png", "sfw/photo.jpg"):
        os.replace(work / name, work / "odd" / os.path.basename(name))
    grid = runner.invoke(app, ["grid", "odd", "--embed", "pixels", "--color-by", "none",
                               "-o", "g.png"])
    assert grid.exit_code == 0, grid.output
    assert "\x1b" not in grid.output and "wrote g.png, g.json, g.html" in grid.stdout
    os.replace(work / "odd" / odd, work / odd)
    gradcam = runner.invoke(app, ["gradcam", odd, *NET_OPTIONS, "-o", "wb"])
    assert gradcam.exit_code == 0, gradcam.output
    meta = json.loads((work / "wb" / os.fsdecode(b"caf\xe9.gradcam.json")).read_text())
    assert meta["image"] == "b:caf\\xe9.png"
    report = runner.invoke(app, ["report", odd, f"odd/{esc}", *PROBS, "--methods", "occlusion",
                                 "--box", "30", "--stride", "30", "--steps", "2", "-o", "r.html"])
    assert report.exit_code == 0, report.output
    assert "\x1b" not in report.output
    html = (work / "r.html").read_text(encoding="utf-8")
    assert "caf\ufffd.png" in html  # shown with explain.files.display


def test_report_on_a_folder_without_images(runner, work):
    (work / "empty").mkdir()
    (work / "empty" / "notes.txt").write_text("hello")
    result = runner.invoke(app, ["report", "empty", "-o", "r.html"])
    _one_red_line(result, "no image files in empty")
    assert not (work / "r.html").exists()


def test_piped_score_lines_are_whole_and_no_empty_table(runner, work):
    long_name = "a-rather-long-file-name-" * 6 + ".png"
    Image.open("photo.png").save(work / long_name)
    result = runner.invoke(app, ["score", long_name, *PROBS])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.startswith(long_name))
    m = _rgb(long_name).mean() / 255.0
    assert row.split("\t") == [long_name, f"{1 - m:.4f}", f"{m:.4f}"]
    failed = runner.invoke(app, ["score", "missing.jpg", *PROBS])
    assert failed.exit_code == 2 and failed.stdout == ""


def test_result_lines_do_not_wrap_and_list_every_file(runner, work):
    deep = work / ("folder-with-a-long-name-" * 4) / "photo.jpg"
    deep.parent.mkdir()
    Image.open("photo.png").save(deep)
    result = runner.invoke(app, ["occlude", str(deep), *PROBS, "--box", "30", "--stride", "30",
                                 "--side-by-side",
                                 "--save-npy", "-o", "out"])
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    assert line.startswith(str(deep))
    written = sorted(p.name for p in (work / "out").iterdir())
    assert written == ["photo.occlusion.json", "photo.occlusion.npy", "photo.occlusion.png",
                       "photo.occlusion.side.png"]
    for name in written:
        assert f"out/{name}" in line


def test_report_names_a_refused_file_name_and_goes_on(runner, work):
    """The library turns the system's refusal of a name (too long) into that file's ImageError."""
    report = runner.invoke(app, ["report", "photo.png", TOO_LONG, *PROBS, "--methods",
                                 "occlusion", "--box", "30", "--stride", "30", "--steps", "2",
                                 "-o", "r.html"])
    assert report.exit_code == 2, report.output
    assert "Traceback" not in report.output and "too long" in report.stderr.lower()
    assert (work / "r.html").stat().st_size > 0
