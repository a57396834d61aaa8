"""``precision=`` / ``--precision``: a torch model's forward passes in bf16 (fp16 alike) under
torch.autocast, on the CPU with a tiny net. Every map records its precision and the largest
|Δp| of the explained image against fp32, equal to a recomputation; fp32 maps record nothing
and are what the module gives; models that are not torch refuse a precision but fp32."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from explain import occlusion_map, sliding_window_map
from explain.backprop import guided_backprop
from explain.cli import app
from explain.errors import ModelError
from explain.grad_cam import gradcam
from explain.images import to_tensor
from explain.models import Preprocess, TorchClassifier, load
from explain.models.base import check_precision, precision_deltas
from explain.rise import rise_map

PRE = Preprocess(input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
NET = '''
import torch
from torch import nn


class Net(nn.Module):
    """Two convolutions, a global pool and a linear layer: two logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.flatten(self.pool(x)))


torch.manual_seed(5)
net = Net().eval()
'''


def tiny_net() -> nn.Module:
    """The net of :data:`NET`, seeded: the same weights each call."""
    space: dict = {}
    exec(NET, space)  # noqa: S102 - the test's own module text, shared with the CLI test
    return space["net"]


def classifier(precision: str) -> TorchClassifier:
    return load(tiny_net(), "cpu", preprocess=PRE, class_names=["sfw", "nsfw"], logits=True,
                precision=precision)


@pytest.fixture
def image(photos) -> np.ndarray:
    return np.asarray(Image.fromarray(photos["chelsea"]).resize((48, 40)))


def recomputed(clf: TorchClassifier, image: np.ndarray) -> float:
    """max |p_bf16 − p_fp32| over the classes of ``image``, by hand: the autocast forward
    against the plain one of the same module."""
    x = clf.model_input(to_tensor(image))
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = torch.softmax(clf.module(x).float(), 1)
        exact = torch.softmax(clf.module(x), 1)
    return float((low - exact).abs().max())


def test_every_map_records_bf16_and_its_delta(image):
    """Black-box and white-box maps of a bf16 model record ``precision`` and the image's
    max |Δp| against fp32, equal to the hand recomputation; it is not zero (bf16 ran) and is
    bounded (the map still means something)."""
    clf = classifier("bf16")
    expected = recomputed(clf, image)
    assert 0 < expected < 0.01
    maps = {
        "occlusion": occlusion_map(clf, image, box=8, stride=8, target="nsfw",
                                   incremental=False),
        "occlusion incremental": occlusion_map(clf, image, box=8, stride=8, target="nsfw",
                                               incremental=True),
        "sliding": sliding_window_map(clf, image, box=16, stride=16, target="nsfw"),
        "rise": rise_map(clf, image, masks=8, target="nsfw"),
        "gradcam": gradcam(clf, image, target="nsfw", layer="conv2"),
        "guided": guided_backprop(clf, image, target="nsfw").magnitude,
    }
    for name, hm in maps.items():
        assert hm.params["precision"] == "bf16", name
        assert hm.params["precision_delta"] == expected, name
    assert precision_deltas(clf, to_tensor(image)) == [expected]


def test_fp32_is_the_plain_module_and_records_nothing(image):
    """fp32 (the default) runs the module as it is, no autocast: predict is bit-equal to the
    softmax of the plain forward, and the maps carry no precision keys (their params as
    before)."""
    clf = classifier("fp32")
    x = to_tensor(image)
    with torch.no_grad():
        plain = torch.softmax(clf.module(clf.model_input(x)), 1)
    assert torch.equal(clf.predict(x), plain)
    assert torch.equal(clf.fp32_predict(x), plain)
    assert precision_deltas(clf, x) is None
    occ = occlusion_map(clf, image, box=8, stride=8, target="nsfw")
    cam = gradcam(clf, image, target="nsfw", layer="conv2")
    for hm in (occ, cam):
        assert "precision" not in hm.params and "precision_delta" not in hm.params
    # bf16 weights are never written: the same module in fp32 after a bf16 classifier used it
    low = TorchClassifier(clf.module, PRE, class_names=["sfw", "nsfw"], logits=True,
                          precision="bf16")
    low.predict(x)
    assert all(p.dtype == torch.float32 for p in clf.module.parameters())
    assert torch.equal(clf.predict(x), plain)


def test_bf16_runs_in_bf16_everywhere(image):
    """The forward passes really run in bf16: scores and the incremental engine differ from
    fp32 (by rounding only), features come back as float32, and incremental inference equals
    full re-inference in bf16 up to bf16 rounding."""
    low, exact = classifier("bf16"), classifier("fp32")
    x = to_tensor(image)
    assert not torch.equal(low.predict(x), exact.predict(x))
    full = occlusion_map(low, image, box=8, stride=8, target="nsfw", incremental=False)
    incremental = occlusion_map(low, image, box=8, stride=8, target="nsfw", incremental=True)
    fp32 = occlusion_map(exact, image, box=8, stride=8, target="nsfw", incremental=True)
    assert incremental.params["incremental"] is True
    np.testing.assert_allclose(incremental.values, full.values, atol=2e-3, rtol=0)
    assert not np.array_equal(incremental.values, fp32.values)
    np.testing.assert_allclose(incremental.values, fp32.values, atol=5e-3, rtol=0)


def test_refusals_say_what_to_do(monkeypatch, tmp_path):
    """A precision on a model that is not torch (refused before it is built: no endpoint
    called, no ONNX file read), an unknown precision, a ready classifier in another precision
    and a torch that cannot run the dtype (autocast silently off) are each one ModelError, never
    an fp32 run under another name."""
    with pytest.raises(ModelError, match="not a torch model .*applies to torch models only"):
        load(lambda batch: np.full((len(batch), 2), 0.5), precision="bf16")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    for spec, kind in ((str(tmp_path / "junk.onnx"), "onnxruntime"),
                       ("http://127.0.0.1:9/score", "an HTTP endpoint"),
                       ("open-nsfw:onnx", "onnxruntime")):
        with pytest.raises(ModelError, match=re.escape(
                f"model {spec} is not a torch model ({kind}): precision fp16 (--precision) "
                "applies to torch models only; leave it at fp32")):
            load(spec, "cpu", precision="fp16")
    with pytest.raises(ModelError, match="unknown precision 'fp8'; use one of fp32, bf16, fp16"):
        load(tiny_net(), "cpu", preprocess=PRE, precision="fp8")
    ready = classifier("fp32")
    with pytest.raises(ModelError, match="ready classifier in fp32"):
        load(ready, precision="bf16")
    assert load(classifier("bf16"), precision="bf16").precision == "bf16"

    class Off:  # what torch.autocast does for a dtype it cannot run: warns, runs fp32
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __enter__(self) -> None:
            return None

        def __exit__(self, *args: object) -> None:
            return None

    monkeypatch.setattr(torch, "autocast", Off)
    with pytest.raises(ModelError, match=r"does not run fp16 on cpu .*use --precision fp32"):
        check_precision("fp16", torch.device("cpu"))
    assert check_precision("fp32", torch.device("cpu")) == "fp32"


def test_auto_backend_takes_torch_for_a_precision(monkeypatch):
    """open-nsfw:auto on the CPU is onnx, but onnx runs fp32 only: with bf16 it takes the
    torch backend (the only one that can), and records it."""
    from explain.models import open_nsfw

    asked = []

    def fake(backend: str, **kwargs: object) -> TorchClassifier:
        asked.append(backend)
        return classifier("fp32")

    monkeypatch.setattr(open_nsfw, "classifier", fake)
    assert load("open-nsfw:auto", "cpu").precision == "fp32"
    assert load("open-nsfw:auto", "cpu", precision="bf16").precision == "bf16"
    assert asked == ["onnx", "torch"]


def test_cli_precision_recorded_in_the_map_and_refused_for_other_models(tmp_path, monkeypatch,
                                                                         image):
    """``--precision bf16`` on a torch model from a file: the map's JSON records it and the
    library's delta; on a function model, one red line, exit 2; an unknown value is typer's
    error listing the choices."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny_net.py").write_text(NET)
    (tmp_path / "score.py").write_text("import numpy as np\n\ndef score(batch):\n"
                                       "    return np.full((len(batch), 2), 0.5)\n")
    Image.fromarray(image).save("cat.png")
    options = ["--model", "tiny_net.py:net", "--logits", "--classes", "sfw,nsfw",
               "--input-size", "32", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]
    runner = CliRunner()
    res = runner.invoke(app, ["occlude", "cat.png", *options, "--precision", "bf16", "--box",
                              "8", "--stride", "8", "-o", "out", "--save-npy"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "out" / "cat.occlusion.json").read_text())
    clf = load("tiny_net.py:net", "cpu", preprocess=PRE, class_names=["sfw", "nsfw"],
               logits=True, precision="bf16")
    expected = occlusion_map(clf, image, box=8, stride=8, target="nsfw")
    assert meta["params"]["precision"] == "bf16"
    assert meta["params"]["precision_delta"] == expected.params["precision_delta"] \
        == recomputed(clf, image)
    np.testing.assert_array_equal(np.load("out/cat.occlusion.npy"), expected.values)
    note = (f"bf16: the intact image's p differs from fp32 by up to {recomputed(clf, image):.2g};"
            " the perturbed copies were not checked and may differ more")
    assert expected.precision_note() == note and note in meta["warnings"]
    assert f"({note})" in res.stdout and note[1:] in meta["reading"]  # the sentence's capital
    res = runner.invoke(app, ["score", "cat.png", "--model", "score.py:score", "--precision",
                              "bf16"])
    assert res.exit_code == 2 and res.stderr.startswith("error:"), res.output
    assert "applies to torch models only" in res.stderr and "Traceback" not in res.output
    res = runner.invoke(app, ["occlude", "cat.png", *options, "--precision", "fp8"])
    message = " ".join(res.stderr.replace("│", " ").split())
    assert res.exit_code == 2 and "Invalid value for '--precision'" in message, message
    assert "'fp32', 'bf16', 'fp16'" in message and "Traceback" not in res.output
    wide = CliRunner().invoke(app, ["gradcam", "--help"], env={"COLUMNS": "160"}).stdout
    assert "<fp32|bf16|fp16>" in wide


def test_the_run_key_and_the_service_carry_a_precision():
    """The audit's run key and the service's model name (``describe``) say a precision below
    fp32, so a bf16 audit never resumes an fp32 one; fp32 reads as before, and a bf16 bundled
    model is loaded with its options (not ``plain``)."""
    from explain.cli.common import ModelOptions

    assert ModelOptions("open-nsfw").describe() == "open-nsfw" and ModelOptions("open-nsfw").plain
    low = ModelOptions("open-nsfw", precision="bf16")
    assert low.describe() == "open-nsfw --precision bf16" and not low.plain
