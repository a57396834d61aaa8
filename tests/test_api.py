"""The flat public API: every exported name is the function or class it claims to be."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import types

import pytest

import explain


def test_exports_are_not_shadowed_by_submodules():
    for info in pkgutil.walk_packages(explain.__path__, "explain."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    for name in explain.__all__:
        value = getattr(explain, name)
        assert not isinstance(value, types.ModuleType), name
        assert callable(value), name


def test_import_explain_does_not_load_the_heavy_extras():
    code = ("import sys, explain; "
            "print(sorted({'torch', 'captum', 'openTSNE', 'jinja2'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_dependencies_point_one_way():
    """The audit never loads the report, and building a report loads jinja2 only when it
    renders HTML."""
    audit = ("import sys, explain.audit.run, explain.audit.outputs, explain.audit.stages; "
             "print(sorted(m for m in sys.modules if m.startswith('explain.report')))")
    out = subprocess.run([sys.executable, "-c", audit], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    report = ("import sys; from explain.report import build_report, Options; "
              "print('jinja2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", report], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
