"""Similarity grid: exact assignment cases, the quality metric by hand, and the real open_nsfw
end to end on crops of skimage photos (crops of one photo must end up together)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import cdist
from test_open_nsfw import CountingSession
from torch import nn
from typer.testing import CliRunner

from explain import draw_mosaic, read_grid_json, similarity_grid
from explain.cli import app
from explain.errors import ExplainError, OptionError
from explain.grid import (
    EMPTY_CELL,
    NO_LABEL,
    assign_to_grid,
    folder_labels,
    grid_cells,
    grid_quality,
    grid_shape,
    knn_preservation,
    label_agreement,
    label_colours,
    nearest_neighbours,
    neighbourhood_radius,
    score_colours,
    tsne_layout,
)
from explain.grid.embed import resize
from explain.images import to_batch
from explain.models import CallableClassifier, Preprocess, TorchClassifier


def crops(photos: dict[str, np.ndarray], n: int, seed: int = 0, side: tuple[int, int] = (64, 129)
          ) -> tuple[list[np.ndarray], list[str]]:
    """``n`` random square crops, photos taken in turn; the label is the photo's name."""
    rng = np.random.default_rng(seed)
    names = sorted(photos)
    out, labels = [], []
    for i in range(n):
        img = photos[names[i % len(names)]]
        s = int(rng.integers(*side))
        y, x = (int(rng.integers(0, d - s + 1)) for d in img.shape[:2])
        out.append(img[y:y + s, x:x + s])
        labels.append(names[i % len(names)])
    return out, labels


# --- assignment -------------------------------------------------------------------------------

@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
def test_points_on_the_grid_stay_where_they_are(cost):
    cells = grid_cells((5, 7))
    points = cells[:, ::-1].astype(float) * 3.0 + 10.0  # x = column, y = row, any scale/offset
    np.testing.assert_array_equal(assign_to_grid(points, (5, 7), cost=cost), cells)


def test_a_permutation_is_recovered():
    cells = grid_cells((6, 6))
    perm = np.random.default_rng(3).permutation(len(cells))
    points = cells[perm, ::-1] + np.random.default_rng(4).uniform(-0.2, 0.2, (len(cells), 2))
    np.testing.assert_array_equal(assign_to_grid(points, (6, 6)), cells[perm])


def test_fewer_points_than_cells_leave_cells_empty():
    corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # x, y
    got = assign_to_grid(corners, (3, 3))
    np.testing.assert_array_equal(got, [[0, 0], [0, 2], [2, 0], [2, 2]])


def test_more_points_than_cells_is_refused():
    with pytest.raises(OptionError, match="do not fit a 2x2 grid"):
        assign_to_grid(np.zeros((5, 2)), (2, 2))
    with pytest.raises(OptionError, match="unknown cost"):
        assign_to_grid(np.zeros((2, 2)), (2, 2), cost="cosine")


def test_grid_shape_is_the_smallest_near_square():
    assert grid_shape(64) == (8, 8)
    assert grid_shape(1024) == (32, 32)
    assert grid_shape(17) == (4, 5)
    assert grid_shape(10) == (3, 4)


# --- quality ----------------------------------------------------------------------------------

def test_neighbourhood_radius_holds_k_cells():
    assert [neighbourhood_radius(k) for k in (1, 8, 9, 24, 25)] == [1, 1, 2, 2, 3]


def test_nearest_neighbours_equal_brute_force():
    x = np.random.default_rng(0).normal(size=(50, 7))
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_array_equal(nearest_neighbours(x, 5, chunk=16), np.argsort(d, axis=1)[:, :5])


def test_knn_preservation_by_hand():
    cells = np.array([[0, 0], [0, 1], [3, 3], [0, 3]])
    neighbours = np.array([[1, 2], [0, 3], [3, 0], [1, 2]])
    # Chebyshev <= 1: 0->1 yes, 0->2 no | 1->0 yes, 1->3 no | 2->3, 2->0, 3->1, 3->2 no
    assert knn_preservation(neighbours, cells, radius=1) == pytest.approx(2 / 8)
    assert knn_preservation(neighbours, cells, radius=3) == 1.0


