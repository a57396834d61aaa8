"""Grad-CAM (Selvaraju et al. 2017) and guided Grad-CAM, through captum's ``LayerGradCam``.

Grad-CAM weighs a convolutional layer's activation maps ``A_k`` by the spatial mean of the score's
gradient and keeps the positive part: ``relu(sum_k mean(dS/dA_k) * A_k)``. ``S`` is the module's
output for the target class, the LOGIT for open_nsfw. The coarse map (7×7 at open_nsfw's
``stages.3``) is resized bilinearly onto the part of the ORIGINAL image the model saw (its centre
crop mapped back through the resize); everything outside it is zero.

Guided Grad-CAM multiplies the map by guided backprop (:func:`explain.guided_backprop`); its
heatmap is the per-pixel max over channels of ``|guided backprop × Grad-CAM|``, which is Grad-CAM
times the guided-backprop magnitude.

Default layer: the model says which, as a ``default_cam_layer`` attribute of its ``nn.Module``
naming a submodule (open_nsfw: ``stages.3``, declared in ``explain/models/open_nsfw.py``). A
module without the attribute gets the last top-level child module (in registration order) that
is or contains an ``nn.Conv2d``. Any other name from ``explain layers`` can be given.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from torch import nn

from explain.backprop import guided_backprop
from explain.choices import WHITE_BOX_BATCH
from explain.errors import OptionError
from explain.heatmap import WHITE_BOX_FLOOR, Heatmap
from explain.models import Preprocess
from explain.models.base import Differentiable, model_view
from explain.reconstruction import Reconstruction
from explain.whitebox import Calls, Context, Images, Method, run


def default_layer(module: nn.Module) -> str:
    """The layer Grad-CAM uses when none is given: the module's ``default_cam_layer``, else the
    last top-level child holding an ``nn.Conv2d`` (see the module docstring)."""
    declared = getattr(module, "default_cam_layer", None)
    if declared is not None:
        if not isinstance(declared, str) or declared not in _layer_names(module):
            raise OptionError(f"{type(module).__name__}.default_cam_layer is {declared!r}, which "
                              "names none of its layers; fix the attribute or give a layer "
                              "(`explain layers` lists them)")
        return declared
    last = None
    for name, child in module.named_children():
        if any(isinstance(m, nn.Conv2d) for m in child.modules()):
            last = name
    if last is None:
        raise OptionError(f"{type(module).__name__} has no Conv2d layer for Grad-CAM; give a "
                          "layer (`explain layers` lists them)")
    return last


def _layer_names(module: nn.Module) -> set[str]:
    return {name for name, _ in module.named_modules() if name}


def to_original(maps: torch.Tensor, preprocess: Preprocess, size: tuple[int, int]
                ) -> torch.Tensor:
    """N×h×w ``maps`` over the model's input → N×H×W over the original image of ``size``
    (H, W): resized bilinearly onto the region ``preprocess``'s centre crop came from (the whole
    image without a crop), zero elsewhere."""
    height, width = size
    in_h, in_w = preprocess.input_size or size
    crop_h, crop_w = preprocess.crop or (in_h, in_w)
    top, left = (in_h - crop_h) // 2, (in_w - crop_w) // 2
    y0, y1 = round(top * height / in_h), round((top + crop_h) * height / in_h)
    x0, x1 = round(left * width / in_w), round((left + crop_w) * width / in_w)
    out = maps.new_zeros((maps.shape[0], height, width))
    out[:, y0:y1, x0:x1] = F.interpolate(maps[:, None], size=(y1 - y0, x1 - x0),
                                         mode="bilinear", align_corners=False)[:, 0]
    return out


class _GradCam(Method):
    """Grad-CAM for :func:`explain.whitebox.run`: captum's ``LayerGradCam`` at the layer, the
    coarse map resized onto the original image, times guided backprop's magnitude if guided."""

    def __init__(self, guided: bool) -> None:
        self.guided = guided
        self.guides: list[Reconstruction] | None = None
        self.layer_shape: tuple[int, ...] = ()
        self.raw: list[float] = []

    def default_layer(self, clf: Differentiable) -> str:
        return default_layer(clf.module)

    def start(self, ctx: Context) -> None:
        if self.guided:
            self.guides = guided_backprop(ctx.clf, ctx.images, target=ctx.target,
                                          batch_size=ctx.batch_size)  # type: ignore[assignment]

    def attribute(self, ctx: Context, x: torch.Tensor, calls: Calls) -> torch.Tensor:
        return LayerGradCam(ctx.wrapper, ctx.layer_module).attribute(x, target=ctx.target,
                                                                     relu_attributions=False)

    def maps(self, ctx: Context, out: torch.Tensor, x: torch.Tensor) -> np.ndarray:
        if out.ndim != 4:
            raise OptionError(f"Grad-CAM needs a layer with N×C×H×W output; {ctx.layer!r} gives "
                              f"{tuple(out.shape)}: pick a convolutional one")
        self.layer_shape = tuple(out.shape[-2:])
        cam = out.detach()[:, 0].float()  # bf16/fp16 under a low precision
        self.raw = cam.abs().flatten(1).amax(1).tolist()
        out = torch.relu(cam)[:, None]
        maps = to_original(out.detach()[:, 0], ctx.clf.preprocess, tuple(x.shape[-2:]))
        return maps.cpu().numpy()

    def result(self, ctx: Context, values: np.ndarray, index: int, k: int, score: float,
               seconds: float) -> Heatmap:
        raw = self.raw[k]
        if self.guides is not None:
            values = values * self.guides[index].magnitude.values
            seconds = seconds + self.guides[index].seconds
            raw = min(raw, self.guides[index].magnitude.signal)
        name = "guided Grad-CAM" if self.guided else "Grad-CAM"
        return Heatmap(values, method="guided_gradcam" if self.guided else "gradcam",
                       target=ctx.target_name, score=score, seconds=seconds,
                       params={"layer": ctx.layer, "layer_shape": self.layer_shape,
                               "model_view": model_view(ctx.clf, ctx.images[index].shape[:2])},
                       unit=f"{name} of {ctx.output} (>= 0)", noise_floor=WHITE_BOX_FLOOR,
                       raw_signal=raw)


