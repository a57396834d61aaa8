"""The command line's start-up and its choice options: `explain --help` loads no heavy library,
`--version` names the installed package, a wrong choice is typer's own error listing the values."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

import pytest
from typer.testing import CliRunner

from explain.cli import app

HEAVY = {"torch", "captum", "openTSNE", "jinja2", "cv2", "numpy", "PIL", "fastapi", "uvicorn",
         "starlette"}
LOADED = """
import json, sys
from explain.cli import main
sys.argv = ["explain", *json.loads(sys.argv[1])]
if len(sys.argv) > 1:
    try:
        main()
    except SystemExit:
        pass
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [[], ["--help"], ["models"], ["--version"], ["report", "--help"],
                                  ["grid", "--help"], ["audit", "--help"], ["serve", "--help"]])
def test_start_up_loads_no_heavy_library(args):
    """`import explain.cli`, the help pages and `explain models` run without torch, captum,
    openTSNE, jinja2, OpenCV, numpy or PIL (what made `explain --help` take seconds)."""
    out = subprocess.run([sys.executable, "-c", LOADED, json.dumps(args)], capture_output=True,
                         text=True, check=True, timeout=120)
    assert HEAVY & set(json.loads(out.stderr.strip().splitlines()[-1])) == set()
    if args == ["models"]:
        assert "open-nsfw:onnx" in out.stdout and "file.py:function" in out.stdout


def test_version_is_the_installed_package_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"explain {version('explain')}"


def _flat(text: str) -> str:
    """typer's error box as one line of words."""
    return " ".join(text.replace("│", " ").split())


@pytest.mark.parametrize("args, option, listed", [
    (["occlude", "x.png", "--fill", "grey"], "--fill", "'gray', 'black', 'mean', 'blur'"),
    (["audit", ".", "--fill", "grey"], "--fill", "'gray', 'black', 'mean', 'blur'"),
    (["report", "x.png", "--fill", "grey"], "--fill", "'gray', 'black', 'mean', 'blur'"),
    (["report", "x.png", "--format", "pdf"], "--format", "'html', 'json'"),
    (["grid", ".", "--color-by", "colour"], "--color-by", "'score', 'label', 'none'"),
    (["grid", ".", "--cost", "l1"], "--cost", "'sqeuclidean', 'euclidean'"),
    (["slide", "x.png", "--normalize", "zscore"], "--normalize",
     "'minmax', 'percentile', 'fixed'"),
    (["report", "x.png", "--methods", "occlusion,lime"], "--methods",
     "lime; choose from occlusion,sliding,rise,deconv,guided,gradcam"),
])
def test_a_wrong_choice_is_typers_error_listing_the_values(args, option, listed):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    message = _flat(result.stderr)
    assert f"Invalid value for '{option}'" in message and listed in message, message
    assert "Traceback" not in result.output


def test_choices_are_listed_in_help():
    pages = {command: _flat(CliRunner().invoke(app, [command, "--help"]).stdout)
             for command in ("occlude", "report", "grid")}
    wide = _flat(CliRunner().invoke(app, ["occlude", "--help"], env={"COLUMNS": "160"}).stdout)
    assert "<auto|gray|black|mean|blur>" in wide  # occlusion's fill may be auto (27 characters:
    # at 80 columns rich breaks it inside its column)
    assert "<gray|black|mean|blur>" in pages["report"]  # the deletion fill may not
    assert "<minmax|percentile|fixed>" in pages["occlude"]
    assert "<html|json>" in pages["report"]
    grid = _flat(CliRunner().invoke(app, ["grid", "--help"], env={"COLUMNS": "160"}).stdout)
    assert "<score|label|none>" in grid and "<sqeuclidean|euclidean>" in grid  # --no-scores
    # widens the option column: at 80 columns rich breaks the choices inside theirs
    assert "features, pixels or package.module:fn" in pages["grid"]
