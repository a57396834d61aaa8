"""Issue #10, items 7 and 11: every picture renders whatever the image size, and none overstates.

Small images (1×1, 1×N, N×1) once crashed the side-by-side colour bar and stopped the batch; a
min-max overlay of a map without signal looked as alarming as a finding, jet painted a region that
still supports the target blue, a probability was stretched over the whole colormap, and the
default 64-px box meant 8 px of a 2048-px photo at the model's input.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFont
from skimage import data
from typer.testing import CliRunner

from explain.cli import app
from explain.errors import OptionError
from explain.heatmap import NOISE_FLOOR, Heatmap
from explain.images import load_image
from explain.models import load
from explain.occlusion import occlusion_map
from explain.render import (
    NOTE_COLOUR,
    colorize,
    colormap_lut,
    draw_text,
    figure,
    font,
    legend_height,
    legend_strip,
    number,
    overlay,
    scale,
    side_by_side,
)
from explain.windows import (
    DEFAULT_BOX,
    DEFAULT_STRIDE,
    parse_size,
    pixels,
    small_box_note,
    window_grid,
)

TINY = '''
import numpy as np

def score(batch):
    """p(1) = mean brightness of the top-left quarter of each uint8 NxHxWx3 image."""
    h, w = max(1, batch.shape[1] // 2), max(1, batch.shape[2] // 2)
    p = batch[:, :h, :w].reshape(len(batch), -1).mean(1) / 255.0
    return np.stack([1 - p, p], axis=1)
'''


def occlusion(values: np.ndarray, score: float = 0.5) -> Heatmap:
    return Heatmap(np.asarray(values, dtype=np.float32), "occlusion", "nsfw", score=score,
                   signed=True, unit="drop in p(nsfw)", noise_floor=NOISE_FLOOR)


def sliding(values: np.ndarray) -> Heatmap:
    return Heatmap(np.asarray(values, dtype=np.float32), "sliding", "nsfw", score=0.3,
                   unit="p(nsfw) of the crop alone", bounds=(0.0, 1.0), noise_floor=NOISE_FLOOR)


# --- item 7: any size renders -------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (37, 1), (20, 20)])
def test_side_by_side_and_figure_render_any_size(shape):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    hm = occlusion(rng.uniform(-0.2, 0.3, shape))
    panels = side_by_side(img, hm, gap=8, legend=False)
    assert panels.shape == (shape[0], 3 * shape[1] + 16, 3)
    pic = side_by_side(img, hm, gap=8)
    s = scale(hm)
    strip = legend_strip(hm, panels.shape[1], s)
    assert pic.shape == (shape[0] + legend_height(hm, panels.shape[1], s), strip.shape[1], 3)
    assert np.array_equal(pic[:shape[0], :panels.shape[1]], panels)
    assert np.array_equal(pic[shape[0]:], strip)
    fig = figure(img, hm)
    assert np.array_equal(fig[:shape[0], :shape[1]], overlay(img, hm))
    assert (fig[:shape[0], shape[1]:] == 255).all()  # padding, so no label is clipped


def test_no_label_is_clipped_on_a_one_pixel_image():
    hm = occlusion(np.full((1, 1), 0.001), score=0.0123)
    strip = legend_strip(hm, 1, scale(hm))
    margin = 4
    # text rows: everything below the colour bar; the side margins stay white
    text = strip[2 * margin + 8:]
    assert (text[:, :margin] == 255).all() and (text[:, -margin:] == 255).all()
    assert (text[-margin:] == 255).all()
    assert (text < 128).any()


def test_cli_side_by_side_on_tiny_images_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.py").write_text(TINY)
    for name, shape in (("dot", (1, 1)), ("row", (1, 30)), ("col", (30, 1)), ("sq", (20, 20))):
        Image.fromarray(np.full((*shape, 3), 200, np.uint8)).save(f"{name}.png")
    res = CliRunner().invoke(app, ["occlude", "dot.png", "row.png", "col.png", "sq.png",
                                   "-m", "tiny.py:score", "-t", "1", "--side-by-side",
                                   "-o", "out"])
    assert res.exit_code == 0, res.output
    for name in ("dot", "row", "col", "sq"):
        assert Image.open(f"out/{name}.occlusion.side.png").size[0] >= 3
        assert Image.open(f"out/{name}.occlusion.png").size[0] >= 1


# --- item 11: colours -----------------------------------------------------------------------

def test_signed_map_defaults_to_diverging_white_at_zero():
    lut = colormap_lut("bwr")
    assert lut[128].tolist() == [255, 255, 255]
    assert lut[0].tolist() == [0, 0, 255] and lut[255].tolist() == [255, 0, 0]
    c = colorize(occlusion([[-0.1, 0.0, 0.2]]))
    assert c[0, 1].tolist() == [255, 255, 255]
    assert c[0, 2].tolist() == [255, 0, 0]
    assert c[0, 0].tolist() == lut[64].tolist()  # -0.1 on ±0.2: a quarter up the bar


def test_a_region_that_still_supports_the_target_is_never_blue():
    # fill=mean: every drop positive, the smallest +0.098 (jet + minmax painted it blue)
    c = colorize(occlusion(np.linspace(0.098, 0.3, 30).reshape(5, 6)))
    assert (c[..., 0] == 255).all() and (c[..., 2] < 255).all()


def test_probability_map_is_drawn_on_its_true_range():
    values = np.linspace(0.25, 0.44, 20, dtype=np.float32).reshape(4, 5)
    lut = colormap_lut("jet")
    expected = lut[np.rint(values.astype(np.float64) * 255).astype(np.uint8)]
    assert np.array_equal(colorize(sliding(values)), expected)
    assert (scale(sliding(values)).lo, scale(sliding(values)).hi) == (0.0, 1.0)


def test_no_signal_map_is_drawn_pale_and_says_so():
    hm = occlusion(np.linspace(-0.001, 0.004, 20).reshape(4, 5), score=0.017)
    assert hm.no_signal() == "no signal: largest |drop in p(nsfw)| 0.004 < 0.01"
    s = scale(hm)
    assert (s.colormap, s.lo, s.hi) == ("bwr", -NOISE_FLOOR, NOISE_FLOOR)
    strong = occlusion(np.linspace(-0.1, 0.4, 20).reshape(4, 5))
    assert strong.no_signal() is None
    assert sliding(np.full((3, 3), 0.5) + np.eye(3) * 0.004).no_signal() == \
        "no signal: p(nsfw) of the crop alone spans 0.004 < 0.01"


def test_legend_height_is_exact_and_the_note_is_red():
    img = np.zeros((30, 700, 3), np.uint8)
    quiet = occlusion(np.full((30, 700), 0.002))
    loud = occlusion(np.full((30, 700), 0.2))
    # step 1 (width < 900): margins 4 + 4, bar 8, two text lines of 13 + 3 + 4 px (three with
    # the note)
    assert legend_height(loud, 700, scale(loud)) == 56
    assert legend_height(quiet, 700, scale(quiet)) == 76
    wide = occlusion(np.full((30, 1300), 0.2))
    assert legend_height(wide, 1300, scale(wide)) == 2 * 56  # step 2: everything twice as large
    assert figure(img, loud).shape == (30 + 56, 700, 3)
    assert figure(img, quiet).shape == (30 + 76, 700, 3)
    assert np.array_equal(figure(img, loud, legend=False), overlay(img, loud))
    red = np.all(figure(img, quiet)[30 + 56:] == NOTE_COLOUR, axis=2)
    assert red.any()
    assert not np.all(figure(img, loud) == NOTE_COLOUR, axis=2).any()


def _glyphs(strip: np.ndarray) -> list[np.ndarray]:
    """The dark glyphs of one line of text, left to right, each cropped to its own box."""
    ink = strip.min(axis=2) < 128
    columns = ink.any(axis=0)
    glyphs, x = [], 0
    while x < len(columns):
        if columns[x]:
            end = x
            while end < len(columns) and columns[end]:
                end += 1
            rows = np.flatnonzero(ink[:, x:end].any(axis=1))
            glyphs.append(ink[rows[0]:rows[-1] + 1, x:end])
            x = end
        x += 1
    return glyphs


def _strokes(column: np.ndarray) -> int:
    return int(column[0]) + int(np.sum(column[1:] & ~column[:-1]))


@pytest.mark.parametrize("size", [11, 13, 26])
def test_legend_text_is_truetype_and_tells_0_from_8(size):
    assert isinstance(font(size), ImageFont.FreeTypeFont)
    line = draw_text(np.full((size * 2, size * 4, 3), 255, np.uint8),
                     [("0.08", 2, 2, (0, 0, 0))], size)
    zero, point, zero2, eight = _glyphs(line)
    assert np.array_equal(zero, zero2)  # the same glyph is drawn the same
    assert point.size < zero.size
    same = zero.shape == eight.shape and np.array_equal(zero, eight)
    assert not same
    # the difference is the glyph, not a pixel: down its middle column the 0 crosses two
    # strokes (top, bottom) and the 8 three (its waist); Hershey's 0 had a dot there too
    assert _strokes(zero[:, zero.shape[1] // 2]) == 2
    assert _strokes(eight[:, eight.shape[1] // 2]) == 3


def test_numbers_are_rounded_to_significant_digits():
    assert [number(v) for v in (0.0218, 0.017, 0.999, 0.99997, 1e-7, -0.05, 123.456, 0.0)] == \
        ["0.0218", "0.017", "0.999", "0.99997", "1e-07", "-0.05", "123", "0"]
    hm = occlusion(np.full((30, 256), 0.02), score=0.0218)
    s = scale(hm)
    glyph_rows = legend_strip(hm, 256, s)
    assert glyph_rows.shape[1] == 256  # wrapped to the card's width: shown at native size


def test_caller_overrides_and_bad_options():
    hm = occlusion(np.linspace(-0.1, 0.4, 20).reshape(4, 5))
    jet = colorize(hm, colormap="jet")
    assert np.array_equal(jet, colorize(hm.values))  # jet by name: min-max as before
    assert scale(hm, normalize="fixed", vmin=-1.0, vmax=1.0).hi == 1.0
    with pytest.raises(OptionError, match="vmax"):
        scale(hm, vmin=0.5, vmax=0.1)


# --- item 11: windows that mean something to the model ---------------------------------------

def test_relative_sizes_and_defaults():
    assert parse_size("25%", "--box") == 0.25
    assert parse_size("64,25%", "--box") == (64, 0.25)
    assert pixels(0.1875, "stride", (256, 300)) == (48, 48)
    assert pixels((0.5, 10), "box", (2048, 4000)) == (1024, 10)
    assert len(window_grid((256, 256), DEFAULT_BOX, DEFAULT_STRIDE)) == 25
    assert len(window_grid((2048, 2048), DEFAULT_BOX, DEFAULT_STRIDE)) == 25
    for bad in ("0%", "150%", "x", "1,2,3"):
        with pytest.raises(OptionError):
            parse_size(bad, "--box")
    with pytest.raises(OptionError, match="fraction"):
        window_grid((20, 20), 1.5, 1)
    with pytest.raises(OptionError, match="larger than box"):
        window_grid((100, 100), 10, 0.5)


def test_small_box_warning():
    note = small_box_note((64, 64), (2048, 2048), (256, 256))
    assert note is not None and "8 px" in note and "256×256" in note
    assert small_box_note((512, 512), (2048, 2048), (256, 256)) is None
    assert small_box_note((4, 4), (8, 8), None) is None


def test_upscaled_photo_gets_the_same_windows_and_map(nsfw_onnx):
    clf = nsfw_onnx
    small = np.asarray(Image.fromarray(data.coffee()).resize((256, 256), Image.BOX))
    big = np.asarray(Image.fromarray(small).resize((2048, 2048), Image.BICUBIC))
    a, b = occlusion_map(clf, small), occlusion_map(clf, big)
    assert a.windows == b.windows == 25 and a.box == (64, 64) and b.box == (512, 512)
    assert a.no_signal() is None
    shrunk = np.asarray(Image.fromarray(b.values).resize((256, 256), Image.BOX))
    assert np.corrcoef(a.values.ravel(), shrunk.ravel())[0, 1] > 0.9


# --- the CLI writes what the renderer draws ------------------------------------------------

@pytest.fixture
def folder(tmp_path, monkeypatch, photos):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.py").write_text(TINY)
    Image.fromarray(photos["chelsea"][:120, :160]).save("cat.png")
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save("black.png")
    return tmp_path


@pytest.mark.parametrize("extra, look", [
    ((), {}),
    (("--no-legend",), {"legend": False}),
    (("--normalize", "fixed", "--vmin", "-1", "--vmax", "1", "--colormap", "jet"),
     {"normalize": "fixed", "vmin": -1.0, "vmax": 1.0, "colormap": "jet"}),
])
def test_cli_png_equals_the_renderer(folder, extra, look):
    res = CliRunner().invoke(app, ["occlude", "cat.png", "-m", "tiny.py:score", "-t", "1",
                                   "--box", "40", "--stride", "30", "--side-by-side", "-o",
                                   "out", *extra])
    assert res.exit_code == 0, res.output
    img = load_image("cat.png")
    hm = occlusion_map(load("tiny.py:score"), img, box=40, stride=30, target=1)
    assert np.array_equal(np.asarray(Image.open("out/cat.occlusion.png")), figure(img, hm, **look))
    assert np.array_equal(np.asarray(Image.open("out/cat.occlusion.side.png")),
                          side_by_side(img, hm, **look))


@pytest.mark.slow
def test_cli_says_no_signal_and_small_box_on_the_image_line(folder):
    res = CliRunner().invoke(app, ["occlude", "black.png", "-m", "tiny.py:score", "-t", "1",
                                   "--fill", "black", "-o", "out"])
    assert res.exit_code == 0, res.output
    assert "no signal: largest |drop in p(1)| 0 < 0.01" in res.stdout.replace("\n", "")
    Image.fromarray(np.full((1024, 256, 3), 90, np.uint8)).save("tall.png")
    res = CliRunner().invoke(app, ["slide", "tall.png", "--box", "32,256", "--stride", "32,256",
                                   "-o", "out"])
    assert res.exit_code == 0, res.output
    assert "px at the model's 256×256 input (under 16)" in res.stdout.replace("\n", "")


@pytest.mark.parametrize("command, args, word", [
    ("occlude", ["--vmin", "1", "--vmax", "0"], "vmax"),
    ("occlude", ["--normalize", "fixed"], "vmin and vmax"),
    ("occlude", ["--box", "150%"], "fraction"),
    ("gradcam", ["--vmin", "1", "--vmax", "0"], "vmax"),
    ("deconv", ["--normalize", "fixed", "--vmax", "1"], "vmin and vmax"),
])
def test_bad_drawing_options_are_one_red_line(folder, command, args, word):
    model = ["-m", "tiny.py:score", "-t", "1"] if command in ("occlude", "slide") else []
    res = CliRunner().invoke(app, [command, "cat.png", "-o", "out", *model, *args])
    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1 and word in res.stderr


def test_report_and_audit_take_the_shared_scale_options(tmp_path):
    """--normalize/--vmin/--vmax on every command that draws: report and audit refuse a bad
    scale before any work, like occlude."""
    from typer.testing import CliRunner

    from explain.cli import app

    img = tmp_path / "x.png"
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(img)
    for args in (["report", str(img), "-o", str(tmp_path / "r.html")],
                 ["audit", str(tmp_path), "-o", str(tmp_path / "a"), "--no-concepts"]):
        result = CliRunner().invoke(app, [*args, "--normalize", "fixed", "--vmin", "0.2",
                                          "--vmax", "0.1"])
        assert result.exit_code == 2, result.output
        assert "vmax (0.1) is below vmin (0.2)" in result.output


def test_a_clip_without_signal_is_not_drawn_saturated():
    from explain.render_clip import animation

    frames = [np.full((20, 20, 3), 128, np.uint8)] * 2
    quiet = {0: occlusion(np.linspace(0.0, 0.002, 400).reshape(20, 20))}
    first = animation(frames, quiet, legend=False)[0]
    # on ±max|value| the 0.002 corner would be pure red over grey; on ±NOISE_FLOOR it is pale
    assert first[-1, -1].tolist() != [192, 64, 64] and first[-1, -1, 1] > 100
