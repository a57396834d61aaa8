"""Shared fixtures: the real open_nsfw on both backends and the other built-in models (built
once), real photos, the browser for the page tests, the one comparison of a CLI picture with
the renderer's, and the window plans a test builds."""

from __future__ import annotations

import importlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from explain.models import load


@pytest.fixture(scope="session")
def nsfw_torch():
    return load("open-nsfw", "cpu")


@pytest.fixture(scope="session")
def nsfw_onnx():
    return load("open-nsfw:onnx", "cpu")


def builtin(spec: str):
    """The built-in model ``spec`` on the CPU, or :func:`missing` naming its install command
    when its weights' package is absent."""
    import importlib.metadata

    from explain.models.specs import BUILTIN_MODELS

    package = BUILTIN_MODELS[spec]
    try:
        importlib.metadata.distribution(package.package)
    except importlib.metadata.PackageNotFoundError:
        missing(f"{package.package} is not installed ({package.install}; .ci/run does it)",
                f"tests of the built-in model {spec}")
    return load(spec, "cpu")


@pytest.fixture(scope="session")
def nudenet_clf():
    """NudeNet v2's classifier (``nudenet-classifier``), built once."""
    return builtin("nudenet-classifier")


@pytest.fixture(scope="session")
def mobilenet():
    """The nudity package's MobileNet (``nudity-mobilenet``), built once."""
    return builtin("nudity-mobilenet")


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real RGB uint8 photos from scikit-image."""
    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}


@pytest.fixture
def window_plans(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """The (box, stride) of every :class:`explain.windows.WindowPlan` built during the test,
    in order: how a test shows that a job makes its window plan once."""
    import explain.windows

    built: list[tuple] = []
    init = explain.windows.WindowPlan.__init__

    def counted(self: explain.windows.WindowPlan, box: object, stride: object) -> None:
        built.append((box, stride))
        init(self, box, stride)  # type: ignore[arg-type]

    monkeypatch.setattr(explain.windows.WindowPlan, "__init__", counted)
    return built


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def missing(reason: str, what: str) -> NoReturn:
    """A missing optional dependency: a listed skip on a developer's machine, a failure under CI
    (``CI=true``), where .ci/run installs everything (``what``: the tests that need it)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}: under CI the {what} must run, not be skipped")
    pytest.skip(reason)


def need_module(name: str, extra: str, what: str) -> ModuleType:
    """The module ``name``, or :func:`missing` naming the extra that installs it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"{name} is not installed (pip install -e '.[{extra}]'; the dev extra pulls it "
                "in)", what)


def find_chromium() -> str:
    """The Debian chromium that the page tests drive. Missing, it is a listed skip on a
    developer's machine and a failure under CI (``CI=true``), where .ci/run installs it."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        missing("Debian chromium is not installed (apt-get install chromium; .ci/run does it)",
                "browser tests")
    return path


@pytest.fixture(scope="session")
def chromium() -> str:
    """:func:`find_chromium`, once per session."""
    return find_chromium()


def assert_cli_picture(path: Path, draw: Callable[..., np.ndarray], image: np.ndarray,
                       result: object, **options: object) -> None:
    """The PNG the CLI wrote at ``path`` holds exactly ``draw(image, result, **options)``, the
    picture the library draws for the same image and map (``result``: a Heatmap or a
    Reconstruction). The one place to adjust when the CLI's pictures change form."""
    expected = draw(image, result, **options)
    written = np.asarray(Image.open(path).convert("RGB"))
    assert written.shape == expected.shape, (path, written.shape, expected.shape)
    differ = (written != expected).any(axis=2)
    assert not differ.any(), f"{path}: {differ.sum()} of {differ.size} pixels differ"


@pytest.fixture
def cli_picture() -> Callable[..., None]:
    """:func:`assert_cli_picture`, for the CLI tests."""
    return assert_cli_picture


SLOW_FIXTURES = frozenset({"nsfw_torch", "nsfw_onnx", "chromium", "cluster"})
"""Fixtures that make a test slow wherever it is: the real open_nsfw at full size (its load and its
forward passes), a headless browser, a local Ray cluster. A test that uses one, directly or
through another fixture, is in the full tier only; other slow tests carry ``@pytest.mark.slow``."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The quick tier (``pytest -m "not slow"``) leaves out every test of :data:`SLOW_FIXTURES`."""
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def fifos():
    """``fifos(folder)`` makes FIFOs named like images and clips there. A writer thread waits
    on each, so that code that opens one gets an empty read (and fails these tests) instead of
    hanging; the teardown opens each for reading once, which lets a writer never needed end."""
    made: list[Path] = []

    def make(folder: Path) -> list[Path]:
        paths = [folder / name for name in ("pipe.gif", "pipe.png", "pipe.mp4")]
        for p in paths:
            os.mkfifo(p)
            threading.Thread(target=lambda p=p: open(p, "wb").close(), daemon=True).start()
        made.extend(paths)
        return paths

    yield make
    for p in made:
        os.close(os.open(p, os.O_RDONLY | os.O_NONBLOCK))
