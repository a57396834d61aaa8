"""Every public function says in its own docstring what each of its parameters is (issue #11,
item 10): ``help(explain.occlusion_map)`` must not send the reader elsewhere."""

from __future__ import annotations

import inspect
import re

import pytest

import explain

FUNCTIONS = [name for name in explain.__all__ if inspect.isfunction(getattr(explain, name))]


def test_the_public_api_has_functions():
    assert {"occlusion_map", "gradcam", "deconvnet", "faithfulness"} <= set(FUNCTIONS)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_docstring_mentions_every_parameter(name):
    function = getattr(explain, name)
    doc = inspect.getdoc(function) or ""
    missing = [p for p in inspect.signature(function).parameters
               if not re.search(rf"\b{re.escape(p)}\b", doc)]
    assert not missing, f"explain.{name}'s docstring does not mention {missing}"