def test_label_agreement_by_hand():
    cells = np.array([[0, 0], [0, 1], [1, 0], [2, 2]])
    labels = ["a", "a", "b", "b"]
    # neighbour pairs (ordered): 0-1 same, 0-2 diff, 1-2 diff (diagonal), both ways; 3 is alone
    assert label_agreement(cells, labels, (3, 3), radius=1) == pytest.approx(2 / 6)


def test_a_faithful_layout_beats_random_placement():
    cells = grid_cells((10, 10))
    vectors = cells.astype(float)  # the embedding is the grid itself
    q = grid_quality(vectors, cells, (10, 10), k=4, seed=0)
    assert q.radius == 1 and q.layout > 0.9 and q.random < 0.1 and q.ratio > 9


# --- t-SNE ------------------------------------------------------------------------------------

def test_tsne_clips_perplexity_for_small_n_and_is_deterministic():
    x = np.random.default_rng(0).normal(size=(16, 12))
    a, used = tsne_layout(x, perplexity=30, seed=7)
    b, _ = tsne_layout(x, perplexity=30, seed=7)
    assert used == 5.0 and a.shape == (16, 2)
    np.testing.assert_array_equal(a, b)


# --- end to end on the real open_nsfw ---------------------------------------------------------

@pytest.fixture(scope="module")
def crop_set(photos):
    return crops(photos, 64)


@pytest.fixture(scope="module")
def nsfw_grid(crop_set, nsfw_onnx):
    images, labels = crop_set
    return similarity_grid(images, nsfw_onnx, labels=labels, target="nsfw", seed=0)


def test_crops_of_one_photo_end_up_together(nsfw_grid):
    g = nsfw_grid
    assert g.shape == (8, 8) and g.embed.startswith("penultimate features of open-nsfw")
    assert g.embedding.shape == (64, 1024)
    assert len({tuple(c) for c in g.cells}) == 64
    q = g.quality
    assert q.k == 8 and q.radius == 1
    assert q.ratio > 3.0, q.summary()
    assert q.label_layout > 0.65 and q.label_ratio > 1.8, q.summary()
    assert g.scores is not None and g.scores.shape == (64,) and g.target == "nsfw"
    assert g.quality.dpq == g.tried[g.layout] == max(g.tried.values()) > 0.8
    assert any(note.startswith(f"layout auto kept {g.layout}") for note in g.notes)


def test_features_and_scores_come_from_one_model_call_per_batch(crop_set, nsfw_onnx,
                                                                 monkeypatch):
    """When the embedder is the model, each batch costs one model call for both the features
    and the scores, and the scores are predict's."""
    images = crop_set[0][:12]
    session = CountingSession(nsfw_onnx.session)
    monkeypatch.setattr(nsfw_onnx, "session", session)
    g = similarity_grid(images, nsfw_onnx, target="nsfw", batch_size=6)
    assert session.runs == 2 and g.embed.startswith("penultimate features")
    expected = nsfw_onnx.predict(to_batch([resize(img, (256, 256)) for img in images]))[:, 1]
    np.testing.assert_allclose(g.scores, expected.numpy(), rtol=1e-6)


def test_features_group_photos_better_than_raw_pixels(crop_set, nsfw_grid):
    images, labels = crop_set
    pixels = similarity_grid(images, embed="pixels", labels=labels, seed=0)
    assert pixels.embed.startswith("raw pixels") and pixels.embedding.shape == (64, 3072)
    assert nsfw_grid.quality.label_layout > pixels.quality.label_layout


@pytest.mark.slow
def test_same_seed_same_grid(crop_set):
    images, _ = crop_set
    a = similarity_grid(images[:24], embed="pixels", seed=3)
    b = similarity_grid(images[:24], embed="pixels", seed=3)
    np.testing.assert_array_equal(a.cells, b.cells)
    assert a.quality == b.quality


