"""The one renderer: normalisation modes, colormaps, alpha, signed and constant maps, files."""

from __future__ import annotations

import cv2
import matplotlib
import numpy as np
import pytest
from PIL import Image

from explain import Heatmap, overlay
from explain.errors import OptionError
from explain.render import (
    colorize,
    colormap_lut,
    legend_height,
    save_png,
    scale,
    side_by_side,
)

GRAY = np.full((20, 30, 3), 128, dtype=np.uint8)


def ramp(h: int = 20, w: int = 30) -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, w), (h, 1))


def test_output_dtype_shape_and_heatmap_object():
    out = overlay(GRAY, Heatmap(values=ramp(), method="test", target="nsfw"))
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)


def test_rgb_not_bgr_hot_end_of_jet_is_red():
    # jet's top colour is red: in RGB the red channel dominates, blue is ~0.
    hot = overlay(GRAY, np.ones((20, 30)), alpha=1.0, vmin=0.0, vmax=1.0)
    r, g, b = hot[0, 0].astype(int)
    assert r > 100 and r > 3 * b and r > g
    cold = colorize(np.zeros((4, 4)), vmin=0.0, vmax=1.0)[0, 0].astype(int)
    assert cold[2] > 3 * cold[0]


def test_alpha_zero_is_image_one_is_colormap():
    img = np.random.randint(0, 256, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(overlay(img, ramp(), alpha=0.0), img)
    assert np.array_equal(overlay(img, ramp(), alpha=1.0), colorize(ramp()))
    half = overlay(img, ramp(), alpha=0.5).astype(int)
    expected = (img.astype(int) + colorize(ramp()).astype(int)) / 2
    assert np.abs(half - expected).max() <= 1


def test_minmax_is_shift_and_scale_invariant():
    # the occlusion map and "1 - p(occluded)" differ by a constant: same picture
    m = np.random.rand(20, 30) - 0.3
    assert np.array_equal(colorize(m), colorize(m + 0.7))
    assert np.array_equal(colorize(m), colorize(3.0 * m))


def test_percentile_clips_outliers():
    m = ramp()
    spiked = m.copy()
    spiked[0, 0] = 1000.0
    # minmax: the spike squashes everything else to the bottom colour
    assert len(np.unique(colorize(spiked).reshape(-1, 3), axis=0)) <= 3
    clipped = colorize(spiked, normalize="percentile", percentile=99.0)
    assert len(np.unique(clipped.reshape(-1, 3), axis=0)) > 20


def test_fixed_range_compares_images_on_one_scale():
    low = colorize(np.full((4, 4), 0.25), normalize="fixed", vmin=0.0, vmax=1.0)
    high = colorize(np.full((4, 4), 0.75), normalize="fixed", vmin=0.0, vmax=1.0)
    lut = colormap_lut("jet")
    assert np.array_equal(low[0, 0], lut[64]) and np.array_equal(high[0, 0], lut[191])
    with pytest.raises(OptionError, match="vmin and vmax"):
        colorize(np.zeros((4, 4)), normalize="fixed", vmin=0.0)


def test_constant_map_no_division_by_zero():
    with np.errstate(all="raise"):
        flat = colorize(np.full((5, 5), 0.3))
        signed = colorize(np.zeros((5, 5)), colormap="bwr")
    assert np.array_equal(flat[0, 0], colormap_lut("jet")[0])
    assert np.array_equal(signed[0, 0], colormap_lut("bwr")[128])


def test_signed_map_on_diverging_colormap_centres_zero():
    m = np.array([[-1.0, 0.0, 0.5]])
    c = colorize(m, colormap="bwr").astype(int)
    assert c[0, 0, 2] > 200 and c[0, 0, 0] < 50  # negative: blue
    assert (c[0, 1] > 240).all()  # zero: white, the neutral middle
    assert c[0, 2, 0] > 200 and c[0, 2, 2] < 200  # positive: red-ish
    pct = colorize(m, colormap="bwr", normalize="percentile", percentile=100.0)
    assert np.array_equal(pct[0, 1], colormap_lut("bwr")[128])


def test_colormaps_are_opencv_and_matplotlib_values_in_rgb():
    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    for name, code in (("jet", cv2.COLORMAP_JET), ("turbo", cv2.COLORMAP_TURBO),
                       ("viridis", cv2.COLORMAP_VIRIDIS)):
        bgr = cv2.applyColorMap(ramp, code).reshape(256, 3)
        assert np.array_equal(colormap_lut(name), bgr[:, ::-1]), name
    jet = colormap_lut("jet")  # the classic ends: dark blue (lowest) to dark red (highest)
    assert jet[0].tolist() == [0, 0, 128] and jet[255].tolist() == [128, 0, 0]
    # OpenCV's viridis is matplotlib's, so the two libraries agree once the order is RGB
    mpl_viridis = matplotlib.colormaps["viridis"](np.arange(256), bytes=True)[:, :3]
    assert np.abs(colormap_lut("viridis").astype(int) - mpl_viridis).max() <= 1
    for name in ("coolwarm", "RdBu"):  # not in OpenCV: matplotlib's table, rounded
        table = matplotlib.colormaps[name](np.arange(256))[:, :3]
        assert np.array_equal(colormap_lut(name), np.rint(table * 255).astype(np.uint8)), name
    # bwr is built in (the default for signed maps, matplotlib or not): matplotlib's within one
    # level, but with pure white exactly at the middle entry 128, where 0 is drawn
    mpl_bwr = np.rint(matplotlib.colormaps["bwr"](np.arange(256))[:, :3] * 255)
    assert np.abs(colormap_lut("bwr").astype(int) - mpl_bwr).max() <= 1
    assert colormap_lut("bwr")[128].tolist() == [255, 255, 255]
    with pytest.raises(OptionError, match="unknown colormap"):
        colormap_lut("no-such-map")


def test_bad_options_are_option_errors():
    with pytest.raises(OptionError):
        overlay(GRAY, ramp(), alpha=1.5)
    with pytest.raises(OptionError):
        overlay(GRAY, ramp(), normalize="zscore")
    with pytest.raises(OptionError):
        overlay(GRAY, np.zeros((2, 3, 4)))


def _bilinear(picture: np.ndarray, h: int, w: int) -> np.ndarray:
    """``picture`` resized to (h, w) by bilinear interpolation between pixel centres (the
    half-pixel convention of OpenCV and PIL), edges held."""
    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(x).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), x - lo

    y0, y1, fy = axis(h, picture.shape[0])
    x0, x1, fx = axis(w, picture.shape[1])
    p = picture.astype(np.float64)
    top = p[y0][:, x0] * (1 - fx)[None, :, None] + p[y0][:, x1] * fx[None, :, None]
    bottom = p[y1][:, x0] * (1 - fx)[None, :, None] + p[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def test_smaller_heatmap_is_coloured_then_resized_and_gray_or_float_images_accepted():
    small = np.random.rand(5, 7)
    out = overlay(np.full((20, 30), 0.5), small)  # a float gray image: 0.5 is grey 128
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    colours = colormap_lut("jet")[np.rint((small - small.min()) / np.ptp(small) * 255)
                                  .astype(int)]
    expected = 0.5 * 128 + 0.5 * _bilinear(colours, 20, 30)
    assert np.abs(out - expected).max() <= 1  # OpenCV resizes uint8 in fixed point


def test_side_by_side_with_legend_and_save_png(tmp_path):
    img = np.random.randint(0, 256, (40, 500, 3), dtype=np.uint8)
    bare = side_by_side(img, ramp(40, 500), gap=4, legend=False)
    assert bare.shape == (40, 3 * 500 + 2 * 4, 3)
    assert np.array_equal(bare[:, :500], img)
    assert np.array_equal(bare[:, 504:1004], colorize(ramp(40, 500)))
    assert np.array_equal(bare[:, 1008:], overlay(img, ramp(40, 500)))
    pic = side_by_side(img, ramp(40, 500), gap=4)
    hm = ramp(40, 500)
    assert pic.shape == (40 + legend_height(hm, 1508, scale(hm)), 1508, 3)
    assert np.array_equal(pic[:40], bare)
    path = save_png(pic, tmp_path / "sub" / "x.png")
    back = np.asarray(Image.open(path))
    assert back.shape == pic.shape and np.array_equal(back, pic)


def test_pictures_go_through_the_one_image_intake():
    """The renderer takes images by the library's one rule (explain.images.as_rgb): a float
    image must be in [0, 1] (0..255 floats would saturate to white), RGBA is composited on white
    exactly as an RGBA file is."""
    from explain.errors import ImageError
    from explain.images import as_rgb

    with pytest.raises(ImageError, match="outside"):
        overlay(np.full((4, 5, 3), 200.0), ramp(4, 5))
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent: white once composited
    m = ramp(4, 5)
    assert np.array_equal(overlay(rgba, m), overlay(as_rgb(rgba), m))
    assert (as_rgb(rgba) == 255).all()
