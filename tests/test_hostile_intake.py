"""Hostile input to the one image intake (explain.images) and to the audit: mixed image sizes,
every array form a user may pass, odd file names, label files and folders."""

from __future__ import annotations

import csv
import json
import os
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torch import nn
from typer.testing import CliRunner

from explain.audit import AuditOptions, Part, audit, open_dataset
from explain.backprop import deconvnet, guided_backprop
from explain.cli import app
from explain.errors import ExplainError, ImageError, ModelError, OptionError
from explain.faithfulness import faithfulness
from explain.files import from_storable, to_storable
from explain.grad_cam import gradcam
from explain.images import as_rgb, load_image, to_tensor
from explain.models import CallableClassifier, Preprocess, load
from explain.occlusion import occlusion_map
from explain.sliding import sliding_window_map


def _save(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _quick(batch_size: int | None = None, **kw) -> AuditOptions:
    return AuditOptions(**{"concepts": False, "top": 0, "mosaic": 0, "batch_size": batch_size,
                           **kw})


# --- item 1: one image representation through the audit ---------------------------------------

@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory) -> Path:
    """Photos at exactly open_nsfw's input size (256×256) and at other sizes, interleaved so that
    every batch size mixes them."""
    root = tmp_path_factory.mktemp("mixed")
    at_input = lambda rgb: cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_AREA)  # noqa: E731
    images = {
        "a_astronaut256.png": at_input(skdata.astronaut()),
        "b_coffee.png": skdata.coffee()[::2, ::2],
        "c_chelsea256.png": at_input(skdata.chelsea()),
        "d_rocket.png": skdata.rocket()[::2, ::2],
        "e_retina256.png": at_input(skdata.retina()),
        "f_ihc.png": skdata.immunohistochemistry()[::3, ::3],
        "g_coffee256.png": skdata.coffee()[:256, 100:356],
    }
    for name, rgb in images.items():
        _save(root / name, rgb)
    return root


