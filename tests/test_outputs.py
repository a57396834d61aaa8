"""One result writer (explain/outputs.py): one layout and one JSON shape for a map, whichever
surface writes it (the CLI, clips, the audit, the service)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from markupsafe import escape
from test_audit_operating import audited, options  # noqa: F401 — the audited folder, shared

from explain.audit import audit
from explain.heatmap import Heatmap
from explain.models import load
from explain.models.base import Preprocess
from explain.occlusion import occlusion_map
from explain.outputs import record, write_map
from explain.render import described, figure, scale


def brightness(batch: np.ndarray) -> np.ndarray:
    """p(nsfw) = the mean red level of each uint8 image."""
    p = batch[..., 0].reshape(len(batch), -1).mean(axis=1) / 255.0
    return np.stack([1.0 - p, p], axis=1)


def a_map() -> tuple[np.ndarray, Heatmap]:
    model = load(brightness, class_names=["sfw", "nsfw"],
                 preprocess=Preprocess(input_size=(32, 32)))
    image = np.zeros((48, 64, 3), np.uint8)
    image[:24, :32, 0] = 255
    return image, occlusion_map(model, image, box=16, stride=16)


def test_the_layout_and_the_record(tmp_path):
    image, heatmap = a_map()
    picture = figure(image, heatmap)
    written = write_map(tmp_path / "x.occlusion", heatmap, pictures={".png": picture},
                        values=True, extra=record(heatmap, image=tmp_path / "x.png"))
    assert [p.name for p in written] == ["x.occlusion.png", "x.occlusion.npy",
                                         "x.occlusion.json"]
    saved = json.loads(written[2].read_text())
    drawn = described(heatmap, scale(heatmap))
    assert saved == json.loads(json.dumps({**heatmap.metadata(), "image": str(tmp_path / "x.png"),
                                           **drawn}))
    back = Heatmap.load(tmp_path / "x.occlusion")
    np.testing.assert_array_equal(back.values, heatmap.values)
    assert (back.box, back.params["fill"]) == (heatmap.box, heatmap.params["fill"])
    # pictures only: nothing else; a record without values: no .npy
    assert write_map(tmp_path / "y", pictures={".png": picture}) == [tmp_path / "y.png"]
    assert write_map(tmp_path / "z", heatmap, extra=record(heatmap)) == [tmp_path / "z.json"]


def test_the_service_and_the_audit_write_the_cli_s_files(tmp_path):
    """The service's job folder and an audit heatmap hold the same .npy and the same record as
    the library's writer gives the same map (the audit's and the CLI's file names kept)."""
    from explain.audit.stages import HeatmapDone, write_heatmap
    from explain.serve.worker import write_results

    image, heatmap = a_map()
    write_map(tmp_path / "lib", heatmap, values=True, extra=record(heatmap))
    (tmp_path / "job").mkdir()
    write_results(tmp_path / "job", heatmap)
    job = tmp_path / "job"
    assert json.loads((job / "heatmap.json").read_text()) == json.loads(
        (tmp_path / "lib.json").read_text())
    np.testing.assert_array_equal(np.load(job / "heatmap.npy"), np.load(tmp_path / "lib.npy"))

    class Row:
        id = 7

    class Store:
        def save_heatmap(self, *args: object) -> None:
            self.row = args

    store = Store()
    (tmp_path / "audit" / "heatmaps").mkdir(parents=True)
    write_heatmap(store, tmp_path / "audit" / "heatmaps", "fp", Row(),  # type: ignore[arg-type]
                  HeatmapDone(heatmap, figure(image, heatmap), {}, 0.5, record(heatmap)))
    assert store.row[:4] == (7, "fp", "heatmaps/fp_0000007.png", "heatmaps/fp_0000007.npy")
    assert json.loads((tmp_path / "audit" / "heatmaps" / "fp_0000007.json").read_text()) == \
        json.loads((tmp_path / "lib.json").read_text())


def test_the_white_box_file_loop_is_the_library_s(tmp_path):
    """explain.whitebox.explain_files (the loop `explain deconv/guided/gradcam` run over): an
    unreadable file is reported at once, a batch that fails is explained image by image so only
    the bad image fails, and an error of the call itself stops the run."""
    from PIL import Image

    from explain.errors import ExplainError, ImageError, OptionError
    from explain.whitebox import explain_files

    paths = []
    for k, level in enumerate((10, 20, 30)):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(np.full((8, 8, 3), level, np.uint8)).save(paths[-1])
    paths.insert(1, tmp_path / "missing.png")
    calls = []

    def explain(images: list[np.ndarray]) -> list:
        calls.append(len(images))
        if any(img[0, 0, 0] == 20 for img in images):
            raise ExplainError("the model failed on 20")
        return [int(img[0, 0, 0]) for img in images]

    got = [(k, None if img is None else int(img[0, 0, 0]),
            type(r).__name__ if isinstance(r, Exception) else r)
           for k, img, r in explain_files(paths, explain, batch_size=3)]
    assert got == [(1, None, ImageError.__name__), (0, 10, 10), (2, 20, "ExplainError"),
                   (3, 30, 30)]
    assert calls == [3, 1, 1, 1]
    with pytest.raises(OptionError):
        list(explain_files(paths, lambda images: (_ for _ in ()).throw(OptionError("no")), 2))


@pytest.mark.slow
def test_a_heatmap_redrawn_in_a_new_look_gets_the_reading_of_that_look(audited):  # noqa: F811
    """A resumed audit with another colormap redraws each heatmap's picture from its saved map;
    its record (``drawn``, ``reading``) and the page's words under it are rewritten with it, so
    a viridis picture is never read with the words of the bwr one."""
    root, _, _, clf, _ = audited
    audit(root / "data" / "labels.csv", root / "out", model=clf,
          options=options(threshold=0.5, colormap="viridis"))
    records = [json.loads(p.read_text()) for p in sorted((root / "out" / "heatmaps")
                                                         .glob("*.json"))]
    assert records and all(r["drawn"]["colormap"] == "viridis" for r in records)
    assert all("purple" in r["reading"] and "blue" not in r["reading"] for r in records)
    page = (root / "out" / "audit.html").read_text()
    assert all(str(escape(r["reading"])) in page for r in records)
    back = Heatmap.load(sorted((root / "out" / "heatmaps").glob("*.npy"))[0].with_suffix(""))
    assert back.params["source"] and back.params["original_shape"]
