"""Running a batch of occluded images through a traced network, patch by patch.

The intact image runs once (:class:`Incremental` caches every activation). For a batch of
windows, each step either runs on patches — one tensor N×C×h×w holding, for every window, the
activations of its occluded image inside one rectangle of the map (:class:`Patch`) — or on whole
maps. A convolution's input patches are cut in ONE gather for the whole batch: the cached
activations of the intact image around (padded with the op's own padding value), the batch's
changed patches over them; the op then runs with padding 0. A step on whole maps first pastes
the patches into copies of the cached maps (one scatter). Where the rectangles come from:
:mod:`explain.incremental.regions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from explain.incremental.graph import (
    Aligned,
    Full,
    Network,
    Rule,
    Shift,
    Step,
    Window,
    node_names,
    substitute,
)
from explain.incremental.regions import Region, layout

CL = torch.channels_last


@dataclass
class Patch:
    """Activations of N occluded images inside rectangles of one size: ``data`` N×C×h×w
    (channels last), ``origin`` N×2 (rows, cols) of each rectangle, on the data's device."""

    data: torch.Tensor
    origin: torch.Tensor


def _flat(t: torch.Tensor) -> torch.Tensor:
    """N×C×H×W → (N·H·W)×C, channels last (a view when already channels last)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _positions(origin: torch.Tensor, size: tuple[int, int], step: tuple[int, int]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (N×h) and columns (N×w) that patches of ``size`` at ``origin`` read, ``step`` apart."""
    dev = origin.device
    rows = origin[:, :1] + step[0] * torch.arange(size[0], device=dev)
    cols = origin[:, 1:] + step[1] * torch.arange(size[1], device=dev)
    return rows, cols


