"""Shared fixtures: the real open_nsfw on both backends (built once) and real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from explain.models import load


@pytest.fixture(scope="session")
def nsfw_torch():
    return load("open-nsfw", "cpu")


@pytest.fixture(scope="session")
def nsfw_onnx():
    return load("open-nsfw:onnx", "cpu")


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real RGB uint8 photos from scikit-image."""
    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
