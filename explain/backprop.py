"""Deconvnet and guided backprop: which input pixels drive a score, as a signed input-space map.

Both are the gradient of a score with respect to the ORIGINAL-size RGB image on the [0, 1] scale,
taken through the classifier's own preprocessing in torch (resize, centre crop, channel order,
normalisation; open_nsfw resizes to 256×256 and crops 224×224), so the map is in original image
coordinates and pixels the model never saw are exactly zero. The backward pass of every
``nn.ReLU`` is replaced by captum's rule (``Deconvolution`` / ``GuidedBackprop``)::

    deconvnet (Zeiler & Fergus 2014):          g_in = relu(g_out)
    guided backprop (Springenberg et al. 2015): g_in = relu(g_out) * [x_in > 0]

What is explained:

- class mode (``layer=None``): the module's output for the target class. open_nsfw's module
  returns LOGITS, so its target logit is attributed (the softmax probability would mix in the
  other class's gradient).
- neuron mode (``layer="stages.3"``, any name of ``module.named_modules()``, see :func:`layers`):
  one activation of that layer with every other activation set to zero, as Zeiler & Fergus do
  (captum ``NeuronDeconvolution`` / ``NeuronGuidedBackprop``): ``neuron="max"`` takes each image's
  strongest activation, ``(c, y, x)`` a given one. Position and value are recorded.

captum's rules hook ``nn.ReLU`` modules only; a ReLU applied as a function (``F.relu``,
``x.relu()``) would silently keep its plain gradient. So every pass counts the ReLU calls and a
model with functional ReLUs gets a :class:`~explain.errors.WhiteBoxError`; in-place ``nn.ReLU``
modules are switched to out-of-place for the pass (same outputs). TorchScript modules take no
Python hooks and are refused. Whatever happens, hooks are removed and the module's training flag
and its parameters' ``requires_grad`` are restored.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import Deconvolution, GuidedBackprop, NeuronDeconvolution, NeuronGuidedBackprop
from torch import nn
from torch.overrides import TorchFunctionMode

from explain.errors import OptionError, WhiteBoxError
from explain.heatmap import Heatmap
from explain.images import ImageInput, as_rgb, to_batch
from explain.models import TorchClassifier, check_scores, load, resolve_target
from explain.reconstruction import Reconstruction
from explain.windows import batch_limit

BLACK_BOX_COMMANDS = "`explain occlude` or `explain slide`"
METHODS = {
    "deconvnet": (Deconvolution, NeuronDeconvolution),
    "guided_backprop": (GuidedBackprop, NeuronGuidedBackprop),
}
RELU_FUNCTIONS = frozenset({F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu,
                            torch.Tensor.relu_})

Images = ImageInput | Sequence[ImageInput]
Neuron = str | Sequence[int]


def white_box(model: object) -> TorchClassifier:
    """``model`` as a :class:`TorchClassifier` whose gradients we can take, or a WhiteBoxError."""
    clf = model if isinstance(model, TorchClassifier) else load(model)
    if not isinstance(clf, TorchClassifier):
        raise WhiteBoxError(
            f"model {getattr(clf, 'name', clf)} is a black box ({type(clf).__name__}): "
            "deconvnet, guided backprop and Grad-CAM need a torch module (e.g. --model "
            f"open-nsfw); for this model use the black-box commands {BLACK_BOX_COMMANDS}"
        )
    if isinstance(clf.module, torch.jit.ScriptModule):
        raise WhiteBoxError(
            f"model {clf.name} is TorchScript, which takes no Python hooks, so its ReLUs and "
            "layers cannot be hooked: load the eager nn.Module instead (explain.models.load("
            f"module, preprocess=...)) or use the black-box commands {BLACK_BOX_COMMANDS}"
        )
    if clf.input_transform is not None:
        raise WhiteBoxError(
            f"model {clf.name} has an input transform outside torch (e.g. jpeg_reencode), "
            "which gradients cannot pass; load it without one"
        )
    return clf


def as_images(image: Images) -> tuple[list[np.ndarray], bool]:
    """(list of RGB uint8 images, whether a single image was given).

    One image is anything :func:`explain.images.as_rgb` takes (a path, an array, a nested list);
    several are a list or tuple of arrays or paths.
    """
    if isinstance(image, list | tuple) and len(image) == 0:
        raise OptionError("no images given")
    several = isinstance(image, list | tuple) and all(
        isinstance(item, np.ndarray | str | bytes | os.PathLike) for item in image)
    if not several:
        return [as_rgb(image)], True
    return [as_rgb(img, name=f"image {i}") for i, img in enumerate(image)], False


def batches(images: list[np.ndarray], batch_size: int, device: torch.device | None = None,
            model_shape: tuple[int, int] | None = None) -> Iterator[list[int]]:
    """Indices of images of one shape (one tensor on the device), ``batch_size`` at most, and
    fewer when that many would not fit the memory budget (:func:`explain.windows.batch_limit`;
    the maps do not depend on the batching)."""
    if batch_size < 1:
        raise OptionError(f"batch_size must be at least 1, got {batch_size}")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(img.shape, []).append(i)
    for shape, indices in groups.items():
        step = min(batch_size, batch_limit(device, shape[:2], model_shape))
        for start in range(0, len(indices), step):
            yield indices[start:start + step]


def stack(images: list[np.ndarray], indices: list[int], device: torch.device) -> torch.Tensor:
    """The images at ``indices`` as one N×3×H×W [0, 1] batch that requires grad."""
    return to_batch([images[i] for i in indices], device).requires_grad_(True)


def find_layer(clf: TorchClassifier, name: str) -> nn.Module:
    try:
        return clf.module.get_submodule(name)
    except AttributeError:
        raise OptionError(f"model {clf.name} has no layer {name!r}; `explain layers` lists "
                          "the names") from None


class OnOriginal(nn.Module):
    """The classifier as a module of the original-size RGB [0, 1] batch, preprocessing inside,
    so gradients land in original image coordinates. Keeps its last output for the scores."""

    def __init__(self, clf: TorchClassifier) -> None:
        super().__init__()
        self.net = clf.module
        self.clf = clf
        self.output: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(self.clf.model_input(x))
        self.output = out.detach()
        return out

    def scores(self, target: int) -> list[float]:
        """Probability of ``target`` per image of the last pass."""
        n = self.output.shape[0]  # type: ignore[union-attr]
        probs = check_scores(self.output, n, None, logits=self.clf.logits, name=self.clf.name)
        return probs[:, target].tolist()


@dataclass
class _Calls:
    """What one forward pass did: ReLU calls seen as functions and as modules, layer calls."""

    relu_functions: int = 0
    relu_modules: int = 0
    layer: int = 0

    def check(self, model: str, layer: str | None) -> None:
        functional = self.relu_functions - self.relu_modules
        if functional > 0:
            raise WhiteBoxError(
                f"model {model} applies {functional} ReLU(s) as functions (F.relu, x.relu()), "
                "which the deconvnet/guided-backprop rules cannot hook, so the map would be "
                "wrong: use nn.ReLU modules, or Grad-CAM (`explain gradcam`), or the black-box "
                f"commands {BLACK_BOX_COMMANDS}"
            )
        if layer is not None and self.layer != 1:
            raise OptionError(f"layer {layer!r} ran {self.layer} times in one forward pass; "
                              "pick a layer that runs exactly once (`explain layers`)")


class _ReluCounter(TorchFunctionMode):
    """Counts ReLU calls on tensors that carry gradients (the model's, not captum's hooks')."""

    def __init__(self, calls: _Calls) -> None:
        super().__init__()
        self.calls = calls

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func in RELU_FUNCTIONS and args and torch.is_tensor(args[0]) and args[0].requires_grad:
            self.calls.relu_functions += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def prepared(module: nn.Module, *, relu_rules: bool, layer: nn.Module | None = None
             ) -> Iterator[_Calls]:
    """Eval mode, frozen parameters, out-of-place ReLUs and call counting for one pass; all
    undone (hooks removed, flags restored) on the way out, also when the pass raises."""
    training = [(m, m.training) for m in module.modules()]
    requires_grad = [(p, p.requires_grad) for p in module.parameters()]
    inplace = [m for m in module.modules() if isinstance(m, nn.ReLU) and m.inplace]
    calls = _Calls()
    handles = []

    def count_relu(_module: nn.Module, args: tuple) -> None:
        if args and torch.is_tensor(args[0]) and args[0].requires_grad:
            calls.relu_modules += 1

    def count_layer(*_: object) -> None:
        calls.layer += 1

    try:
        module.eval()
        for p, _ in requires_grad:
            p.requires_grad_(False)
        for m in inplace:
            m.inplace = False
        if relu_rules:
            handles += [m.register_forward_pre_hook(count_relu) for m in module.modules()
                        if isinstance(m, nn.ReLU)]
        if layer is not None:
            handles.append(layer.register_forward_hook(count_layer))
        with _ReluCounter(calls) if relu_rules else nullcontext(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            yield calls
    finally:
        for handle in handles:
            handle.remove()
        for m in inplace:
            m.inplace = True
        for p, flag in requires_grad:
            p.requires_grad_(flag)
        for m, flag in training:
            m.training = flag


class NeuronSelector:
    """captum neuron selector: each image's chosen activation of the layer output (the strongest
    one for ``"max"``), recording its position and value. Its gradient is one-hot: every other
    activation of the layer is zeroed."""

    def __init__(self, neuron: Neuron, layer: str) -> None:
        self.neuron = parse_neuron(neuron)
        self.layer = layer
        self.positions: list[tuple[int, ...]] = []
        self.values: list[float] = []

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(out):
            raise OptionError(f"layer {self.layer!r} returns a {type(out).__name__}, not one "
                              "tensor; pick another layer (`explain layers`)")
        shape = tuple(out.shape[1:])
        flat = out.flatten(1)
        if self.neuron == "max":
            index = flat.argmax(dim=1)
        else:
            if len(self.neuron) != len(shape) or not all(0 <= i < s for i, s in
                                                         zip(self.neuron, shape, strict=True)):
                raise OptionError(f"neuron {tuple(self.neuron)} is outside layer "
                                  f"{self.layer!r}, whose output per image is {shape}")
            flat_index = int(np.ravel_multi_index(tuple(self.neuron), shape))
            index = torch.full((out.shape[0],), flat_index, device=out.device)
        values = flat.gather(1, index[:, None])[:, 0]
        self.positions = [tuple(int(v) for v in np.unravel_index(i, shape))
                          for i in index.tolist()]
        self.values = values.detach().cpu().tolist()
        return values


def parse_neuron(neuron: Neuron) -> str | tuple[int, ...]:
    """``"max"``, a sequence of ints, or the same written ``"c,y,x"``."""
    if isinstance(neuron, str):
        if neuron.strip().lower() == "max":
            return "max"
        try:
            return tuple(int(v) for v in neuron.split(","))
        except ValueError:
            raise OptionError(f"neuron must be 'max' or channel,y,x integers, got {neuron!r}"
                              ) from None
    return tuple(int(v) for v in neuron)


def reconstruct(method: str, model: object, image: Images, *, target: str | int = "nsfw",
                layer: str | None = None, neuron: Neuron = "max", batch_size: int = 16
                ) -> Reconstruction | list[Reconstruction]:
    """``method`` ("deconvnet" or "guided_backprop") on one image or a list of them."""
    if method not in METHODS:
        raise OptionError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    clf = white_box(model)
    images, single = as_images(image)
    t = resolve_target(clf, target)
    target_name = str(clf.class_names[t])
    layer_module = find_layer(clf, layer) if layer else None
    class_rule, neuron_rule = METHODS[method]
    wrapper = OnOriginal(clf)
    results: list[Reconstruction] = [None] * len(images)  # type: ignore[list-item]
    for indices in batches(images, batch_size, clf.device, clf.input_size):
        start = time.perf_counter()
        x = stack(images, indices, clf.device)
        selector = NeuronSelector(neuron, layer) if layer else None
        with prepared(clf.module, relu_rules=True, layer=layer_module) as calls:
            try:
                if selector is None:
                    grads = class_rule(wrapper).attribute(x, target=t)
                else:
                    grads = neuron_rule(wrapper, layer_module).attribute(x, selector)
            except AssertionError:  # captum's "Forward hook did not obtain any outputs"
                if layer is not None and calls.layer == 0:
                    raise OptionError(f"layer {layer!r} does not run in the forward pass of "
                                      f"model {clf.name}") from None
                raise
            calls.check(clf.name, layer)
        scores = wrapper.scores(t)
        values = grads.detach().permute(0, 2, 3, 1).cpu().numpy()
        seconds = (time.perf_counter() - start) / len(indices)
        for k, i in enumerate(indices):
            position = selector.positions[k] if selector else None
            activation = selector.values[k] if selector else None
            magnitude = Heatmap(
                np.abs(values[k]).max(axis=2), method=method, target=target_name,
                score=scores[k], seconds=seconds,
                params={"layer": layer, "neuron": position, "activation": activation},
            )
            results[i] = Reconstruction(values[k], magnitude, method, target_name,
                                        score=scores[k], layer=layer, neuron=position,
                                        activation=activation, seconds=seconds)
    return results[0] if single else results


def deconvnet(model: object, image: Images, *, target: str | int = "nsfw",
              layer: str | None = None, neuron: Neuron = "max", batch_size: int = 16
              ) -> Reconstruction | list[Reconstruction]:
    """Zeiler & Fergus's deconvnet reconstruction of ``target`` (or of one ``layer`` neuron)."""
    return reconstruct("deconvnet", model, image, target=target, layer=layer, neuron=neuron,
                       batch_size=batch_size)


def guided_backprop(model: object, image: Images, *, target: str | int = "nsfw",
                    layer: str | None = None, neuron: Neuron = "max", batch_size: int = 16
                    ) -> Reconstruction | list[Reconstruction]:
    """Springenberg et al.'s guided backprop of ``target`` (or of one ``layer`` neuron)."""
    return reconstruct("guided_backprop", model, image, target=target, layer=layer,
                       neuron=neuron, batch_size=batch_size)


def layers(model: object, *, size: tuple[int, int] | None = None
           ) -> list[tuple[str, str, tuple[int, ...] | None]]:
    """(name, type, output shape per image) of every named module, from one grey input of
    ``size`` (default: the model's input size, else 224×224); shape None = did not run or
    returned no single tensor."""
    clf = white_box(model)
    height, width = size or clf.input_size or (224, 224)
    named = list(clf.module.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str):  # noqa: ANN202
        def record(_module: nn.Module, _args: tuple, out: object) -> None:
            if torch.is_tensor(out):
                shapes[name] = tuple(out.shape[1:])
        return record

    handles = []
    try:
        handles = [m.register_forward_hook(recorder(name)) for name, m in named if name]
        with torch.no_grad():
            clf.module(clf.model_input(torch.full((1, 3, height, width), 0.5)))
    finally:
        for handle in handles:
            handle.remove()
    return [(name, type(m).__name__, shapes.get(name)) for name, m in named if name]