def test_audit_scores_equal_explain_score_for_every_batch_size(mixed_sizes, nsfw_onnx,
                                                               tmp_path):
    paths = sorted(str(p) for p in mixed_sizes.iterdir())
    assert sum(load_image(p).shape[:2] == (256, 256) for p in paths) == 4
    result = CliRunner().invoke(app, ["score", *paths, "--json", "--model", "open-nsfw:onnx",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    cli = {row["path"]: row["scores"]["nsfw"] for row in json.loads(result.stdout)}
    library = {p: float(nsfw_onnx.predict(to_tensor(load_image(p)))[0, 1]) for p in paths}
    assert set(cli) == set(paths)
    for p in paths:
        assert cli[p] == pytest.approx(library[p], abs=1e-6)
    for batch_size in (1, 2, 3, 7):
        out = tmp_path / f"audit{batch_size}"
        audit(mixed_sizes, out, model=nsfw_onnx, options=_quick(batch_size))
        rows = {r["path"]: r for r in _read_csv(out / "scores.csv")}
        assert set(rows) == set(paths)
        for p in paths:
            assert float(rows[p]["score"]) == pytest.approx(cli[p], abs=1e-6), (batch_size, p)
            assert float(rows[p]["p_nsfw"]) == pytest.approx(cli[p], abs=1e-6), (batch_size, p)


@pytest.mark.slow
def test_audit_scores_equal_library_scores_for_a_model_without_input_size(mixed_sizes,
                                                                          tmp_path):
    clf = _brightness()
    want = {str(p): float(clf.predict(to_tensor(load_image(p)))[0, 1])
            for p in mixed_sizes.iterdir()}
    for batch_size in (1, 2, 3, 7):
        out = tmp_path / f"audit{batch_size}"
        audit(mixed_sizes, out, model=clf, options=_quick(batch_size))
        got = {r["path"]: float(r["score"]) for r in _read_csv(out / "scores.csv")}
        assert got == pytest.approx(want, abs=1e-6)


# --- item 8: one intake for every method -------------------------------------------------------

def _net() -> nn.Module:
    """Two 3×3 convolutions with fixed weights, global mean, two logits: a white box whose map
    depends on every pixel value."""
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return net.eval()


@pytest.fixture(scope="module")
def white_box_model():
    return load(_net(), "cpu", preprocess=Preprocess(input_size=None), class_names=["a", "b"],
                logits=True)


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)


def _forms(rgb: np.ndarray, folder: Path) -> dict[str, object]:
    path = _save(folder / "img.png", rgb)
    return {"path": path, "str path": str(path), "bytes path": os.fsencode(path),
            "uint8": rgb, "float32 [0,1]": rgb.astype(np.float32) / 255,
            "float64 [0,1]": rgb / 255.0, "int64": rgb.astype(np.int64),
            "uint16 0..255": rgb.astype(np.uint16), "nested list": rgb.tolist(),
            "nested float list": (rgb / 255.0).tolist()}


def _maps(model, image) -> dict[str, np.ndarray]:
    return {
        "occlusion": occlusion_map(model, image, box=4, stride=3, target="b").values,
        "sliding": sliding_window_map(model, image, box=4, stride=3, target="b").values,
        "deconvnet": deconvnet(model, image, target="b").values,
        "guided": guided_backprop(model, image, target="b").values,
        "gradcam": gradcam(model, image, target="b", layer="2").values,
        "faithfulness": np.array(faithfulness(model, image, np.arange(120.0).reshape(12, 10),
                                              steps=4, target="b")["deletion"]),
    }


@pytest.mark.slow
def test_every_form_of_one_image_gives_the_same_maps(white_box_model, pixels, tmp_path):
    want = _maps(white_box_model, pixels)
    for form, image in _forms(pixels, tmp_path).items():
        got = _maps(white_box_model, image)
        for method in want:
            np.testing.assert_array_equal(got[method], want[method], err_msg=f"{form} {method}")
    assert as_rgb(np.array([[0.5]])).tolist() == [[[128, 128, 128]]]


def test_grayscale_and_rgba_arrays_mean_what_their_files_mean(white_box_model, pixels, tmp_path):
    gray = pixels[:, :, 0]
    for image in (gray, gray[:, :, None], gray / 255.0):
        np.testing.assert_array_equal(as_rgb(image), np.repeat(gray[:, :, None], 3, axis=2))
    rgba = np.dstack([pixels, np.linspace(0, 255, 120).reshape(12, 10).astype(np.uint8)])
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    from_file = load_image(path)
    np.testing.assert_array_equal(as_rgb(rgba), from_file)
    np.testing.assert_array_equal(
        occlusion_map(white_box_model, rgba, box=4, stride=3, target="b").values,
        occlusion_map(white_box_model, path, box=4, stride=3, target="b").values)


BAD_IMAGES = {
    "float 0..255": (np.full((8, 8, 3), 200.0), r"outside \[0, 1\].*image / 255"),
    "float slightly above 1": (np.full((8, 8, 3), 1.5, np.float32), r"outside \[0, 1\]"),
    "negative float": (np.full((8, 8, 3), -0.1), r"outside \[0, 1\]"),
    "int above 255": (np.full((8, 8, 3), 300), r"outside 0\.\.255"),
    "negative int": (np.full((8, 8, 3), -1), r"outside 0\.\.255"),
    "NaN": (np.full((8, 8, 3), np.nan), "NaN"),
    "inf": (np.full((8, 8, 3), np.inf, np.float32), "infinite"),
    "empty": (np.zeros((0, 0, 3), np.uint8), "empty"),
    "empty list": ([[]], "empty"),
    "1-d": (np.zeros(5, np.uint8), "shape"),
    "channels first": (np.zeros((3, 8, 8), np.uint8), "channels last"),
    "two channels": (np.zeros((8, 8, 2), np.uint8), "shape"),
    "4-d": (np.zeros((1, 8, 8, 3), np.uint8), "shape"),
    "bool": (np.ones((8, 8, 3), bool), "bool"),
    "strings": (np.full((8, 8, 3), "x"), "type"),
    "ragged list": ([[1, 2], [3]], "rectangular"),
    "missing file": ("no/such/file.png", "not found"),
}


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_a_bad_image_is_an_image_error_naming_the_fix(white_box_model, name):
    image, message = BAD_IMAGES[name]
    for method in (lambda: occlusion_map(white_box_model, image, box=4, stride=3, target="b"),
                   lambda: deconvnet(white_box_model, image, target="b"),
                   lambda: as_rgb(image)):
        with pytest.raises(ImageError, match=message):
            method()


def test_nan_image_is_not_blamed_on_the_model(white_box_model):
    with pytest.raises(ExplainError) as info:
        occlusion_map(white_box_model, np.full((8, 8, 3), np.nan, np.float32), target="b")
    assert not isinstance(info.value, ModelError)
    assert "NaN" in str(info.value)


# --- items 3 and 10: names, label files, folders and warnings in the audit ---------------------

class Brightness:
    """A two-class model scoring mean brightness; class names chosen by the test."""

    def __init__(self, names: list[str]) -> None:
        self.class_names = names

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        p = batch.reshape(len(batch), -1).mean(axis=1) / 255.0
        return np.stack([1 - p, p], axis=1)


def _brightness(names=("sfw", "nsfw")) -> CallableClassifier:
    return CallableClassifier(Brightness(list(names)), name="brightness")


def _photos(root: Path, names: list[str]) -> list[Path]:
    rng = np.random.default_rng(7)
    return [_save(root / name, rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
            for name in names]


@pytest.mark.slow
def test_audit_over_a_file_name_that_is_not_utf8(tmp_path):
    data = tmp_path / "data"
    _photos(data, ["sfw/a.png", "sfw/b.png", "nsfw/c.png", "nsfw/d.png"])
    raw = os.path.join(os.fsencode(data / "nsfw"), b"caf\xe9.png")
    with open(raw, "wb") as f:
        f.write((data / "nsfw/c.png").read_bytes())
    out = tmp_path / "out"
    result = audit(data, out, model=_brightness(),
                   options=_quick(top=5, box=8, stride=8, mosaic=5, threshold=0.9))
    assert (result.images, result.scored, result.failed) == (5, 5, 0)
    rows = {r["path"]: r for r in _read_csv(out / "scores.csv")}
    stored = to_storable(os.fsdecode(raw))
    assert stored in rows and from_storable(stored) == os.fsdecode(raw)
    assert rows[stored]["score"] == rows[str(data / "nsfw/c.png")]["score"]
    assert result.heatmaps == 3  # the three nsfw images, under 0.9, are false negatives
    page = (out / "audit.html").read_text(encoding="utf-8")
    assert "caf\ufffd.png" in page
    assert json.loads((out / "grid.json").read_text())["images"].get(stored) is not None
    assert not [p for p in out.rglob("*") if p.name.endswith(".part") or ".tmp" in p.name]


def _csv_cells(folder: Path) -> list[str]:
    cells = []
    for path in folder.glob("*.csv"):
        with open(path, newline="", encoding="utf-8") as f:
            cells += [cell for row in csv.reader(f) for cell in row]
    return cells


class EvilParts:
    name = "evil-parts"

    def detect(self, images):
        return [[Part("=HYPERLINK(\"http://x\")", 0.9, (0, 0, 4, 4)),
                 Part("@SUM(A1)", 0.8, (4, 4, 8, 8))] for _ in images]


def test_formula_like_class_and_concept_names_are_neutralised_in_every_csv(tmp_path):
    names = ["-2+3+cmd|' -C calc'!A0", "=1+1"]
    data = tmp_path / "data"
    _photos(data, [f"{names[0]}/a.png", f"{names[1]}/b.png", "\tc.png"])
    (data / "+broken.png").write_bytes(b"not a png")
    audit(data, tmp_path / "out", model=_brightness(names), detector=EvilParts(),
          options=AuditOptions(target=names[1], top=1, box=8, stride=8, mosaic=0,
                               threshold=0.0))
    cells = _csv_cells(tmp_path / "out")
    assert {"scores.csv", "errors.csv", "parts.csv", "concepts.csv"} <= \
        {p.name for p in (tmp_path / "out").glob("*.csv")}
    dangerous = [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert all(_is_number(c) for c in dangerous), dangerous
    for text in (*names, '=HYPERLINK("http://x")', "@SUM(A1)"):
        assert "'" + text in cells


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_a_labels_csv_in_another_encoding_is_a_clear_error(tmp_path, encoding):
    _photos(tmp_path, ["café.png"])
    labels = tmp_path / "labels.csv"
    labels.write_bytes("path,label\ncafé.png,sfw\n".encode(encoding))
    with pytest.raises(OptionError, match=r"labels\.csv.*UTF-8"):
        open_dataset(tmp_path, ["sfw", "nsfw"], labels=labels)


def test_conflicting_labels_name_both_lines_and_paths_are_normalised(tmp_path):
    _photos(tmp_path, ["a/x.png", "a/y.png"])
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na/x.png,sfw\na/y.png,nsfw\na/../a/./x.png,nsfw\n")
    with pytest.raises(OptionError, match=r"x\.png has two labels: sfw on line 2 and nsfw on "
                                          r"line 4"):
        open_dataset(tmp_path, ["sfw", "nsfw"], labels=labels)
    labels.write_text("a/x.png,sfw\na/y.png,nsfw\na/../a/x.png,sfw\n")
    items = list(open_dataset(tmp_path, ["sfw", "nsfw"], labels=labels))
    assert [(i.path, i.label) for i in items] == [(tmp_path / "a/x.png", "sfw"),
                                                  (tmp_path / "a/y.png", "nsfw")]


@pytest.mark.slow
def test_an_audit_inside_its_data_never_audits_outputs(tmp_path):
    data = tmp_path / "data"
    _photos(data, ["sfw/a.png", "nsfw/b.png", "c.png"])
    first = audit(data, data / "audit1", model=_brightness(),
                  options=_quick(top=2, box=8, stride=8, threshold=0.0))
    assert first.images == 3 and first.heatmaps == 1
    assert list((data / "audit1").rglob("*.png"))
    second = audit(data, data / "sfw" / "audit2", model=_brightness(),
                   options=_quick(top=2, box=8, stride=8, threshold=0.3))
    again = audit(data, data / "sfw" / "audit2", model=_brightness(),
                  options=_quick(top=2, box=8, stride=8, threshold=0.4))
    for result in (second, again):
        rows = _read_csv(result.output / "scores.csv")
        assert sorted(Path(r["path"]).name for r in rows) == ["a.png", "b.png", "c.png"]


def test_the_data_folder_is_refused_as_the_audits_output(tmp_path):
    """``explain audit DIR -o DIR`` wrote the mosaic over an image named DIR/grid.png: the data
    folder as the output is one clear error before any image is read or file written."""
    data = tmp_path / "data"
    _photos(data, ["grid.png", "sfw/a.png"])
    before = (data / "grid.png").read_bytes()
    calls = []
    inner = Brightness(["sfw", "nsfw"])

    def model(batch):
        calls.append(len(batch))
        return inner(batch)

    with pytest.raises(OptionError, match="is the data folder"):
        audit(data, data, model=CallableClassifier(model, class_names=["sfw", "nsfw"]),
              options=_quick(top=2, box=8, stride=8))
    assert (data / "grid.png").read_bytes() == before and not calls
    assert sorted(p.name for p in data.iterdir()) == ["grid.png", "sfw"]
    result = CliRunner().invoke(app, ["audit", str(data), "-o", str(data), "--no-concepts"])
    assert result.exit_code == 2 and "is the data folder" in result.output


def test_symlink_loops_and_unreadable_folders_are_error_rows(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _photos(data, ["sfw/a.png", "sfw/locked/b.png", "nsfw/c.png"])
    (data / "sfw" / "back").symlink_to("..")
    (data / "nsfw" / "self.png").symlink_to("self.png")
    (data / "nsfw" / "ring1.jpg").symlink_to("ring2.jpg")
    (data / "nsfw" / "ring2.jpg").symlink_to("ring1.jpg")
    (data / "nsfw" / "gone.png").symlink_to("nowhere.png")
    locked = str(data / "sfw" / "locked")
    scandir, access = os.scandir, os.access
    monkeypatch.setattr(os, "scandir", lambda p: scandir(p) if os.fspath(p) != locked
                        else (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    monkeypatch.setattr(os, "access", lambda p, mode: access(p, mode) and os.fspath(p) != locked)
    result = audit(data, tmp_path / "out", model=_brightness(), options=_quick())
    errors = {Path(r["path"]).name: r["reason"] for r in _read_csv(tmp_path / "out/errors.csv")}
    assert set(errors) == {"back", "self.png", "ring1.jpg", "ring2.jpg", "gone.png", "locked"}
    for name in ("back", "self.png", "ring1.jpg", "ring2.jpg"):
        assert "symbolic link loop" in errors[name]
    assert "broken symbolic link" in errors["gone.png"]
    assert "cannot be read" in errors["locked"]
    assert (result.scored, result.failed) == (2, 6)


def _odd_exif_jpeg(path: Path) -> Path:
    """A JPEG whose EXIF block names a tag beyond its end: PIL warns while reading it."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x010F, 2, 100, 1000) + struct.pack("<I", 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(path, exif=b"Exif\x00\x00" + tiff)
    return path


def test_decoding_warnings_are_attached_to_their_image_not_printed(tmp_path, capfd, recwarn):
    data = tmp_path / "data"
    _photos(data, ["a.png", "b.png", "c.png"])
    _odd_exif_jpeg(data / "odd1.jpg")
    _odd_exif_jpeg(data / "odd2.jpg")
    audit(data, tmp_path / "out", model=_brightness(), options=_quick(batch_size=2, top=5))
    rows = {Path(r["path"]).name: r for r in _read_csv(tmp_path / "out/scores.csv")}
    for name in ("odd1.jpg", "odd2.jpg"):
        assert "UserWarning" in rows[name]["warnings"] and "tag" in rows[name]["warnings"].lower()
    assert all(rows[n]["warnings"] == "" for n in ("a.png", "b.png", "c.png"))
    assert "Tag data" not in capfd.readouterr().err
    assert not [w for w in recwarn if "tag" in str(w.message).lower()]


def test_an_edited_label_csv_starts_a_new_run_instead_of_resuming_stale_labels(tmp_path):
    """The run key holds a digest of the label CSV's rows: fixing a wrong label and re-running
    must not resume the old run (whose metrics were computed with the old label)."""
    from explain.audit import AuditOptions, audit
    from explain.models.adapters import CallableClassifier

    for name, level in (("a", 10), ("b", 240)):
        Image.fromarray(np.full((16, 16, 3), level, np.uint8)).save(tmp_path / f"{name}.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na.png,sfw\nb.png,sfw\n")
    clf = CallableClassifier(lambda b: np.stack([1 - b.mean((1, 2, 3)) / 255,
                                                 b.mean((1, 2, 3)) / 255], 1),
                             class_names=["sfw", "nsfw"])
    o = AuditOptions(top=0, concepts=False, mosaic=0)
    first = audit(tmp_path / "labels.csv", tmp_path / "out", model=clf, options=o)
    labels.write_text("path,label\na.png,sfw\nb.png,nsfw\n")  # the label of b fixed
    second = audit(tmp_path / "labels.csv", tmp_path / "out", model=clf, options=o)
    assert not second.resumed and second.key != first.key
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(
        open(tmp_path / "out" / "scores.csv", encoding="utf-8"))}
    assert rows["b.png"]["label"] == "nsfw"


def test_decoders_inside_collect_warnings_never_touch_the_process_wide_warning_state(
        tmp_path, monkeypatch):
    """The audit decodes on several threads inside collect_warnings: a decoder that entered
    catch_warnings there (the clip probe did) changed and then restored the filters and the
    routing of every thread, so another image's warning could be lost (a flaky empty
    ``warnings`` cell)."""
    import warnings

    from explain.frames import is_clip, read_clip
    from explain.images import collect_warnings, load_image, probe_image

    still = tmp_path / "still.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(still)
    gif = tmp_path / "clip.gif"
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (10, 200)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    entered = []
    real = warnings.catch_warnings
    with collect_warnings():
        monkeypatch.setattr(warnings, "catch_warnings",
                            lambda *a, **k: entered.append(1) or real(*a, **k))
        assert not is_clip(still) and is_clip(gif)
        load_image(still, notes=[])
        load_image(still)
        probe_image(still)
        assert len(read_clip(gif).frames) == 2
    assert entered == []