def test_fixed_size_samples_and_says_so(crop_set):
    images, _ = crop_set
    g = similarity_grid(images[:20], embed="pixels", size=4, seed=0)
    assert g.shape == (4, 4) and len(g.names) == 16 and len(g.left_out) == 4
    assert not set(g.left_out) & set(g.names)
    assert any("sampled 16" in note and "4 left out" in note for note in g.notes)


def test_fixed_size_larger_than_n_leaves_cells_empty(crop_set):
    images, _ = crop_set
    g = similarity_grid(images[:10], embed="pixels", size=5)
    assert g.shape == (5, 5) and len(g.names) == 10
    assert any("15 left empty" in note for note in g.notes)
    picture = draw_mosaic(g, caption=False)
    assert picture.shape == (5 * 64, 5 * 64, 3)
    occupied = {tuple(c) for c in g.cells}
    empty = next((r, c) for r in range(5) for c in range(5) if (r, c) not in occupied)
    assert (picture[empty[0] * 64 + 32, empty[1] * 64 + 32] == EMPTY_CELL).all()


def test_mosaic_borders_carry_the_score_colour(nsfw_grid):
    picture = draw_mosaic(nsfw_grid, color_by="score", caption=False, cell_px=32, border=3)
    colours = score_colours(nsfw_grid.scores)
    for i in (0, 17, 63):
        r, c = nsfw_grid.cells[i]
        np.testing.assert_array_equal(picture[r * 32 + 1, c * 32 + 16], colours[i])
    with_footer = draw_mosaic(nsfw_grid, color_by="label")
    assert with_footer.shape[0] > 8 * 64 and with_footer.shape[1] == 8 * 64


def test_colouring_needs_its_data(crop_set):
    g = similarity_grid(crop_set[0][:8], embed="pixels")
    with pytest.raises(OptionError, match="needs labels"):
        draw_mosaic(g, color_by="label")
    with pytest.raises(OptionError, match="needs scores"):
        draw_mosaic(g, color_by="score")


# --- black boxes and user embeddings ----------------------------------------------------------

def mean_colour_probs(batch: np.ndarray) -> np.ndarray:
    """A black box: p(class 1) = mean red; no features."""
    red = batch[..., 0].mean(axis=(1, 2)) / 255.0
    return np.stack([1 - red, red], axis=1)


def test_black_box_falls_back_to_probabilities(crop_set):
    clf = CallableClassifier(mean_colour_probs, class_names=["blue", "red"])
    g = similarity_grid(crop_set[0][:12], clf, target="red")
    assert g.embedding.shape == (12, 2) and "class probabilities" in g.embed
    np.testing.assert_allclose(g.scores, g.embedding[:, 1])


def test_torch_module_without_features_falls_back_to_probabilities(crop_set):
    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2), nn.Softmax(1))
    clf = TorchClassifier(net, Preprocess(input_size=(32, 32)))
    g = similarity_grid(crop_set[0][:12], clf)
    assert g.embedding.shape == (12, 2)
    assert "class probabilities" in g.embed and "no features() method" in g.embed


def test_user_embedding_function(tmp_path, crop_set):
    (tmp_path / "emb.py").write_text(
        "import numpy as np\n"
        "def embed(batch):\n"
        "    return batch.reshape(len(batch), -1, 3).mean(axis=1)\n")
    g = similarity_grid(crop_set[0][:12], embed=f"{tmp_path / 'emb.py'}:embed")
    assert g.embedding.shape == (12, 3) and "embedding function" in g.embed
    expected = np.stack([c.reshape(-1, 3).mean(axis=0) for c in crop_set[0][:12]])
    np.testing.assert_allclose(g.embedding, expected, rtol=0.02)  # means after the resize


