"""The classifier's network as a list of steps, each with the rule its changed region follows.

:func:`trace` runs ``torch.fx.symbolic_trace`` on the module and gives every node one rule:

- :class:`Window` — a convolution or a pooling (``Conv2d`` with zero padding, ``MaxPool2d``,
  ``AvgPool2d`` counting its zero padding): an output pixel reads a ``kernel`` of input pixels at
  ``stride``, ``padding`` before; the step reruns it on a gathered patch with padding 0
  (``run(patch, stride)``), the padding taken from ``pad_value`` around the map.
- :class:`Shift` — constant padding (``ConstantPad2d``, ``ZeroPad2d``, ``F.pad`` constant): the
  map grows, a region moves by (top, left).
- :class:`Aligned` — pixel-wise ops (activations, eval-mode ``BatchNorm2d``, ``add``/``mul``/
  ``sub``/``div``, ``cat`` along channels): the output's changed region is the union of the
  inputs'; the op runs on patches of the inputs cut at the same place.
- :class:`Full` — anything else (global pooling, flatten, linear, unknown modules and functions):
  the step runs on whole maps. Unknown is always run whole: never silently wrong.

In-place ops run out of place (the engine caches activations, which an in-place op would
overwrite).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid,
                     nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.Identity,
                     nn.Dropout, nn.PReLU)
POINTWISE_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.neg,
                       torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.sigmoid,
                       torch.tanh, torch.clamp, F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu,
                       F.hardswish, F.hardtanh, F.elu, F.sigmoid, F.tanh}
POINTWISE_METHODS = {"relu", "sigmoid", "tanh", "add", "sub", "mul", "div", "clamp", "neg",
                     "contiguous"}
OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub,
                operator.imul: operator.mul, operator.itruediv: operator.truediv}


@dataclass(frozen=True)
class Window:
    """A convolution or pooling: ``kernel`` (dilated extent), ``stride``, ``padding`` (top,
    left) before the map, ``pad_value`` around it; ``run(patch, stride)`` applies it with
    padding 0 (stride 1 after a strided gather of a 1×1 kernel)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    pad_value: float
    run: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]


@dataclass(frozen=True)
class Shift:
    """Constant padding: regions move by (``top``, ``left``)."""

    top: int
    left: int


@dataclass(frozen=True)
class Aligned:
    """A pixel-wise op over one or more maps of the same size."""


@dataclass(frozen=True)
class Full:
    """Run on whole maps; ``why`` says what made it so."""

    why: str


Rule = Window | Shift | Aligned | Full


@dataclass
class Step:
    """One node: its name, the callable that runs it on concrete arguments, its arguments
    (with :class:`fx.Node` placeholders), the nodes it reads, and its rule."""

    name: str
    op: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    inputs: list[str]
    rule: Rule
    constant: bool = False
    users: int = 0


