"""What a map is measured against and where it means anything (issue 22, items 4–5): the
baseline every occlusion and sliding map records (the fill's own score), ``fill="auto"``, the
warning when the baseline is not below the image's score; ``model_view``, the part of the
original image the model sees, recorded by every map, hatched on pictures and left out of the
metrics. Known answers from tiny models whose scores are written by hand."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_occlusion import region_model

from explain import occlusion_map, sliding_window_map
from explain.audit.concepts import Part, area_share, heat_share, seen_parts
from explain.audit.cue_harvest import seen_heat
from explain.faithfulness import faithfulness
from explain.frame_reuse import occlusion_maps, sliding_maps
from explain.heatmap import Heatmap
from explain.models import Preprocess, load
from explain.models.base import model_view
from explain.occlusion import plan_occlusion
from explain.render import (
    context_line,
    figure,
    hatch_unseen,
    legend_height,
    scale,
    unseen_mask,
)
from explain.rise import rise_map
from explain.serve.batching import OcclusionRun, score_step

WHITE = np.full((6, 6, 3), 255, np.uint8)


def cropped_model(r0, r1, c0, c1, input_size=(8, 8), crop=(6, 6)):
    """p(bright) = mean brightness of rows [r0, r1) × cols [c0, c1) of the model's input, which is
    the image resized to ``input_size`` and centre-cropped to ``crop``."""
    from test_occlusion import RegionBrightness

    return load(RegionBrightness(r0, r1, c0, c1), "cpu",
                preprocess=Preprocess(input_size=input_size, crop=crop),
                class_names=["other", "bright"])


# ---- the baseline -----------------------------------------------------------------------------

@pytest.mark.parametrize("fill,own", [("gray", 0.5), ("black", 0.0), ("mean", 1.0), ("blur", 1.0)])
def test_every_occlusion_map_records_its_fills_own_score(fill, own):
    # a white image scores 1; filled everywhere it scores the fill's brightness
    hm = occlusion_map(region_model(0, 2, 0, 2), WHITE, box=2, stride=2, fill=fill,
                       target="bright")
    assert hm.score == pytest.approx(1.0)
    assert hm.params["baseline_score"] == pytest.approx(own, abs=1e-6)
    assert hm.params["baseline"] == f"whole image {fill}-filled"
    assert hm.baseline_text() == f"whole image {fill}-filled: p(bright) = {own:.3g}"


def test_a_baseline_not_below_the_score_is_a_warning_the_map_carries(tmp_path):
    mean = occlusion_map(region_model(0, 2, 0, 2), WHITE, box=2, stride=2, fill="mean",
                         target="bright")
    note = mean.baseline_note()
    assert note is not None and note.startswith("baseline 1 >= image's p(bright) 1:")
    assert "the drops measure the fill" in note and note in mean.notes()
    mean.save(tmp_path / "m")
    assert note in (tmp_path / "m.json").read_text()
    assert Heatmap.load(tmp_path / "m").params["baseline_score"] == pytest.approx(1.0)
    black = occlusion_map(region_model(0, 2, 0, 2), WHITE, box=2, stride=2, fill="black",
                          target="bright")
    assert black.baseline_note() is None and black.notes() == []


def test_fill_auto_picks_the_fill_with_the_least_target_evidence():
    hm = occlusion_map(region_model(0, 2, 0, 2), WHITE, box=2, stride=2, fill="auto",
                       target="bright")
    assert hm.params["fill_asked"] == "auto" and hm.params["fill"] == "black"
    assert hm.params["fill_scores"] == pytest.approx({"gray": 0.5, "black": 0.0, "mean": 1.0,
                                                      "blur": 1.0}, abs=1e-6)
    explicit = occlusion_map(region_model(0, 2, 0, 2), WHITE, box=2, stride=2, fill="black",
                             target="bright")
    np.testing.assert_array_equal(hm.values, explicit.values)
    assert hm.params["baseline_score"] == explicit.params["baseline_score"] == 0.0
    # for the other class the least evidence is the brightest fill (mean, first of the ties)
    other = occlusion_map(region_model(0, 2, 0, 2), WHITE, box=2, stride=2, fill="auto",
                          target="other")
    assert other.params["fill"] == "mean"


def test_drill_down_incremental_and_the_services_batches_record_the_same_baseline():
    img = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    clf = region_model(4, 12, 6, 18)
    exact = occlusion_map(clf, img, box=4, stride=2, target="bright", incremental=False)
    drilled = occlusion_map(clf, img, box=4, stride=2, target="bright", drill_down=0.3,
                            incremental=False)
    run = OcclusionRun("job", plan_occlusion(clf, img, box=4, stride=2, target="bright"))
    while score_step(clf, [run], 16):
        pass
    served = run.plan.heatmap(run.probabilities(), 0.0, 16)
    for hm in (exact, drilled, served):
        assert hm.params["baseline_score"] == pytest.approx(0.5, abs=1e-6)  # gray everywhere
    assert served.params == exact.params | {"batch_size": 16}


def test_incremental_inference_scores_the_baseline_as_full_inference():
    from test_incremental import SmallResNet, tiny

    clf = tiny(SmallResNet(), input_size=None)
    img = np.random.default_rng(1).integers(0, 256, (33, 29, 3), dtype=np.uint8)
    for fill in ("gray", "blur"):
        exact = occlusion_map(clf, img, box=6, stride=4, fill=fill, target=1, incremental=False)
        fast = occlusion_map(clf, img, box=6, stride=4, fill=fill, target=1, incremental=True)
        assert fast.params["incremental"] is True
        assert fast.params["baseline_score"] == pytest.approx(exact.params["baseline_score"],
                                                              abs=1e-6)
        filled = exact.params["baseline_score"]
        assert abs(filled - exact.score) > 1e-4  # a real baseline, not the intact image again


def test_clip_maps_record_the_baseline_and_choose_auto_once():
    frames = [np.full((6, 6, 3), v, np.uint8) for v in (255, 255, 200)]
    maps = occlusion_maps(region_model(0, 2, 0, 2), frames, box=2, stride=2, fill="auto",
                          target="bright")
    assert [m.params["fill"] for m in maps] == ["black"] * 3
    assert all(m.params["fill_asked"] == "auto" for m in maps)
    assert [m.params["baseline_score"] for m in maps] == pytest.approx([0.0] * 3, abs=1e-6)
    slid = sliding_maps(region_model(0, 1, 0, 1), frames, box=2, stride=2, target="bright")
    assert all(m.params["baseline_score"] == pytest.approx(0.5) for m in slid)


def test_sliding_records_what_a_blank_crop_scores():
    hm = sliding_window_map(region_model(0, 1, 0, 1), WHITE, box=2, stride=2, target="bright")
    assert hm.params["baseline"] == "blank gray crop"
    assert hm.params["baseline_score"] == pytest.approx(0.5)
    assert hm.baseline_note() is None  # a probability map is not measured against it


def test_open_nsfw_scores_the_gray_fill_about_0_195(nsfw_onnx, photos):
    img = photos["astronaut"][::2, ::2]
    hm = occlusion_map(nsfw_onnx, img, box=64, stride=64)
    gray = float(nsfw_onnx.predict(torch.full((1, 3, 256, 256), 0.5))[0, 1])
    assert hm.params["baseline_score"] == pytest.approx(gray, abs=1e-5)
    assert 0.15 < gray < 0.25 and hm.score < gray  # the astronaut scores below its fill
    assert hm.baseline_note() is not None
    assert "whole image gray-filled: p(nsfw) = 0.19" in context_line(hm, hm.shape)


# ---- the model's view -------------------------------------------------------------------------

def test_preprocess_view_known_answers():
    open_nsfw = Preprocess(input_size=(256, 256), crop=(224, 224))
    assert open_nsfw.view((256, 256)) == [16, 16, 240, 240]
    assert open_nsfw.view((512, 384)) == [32, 24, 480, 360]
    assert Preprocess(input_size=(224, 224)).view((300, 200)) == [0, 0, 300, 200]
    assert Preprocess(input_size=None, crop=(4, 6)).view((10, 10)) == [3, 2, 7, 8]
    assert Preprocess(input_size=(8, 8), crop=(6, 6)).view((16, 16)) == [2, 2, 14, 14]


def test_model_view_of_every_adapter(nsfw_onnx):
    assert model_view(nsfw_onnx, (512, 512)) == [32, 32, 480, 480]
    fn = load(lambda x: np.full((len(x), 2), 0.5), class_names=["a", "b"])
    assert model_view(fn, (10, 20)) == [0, 0, 10, 20]  # a function: no crop is known
    # open_nsfw's JPEG reference pipeline crops inside its transform: its geometry says so
    from explain.models import open_nsfw

    jpeg = SimpleNamespace(preprocess=Preprocess(input_size=None), geometry=open_nsfw.PREPROCESS)
    assert model_view(jpeg, (256, 256)) == [16, 16, 240, 240]


def test_every_map_records_the_model_view():
    clf = cropped_model(0, 6, 0, 6)
    img = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert occlusion_map(clf, img, box=4, stride=4, target=1).params["model_view"] == \
        [2, 2, 14, 14]
    assert rise_map(clf, img, masks=8, target=1).params["model_view"] == [2, 2, 14, 14]
    # sliding: each 8×8 crop is seen in its centre 6×6 ([1, 7)), crops start at 0, 4, 8
    slid = sliding_window_map(clf, img, box=8, stride=4, target=1)
    assert slid.params["model_view"] == [1, 1, 15, 15]


def test_white_box_maps_record_the_model_view(nsfw_torch, photos):
    from explain.grad_cam import gradcam

    img = photos["coffee"][:128, :192]
    assert gradcam(nsfw_torch, img).params["model_view"] == [8, 12, 120, 180]


def test_occlusion_outside_the_view_is_exactly_zero_and_hatched():
    clf = cropped_model(0, 6, 0, 6)
    img = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    hm = occlusion_map(clf, img, box=2, stride=2, target=1)
    assert np.abs(hm.values[:2]).max() == 0 and np.abs(hm.values[:, 14:]).max() == 0
    mask = unseen_mask(hm, (16, 16))
    assert mask is not None and mask.sum() == 16 * 16 - 12 * 12 and not mask[2:14, 2:14].any()
    bare = replace(hm, params={k: v for k, v in hm.params.items() if k != "model_view"})
    drawn, plain = figure(img, hm, legend=False), figure(img, bare, legend=False)
    np.testing.assert_array_equal(drawn[2:14, 2:14], plain[2:14, 2:14])
    assert (drawn[mask] != plain[mask]).any(axis=1).all()
    assert (drawn[mask] == 64).all(axis=1).sum() > 0  # the hatch lines
    # at another size (a shrunk picture) the view scales with it
    assert unseen_mask(hm, (8, 8)).sum() == 64 - 36
    full = Heatmap(hm.values, "occlusion", "bright", params={"model_view": [0, 0, 16, 16]})
    assert unseen_mask(full, (16, 16)) is None and hatch_unseen(drawn, full) is drawn


def test_the_legend_states_the_baseline_and_the_hatching():
    hm = occlusion_map(cropped_model(0, 6, 0, 6), np.full((16, 16, 3), 200, np.uint8), box=4,
                       stride=4, fill="black", target=1)
    line = context_line(hm, hm.shape)
    assert line == ("whole image black-filled: p(bright) = 0;  hatched: never seen by the "
                    "model")
    s = scale(hm)
    assert figure(np.zeros((16, 16, 3), np.uint8), hm).shape[0] == 16 + legend_height(hm, 16, s)
    bare = replace(hm, params={})  # neither baseline nor view: no context line
    assert legend_height(hm, 16, s) > legend_height(bare, 16, s)


def test_faithfulness_ranks_only_the_pixels_the_model_sees():
    clf = cropped_model(0, 6, 0, 6)
    img = np.random.default_rng(4).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    inside = np.random.default_rng(5).random((8, 8))
    loud = inside.copy()
    loud[0, :] = loud[:, 0] = 100.0  # the highest values where the model never looks
    a = faithfulness(clf, img, inside, steps=6, target="bright", fill="black")
    b = faithfulness(clf, img, loud, steps=6, target="bright", fill="black")
    assert a["view"] == [1, 1, 7, 7] and a["fractions"] == pytest.approx(
        [k / 6 for k in range(7)])
    assert a["deletion"] == b["deletion"] and a["insertion"] == b["insertion"]
    assert a["deletion"][-1] == pytest.approx(0.0, abs=1e-6)  # the whole seen part deleted


def test_audit_metrics_count_only_the_seen_region():
    view = [2, 2, 14, 14]
    parts = [Part("in", 0.9, (4, 4, 8, 8)), Part("edge", 0.8, (0, 0, 6, 6)),
             Part("out", 0.7, (0, 0, 2, 16))]
    seen = seen_parts(parts, view)
    assert [(p.concept, p.box) for p in seen] == [("in", (4, 4, 8, 8)), ("edge", (2, 2, 6, 6))]
    assert area_share((2, 2, 6, 6), (16, 16), view) == pytest.approx(16 / 144)
    values = np.zeros((16, 16))
    values[0, 0] = 3.0  # heat the model cannot have caused
    values[5, 5] = 1.0
    assert heat_share(values, (2, 2, 6, 6), view) == pytest.approx(1.0)
    assert heat_share(values, (2, 2, 6, 6)) == pytest.approx(0.25)
    small = seen_heat(np.ones((8, 8)), view, (16, 16))  # a map at half scale
    assert small.sum() == 36 and small[1:7, 1:7].all()