def gradcam(model: object, image: Images, *, target: str | int = "nsfw",
            layer: str | None = None, guided: bool = False, batch_size: int = WHITE_BOX_BATCH
            ) -> Heatmap | list[Heatmap]:
    """Grad-CAM of ``target`` at ``layer`` (guided Grad-CAM with ``guided=True``).

    ``model``: a TorchClassifier or a spec for :func:`explain.models.load` that gives an eager
    torch module. ``image``: a path, an RGB array (uint8, or float in [0, 1]) or a list of them.
    ``target``: the class explained, by name or index. ``layer``: a layer name (`explain layers`);
    None takes the model's default (see the module docstring). ``guided``: multiply by guided
    backprop's magnitude. ``batch_size``: images per pass (fewer when memory is short).
    Returns a :class:`~explain.heatmap.Heatmap` per image (one, or a list in input order), in the
    image's original coordinates, NON-NEGATIVE (the ReLU keeps only regions that raise the
    score: low means no evidence for the target, never evidence against it), zero outside the
    model's centre crop, in units of the explained output (``unit``). Its ``signal`` is the
    largest |value| BEFORE the ReLU (a map that is all zero because nothing raises the score
    still has one; guided: the weaker of that and guided backprop's), "no signal" below
    :data:`~explain.heatmap.WHITE_BOX_FLOOR`; ``params`` records the layer and its map shape.
    """
    return run(_GradCam(guided), model, image, target=target, layer=layer,
               batch_size=batch_size)  # type: ignore[return-value]
