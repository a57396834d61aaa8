"""The whole loop of ``scripts/demo_loop.py`` (audit → counter-examples → retrain → compare) on
its toy problem, with the thresholds the issue sets. About 1.5 minutes on a shared 2-core CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "demo_loop.py"


@pytest.mark.slow
def test_the_loop_removes_the_cue_it_found(tmp_path):
    spec = importlib.util.spec_from_file_location("demo_loop", SCRIPT)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    f = demo.run(tmp_path)
    audit_a, mined, compared = f["audit_a"], f["mined"], f["compare"]
    # the cross is cue rank 1: every false-positive patch of it holds the cross
    assert audit_a["cue_fp_patches"] >= 5
    assert audit_a["cue_fp_patches_on_the_cross"] == audit_a["cue_fp_patches"]
    assert audit_a["cue_paste_gain"] >= 0.3
    assert mined["precision_at_10"] >= 0.8
    assert mined["synthetic"] == 40
    # the retrained model: fewer false positives among the negatives that carry a cross
    assert compared["fpr_cross_b"] < compared["fpr_cross_a"]
    # cue A re-measured under model B (compare's cue_changes.csv)
    assert "paste_gain_b" in compared, compared.get("cue_changes")
    assert float(compared["paste_gain_b"]) <= 0.5 * float(compared["paste_gain_a"])
    assert float(compared["strength_b"]) <= 0.5 * float(compared["strength_a"])
