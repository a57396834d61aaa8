"""The package as a user gets it: the sdist holds the whole tree, and the wheel that pip builds
from that sdist holds every module and template, with ``models/`` only as ``explain.models``.

An editable install reads the source tree, so only a built wheel shows a forgotten subpackage
(issue #11: ``explain/cli/`` and ``explain/audit/`` were missing from the wheel). The build runs
on a copy of the tree in a temporary folder, so no ``build/`` left in the repository can hide
or add a file. Installing the wheel is .ci/run's job.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("explain", "models")  # the folders a build reads, beside the top-level files


def tree_files(folder: str) -> set[str]:
    """Every file under ``folder`` of the repository except Python's caches, relative to it."""
    return {p.relative_to(ROOT / folder).as_posix() for p in (ROOT / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def setuptools_builds() -> bool:
    """Whether this environment's setuptools meets pyproject's ``setuptools>=77`` (then the
    build needs no download)."""
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0]) >= 77
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """The sdist's names (None when not built), the wheel's names and its entry points.

    With a recent setuptools here, the sdist is built first and the wheel from it, as
    ``python -m build`` does; without one, pip builds the wheel alone in its isolated build
    environment (which needs the package index)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    for folder in PACKAGES:
        shutil.copytree(ROOT / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for file in ROOT.iterdir():
        if file.is_file():
            shutil.copy2(file, source / file.name)
    sdist_names = None
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist")]
    if setuptools_builds():
        subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                        "build_meta.build_sdist(sys.argv[1])", str(tmp / "dist")],
                       cwd=source, check=True, capture_output=True)
        (sdist,) = (tmp / "dist").glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            sdist_names = tar.getnames()
            tar.extractall(tmp / "unpacked", filter="data")
        (source,) = (tmp / "unpacked").iterdir()
        pip.append("--no-build-isolation")
    subprocess.run([*pip, str(source)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        entry_points = next(whl.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
    return {"sdist": sdist_names, "wheel": names, "entry_points": entry_points}


@pytest.mark.slow
def test_wheel_holds_every_module_and_template(built):
    names = built["wheel"]
    expected = {f"explain/{f}" for f in tree_files("explain")}
    expected |= {f"explain/models/{f}" for f in tree_files("models")}
    assert any(f.startswith("explain/cli/") for f in expected)
    assert any(f.startswith("explain/templates/") for f in expected)
    missing = sorted(expected - set(names))
    assert not missing, f"not in the wheel (setup.py; package-data in pyproject.toml): {missing}"


def test_wheel_has_no_top_level_models_and_no_caches(built):
    names = built["wheel"]
    assert not [n for n in names if n.startswith("models/")]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"explain"}
    assert "explain = explain.cli:main" in built["entry_points"]


def test_sdist_holds_the_whole_tree(built):
    sdist_names = built["sdist"]
    if sdist_names is None:
        pytest.skip("no setuptools>=77 here to build the sdist with (.ci/run builds it)")
    root = sdist_names[0].split("/")[0]
    expected = {f"{root}/{name}" for name in ("pyproject.toml", "setup.py", "README.md")}
    for folder in PACKAGES:
        expected |= {f"{root}/{folder}/{f}" for f in tree_files(folder)}
    missing = sorted(expected - set(sdist_names))
    assert not missing, f"not in the sdist: {missing}"

