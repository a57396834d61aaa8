"""The ``nudity`` package's retrained MobileNet v1, ported to torch from its frozen graph.

The package (``pip install --no-deps nudity==0.2.3``, MIT) ships
``nudity/files/retrained_graph.pb``, a TensorFlow-1 frozen graph: ImageNet's MobileNet v1 1.0/224 (a
3×3/2 convolution, 13 depthwise-separable blocks, ReLU6 after every convolution, batch norm, a 7×7
average pool, the 1001-way ImageNet logits) with a retrained head (a 1001→2 linear layer and a
softmax over ``[no, yes]``, named ``sfw, nsfw`` here as for every built-in model). Its input is
224×224 RGB, ``(v − 128) / 128`` on the 0–255 scale.

The network is built from the graph's constants, read by :mod:`explain.models.tf_graph`; no
TensorFlow is needed. Batch norm is folded into each convolution (``w·γ/√(σ²+ε)``, bias
``β − μ·γ/√(σ²+ε)``). TensorFlow's "SAME" padding of a stride-2 convolution on an even input adds
one row and column at the far end only, hence the ``ZeroPad2d((0, 1, 0, 1))`` before those; the
input is always 224×224, so every stride-2 input is even. The scores equal TensorFlow's on
224×224 inputs (``tests/test_builtin_models.py`` keeps TensorFlow's own numbers). The package
resizes an image with TensorFlow 1's ``resize_bilinear`` (no antialiasing, legacy corners); here
an image is resized like for every model (bilinear, antialiased when shrinking), so scores of
images at other sizes differ slightly from the package's.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from explain.errors import ModelError
from explain.models.adapters import TorchClassifier
from explain.models.base import Preprocess
from explain.models.packages import package_file
from explain.models.specs import BUILTIN_MODELS
from explain.models.tf_graph import constant, read_graph

NAME = "nudity-mobilenet"
CLASS_NAMES = ("sfw", "nsfw")
PREPROCESS = Preprocess(input_size=(224, 224), mean=(128.0, 128.0, 128.0),
                        std=(128.0, 128.0, 128.0), value_scale=255.0)
FEATURE_DIM = 1024
BLOCKS = 13
SCOPE = "MobilenetV1/MobilenetV1/"


def graph_path() -> Path:
    """Path of ``retrained_graph.pb`` inside the installed ``nudity`` package."""
    return package_file(NAME, "nudity/files/retrained_graph.pb")


class Separable(nn.Module):
    """A depthwise 3×3 convolution and a pointwise 1×1 one, each followed by ReLU6."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1)) if stride == 2 else nn.ZeroPad2d(1)
        self.depthwise = nn.Conv2d(cin, cin, 3, stride, groups=cin)
        self.relu_depthwise = nn.ReLU6()
        self.pointwise = nn.Conv2d(cin, cout, 1)
        self.relu_pointwise = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu_depthwise(self.depthwise(self.pad(x)))
        return self.relu_pointwise(self.pointwise(x))


class MobileNetNudity(nn.Module):
    """The network; ``forward`` returns the two logits, ``features`` the 1024-d pool, ``head``
    the logits of a pool. ``default_cam_layer``: Grad-CAM's layer when none is given, the last
    block (7×7 at 224)."""

    class_names = CLASS_NAMES
    default_cam_layer = "blocks.12"

    def __init__(self, strides: list[int], widths: list[int]) -> None:
        super().__init__()
        self.pad0 = nn.ZeroPad2d((0, 1, 0, 1))
        self.conv0 = nn.Conv2d(3, widths[0], 3, 2)
        self.relu0 = nn.ReLU6()
        self.blocks = nn.Sequential(*(Separable(widths[i], widths[i + 1], strides[i])
                                      for i in range(BLOCKS)))
        self.pool = nn.AvgPool2d(7)
        self.flatten = nn.Flatten()
        self.logits = nn.Linear(FEATURE_DIM, 1001)
        self.fc = nn.Linear(1001, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu0(self.conv0(self.pad0(x)))
        return self.flatten(self.pool(self.blocks(x)))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The logits of ``features`` (:meth:`features`'s): ``forward(x)`` is
        ``head(features(x))``, so the adapter gets both from one pass."""
        return self.fc(self.logits(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _folded(graph: dict, layer: str, weights: np.ndarray, depthwise: bool
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``layer``'s convolution with its batch norm folded in, in torch's
    layout (out, in/groups, kh, kw)."""
    bn = f"MobilenetV1/{layer}/BatchNorm/"
    gamma, beta = constant(graph, bn + "gamma"), constant(graph, bn + "beta")
    mean, var = constant(graph, bn + "moving_mean"), constant(graph, bn + "moving_variance")
    eps = float(constant(graph, SCOPE + layer + "/BatchNorm/batchnorm/add/y"))
    scale = gamma / np.sqrt(var + eps)
    if depthwise:  # (kh, kw, in, 1) → (in, 1, kh, kw)
        w = weights.transpose(2, 3, 0, 1)
    else:  # (kh, kw, in, out) → (out, in, kh, kw)
        w = weights.transpose(3, 2, 0, 1)
    w = w * scale.reshape(-1, 1, 1, 1)
    return (torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)),
            torch.from_numpy((beta - mean * scale).astype(np.float32)))


