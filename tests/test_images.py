"""load_image on real files of every awkward kind: modes, EXIF, animations, broken and hostile."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from explain.errors import ExplainError, ImageError
from explain.images import iter_image_files, load_image, to_tensor


def _check_rgb(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == (*shape, 3)


def test_rgb_jpeg_roundtrip(tmp_path, photos):
    path = tmp_path / "coffee.png"
    Image.fromarray(photos["coffee"]).save(path)
    np.testing.assert_array_equal(load_image(path), photos["coffee"])


@pytest.mark.parametrize("orientation, expected", [
    (6, lambda a: np.rot90(a, k=-1)),   # "rotate 90 CW to display"
    (8, lambda a: np.rot90(a, k=1)),    # "rotate 90 CCW to display"
    (3, lambda a: np.rot90(a, k=2)),
])
def test_exif_orientation_applied(tmp_path, orientation, expected):
    # Left half black, right half white, taller than wide: rotation is unambiguous.
    stored = np.zeros((40, 20, 3), np.uint8)
    stored[:, 10:] = 255
    stored[:20, :10] = 128
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=100, subsampling=0)
    with Image.open(path) as img:
        assert img.getexif()[0x0112] == orientation
    out = load_image(path)
    want = expected(stored)
    assert out.shape == want.shape
    assert np.abs(out.astype(int) - want.astype(int)).max() < 12


def test_grayscale(tmp_path):
    gray = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    path = tmp_path / "gray.png"
    Image.fromarray(gray, "L").save(path)
    out = load_image(path)
    _check_rgb(out, (16, 16))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_palette(tmp_path):
    img = Image.new("P", (8, 4))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    img.putdata([0, 1] * 16)
    path = tmp_path / "palette.png"
    img.save(path)
    with Image.open(path) as check:
        assert check.mode == "P"
    out = load_image(path)
    _check_rgb(out, (4, 8))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 1]) == (0, 0, 255)


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)        # fully transparent → white
    rgba[0, 1] = (10, 20, 30, 255)      # opaque → itself
    rgba[0, 2] = (0, 0, 0, 128)         # half black over white → mid gray
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = load_image(path)
    _check_rgb(out, (4, 4))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (10, 20, 30)
    assert all(abs(int(v) - 127) <= 1 for v in out[0, 2])


def test_gray_with_alpha_composited_on_white(tmp_path):
    la = np.array([[[0, 0], [0, 255], [200, 255]]], np.uint8)
    path = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(path)
    out = load_image(path)
    _check_rgb(out, (1, 3))
    assert [tuple(px) for px in out[0]] == [(255, 255, 255), (0, 0, 0), (200, 200, 200)]


def test_transparent_palette_composited_on_white(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    img.putdata([0, 1])
    path = tmp_path / "transparent.gif"
    img.save(path, transparency=0)
    out = load_image(path)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (0, 255, 0)


def test_cmyk(tmp_path):
    cmyk = Image.new("CMYK", (6, 5), (0, 255, 255, 0))  # pure red in CMYK
    path = tmp_path / "cmyk.jpg"
    cmyk.save(path, quality=100)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    out = load_image(path)
    _check_rgb(out, (5, 6))
    r, g, b = out[2, 3].astype(int)
    assert r > 230 and g < 25 and b < 25


def test_16_bit_png(tmp_path):
    values = np.array([[0, 65535], [32768, 257 * 100]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    out = load_image(path)
    _check_rgb(out, (2, 2))
    np.testing.assert_array_equal(out[..., 0], [[0, 255], [128, 100]])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_first_frame_of_animated_gif(tmp_path):
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 2
    out = load_image(path)
    _check_rgb(out, (8, 8))
    assert tuple(out[4, 4]) == (255, 0, 0)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A few-hundred-byte PNG whose header declares width×height (the pixels never exist)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))
    return path


def _assert_image_error(path: Path, *reason_words: str, **kwargs: object) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(path, **kwargs)
    err = info.value
    assert isinstance(err, ExplainError)
    assert err.path == str(path)
    assert str(path) in str(err)
    assert any(word in err.reason.lower() for word in reason_words), err.reason
    return err


def test_decompression_bomb(tmp_path):
    path = _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    assert path.stat().st_size < 200
    _assert_image_error(path, "bomb", "limit")


def test_header_bomb_refused_even_with_a_raised_limit(tmp_path):
    path = _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    _assert_image_error(path, "bomb", "limit", max_pixels=10**12)


def test_above_max_pixels(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 50)).save(path)
    err = _assert_image_error(path, "limit", max_pixels=4999)
    assert "100x50" in err.reason
    _check_rgb(load_image(path, max_pixels=5000), (50, 100))


def test_truncated_jpeg(tmp_path, photos):
    whole = tmp_path / "whole.jpg"
    Image.fromarray(photos["chelsea"]).save(whole, quality=90)
    data = whole.read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    _assert_image_error(path, "truncated", "corrupt")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    _assert_image_error(path, "empty", "0 bytes")


def test_text_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    _assert_image_error(path, "not an image")


def test_directory(tmp_path):
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    _assert_image_error(folder, "directory")


def test_missing_file(tmp_path):
    _assert_image_error(tmp_path / "nowhere.jpg", "not found")


def test_iter_image_files(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.JPG", "sub/c.webp", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    explicit = tmp_path / "notes.txt"
    found = list(iter_image_files([tmp_path, explicit]))
    assert found == [tmp_path / "a.JPG", tmp_path / "b.png", tmp_path / "sub/c.webp", explicit]


def test_to_tensor(photos):
    img = photos["coffee"]
    t = to_tensor(img)
    assert t.shape == (1, 3, *img.shape[:2]) and t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    np.testing.assert_allclose(t[0, :, 7, 11].numpy() * 255, img[7, 11], atol=1e-4)
