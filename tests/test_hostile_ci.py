"""Issue #10 item 13, the tests that let bad results through: the report command's output is
checked against the library call that should produce it, and a missing browser cannot pass
unseen (a failure under CI, a listed skip elsewhere). See also test_wheel.py (the package as
pip builds it), test_audit_browser.py (audit.html in Chromium) and the content checks of
test_cli_blackbox.py, test_cli_whitebox.py and test_render.py."""

from __future__ import annotations

import json
import re

import pytest
from conftest import find_chromium
from PIL import Image
from typer.testing import CliRunner

from explain import build_report, render_html, report_json
from explain.cli import app
from explain.models import Preprocess, load
from explain.report import Options


def _without_timings(value: object) -> object:
    """``value`` with every timing and creation time left out: all that may differ by run."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if "seconds" not in k and k != "created"}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


TINY_NET = """
import torch
from torch import nn

net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(), nn.Linear(4, 2))
with torch.no_grad():
    gen = torch.Generator().manual_seed(0)
    for p in net.parameters():
        p.copy_(0.3 * torch.randn(p.shape, generator=gen))
"""


@pytest.mark.slow
def test_report_command_writes_the_library_report(tmp_path, photos):
    """`explain report` (JSON and HTML) holds the numbers and the pictures of build_report for
    the same white-box model (a tiny torch net given as ``file.py:net``, so every method runs)."""
    image = tmp_path / "coffee.png"
    Image.fromarray(photos["coffee"][::5, ::5]).save(image)
    (tmp_path / "tiny.py").write_text(TINY_NET)
    spec = f"{tmp_path / 'tiny.py'}:net"
    args = ["report", str(image), "--model", spec, "--logits", "--classes", "sfw,nsfw",
            "--input-size", "32", "--methods", "occlusion,sliding,gradcam", "--box", "40",
            "--stride", "40", "--steps", "3", "--colormap", "viridis", "--alpha", "0.6"]
    runner = CliRunner()
    for fmt in ("json", "html"):
        res = runner.invoke(app, [*args, "--format", fmt, "-o", str(tmp_path / f"r.{fmt}")])
        assert res.exit_code == 0, res.output
    model = load(spec, preprocess=Preprocess(input_size=(32, 32)), class_names=["sfw", "nsfw"],
                 logits=True)
    expected = build_report([image], model=model, methods="occlusion,sliding,gradcam",
                            options=Options(box=40, stride=40, steps=3, colormap="viridis",
                                            alpha=0.6))
    written = json.loads((tmp_path / "r.json").read_text())
    assert _without_timings(written) == _without_timings(
        json.loads(json.dumps(report_json(expected))))
    assert [m["faithfulness"] is not None for m in written["images"][0]["methods"]] == [True] * 3
    pictures = re.compile(r'src="(data:image/[^"]+)"')
    shown = pictures.findall((tmp_path / "r.html").read_text(encoding="utf-8"))
    assert len(shown) == 2 + 2 * 3  # the image, its blurred copy, two panels per method
    assert shown == pictures.findall(render_html(expected))


def test_missing_chromium_fails_under_ci_and_is_a_skip_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium on it
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="under CI the browser tests must run"):
        find_chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
        find_chromium()


def test_pytest_lists_every_skip(pytestconfig):
    assert "-rs" in pytestconfig.getini("addopts")