@dataclass
class Network:
    """A traced network: its steps in order, the input's name and the output's argument."""

    steps: list[Step]
    input: str
    output: Any
    last_use: dict[str, int] = field(default_factory=dict)


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv_rule(m: nn.Conv2d) -> Rule:
    if m.padding_mode != "zeros" or isinstance(m.padding, str) and m.padding != "valid":
        return Full(f"{type(m).__name__} with padding {m.padding!r}/{m.padding_mode}")
    pad = (0, 0) if isinstance(m.padding, str) else _pair(m.padding)
    k, d = _pair(m.kernel_size), _pair(m.dilation)

    def run(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        return F.conv2d(x, m.weight, m.bias, stride, 0, m.dilation, m.groups)
    extent = ((k[0] - 1) * d[0] + 1, (k[1] - 1) * d[1] + 1)
    return Window(extent, _pair(m.stride), pad, 0.0, run)


def _pool_rule(m: nn.Module) -> Rule:
    k, s, p = _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)
    if isinstance(m, nn.MaxPool2d):
        if m.return_indices:
            return Full("MaxPool2d returning indices")
        d = _pair(m.dilation)

        def run_max(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
            return F.max_pool2d(x, k, stride, 0, d, ceil_mode=False)
        extent = ((k[0] - 1) * d[0] + 1, (k[1] - 1) * d[1] + 1)
        return Window(extent, s, p, float("-inf"), run_max)
    if m.ceil_mode or m.divisor_override is not None or (p != (0, 0) and not m.count_include_pad):
        return Full("AvgPool2d with ceil_mode, a divisor override or uncounted padding")

    def run_avg(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        return F.avg_pool2d(x, k, stride, 0)
    return Window(k, s, p, 0.0, run_avg)


def _constant_pad(pad: Any, value: Any) -> Rule:
    if len(pad) != 4 or min(pad) < 0 or not isinstance(value, int | float):
        return Full("padding that is not a constant 2-D padding")
    return Shift(int(pad[2]), int(pad[0]))


def _module_rule(m: nn.Module) -> Rule:
    """Exact types only: a subclass may override ``forward``; hooks may change anything."""
    kind = type(m)
    if m._forward_hooks or m._forward_pre_hooks:
        return Full(f"{kind.__name__} with hooks")
    if kind is nn.Conv2d:
        return _conv_rule(m)
    if kind in (nn.MaxPool2d, nn.AvgPool2d):
        return _pool_rule(m)
    if kind in (nn.ConstantPad2d, nn.ZeroPad2d):
        return _constant_pad(m.padding, m.value)
    if kind is nn.BatchNorm2d:
        if m.training or m.running_mean is None:
            return Full("BatchNorm2d in training mode or without running statistics")
        return Aligned()
    if kind in POINTWISE_MODULES:
        return Full("a module in training mode") if m.training else Aligned()
    return Full(f"unknown module {kind.__name__}")


def _function_rule(node: fx.Node) -> Rule:
    fn = OUT_OF_PLACE.get(node.target, node.target)
    if fn is F.pad:
        pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", 0.0)
        if mode != "constant" or not isinstance(pad, tuple | list):
            return Full("non-constant padding")
        return _constant_pad(pad, 0.0 if value is None else value)
    if fn is torch.cat:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        return Aligned() if dim in (1, -3) else Full(f"cat along dim {dim}")
    if fn in POINTWISE_FUNCTIONS:
        return Aligned()
    return Full(f"unknown function {getattr(fn, '__name__', fn)}")


def _out_of_place_module(m: nn.Module) -> nn.Module:
    if getattr(m, "inplace", False):
        m = copy.copy(m)
        m.inplace = False
    return m


def _callable(node: fx.Node, gm: fx.GraphModule) -> Callable[..., Any]:
    if node.op == "call_module":
        return _out_of_place_module(gm.get_submodule(str(node.target)))
    if node.op == "call_function":
        return OUT_OF_PLACE.get(node.target, node.target)  # type: ignore[arg-type]
    if node.op == "call_method":
        name = str(node.target)
        if name.endswith("_") and hasattr(torch.Tensor, name[:-1]):
            name = name[:-1]
        return lambda obj, *a, **k: getattr(obj, name)(*a, **k)
    if node.op == "get_attr":
        value = gm
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return lambda: value
    raise ValueError(node.op)


def _rule(node: fx.Node, gm: fx.GraphModule) -> Rule:
    if node.op == "call_module":
        return _module_rule(gm.get_submodule(str(node.target)))
    if node.op == "call_function":
        if node.kwargs.get("inplace"):
            return Full("an in-place function")
        return _function_rule(node)
    if node.op == "call_method":
        name = str(node.target).rstrip("_")
        return Aligned() if name in POINTWISE_METHODS else Full(f"method .{node.target}()")
    return Full(node.op)


def trace(module: nn.Module) -> Network:
    """The steps of ``module`` (see the module docstring). Raises whatever ``torch.fx`` raises
    for a module it cannot trace (data-dependent control flow, TorchScript); a module with
    several inputs or none is refused with a ``ValueError``."""
    gm = fx.symbolic_trace(module)
    steps: list[Step] = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"the module takes {len(placeholders)} inputs; one image tensor is "
                         "needed")
    output = None
    variable = {placeholders[0].name}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            output = node.args[0]
            continue
        inputs = [n.name for n in node.all_input_nodes]
        constant = not any(i in variable for i in inputs)
        if not constant:
            variable.add(node.name)
        kwargs = dict(node.kwargs)
        if node.op == "call_function" and "inplace" in kwargs:
            kwargs["inplace"] = False
        steps.append(Step(node.name, node.op, _callable(node, gm), tuple(node.args), kwargs,
                          inputs, Full("constant") if constant else _rule(node, gm), constant))
    net = Network(steps, placeholders[0].name, output)
    for i, step in enumerate(steps):
        for name in step.inputs:
            net.last_use[name] = i
    for name in node_names(output):
        net.last_use[name] = len(steps)
    return net


def node_names(arg: Any) -> list[str]:
    """The names of the nodes ``arg`` refers to."""
    found: list[str] = []
    fx.node.map_arg(arg, lambda n: found.append(n.name))
    return found


def substitute(arg: Any, values: dict[str, Any]) -> Any:
    """``arg`` with every :class:`fx.Node` replaced by its value in ``values``."""
    return fx.node.map_arg(arg, lambda n: values[n.name])
