"""``load(spec)``: the one factory that makes a :class:`~explain.models.base.Classifier` of every
spec form (listed in :mod:`explain.models`), and ``load_pair``, the classifiers of a run."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from explain.errors import ModelError
from explain.models import nudenet_classifier, nudity_mobilenet, open_nsfw
from explain.models.adapters import (
    CallableClassifier,
    OnnxClassifier,
    TorchClassifier,
    import_callable,
    load_torchscript,
)
from explain.models.base import Classifier, Preprocess, check_precision, default_device
from explain.models.http import HttpClassifier, is_url
from explain.models.specs import (
    BLACK_BOX_MODEL,
    BUNDLED,
    DEFAULT_MODELS,
    DEFAULT_PRECISION,
    OPEN_NSFW,
    PRECISIONS,
    SPEC_FORMS,
    WHITE_BOX_MODEL,
)

# the built-in models besides open-nsfw (whose backends load() picks): spec → builder
BUILT_IN = {
    "nudenet-classifier": nudenet_classifier.classifier,
    "nudity-mobilenet": nudity_mobilenet.classifier,
}


def load(spec: object = "open-nsfw", device: str | torch.device | None = None, *,
         preprocess: Preprocess | None = None, class_names: Sequence[str] | None = None,
         logits: bool = False, sigmoid: bool = False, channels: str | None = None,
         scale: float | None = None, jpeg_reencode: bool = False,
         precision: str = DEFAULT_PRECISION) -> Classifier:
    """Build a :class:`Classifier` from ``spec`` (the forms: :mod:`explain.models`).

    ``device``: where torch and ONNX models run (default: CUDA when present, else CPU).
    ``preprocess``: input size, crop, mean/std and channel order of a torch or ONNX model (a
    function or endpoint takes an input size only); an ONNX graph's fixed size fills in a
    missing input size. ``class_names``: the names of the output columns (else the model's or a
    function's ``class_names`` attribute, else "0".."C-1"); a one-column (binary) model takes
    two names (negative, positive) or one, ``x``, read as ``not-x, x``. ``logits``: the model
    returns logits of exclusive classes: a softmax, or for one column a sigmoid. ``sigmoid``:
    the columns are independent (multi-label) logits, a sigmoid each. ``channels``
    (``"rgb"``/``"bgr"``) and ``scale`` (1 for [0, 1] inputs, 255 for 0–255): the input
    convention of a torch or ONNX model, set on ``preprocess`` (its mean/std are on that scale,
    in that order). ``jpeg_reencode``: the open-nsfw models only, the reference package's PIL
    resize and JPEG round trip. ``precision``: ``fp32`` (default), ``bf16`` or ``fp16``, what a
    torch model's forward passes run in (:class:`TorchClassifier`); any other model refuses a
    precision but fp32, and ``open-nsfw:auto`` takes the torch backend for one.
    Returns the :class:`Classifier`; raises :class:`~explain.errors.ModelError` for a spec that
    makes none.
    """
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    clf = _build(spec, device, preprocess=preprocess, class_names=class_names, logits=logits,
                 sigmoid=sigmoid, channels=channels, scale=scale, jpeg_reencode=jpeg_reencode,
                 precision=precision)
    if precision == DEFAULT_PRECISION:
        return clf
    if not isinstance(clf, TorchClassifier):
        _fp32_only(getattr(clf, "name", spec), type(clf).__name__, precision)
    if clf is spec:
        if clf.precision != precision:
            raise ModelError(f"model {clf.name} is a ready classifier in {clf.precision}: give "
                             f"precision={precision!r} where it is built (TorchClassifier)")
        return clf
    clf.precision = check_precision(precision, clf.device)
    return clf


def _fp32_only(name: object, kind: str, precision: str) -> None:
    """The ModelError of a model that is not torch (``kind``) asked for a precision but fp32;
    nothing for fp32."""
    if precision != DEFAULT_PRECISION:
        raise ModelError(f"model {name} is not a torch model ({kind}): precision {precision} "
                         "(--precision) applies to torch models only; leave it at fp32")


def _build(spec: object, device: str | torch.device | None, *, preprocess: Preprocess | None,
           class_names: Sequence[str] | None, logits: bool, sigmoid: bool,
           channels: str | None, scale: float | None, jpeg_reencode: bool,
           precision: str) -> Classifier:
    """The classifier of :func:`load`, in fp32; ``precision`` picks open-nsfw:auto's backend,
    and a model that is not torch is refused for it before it is built (an endpoint is not
    called, an ONNX file not loaded)."""
    bundled = isinstance(spec, str) and spec in BUNDLED
    if jpeg_reencode and not (isinstance(spec, str) and spec in OPEN_NSFW):
        raise ModelError("jpeg_reencode (--jpeg-reencode) only applies to the bundled open-nsfw "
                         f"models ({', '.join(OPEN_NSFW)})")
    if bundled and (sigmoid or channels is not None or scale is not None):
        raise ModelError(f"model {spec} reads its own input and output: --sigmoid, --channels "
                         "and --scale (sigmoid=, channels=, scale=) describe a model file or "
                         "module you bring")
    if logits and sigmoid:
        raise ModelError("give logits (--logits: exclusive classes, a softmax) or sigmoid "
                         "(--sigmoid: independent labels, a sigmoid each), not both")
    preprocess = input_convention(preprocess, channels, scale)
    reading = {"class_names": class_names, "logits": logits, "sigmoid": sigmoid}
    if isinstance(spec, nn.Module):
        return TorchClassifier(spec, preprocess or Preprocess(input_size=None), device=device,
                               **reading)
    if isinstance(spec, Classifier):
        return spec
    if callable(spec) and not isinstance(spec, type):
        name = getattr(spec, "__name__", "callable")
        _fp32_only(name, "a Python function", precision)
        return CallableClassifier(spec, name=name, input_size=_pixels_only(preprocess, name),
                                  **reading)
    if not isinstance(spec, str | Path):
        raise ModelError(f"cannot make a classifier out of a {type(spec).__name__}")
    text = str(spec)
    if text in BUILT_IN:
        return BUILT_IN[text](device=device)
    if text in BUNDLED:
        backend = text.partition(":")[2] or "torch"
        if backend == "auto":
            torch_wanted = default_device(device).type == "cuda" or precision != DEFAULT_PRECISION
            backend = "torch" if torch_wanted else "onnx"
        if backend == "onnx":
            _fp32_only(text, "onnxruntime", precision)
        return open_nsfw.classifier(backend, device=device, jpeg_reencode=jpeg_reencode)
    if text.partition(":")[0] in BUNDLED:
        raise ModelError(f"unknown model {text!r}; the bundled models are {', '.join(BUNDLED)}")
    if is_url(text):
        _fp32_only(text, "an HTTP endpoint", precision)
        return HttpClassifier(text, input_size=_pixels_only(preprocess, text), **reading)
    suffix = Path(text).suffix.lower()
    if suffix in (".pt", ".ts", ".pth", ".onnx"):
        if not Path(text).is_file():
            raise ModelError(f"model file {text} not found")
        if suffix == ".onnx":
            _fp32_only(text, "onnxruntime", precision)
            return OnnxClassifier(text, preprocess, device=device, **reading)
        return load_torchscript(text, preprocess or Preprocess(input_size=None), device=device,
                                **reading)
    if ":" in text:
        obj = import_callable(text)
        if isinstance(obj, nn.Module):
            return TorchClassifier(obj, preprocess or Preprocess(input_size=None),
                                   device=device, name=text, **reading)
        _fp32_only(text, "a Python function", precision)
        return CallableClassifier(obj, name=text, input_size=_pixels_only(preprocess, text),
                                  **reading)
    raise ModelError(
        f"unknown model {text!r}. Use one of: "
        + "; ".join(f"{k} ({v})" for k, v in SPEC_FORMS.items())
    )


def load_pair(spec: object, device: str | torch.device | None = None, *,
              white: bool) -> tuple[Classifier, Classifier | None]:
    """The classifiers of a run: (black, white), ``black`` for the scores and black-box
    methods, ``white`` for white-box methods (None unless ``white``). The default open-nsfw
    (either of :data:`~explain.models.specs.DEFAULT_MODELS`) is the pair: black-box on the
    fastest backend, white-box on the torch port (loaded only when ``white``). Any other model:
    the same one for both."""
    if isinstance(spec, str) and spec in DEFAULT_MODELS:
        return load(BLACK_BOX_MODEL, device), load(WHITE_BOX_MODEL, device) if white else None
    clf = load(spec, device)
    return clf, clf if white else None


def input_convention(preprocess: Preprocess | None, channels: str | None,
                     scale: float | None) -> Preprocess | None:
    """``preprocess`` with the channel order (``"rgb"``/``"bgr"``) and value scale given (None:
    as it is); a value that contradicts one ``preprocess`` already sets is an error."""
    if channels is None and scale is None:
        return preprocess
    base = preprocess or Preprocess(input_size=None)
    changes: dict[str, object] = {}
    if channels is not None:
        order = str(channels).upper()
        if order not in ("RGB", "BGR"):
            raise ModelError(f"channels must be 'rgb' or 'bgr', not {channels!r}")
        changes["channel_order"] = order
    if scale is not None:
        if not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
            raise ModelError(f"scale must be a positive number (1 for [0, 1] inputs, 255 for "
                             f"0–255 inputs), not {scale!r}")
        changes["value_scale"] = float(scale)
    default = Preprocess()
    for field, value in changes.items():
        own = getattr(base, field)
        if own != getattr(default, field) and own != value:
            raise ModelError(f"the preprocessing already sets {field}={own!r}; "
                             f"channels/scale ask for {value!r}")
    return dataclasses.replace(base, **changes)


def _pixels_only(preprocess: Preprocess | None, spec: str) -> tuple[int, int] | None:
    """The input size of a model that is sent uint8 pixels (a function, an endpoint): it may be
    resized for it, but a mean/std or crop would be silently meaningless, so they are refused."""
    if preprocess is None:
        return None
    if preprocess.mean != (0.0, 0.0, 0.0) or preprocess.std != (1.0, 1.0, 1.0) \
            or preprocess.crop is not None or preprocess.channel_order != "RGB" \
            or preprocess.value_scale != 1.0:
        raise ModelError(f"model {spec} is sent uint8 RGB pixels: --mean/--std (normalisation), "
                         "--channels and --scale apply to torch and ONNX models only; convert "
                         "inside the function or endpoint")
    return tuple(preprocess.input_size) if preprocess.input_size else None
