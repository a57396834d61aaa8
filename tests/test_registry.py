"""The method registry is the one declaration of a method's options: the CLI's options, the
report's, the service's form and its checks are generated from it (explain/methods.py)."""

from __future__ import annotations

import importlib.util
from enum import Enum

import numpy as np
import pytest
import typer
from serve_client import InProcess, png
from typer.testing import CliRunner

from explain.choices import DEFAULT_FILL
from explain.cli import app
from explain.errors import OptionError
from explain.methods import METHODS, REPORT_OPTIONS, SERVICE_OPTIONS, Models, Run
from explain.models import load
from explain.models.base import Preprocess
from explain.report import Options

COMMANDS = {"occlude": METHODS["occlusion"].options, "slide": METHODS["sliding"].options,
            "rise": METHODS["rise"].options, "audit": METHODS["occlusion"].options,
            "report": REPORT_OPTIONS, "deconv": METHODS["deconv"].options,
            "guided": METHODS["guided"].options, "gradcam": METHODS["gradcam"].options}


def brightness(batch: np.ndarray) -> np.ndarray:
    """p(nsfw) = the mean red level of each uint8 image."""
    p = batch[..., 0].reshape(len(batch), -1).mean(axis=1) / 255.0
    return np.stack([1.0 - p, p], axis=1)


@pytest.mark.parametrize("command", COMMANDS)
def test_the_cli_options_of_a_method_are_its_declarations(command):
    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
    for option in COMMANDS[command]:
        param = params[option.name]
        default = param.default.value if isinstance(param.default, Enum) else param.default
        assert (param.opts, param.help, default) == ([option.cli_flag, *option.aliases],
                                                     option.help, option.default)


def test_a_bad_option_is_refused_alike_by_the_cli_the_library_and_the_report(tmp_path):
    """One check, declared once: stride over box, a drill-down fraction out of range and a RISE
    p of 0 get the same message from the command line, Method.check and (for the options it
    takes) the report."""
    image = tmp_path / "x.png"
    image.write_bytes(png(np.zeros((8, 8, 3), np.uint8)))
    cases = [("occlude", ["--box", "8", "--stride", "16"], "occlusion",
              {"box": "8", "stride": "16"}, {"box": 8, "stride": 16}),
             ("occlude", ["--drill-down", "1.5"], "occlusion", {"drill_down": 1.5},
              {"drill_down": 1.5}),
             ("rise", ["--p", "0"], "rise", {"p": 0.0}, None)]
    for command, args, method, given, report in cases:
        with pytest.raises(OptionError) as library:
            METHODS[method].check(given)
        if report is not None:
            with pytest.raises(OptionError) as options:
                Options(**report).check()
            assert str(options.value) == str(library.value)
        result = CliRunner().invoke(app, [command, str(image), *args, "-o", str(tmp_path)])
        assert result.exit_code == 2
        assert str(library.value) in " ".join(result.stderr.split()), result.stderr


def test_a_method_runs_with_its_options_by_name_and_ignores_the_others(photos):
    """Method.run takes the checked values of its own options (absent ones: their defaults); the
    report hands over only the options it declares, so its deletion fill never reaches
    occlusion under occlusion's name."""
    model = load(brightness, class_names=["sfw", "nsfw"],
                 preprocess=Preprocess(input_size=(32, 32)))
    image = next(iter(photos.values()))[:64, :64]
    options = Options(box=32, stride=32, fill="black")
    settings = options.settings
    assert "fill" not in settings
    heatmap = METHODS["occlusion"].run(Models(model, None), image, options)
    assert heatmap.box == (32, 32) and heatmap.params["fill"] == DEFAULT_FILL
    with pytest.raises(OptionError, match="larger than box"):
        METHODS["sliding"].run(Models(model, None), image,
                               Run("nsfw", settings={"box": 8, "stride": 16}))


def test_the_service_form_and_page_fields_are_the_declarations(tmp_path):
    """The form fields of POST /v1/visualizations (OpenAPI) and GET /v1/models's options are
    the registry's declarations; a value is refused by its declared check, naming its field."""
    if importlib.util.find_spec("fastapi") is None:
        pytest.fail("needs the serve extra: pip install -e '.[serve]'")
    from explain.serve.app import FORM_HIGH, Settings, create_app
    from explain.serve.served import serve_models

    model = load(brightness, class_names=["sfw", "nsfw"],
                 preprocess=Preprocess(input_size=(32, 32)))
    app_ = create_app(Settings(data=str(tmp_path / "data")), serve_models(model, "brightness"))
    with InProcess(app_) as server:
        schema = server.call("GET", "/openapi.json").json()
        info = server.call("GET", "/v1/models").json()
        refused = server.submit(png(np.zeros((64, 64, 3), np.uint8)), stride="abc")
    body = next(v for k, v in schema["components"]["schemas"].items()
                if k.startswith("Body_submit"))["properties"]
    for option in SERVICE_OPTIONS:
        field = body[option.name]
        assert (field["description"], field["default"]) == (option.help, option.default)
        assert field.get("minimum") == option.low
        assert field.get("maximum") == FORM_HIGH.get(option.name, option.high)
    assert [o["name"] for o in info["options"]] == [o.name for o in SERVICE_OPTIONS]
    assert all(o["help"] == d.help and o["default"] == d.default
               for o, d in zip(info["options"], SERVICE_OPTIONS, strict=True))
    assert {m["name"]: m["options"] for m in info["methods"]} == {
        name: [o.name for o in m.options if o.service] for name, m in METHODS.items()}
    assert refused.status == 422
    assert refused.json()["detail"] == [{"loc": ["body", "stride"], "type": "value_error",
                                         "msg": "stride must be N (pixels), P% (of the image's "
                                                "shorter side) or H,W of those, got 'abc'"}]


def test_a_report_checks_and_plans_each_method_once_not_per_image(tmp_path, window_plans):
    """A report prepares each method once (Method.prepared: options checked, box and stride
    made into one WindowPlan passed down to every image's map): the WindowPlans it builds
    do not grow with its images."""
    from PIL import Image

    from explain.report import build_report

    model = load(brightness, class_names=["sfw", "nsfw"],
                 preprocess=Preprocess(input_size=(32, 32)))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(paths[-1])
    options = Options(box=16, stride=(8, 0.25), steps=2)
    counts = []
    for n in (1, 3):
        window_plans.clear()
        report = build_report(paths[:n], model=model, methods="occlusion,sliding",
                              options=options)
        assert all(m.error is None and m.params["box_asked"] == 16 for img in report.images
                   for m in img.methods)
        counts.append(len(window_plans))
    # the options' check (Options.check, then each method's) and one plan per method
    assert counts == [5, 5] and window_plans == [(16, (8, 0.25))] * 5