def test_too_few_readable_images(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(ExplainError, match="only 2 readable"):
        similarity_grid([np.zeros((8, 8, 3), np.uint8)] * 2 + [bad], embed="pixels")


def test_a_bad_array_is_skipped_and_named(crop_set):
    images = list(crop_set[0][:6]) + [np.full((8, 8, 3), 200.0, np.float32)]
    g = similarity_grid(images, embed="pixels")
    assert len(g.names) == 6
    assert len(g.skipped) == 1 and g.skipped[0][0] == "image-00006"
    assert "outside [0, 1]" in g.skipped[0][1]


def test_identical_images_are_placed_without_tsne():
    g = similarity_grid([np.full((8, 8, 3), 9, np.uint8)] * 6, embed="pixels")
    assert len({tuple(c) for c in g.cells}) == 6
    assert any("identical" in note for note in g.notes)


# --- files and the command line ---------------------------------------------------------------

def test_folder_labels(tmp_path):
    paths = [tmp_path / "a" / "1.png", tmp_path / "b" / "x" / "2.png", tmp_path / "3.png"]
    assert folder_labels(tmp_path, paths) == ["a", "b", NO_LABEL]
    assert folder_labels(tmp_path, [tmp_path / "3.png"]) is None


def test_grid_json_round_trip(tmp_path, nsfw_grid):
    doc = read_grid_json(nsfw_grid.save_json(tmp_path / "grid.json"))
    assert doc["rows"] == doc["cols"] == 8 and len(doc["images"]) == 64
    entry = doc["images"][nsfw_grid.names[5]]
    assert entry["cell"] == nsfw_grid.cells[5].tolist()
    assert entry["label"] == nsfw_grid.labels[5]
    assert entry["score"] == pytest.approx(float(nsfw_grid.scores[5]))
    assert doc["quality"]["ratio"] == pytest.approx(nsfw_grid.quality.ratio)
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ExplainError, match="not a grid.json"):
        read_grid_json(tmp_path / "other.json")


def test_cli_writes_mosaic_and_json_and_lists_the_bad_image(tmp_path, photos, nsfw_onnx,
                                                            monkeypatch):
    monkeypatch.setattr("explain.cli.common.load_model", lambda *a, **k: nsfw_onnx)
    root = tmp_path / "data"
    images, labels = crops(photos, 12, seed=1)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / label / f"{i:02d}.png")
    (root / "coffee" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out" / "grid.png"
    result = CliRunner().invoke(app, ["grid", str(root), "-o", str(out), "--color-by", "label",
                                      "--seed", "1"])
    assert result.exit_code == 2, result.output
    assert "broken.jpg" in result.output and "skipped" in result.output
    assert "8-NN preservation" in result.output and "vs random" in result.output
    assert "penultimate features of open-nsfw" in result.output
    assert "DPQ16 " in result.output and "layout auto kept" in result.output
    assert Image.open(out).size[1] > 3 * 64  # 12 images: 3×4 cells, plus the footer
    assert out.with_suffix(".html").is_file() and (out.parent / "grid_tiles" / "0").is_dir()
    doc = read_grid_json(out.with_suffix(".json"))
    assert doc["layout"] in doc["layouts_tried"]
    assert doc["quality"]["dpq"] == doc["layouts_tried"][doc["layout"]]
    assert len(doc["images"]) == 12 and doc["skipped"][0]["path"].endswith("broken.jpg")
    assert {e["label"] for e in doc["images"].values()} == set(photos)


def _labelled_folder(root, photos, n: int = 8):
    images, labels = crops(photos, n, seed=2)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / label / f"{i:02d}.png")
    return root


