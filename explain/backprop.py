"""Deconvnet and guided backprop: which input pixels drive a score, as a signed input-space map.

Both are the gradient of a score with respect to the ORIGINAL-size RGB image on the [0, 1] scale,
taken through the classifier's own preprocessing in torch (resize, centre crop, channel order,
normalisation; open_nsfw resizes to 256×256 and crops 224×224), so the map is in original image
coordinates and pixels the model never saw are exactly zero. At every activation ``y = f(x)``,
where plain backprop sends ``g_in = f'(x) · g_out``, the method's rule is used instead::

    deconvnet (Zeiler & Fergus 2014):          g_in = relu(g_out)
    guided backprop (Springenberg et al. 2015): g_in = relu(g_out) · f'(x) · [x > 0]

For ``ReLU`` (``f'(x) = [x > 0]``) these are captum's ``Deconvolution`` and ``GuidedBackprop``
rules exactly. The other activations with a rule, as modules or as functions:

- ``ReLU6`` and ``Hardtanh(a, b)`` (``ReLU6`` is ``Hardtanh(0, 6)``): ``f'(x) = [a < x < b]``, so
  guided backprop passes ``relu(g_out)`` only where ``max(a, 0) < x < b``. A saturated unit
  (``x ≥ 6``) does not change with its input, and guided backprop is the gradient further masked,
  so it is zero there too. Deconvnet ignores the forward pass at activations (its rectification
  keeps the reconstruction positive), so it stays ``relu(g_out)``: the cap at 6 bounds the
  activation, not a backward signal whose scale means nothing.
- ``LeakyReLU(α)``, ``PReLU`` (α learnt per channel) and ``RReLU`` (in eval, a LeakyReLU):
  ``f'(x)`` is 1 for ``x > 0`` and α below. Guided backprop drops the negative-slope part:
  ``g_in = relu(g_out) · [x > 0]``. The method shows what drives the units that are on; a unit
  with ``x < 0`` is off, and its leak would pass ``α · g_out`` back (with a negative PReLU α,
  even with its sign flipped). On ``x > 0`` each is the identity, so the rule is ReLU's.
  Deconvnet: ``relu(g_out)``, as for every rectifier.

Activations with no such rule (their derivative is not 0 or 1 on either side of a threshold:
SiLU, GELU, Tanh, Sigmoid, Hardswish, Hardsigmoid, ELU, CELU, SELU, Mish, Softplus, Softsign,
LogSigmoid, GLU, Threshold and the shrinks) are refused with a
:class:`~explain.errors.WhiteBoxError` naming the module that applied them: a guessed rule would
be another method under the same name, and the plain gradient would be a mislabelled one. Other
operations (convolutions, pooling, additions, softmax, ``clamp``) keep their plain gradient, as in
captum.

Activations are found as they run, not by module type: a ``TorchFunctionMode``
(:func:`activation_rules`) sees every call of the functions above on a tensor that carries the
gradient, whether an ``nn.ReLU6`` module makes it or the model's own ``forward`` calls
``F.relu6``, ``x.relu_()`` or ``torch.prelu`` (what torch.fx tracing would find, and also behind
Python control flow, which it cannot trace). In-place calls give the same outputs, out of place
then copied back.

What is explained:

- class mode (``layer=None``): the module's output for the target class. open_nsfw's module
  returns LOGITS, so its target logit is attributed (the softmax probability would mix in the
  other class's gradient).
- neuron mode (``layer="stages.3"``, any name of ``module.named_modules()``, see :func:`layers`):
  one activation of that layer with every other activation set to zero, as Zeiler & Fergus do
  (captum ``NeuronDeconvolution`` / ``NeuronGuidedBackprop``): ``neuron="max"`` takes each image's
  strongest activation, ``(c, y, x)`` a given one. Position and value are recorded. The rules
  apply to what runs before the neuron; what runs after the layer cannot change it, so an
  activation without a rule there is not refused.

TorchScript modules take no Python hooks and are refused. Whatever happens, hooks are removed
and the module's training flag and its parameters' ``requires_grad`` are restored. The skeleton
(target, layer, hooks, batches, original coordinates) is the white-box engine's,
:mod:`explain.whitebox`; this module is the activation rules and the neuron selector.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from explain.choices import WHITE_BOX_BATCH
from explain.errors import OptionError, WhiteBoxError
from explain.heatmap import WHITE_BOX_FLOOR, Heatmap
from explain.models.base import model_view
from explain.reconstruction import Reconstruction
from explain.whitebox import (
    BLACK_BOX_COMMANDS,
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
    "METHODS", "Images", "Neuron", "NeuronSelector", "activation_rules", "as_images", "batches",
    "deconvnet", "find_layer", "guided_backprop", "layers", "parse_neuron", "prepared",
    "reconstruct", "white_box",
]

METHODS = {"deconvnet": "deconvnet", "guided_backprop": "guided backprop"}

Neuron = str | Sequence[int]

# Every function (module forward passes call them too) with a rule: the activation's name.
RECTIFIERS: dict[Callable, str] = {
    F.relu: "ReLU", torch.relu: "ReLU", torch.relu_: "ReLU", torch.Tensor.relu: "ReLU",
    torch.Tensor.relu_: "ReLU", F.relu6: "ReLU6", F.hardtanh: "Hardtanh",
    F.hardtanh_: "Hardtanh", F.leaky_relu: "LeakyReLU", F.leaky_relu_: "LeakyReLU",
    torch.prelu: "PReLU", torch.Tensor.prelu: "PReLU", F.rrelu: "RReLU", torch.rrelu: "RReLU",
    torch.rrelu_: "RReLU",
}
# Where a Python function's ``inplace`` argument sits, when it is given by position.
INPLACE_ARGUMENT = {F.relu: 1, F.relu6: 1, F.hardtanh: 3, F.leaky_relu: 2, F.rrelu: 4}
# Every activation function with no rule: the activation's name.
NO_RULE: dict[Callable, str] = {
    fn: name for name, fns in {
        "SiLU": [F.silu], "GELU": [F.gelu], "Hardswish": [F.hardswish],
        "Hardsigmoid": [F.hardsigmoid], "Mish": [F.mish],
        "Tanh": [torch.tanh, torch.tanh_, torch.Tensor.tanh, torch.Tensor.tanh_],
        "Sigmoid": [torch.sigmoid, torch.sigmoid_, torch.Tensor.sigmoid, torch.Tensor.sigmoid_],
        "ELU": [F.elu, F.elu_], "CELU": [F.celu, F.celu_], "SELU": [F.selu, torch.selu_],
        "Softplus": [F.softplus], "Softsign": [F.softsign], "LogSigmoid": [F.logsigmoid],
        "GLU": [F.glu], "Tanhshrink": [F.tanhshrink], "Softshrink": [F.softshrink],
        "Hardshrink": [F.hardshrink],
        "Threshold": [F.threshold, F.threshold_, torch.threshold, torch.threshold_],
    }.items() for fn in fns
}


class _Rule(torch.autograd.Function):
    """An activation computed as usual whose backward pass is the method's rule:
    ``relu(g_out)``, times the guided mask ``lo < x < hi`` when one is given."""

    @staticmethod
    def forward(ctx, x, compute, guided_range):  # noqa: ANN001, ANN205
        if guided_range is not None:
            lo, hi = guided_range
            ctx.save_for_backward((x > lo) & (x < hi))
        ctx.guided = guided_range is not None
        return compute(x)

    @staticmethod
    def backward(ctx, g_out):  # noqa: ANN001, ANN205
        g_in = F.relu(g_out)
        if ctx.guided:
            (passes,) = ctx.saved_tensors
            g_in = g_in * passes
        return g_in, None, None


def _passing_range(name: str, args: tuple, kwargs: dict) -> tuple[float, float]:
    """Where guided backprop lets a positive signal through this call: ``f'(x) · [x > 0]`` is 1
    exactly on the open interval (lo, hi)."""
    if name == "ReLU6":
        return 0.0, 6.0
    if name == "Hardtanh":
        lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
        return max(float(lo), 0.0), float(hi)
    return 0.0, math.inf


def _in_place(func: Callable, args: tuple, kwargs: dict) -> bool:
    position = INPLACE_ARGUMENT.get(func)
    if position is not None:
        return bool(args[position] if len(args) > position else kwargs.get("inplace", False))
    return getattr(func, "__name__", "").endswith("_")


class _Rules(TorchFunctionMode):
    """Replaces every activation call on a gradient-carrying tensor by :class:`_Rule`, and
    refuses the activations without a rule, naming the module that ran them."""

    def __init__(self, guided: bool, refuse: Callable[[str], WhiteBoxError]) -> None:
        super().__init__()
        self.guided = guided
        self.refuse = refuse
        self.done = False  # set once the explained layer has run: later calls cannot reach it

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = dict(kwargs or {})
        if not args and "input" in kwargs and (func in RECTIFIERS or func in NO_RULE):
            args = (kwargs.pop("input"),)  # F.relu(input=x)
        if not self.done and args and torch.is_tensor(args[0]) and args[0].requires_grad:
            name = RECTIFIERS.get(func)
            if name is not None:
                return self._rectified(func, name, args, kwargs)
            if func in NO_RULE:
                raise self.refuse(NO_RULE[func])
        return func(*args, **kwargs)

    def _rectified(self, func: Callable, name: str, args: tuple, kwargs: dict) -> torch.Tensor:
        x, rest = args[0], args[1:]
        in_place = _in_place(func, args, kwargs)

        def compute(t: torch.Tensor) -> torch.Tensor:
            return func(t.clone() if in_place else t, *rest, **kwargs)

        guided_range = _passing_range(name, args, kwargs) if self.guided else None
        y = _Rule.apply(x, compute, guided_range)
        return x.copy_(y) if in_place else y


@contextmanager
def activation_rules(module: nn.Module, method: str, model: str, *,
                     layer: nn.Module | None = None) -> Iterator[None]:
    """While inside, a forward pass of ``module`` uses ``method``'s rule (``"deconvnet"`` or
    ``"guided_backprop"``) at every activation, and an activation without a rule raises a
    WhiteBoxError naming the module that ran it (see the module docstring). With ``layer``
    (neuron mode), only until that submodule has run: what runs after it cannot change its
    output, so it keeps its plain forward and is never refused. Hooks that track the running
    module are removed on the way out, also when the pass raises."""
    running: list[str] = []
    handles = []

    def refuse(activation: str) -> WhiteBoxError:
        name = running[-1] if running else ""
        where = (f"module {name!r} ({type(module.get_submodule(name)).__name__})" if name
                 else f"the forward of {type(module).__name__}")
        return WhiteBoxError(
            f"{METHODS[method]} has no rule for {activation}, which {where} applies in model "
            f"{model}: its rules are defined for ReLU, ReLU6, LeakyReLU, Hardtanh, PReLU and "
            "RReLU (see `explain.backprop`), and the plain gradient under its name would be "
            f"wrong. Use Grad-CAM (`explain gradcam`) or the black-box commands "
            f"{BLACK_BOX_COMMANDS}"
        )

    def enter(name: str) -> Callable[..., None]:
        def hook(*_: object) -> None:
            running.append(name)
        return hook

    def leave(*_: object) -> None:
        running.pop()

    rules = _Rules(method == "guided_backprop", refuse)

    def layer_done(*_: object) -> None:
        rules.done = True

    try:
        for name, sub in module.named_modules():
            handles.append(sub.register_forward_pre_hook(enter(name)))
            handles.append(sub.register_forward_hook(leave, always_call=True))
        if layer is not None:
            handles.append(layer.register_forward_hook(layer_done))
        with rules:
            yield
    finally:
        for handle in handles:
            handle.remove()


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
    """Deconvnet or guided backprop for :func:`explain.whitebox.run`: the method's activation
    rules on the class score, or on one neuron of ``layer``; a signed (H, W, 3) map per image."""

    def __init__(self, method: str, neuron: Neuron) -> None:
        self.method = method
        self.neuron = neuron
        self.selector: NeuronSelector | None = None

    def attribute(self, ctx: Context, x: torch.Tensor, calls: Calls) -> torch.Tensor:
        outputs: list[torch.Tensor] = []
        handle = None
        if ctx.layer is not None:
            self.selector = NeuronSelector(self.neuron, ctx.layer)
            handle = ctx.layer_module.register_forward_hook(  # type: ignore[union-attr]
                lambda _m, _a, out: outputs.append(out))
        try:
            with activation_rules(ctx.clf.module, self.method, ctx.clf.name,
                                  layer=ctx.layer_module):
                logits = ctx.wrapper(x)
        finally:
            if handle is not None:
                handle.remove()
        if self.selector is None:
            score = logits[:, ctx.target]
        elif not outputs:
            raise OptionError(f"layer {ctx.layer!r} does not run in the forward pass of "
                              f"model {ctx.clf.name}")
        else:
            score = self.selector(outputs[0])
        if not score.requires_grad:
            return torch.zeros_like(x)
        (grad,) = torch.autograd.grad(score.sum(), x, allow_unused=True)
        return torch.zeros_like(x) if grad is None else grad

    def maps(self, ctx: Context, out: torch.Tensor, x: torch.Tensor) -> np.ndarray:
        return out.detach().permute(0, 2, 3, 1).cpu().numpy()

    def result(self, ctx: Context, values: np.ndarray, index: int, k: int, score: float,
               seconds: float) -> Reconstruction:
        position = self.selector.positions[k] if self.selector else None
        activation = self.selector.values[k] if self.selector else None
        explained = ctx.output if ctx.layer is None else f"{ctx.layer}{list(position)}"
        magnitude = Heatmap(
            np.abs(values).max(axis=2), method=self.method, target=ctx.target_name,
            score=score, seconds=seconds,
            params={"layer": ctx.layer, "neuron": position, "activation": activation,
                    "model_view": model_view(ctx.clf, ctx.images[index].shape[:2])},
            unit=f"|{METHODS[self.method]} of {explained}|, max over RGB",
            noise_floor=WHITE_BOX_FLOOR,
        )
        return Reconstruction(values, magnitude, self.method, ctx.target_name, score=score,
                              layer=ctx.layer, neuron=position, activation=activation,
                              seconds=seconds,
                              unit=f"{METHODS[self.method]} of {explained} per RGB value")


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
    method's activation rules), zero outside what the model saw; ``magnitude`` is max |values|
    over RGB, unsigned, named by its ``unit`` and "no signal" below
    :data:`~explain.heatmap.WHITE_BOX_FLOOR`.
    """
    if method not in METHODS:
        raise OptionError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    return run(_Backprop(method, neuron), model, image, target=target, layer=layer,
               batch_size=batch_size)  # type: ignore[return-value]


def deconvnet(model: object, image: Images, *, target: str | int = "nsfw",
              layer: str | None = None, neuron: Neuron = "max", batch_size: int = WHITE_BOX_BATCH
              ) -> Reconstruction | list[Reconstruction]:
    """Zeiler & Fergus's deconvnet reconstruction of ``target`` (or of one ``layer`` neuron):
    the backward signal is rectified at every activation, ``g_in = relu(g_out)``.

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
    backward signal passes an activation only where it is positive and the activation's input
    is positive and not saturated (see the module docstring for each activation).

    ``model``, ``image``, ``target``, ``layer``, ``neuron``, ``batch_size`` and the returned
    :class:`Reconstruction` (signed values, RGB, original coordinates) are as in
    :func:`reconstruct`.
    """
    return reconstruct("guided_backprop", model, image, target=target, layer=layer,
                       neuron=neuron, batch_size=batch_size)