def _stride(graph: dict, node: str) -> int:
    strides = graph[node].attrs["strides"]
    if strides[1] != strides[2] or graph[node].attrs.get("padding") != "SAME":
        raise ModelError(f"{graph_path()}: node {node} is not a square SAME convolution")
    return int(strides[1])


@lru_cache(maxsize=1)
def _network_state() -> tuple[list[int], list[int], dict[str, torch.Tensor]]:
    """(block strides, channel widths, torch state dict) read from the frozen graph."""
    graph = read_graph(graph_path())
    try:
        state: dict[str, torch.Tensor] = {}
        w0 = constant(graph, "MobilenetV1/Conv2d_0/weights")
        if _stride(graph, SCOPE + "Conv2d_0/convolution") != 2:
            raise ModelError("the first convolution is expected to have stride 2")
        state["conv0.weight"], state["conv0.bias"] = _folded(graph, "Conv2d_0", w0, False)
        widths, strides = [w0.shape[3]], []
        for i in range(BLOCKS):
            dw, pw = f"Conv2d_{i + 1}_depthwise", f"Conv2d_{i + 1}_pointwise"
            strides.append(_stride(graph, SCOPE + dw + "/depthwise"))
            wd = constant(graph, f"MobilenetV1/{dw}/depthwise_weights")
            wp = constant(graph, f"MobilenetV1/{pw}/weights")
            widths.append(wp.shape[3])
            p = f"blocks.{i}."
            state[p + "depthwise.weight"], state[p + "depthwise.bias"] = _folded(graph, dw, wd,
                                                                                 True)
            state[p + "pointwise.weight"], state[p + "pointwise.bias"] = _folded(graph, pw, wp,
                                                                                 False)
        logits = constant(graph, "MobilenetV1/Logits/Conv2d_1c_1x1/weights")  # 1×1×1024×1001
        state["logits.weight"] = torch.from_numpy(np.ascontiguousarray(logits[0, 0].T))
        state["logits.bias"] = torch.from_numpy(
            constant(graph, "MobilenetV1/Logits/Conv2d_1c_1x1/biases").copy())
        state["fc.weight"] = torch.from_numpy(np.ascontiguousarray(
            constant(graph, "final_training_ops/weights/final_weights").T))
        state["fc.bias"] = torch.from_numpy(
            constant(graph, "final_training_ops/biases/final_biases").copy())
    except KeyError as exc:
        raise ModelError(f"{graph_path()} is not the expected MobileNet v1 graph: it lacks "
                         f"{exc}; reinstall it with {BUILTIN_MODELS[NAME].install}") from exc
    return strides, [int(w) for w in widths], state


def build_net() -> MobileNetNudity:
    """A :class:`MobileNetNudity` in eval mode with the package's weights."""
    strides, widths, state = _network_state()
    net = MobileNetNudity(strides, widths)
    net.load_state_dict(state)
    return net.eval()


def classifier(*, device: str | torch.device | None = None) -> TorchClassifier:
    """The ready classifier (``explain.models.load("nudity-mobilenet")``); white-box capable."""
    return TorchClassifier(build_net(), PREPROCESS, class_names=list(CLASS_NAMES), device=device,
                           logits=True, name=NAME)