def test_cli_scores_are_a_choice_and_the_colouring_follows(tmp_path, photos, monkeypatch):
    """--embed pixels loads no model and scores nothing unless --scores is given; the default
    colouring follows (label with sub-folders, score with scores); --color-by score without
    scores is refused before any work; --no-scores turns them off when the embedder is the
    model too (here a black box: its probabilities)."""
    loaded = []

    def load(*args, **kwargs):
        loaded.append(args)
        return CallableClassifier(mean_colour_probs, class_names=["sfw", "nsfw"])

    monkeypatch.setattr("explain.cli.common.load_model", load)
    root = _labelled_folder(tmp_path / "data", photos)
    out = tmp_path / "out" / "grid.png"

    def run(*options: str) -> dict:
        result = CliRunner().invoke(app, ["grid", str(root), "-o", str(out), *options])
        assert result.exit_code == 0, result.output
        return json.loads(out.with_suffix(".json").read_text())

    def border(doc: dict, name: str) -> list[int]:
        r, c = doc["images"][name]["cell"]
        picture = np.asarray(Image.open(out))
        left = (picture.shape[1] - doc["cols"] * 64) // 2  # the footer is at least 512 wide
        return picture[r * 64 + 1, left + c * 64 + 32].tolist()

    doc = run("--embed", "pixels")
    assert loaded == [] and not any("score" in e for e in doc["images"].values())
    assert doc["embed"].startswith("raw pixels")
    palette = label_colours([e["label"] for e in doc["images"].values()])
    assert all(border(doc, name) == list(palette[e["label"]])
               for name, e in doc["images"].items())
    refused = CliRunner().invoke(app, ["grid", str(root), "-o", str(tmp_path / "x.png"),
                                       "--embed", "pixels", "--color-by", "score"])
    assert refused.exit_code == 2 and "--color-by score needs scores: add --scores" in \
        refused.output
    assert loaded == [] and not (tmp_path / "x.json").exists()
    doc = run("--embed", "pixels", "--scores")
    assert len(loaded) == 1 and all("score" in e for e in doc["images"].values())
    assert all(border(doc, name) == score_colours(np.array([e["score"]]))[0].tolist()
               for name, e in doc["images"].items())
    doc = run("--no-scores")
    assert len(loaded) == 2 and doc["embed"].startswith("class probabilities")
    assert not any("score" in e for e in doc["images"].values())
    doc = run()
    assert all("score" in e for e in doc["images"].values())


def test_cli_refuses_label_colouring_without_subfolders(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    result = CliRunner().invoke(app, ["grid", str(tmp_path), "--color-by", "label",
                                      "--embed", "pixels"])
    assert result.exit_code == 2 and "needs sub-folders" in result.output
    result = CliRunner().invoke(app, ["grid", str(tmp_path / "a.png")])
    assert result.exit_code == 2 and "not a folder" in result.output


def test_tensor_batches_keep_rgb_order():
    """Thumbnails and embeddings see the same RGB pixels (no BGR swap through OpenCV)."""
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    g = similarity_grid([red, red[..., ::-1].copy(), red, red[..., ::-1].copy()], embed="pixels")
    assert (g.thumbnails[0][..., 0] == 255).all() and g.embedding[0, 0] == 1.0


def test_embedding_function_that_exits_is_a_model_error_and_byte_names_are_kept(tmp_path):
    """A user's embedding function calling sys.exit is a ModelError naming it (it ended the
    program before); grid.json keeps an undecodable file name exactly, in strict UTF-8."""
    import os

    from explain.errors import ModelError
    from explain.files import from_storable

    (tmp_path / "emb.py").write_text("import sys\n\ndef quits(batch):\n    sys.exit(3)\n")
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = [os.fsdecode(b"caf\xe9.png"), "a.png", "b.png", "c.png"]
    for i, name in enumerate(names):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / name)
    paths = sorted(folder.iterdir())
    with pytest.raises(ModelError, match=r"emb.py:quits called sys.exit\(3\)"):
        similarity_grid(paths, embed=f"{tmp_path / 'emb.py'}:quits")
    grid = similarity_grid(paths, embed="pixels")
    text = json.dumps(grid.to_json(), ensure_ascii=False)
    text.encode("utf-8")  # strict: no lone surrogate (a JSON reader in another language)
    stored = {from_storable(k) for k in json.loads(text)["images"]}
    assert stored == {str(p) for p in paths}
