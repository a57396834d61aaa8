"""The audit store is the one home of SQL: names chosen by callers (stages, image selections) are
checked against its lists, never interpolated, and no other module of explain/ runs a query.
(That no package has an import cycle is tests/test_architecture.py's, for the whole package.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from explain.audit.schema import SELECTIONS, STAGES
from explain.audit.store import Store

EXPLAIN = Path(__file__).resolve().parent.parent / "explain"


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path, {"test": 1})
    s.add_items([("a.jpg", "sfw"), ("b.jpg", "nsfw"), ("c.jpg", None)])
    yield s
    s.close()


def test_known_stages_are_marked_and_read(store):
    for stage in STAGES:
        assert not store.stage_done(stage)
        store.mark_stage(stage)
        assert store.stage_done(stage)


@pytest.mark.parametrize("stage", ["unknown", "created", "listed = 1 --", "id"])
def test_an_unknown_stage_is_refused(store, stage):
    with pytest.raises(ValueError, match="unknown audit stage"):
        store.stage_done(stage)
    with pytest.raises(ValueError, match="unknown audit stage"):
        store.mark_stage(stage)


def test_selections_are_names_with_their_parameter_count(store):
    assert store.count() == 3
    assert store.labels() == ["nsfw", "sfw"]
    assert store.count("label", ("sfw",)) == 1
    with pytest.raises(ValueError, match="unknown image selection"):
        store.count("1 OR 1")
    with pytest.raises(ValueError, match="takes 2 parameter"):
        store.ranked("fp", ("nsfw",), descending=True, limit=5)
    assert set(SELECTIONS) >= {"all", "fp", "fn", "tn", "tp"}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(EXPLAIN.parent).with_suffix("").parts).removesuffix(
        ".__init__"): p for p in EXPLAIN.rglob("*.py")}


def test_no_module_outside_the_stores_runs_sql():
    stores = {EXPLAIN / "audit" / "store.py", EXPLAIN / "serve" / "jobs.py",
              EXPLAIN / "serve" / "collections.py"}
    callers = []
    for path in _modules().values():
        if path in stores:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("execute", "executemany",
                                                                 "executescript"):
                callers.append(f"{path.relative_to(EXPLAIN.parent)}:{node.lineno}")
    assert callers == []


def test_the_audit_reports_progress_through_a_callback_and_never_prints(tmp_path, capsys):
    """The library never prints: the stages call ``progress(done, total, stage)`` and the CLI
    draws the bars; every stage ends at its total."""
    import numpy as np
    from PIL import Image

    from explain.audit import AuditOptions, audit
    from explain.models.adapters import CallableClassifier

    for i, level in enumerate((20, 230, 120)):
        Image.fromarray(np.full((16, 16, 3), level, np.uint8)).save(tmp_path / f"x{i}.png")
    clf = CallableClassifier(lambda b: np.stack([1 - b.mean((1, 2, 3)) / 255,
                                                 b.mean((1, 2, 3)) / 255], 1),
                             class_names=["sfw", "nsfw"])
    calls: list[tuple[int, int, str]] = []
    audit(tmp_path, tmp_path / "out", model=clf, progress=lambda *a: calls.append(a),
          options=AuditOptions(top=2, concepts=False, mosaic=0))
    last = {stage: (done, total) for done, total, stage in calls}
    assert last == {"scoring": (3, 3), "heatmaps": (2, 2)}
    assert capsys.readouterr() == ("", "")
