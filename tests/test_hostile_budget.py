"""Options that scale memory are checked against the memory budget before any work (issue #10,
item 2): `grid --size 1000` (16 GB and an OOM kill before), a huge `--cell-px`, a huge
`--batch-size` for every command that takes one. The HTTP reply cap is in test_hostile_models.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from explain.backprop import batches
from explain.budget import BUDGET_ENV, DEFAULT_BUDGET, format_bytes, memory_budget
from explain.cli import app
from explain.errors import OptionError
from explain.grid import draw_mosaic, grid_bytes, similarity_grid, swap_bytes
from explain.models import CallableClassifier
from explain.occlusion import occlusion_map
from explain.windows import INPUT_BYTES_PER_PIXEL, MODEL_BYTES_PER_PIXEL, batch_bytes

PER_PIXEL = INPUT_BYTES_PER_PIXEL + MODEL_BYTES_PER_PIXEL

RECORDING_MODEL = '''
from pathlib import Path

import numpy as np

CALLS = Path(__file__).with_name("calls.txt")


def scorer(batch):
    with CALLS.open("a") as f:
        f.write(f"scorer {len(batch)}\\n")
    red = batch[..., 0].mean(axis=(1, 2)) / 255.0
    return np.stack([1 - red, red], axis=1)


scorer.class_names = ["other", "red"]


def embed(batch):
    with CALLS.open("a") as f:
        f.write(f"embed {len(batch)}\\n")
    return batch.reshape(len(batch), -1)[:, :8].astype(np.float32)
'''


@pytest.fixture
def folder(tmp_path, photos):
    """Four small photos and the recording model (it notes every call in calls.txt)."""
    data = tmp_path / "data"
    data.mkdir()
    for i, name in enumerate(["astronaut", "coffee", "chelsea", "astronaut"]):
        Image.fromarray(photos[name][:48, :64]).save(data / f"p{i}.png")
    (tmp_path / "recording.py").write_text(RECORDING_MODEL)
    return data


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={BUDGET_ENV: "4G"})


def test_memory_budget_default_and_setting(monkeypatch):
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    assert 0 < memory_budget() <= DEFAULT_BUDGET
    for text, expected in (("16G", 16 * 2**30), ("512 MiB", 512 * 2**20), ("1.5k", 1536),
                           ("1000", 1000)):
        monkeypatch.setenv(BUDGET_ENV, text)
        assert memory_budget() == expected
    monkeypatch.setenv(BUDGET_ENV, "lots")
    with pytest.raises(OptionError, match=f"{BUDGET_ENV}='lots' is not a memory size"):
        memory_budget()


@pytest.mark.parametrize("extra, what", [
    # the mosaic (34.3 GiB) and the blurred grid of FLAS and the polish (one vector per cell)
    (["--size", "1000"], "a 1000x1000 grid of 4 images with 64-px cells would need about 49.6 GiB"),
    (["--cell-px", "100000"], "a 2x2 grid of 4 images with 100000-px cells would need about "),
])
def test_grid_too_large_is_refused_before_any_model_call(folder, extra, what):
    """Before: `--size 1000` grew to 16 GB and was killed; now exit 2 before the model is
    called once (calls.txt is never written)."""
    spec = folder.parent / "recording.py"
    result = _invoke("grid", str(folder), "--model", f"{spec}:scorer", "--embed",
                     f"{spec}:embed", "--color-by", "none", "-o",
                     str(folder.parent / "grid.png"), *extra)
    assert result.exit_code == 2, result.output
    assert what in result.output
    assert "over the memory budget of 4.0 GiB" in result.output
    assert "use a smaller --size or --cell-px" in result.output
    assert not (folder.parent / "calls.txt").exists()
    assert not (folder.parent / "grid.png").exists()


def test_grid_estimate_counts_the_assignment_matrix_and_the_mosaic():
    """1000 images on a 1000x1000 grid: the 1000 x 10^6 float64 cost matrix (8 GB) is larger
    than the mosaic of 8-px cells (1.7 GB); thumbnails 2 x 1000 x 8 x 8 x 3 bytes; 1024-d
    float32 vectors, 4 copies, one per cell (FLAS's blurred grid). FLAS alone has no matrix.
    4 images: the larger of the mosaic and the swap polish's buffers."""
    vectors = 4 * 4 * 1024 * 10**6
    assert grid_bytes(1000, (1000, 1000), 8) == 2 * 1000 * 64 * 3 + vectors + 8 * 1000 * 10**6
    assert grid_bytes(1000, (1000, 1000), 8, "flas") == (2 * 1000 * 64 * 3 + vectors
                                                         + 9 * 10**6 * 64)
    assert grid_bytes(4, (2, 2), 64) == (2 * 4 * 64 * 64 * 3 + 4 * 4 * 1024 * 4
                                         + max(9 * 4 * 64 * 64, swap_bytes(4)))


def test_library_grid_and_mosaic_are_checked(photos, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "64M")
    images = [photos["coffee"][:32, :32]] * 4
    with pytest.raises(OptionError, match="a 400x400 grid of 4 images"):
        similarity_grid(images, embed="pixels", size=400, thumb_px=8)
    grid = similarity_grid(images, embed="pixels", thumb_px=8)
    with pytest.raises(OptionError, match="a mosaic of 2x2 cells of 4000 px"):
        draw_mosaic(grid, cell_px=4000)


def test_grid_batch_size_is_checked(photos, monkeypatch):
    """Embedding batches are at the model's input size (8x8 here)."""
    monkeypatch.setenv(BUDGET_ENV, str(3 * PER_PIXEL * 64))
    clf = CallableClassifier(lambda batch: np.full((len(batch), 2), 0.5), class_names=["a", "b"],
                             input_size=(8, 8))
    with pytest.raises(OptionError, match="batches of 4 inputs of 8x8 px .* at most 3"):
        similarity_grid([photos["coffee"]] * 4, clf, embed="features", batch_size=4,
                        thumb_px=4)


def test_explicit_batch_size_over_the_budget_is_refused_exactly(photos, monkeypatch):
    """A model without an input size works at the image's size, 32x32 here: each input costs
    PER_PIXEL x 1024 bytes, so a budget of 5.5 inputs takes batches of 5 and refuses 6; the
    default batch size becomes 5."""
    image = photos["coffee"][:32, :32]
    clf = CallableClassifier(lambda batch: np.full((len(batch), 2), 0.5), class_names=["a", "b"])
    monkeypatch.setenv(BUDGET_ENV, str(int(5.5 * PER_PIXEL * 1024)))
    assert batch_bytes(5, (32, 32)) == 5 * PER_PIXEL * 1024
    heat = occlusion_map(clf, image, box=8, stride=8, target="b", batch_size=5)
    assert heat.params["batch_size"] == 5
    with pytest.raises(OptionError, match=r"batches of 6 inputs of 32x32 px would need about "
                                          r"1.1 MiB, over the memory budget of 1012.0 KiB: use a "
                                          r"batch size \(--batch-size\) of at most 5"):
        occlusion_map(clf, image, box=8, stride=8, target="b", batch_size=6)
    # the default (16 on CPU) shrinks to what fits
    assert occlusion_map(clf, image, box=8, stride=8, target="b").params["batch_size"] == 5


@pytest.mark.parametrize("command, budget, used, side, fits", [
    ("occlude", "1200K", 50, (48, 64), 2),  # 48 windows + the intact image + the baseline
    ("slide", "100K", 48, (8, 8), 8),  # 48 crops of 8x8
])
def test_cli_batch_size_over_the_budget_is_refused(folder, command, budget, used, side, fits):
    """8-px windows on the 48x64 photo: -b 1000000 puts all of them in one batch, over the
    budget; exit 2 and the model is never called. The default batch size still works."""
    spec = folder.parent / "recording.py"
    args = [command, str(folder / "p0.png"), "--model", f"{spec}:scorer", "--target", "red",
            "--box", "8", "--stride", "8", "-o", str(folder.parent / "out")]
    env = {BUDGET_ENV: budget}
    result = CliRunner().invoke(app, [*args, "-b", "1000000"], env=env)
    assert result.exit_code == 2, result.output
    assert (f"batches of {used} inputs of {side[0]}x{side[1]} px would need about "
            f"{format_bytes(batch_bytes(used, side))}, over the memory budget of "
            f"{format_bytes(memory_budget_of(budget))}: use a batch size (--batch-size) of at "
            f"most {fits}") in result.output
    assert not (folder.parent / "calls.txt").exists()
    assert CliRunner().invoke(app, args, env=env).exit_code == 0


def memory_budget_of(text: str) -> int:
    return int(text[:-1]) * 1024


def test_audit_batch_size_over_the_budget_is_refused(folder):
    """Four images at open_nsfw's 256x256 need about 46 MiB; a 20 MiB budget takes one."""
    args = ["audit", str(folder), "--model", "open-nsfw:onnx", "--no-concepts", "-b",
            "1000000", "-o", str(folder.parent / "audit")]
    result = CliRunner().invoke(app, args, env={BUDGET_ENV: "20M"})
    assert result.exit_code == 2, result.output
    assert ("batches of 4 inputs of 256x256 px would need about 46.0 MiB, over the memory "
            "budget of 20.0 MiB: use a batch size (--batch-size) of at most 1") in result.output


def test_white_box_batches_shrink_to_the_budget(monkeypatch):
    """White-box batches are clamped (the maps do not depend on the batching): two 32x32
    inputs fit here, so five images go in batches of 2, 2, 1."""
    monkeypatch.setenv(BUDGET_ENV, str(2 * PER_PIXEL * 1024 + 1))
    images = [np.zeros((32, 32, 3), np.uint8)] * 5 + [np.zeros((8, 8, 3), np.uint8)]
    assert list(batches(images, 16)) == [[0, 1], [2, 3], [4], [5]]
    assert list(batches(images, 16, torch.device("cpu"), (1, 1)))[0] == [0, 1, 2, 3, 4]


def test_report_whose_methods_fail_on_the_budget_says_so_and_exits_2(folder):
    """A batch size the budget refuses fails each method on the image: each failure is one red
    line and the exit code is 2, never a quiet exit 0 with an empty ranking."""
    args = ["report", str(folder / "p0.png"), "--model", "open-nsfw:onnx", "--methods",
            "occlusion,sliding", "--steps", "2", "-b", "1000000", "-o",
            str(folder.parent / "r.html")]
    result = CliRunner().invoke(app, args, env={BUDGET_ENV: "20M"})
    assert result.exit_code == 2, result.output
    assert "Occlusion failed: batches of" in result.output
    assert "Sliding window failed: batches of" in result.output
    assert (folder.parent / "r.html").stat().st_size > 0  # the report is still written


def test_audit_mosaic_over_the_budget_is_refused_before_any_work(folder):
    """The mosaic is drawn last; a size over the budget is refused up front, not after scoring."""
    args = ["audit", str(folder), "--model", "open-nsfw:onnx", "--no-concepts", "--mosaic",
            "1000000", "-o", str(folder.parent / "audit")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "over the memory budget" in result.output and "1000000 images" in result.output
    assert not (folder.parent / "audit" / "audit.sqlite").exists()