class Incremental:
    """A network's cached activations for one image, and the batches scored against them.

    ``net``: the traced network; ``x``: the network's input for the intact image (1×C×H×W);
    ``fill``: what an occluded pixel of that input becomes (same shape); ``most``: the largest
    fraction of a map a patch may cover before a step runs on whole maps; ``tau``: Krypton's
    projective-field threshold (None: exact).
    """

    def __init__(self, net: Network, x: torch.Tensor, fill: torch.Tensor, *,
                 most: float = 0.6, tau: float | None = None) -> None:
        self.net, self.most, self.tau = net, most, tau
        self.constants = {s.name for s in net.steps if s.constant}
        self.base: dict[str, Any] = {net.input: x}
        for step in net.steps:
            self.base[step.name] = self._call(step, self.base)
        self.fill = fill
        self.output = substitute(net.output, self.base)
        self.shapes = {k: tuple(v.shape[-2:]) for k, v in self.base.items()
                       if torch.is_tensor(v) and v.ndim == 4}
        self.rules = {s.name: self._checked(s) for s in net.steps}
        self._padded: dict[tuple[str, tuple[int, ...], float], torch.Tensor] = {}

    @staticmethod
    def _call(step: Step, values: dict[str, Any]) -> Any:
        return step.fn(*substitute(step.args, values), **substitute(step.kwargs, values))

    def _checked(self, step: Step) -> Rule:
        """``step.rule``, or Full where the actual shapes do not allow patches."""
        rule = step.rule
        if isinstance(rule, Full) or step.constant:
            return rule
        if step.name not in self.shapes:
            return Full("not a 4-D map")
        variable = [i for i in step.inputs if i in self.shapes or i == self.net.input]
        if len(variable) != len([i for i in step.inputs if not self._constant(i)]):
            return Full("an input that is not a 4-D map")
        if isinstance(rule, Window | Shift) and len(step.inputs) != 1:
            return Full("a convolution or padding with tensor arguments")
        if isinstance(rule, Aligned):
            for name in step.inputs:
                value = self.base[name]
                if self._constant(name):
                    if torch.is_tensor(value) and value.ndim >= 2 and value.shape[-2:] != (1, 1):
                        return Full("a constant with a spatial extent")
                elif self.shapes[name] != self.shapes[step.name]:
                    return Full("inputs of different sizes")
        return rule

    def _constant(self, name: str) -> bool:
        return name in self.constants

    def _base_flat(self, name: str, pad: tuple[int, int, int, int], value: float
                   ) -> torch.Tensor:
        """The cached map of ``name`` padded (top, left, bottom, right) with ``value``, as
        (H·W)×C rows, built once per image."""
        key = (name, pad, value)
        if key not in self._padded:
            t = self.base[name]
            if any(pad):
                t = F.pad(t, (pad[1], pad[3], pad[0], pad[2]), value=value)
            self._padded[key] = _flat(t).contiguous()
        return self._padded[key]

    def _cut(self, name: str, value: Patch, origin: torch.Tensor, size: tuple[int, int],
             step: tuple[int, int] = (1, 1), pad: tuple[int, int, int, int] = (0, 0, 0, 0),
             pad_value: float = 0.0) -> torch.Tensor:
        """Each window's map of ``name`` (the cached map, padded, with ``value``'s patch over
        it) read at ``origin`` (rows, cols; may be negative down to the padding), ``size``
        positions ``step`` apart: N×C×h×w, channels last."""
        base = self._base_flat(name, pad, pad_value)
        width = self.shapes[name][1] + pad[1] + pad[3]
        rows, cols = _positions(origin, size, step)
        index = (rows + pad[0])[:, :, None] * width + (cols + pad[1])[:, None, :]
        out = base.index_select(0, index.reshape(-1))
        n, c, ph, pw = value.data.shape
        py, px = rows - value.origin[:, :1], cols - value.origin[:, 1:]
        inside = ((py >= 0) & (py < ph))[:, :, None] & ((px >= 0) & (px < pw))[:, None, :]
        local = (torch.arange(n, device=origin.device)[:, None, None] * ph
                 + py.clamp(0, ph - 1)[:, :, None]) * pw + px.clamp(0, pw - 1)[:, None, :]
        patch = _flat(value.data).index_select(0, local.reshape(-1))
        out = torch.where(inside.reshape(-1, 1), patch, out)
        return out.view(n, size[0], size[1], c).permute(0, 3, 1, 2)

    def _whole(self, name: str, value: Patch) -> torch.Tensor:
        """Each window's whole map of ``name``: the cached map with ``value``'s patch pasted."""
        n, c, ph, pw = value.data.shape
        full = self.base[name].expand(n, -1, -1, -1).contiguous(memory_format=CL)
        rows, cols = _positions(value.origin, (ph, pw), (1, 1))
        batch = torch.arange(n, device=rows.device)[:, None, None]
        full.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]] = \
            value.data.permute(0, 2, 3, 1)
        return full

    def _input_patch(self, region: Region, windows: torch.Tensor) -> Patch:
        """The occluded inputs inside the input's region: the fill inside each window."""
        origin = torch.from_numpy(region.origin).to(windows.device)
        rows, cols = _positions(origin, region.size, (1, 1))
        index = (rows[:, :, None] * self.shapes[self.net.input][1] + cols[:, None, :]).reshape(-1)
        x = _flat(self.base[self.net.input]).index_select(0, index)
        f = _flat(self.fill).index_select(0, index)
        hidden = ((rows >= windows[:, :1]) & (rows < windows[:, 2:3]))[:, :, None] \
            & ((cols >= windows[:, 1:2]) & (cols < windows[:, 3:4]))[:, None, :]
        data = torch.where(hidden.reshape(-1, 1), f, x)
        n = len(windows)
        return Patch(data.view(n, *region.size, -1).permute(0, 3, 1, 2), origin)

    def run(self, windows: np.ndarray) -> Any:
        """The network's output for the intact input with each window (N×4 rectangles
        [y0, x0, y1, x1) on the network's input, numpy) replaced by the fill."""
        regions = layout(self.net, self.rules, self.shapes, windows, most=self.most,
                         tau=self.tau)
        device = self.base[self.net.input].device
        values: dict[str, Any] = {}
        wholes: dict[str, torch.Tensor] = {}

        def whole(name: str) -> Any:
            v = values.get(name, self.base[name])
            if not isinstance(v, Patch):
                return v
            if name not in wholes:
                wholes[name] = self._whole(name, v)
            return wholes[name]

        bounds = torch.from_numpy(windows).to(device)
        first = regions[self.net.input]
        if first is None:
            first = Region(windows, np.zeros((len(windows), 2), np.int64),
                           self.shapes[self.net.input], self.shapes[self.net.input])
        values[self.net.input] = self._input_patch(first, bounds)
        for i, step in enumerate(self.net.steps):
            if step.constant:
                continue
            region = regions[step.name]
            if region is None:
                env = {name: whole(name) for name in step.inputs}
                values[step.name] = self._call(step, {**self.base, **env})
            else:
                values[step.name] = self._on_patches(step, region, values)
            for name in step.inputs:
                if self.net.last_use.get(name) == i:
                    values.pop(name, None)
                    wholes.pop(name, None)
        return substitute(self.net.output, {n: whole(n) for n in node_names(self.net.output)})

    def _on_patches(self, step: Step, region: Region, values: dict[str, Any]) -> Patch:
        rule = self.rules[step.name]
        origin = torch.from_numpy(region.origin).to(self.base[self.net.input].device)
        if isinstance(rule, Shift):
            v = values[step.inputs[0]]
            return Patch(v.data, v.origin + torch.tensor([rule.top, rule.left],
                                                         device=origin.device))
        if isinstance(rule, Window):
            name = step.inputs[0]
            (kh, kw), (sh, sw), (pt, pl) = rule.kernel, rule.stride, rule.padding
            h, w = self.shapes[name]
            oh, ow = self.shapes[step.name]
            pad = (pt, pl, max(0, (oh - 1) * sh + kh - pt - h), max(0, (ow - 1) * sw + kw - pl - w))
            start = origin * torch.tensor([sh, sw], device=origin.device) \
                - torch.tensor([pt, pl], device=origin.device)
            if (kh, kw) == (1, 1):
                cut = self._cut(name, values[name], start, region.size, (sh, sw), pad,
                                rule.pad_value)
                return Patch(rule.run(cut, (1, 1)), origin)
            size = ((region.size[0] - 1) * sh + kh, (region.size[1] - 1) * sw + kw)
            cut = self._cut(name, values[name], start, size, (1, 1), pad, rule.pad_value)
            return Patch(rule.run(cut, (sh, sw)), origin)
        env: dict[str, Any] = {}
        for name in step.inputs:
            v = values.get(name)
            if not isinstance(v, Patch):
                continue
            same = v.data.shape[-2:] == region.size and torch.equal(v.origin, origin)
            env[name] = v.data if same else self._cut(name, v, origin, region.size)
        data = self._call(step, {**self.base, **env})
        return Patch(data.contiguous(memory_format=CL), origin)
