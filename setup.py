"""Package discovery for the wheel and the sdist; the metadata lives in pyproject.toml.

Every folder under ``explain/`` is found by discovery (namespace discovery, so that data folders
such as ``templates/`` are packages too), and the top-level ``models/`` folder is installed as
``explain.models`` (never as a top-level ``models``, a name many projects use) with its own
subfolders found the same way: a new subpackage can never be left out of the wheel.
"""

from setuptools import find_namespace_packages, setup


def packages(root: str) -> list[str]:
    return find_namespace_packages(include=[root, f"{root}.*"], exclude=["*.__pycache__"])


setup(
    packages=[*packages("explain"), *(f"explain.{name}" for name in packages("models"))],
    package_dir={"explain": "explain", "explain.models": "models"},
)
