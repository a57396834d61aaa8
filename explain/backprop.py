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
and its parameters' ``requires_grad`` are restored. The skeleton (target, layer, hooks, batches,
original coordinates) is the white-box engine's, :mod:`explain.whitebox`; this module is the
ReLU rule and the neuron selector.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from captum.attr import Deconvolution, GuidedBackprop, NeuronDeconvolution, NeuronGuidedBackprop

from explain.choices import WHITE_BOX_BATCH
from explain.errors import OptionError
from explain.heatmap import Heatmap
from explain.models.base import model_view
from explain.reconstruction import Reconstruction
from explain.whitebox import (
    Calls,
    Context,
    Images,
    Method,
    as_images,
    batches,
    find_layer,
    layers,
    prepared,
    run,
    white_box,
)

__all__ = [
    "METHODS", "Images", "Neuron", "NeuronSelector", "as_images", "batches", "deconvnet",
    "find_layer", "guided_backprop", "layers", "parse_neuron", "prepared", "reconstruct",
    "white_box",
]

METHODS = {
    "deconvnet": (Deconvolution, NeuronDeconvolution),
    "guided_backprop": (GuidedBackprop, NeuronGuidedBackprop),
}

Neuron = str | Sequence[int]


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
    """``neuron`` as ``"max"`` or a tuple of ints: it may be ``"max"``, a sequence of ints, or
    the same written ``"c,y,x"``."""
    if isinstance(neuron, str):
        if neuron.strip().lower() == "max":
            return "max"
        try:
            return tuple(int(v) for v in neuron.split(","))
        except ValueError:
            raise OptionError(f"neuron must be 'max' or channel,y,x integers, got {neuron!r}"
                              ) from None
    return tuple(int(v) for v in neuron)


class _Backprop(Method):
    """Deconvnet or guided backprop for :func:`explain.whitebox.run`: captum's ReLU rule on
    the class score, or on one neuron of ``layer``; a signed (H, W, 3) map per image."""

    relu_rules = True

    def __init__(self, method: str, neuron: Neuron) -> None:
        self.method = method
        self.neuron = neuron
        self.selector: NeuronSelector | None = None

    def attribute(self, ctx: Context, x: torch.Tensor, calls: Calls) -> torch.Tensor:
        class_rule, neuron_rule = METHODS[self.method]
        if ctx.layer is None:
            return class_rule(ctx.wrapper).attribute(x, target=ctx.target)
        self.selector = NeuronSelector(self.neuron, ctx.layer)
        try:
            return neuron_rule(ctx.wrapper, ctx.layer_module).attribute(x, self.selector)
        except AssertionError:  # captum's "Forward hook did not obtain any outputs"
            if calls.layer == 0:
                raise OptionError(f"layer {ctx.layer!r} does not run in the forward pass of "
                                  f"model {ctx.clf.name}") from None
            raise

    def maps(self, ctx: Context, out: torch.Tensor, x: torch.Tensor) -> np.ndarray:
        return out.detach().permute(0, 2, 3, 1).cpu().numpy()

    def result(self, ctx: Context, values: np.ndarray, index: int, k: int, score: float,
               seconds: float) -> Reconstruction:
        position = self.selector.positions[k] if self.selector else None
        activation = self.selector.values[k] if self.selector else None
        magnitude = Heatmap(
            np.abs(values).max(axis=2), method=self.method, target=ctx.target_name,
            score=score, seconds=seconds,
            params={"layer": ctx.layer, "neuron": position, "activation": activation,
                    "model_view": model_view(ctx.clf, ctx.images[index].shape[:2])},
        )
        return Reconstruction(values, magnitude, self.method, ctx.target_name, score=score,
                              layer=ctx.layer, neuron=position, activation=activation,
                              seconds=seconds)


def reconstruct(method: str, model: object, image: Images, *, target: str | int = "nsfw",
                layer: str | None = None, neuron: Neuron = "max", batch_size: int = WHITE_BOX_BATCH
                ) -> Reconstruction | list[Reconstruction]:
    """Deconvnet or guided backprop of one image or a list of them (see the module docstring).

    ``method``: ``"deconvnet"`` or ``"guided_backprop"``. ``model``: a TorchClassifier or a spec
    for :func:`explain.models.load` that gives an eager torch module. ``image``: a path, an RGB
    array (uint8, or float in [0, 1]) or a list of them. ``target``: the class explained, by name
    or index. ``layer``: None explains the class logit; a layer name (:func:`layers`) explains one
    of its activations, ``neuron``: ``"max"`` (each image's strongest), or ``(c, y, x)`` /
    ``"c,y,x"``. ``batch_size``: images per pass (fewer when memory is short; maps do not depend
    on it). Returns a :class:`Reconstruction` per image (one, or a list in input order): its
    ``values`` are SIGNED, the derivative of the score with respect to each RGB value of the
    original image on the [0, 1] scale (positive = raising that value raises the score, after the
    method's ReLU rule), zero outside what the model saw; ``magnitude`` is max |values| over RGB.
    """
    if method not in METHODS:
        raise OptionError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    return run(_Backprop(method, neuron), model, image, target=target, layer=layer,
               batch_size=batch_size)  # type: ignore[return-value]


def deconvnet(model: object, image: Images, *, target: str | int = "nsfw",
              layer: str | None = None, neuron: Neuron = "max", batch_size: int = WHITE_BOX_BATCH
              ) -> Reconstruction | list[Reconstruction]:
    """Zeiler & Fergus's deconvnet reconstruction of ``target`` (or of one ``layer`` neuron):
    the backward signal is rectified at every ReLU, ``g_in = relu(g_out)``.

    ``model``, ``image``, ``target``, ``layer``, ``neuron``, ``batch_size`` and the returned
    :class:`Reconstruction` (signed values, RGB, original coordinates) are as in
    :func:`reconstruct`.
    """
    return reconstruct("deconvnet", model, image, target=target, layer=layer, neuron=neuron,
                       batch_size=batch_size)


def guided_backprop(model: object, image: Images, *, target: str | int = "nsfw",
                    layer: str | None = None, neuron: Neuron = "max",
                    batch_size: int = WHITE_BOX_BATCH) -> Reconstruction | list[Reconstruction]:
    """Springenberg et al.'s guided backprop of ``target`` (or of one ``layer`` neuron): the
    backward signal passes a ReLU only where both it and the ReLU's input are positive.

    ``model``, ``image``, ``target``, ``layer``, ``neuron``, ``batch_size`` and the returned
    :class:`Reconstruction` (signed values, RGB, original coordinates) are as in
    :func:`reconstruct`.
    """
    return reconstruct("guided_backprop", model, image, target=target, layer=layer,
                       neuron=neuron, batch_size=batch_size)
