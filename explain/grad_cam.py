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

import time

import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from torch import nn

from explain.backprop import (
    Images,
    OnOriginal,
    as_images,
    batches,
    find_layer,
    guided_backprop,
    prepared,
    stack,
    white_box,
)
from explain.errors import OptionError
from explain.heatmap import Heatmap
from explain.models import Preprocess, resolve_target


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
    """N×h×w maps over the model's input → N×H×W over the original image: resized onto the
    region the centre crop came from, zero elsewhere."""
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


def gradcam(model: object, image: Images, *, target: str | int = "nsfw",
            layer: str | None = None, guided: bool = False, batch_size: int = 16
            ) -> Heatmap | list[Heatmap]:
    """Grad-CAM of ``target`` at ``layer`` (guided Grad-CAM with ``guided=True``) for one image
    or a list of them; each map is in the image's original coordinates."""
    clf = white_box(model)
    images, single = as_images(image)
    t = resolve_target(clf, target)
    target_name = str(clf.class_names[t])
    layer = layer or default_layer(clf.module)
    layer_module = find_layer(clf, layer)
    wrapper = OnOriginal(clf)
    guides = guided_backprop(clf, images, target=t, batch_size=batch_size) if guided else None
    method = "guided_gradcam" if guided else "gradcam"
    results: list[Heatmap] = [None] * len(images)  # type: ignore[list-item]
    for indices in batches(images, batch_size, clf.device, clf.input_size):
        start = time.perf_counter()
        x = stack(images, indices, clf.device)
        with prepared(clf.module, relu_rules=False, layer=layer_module) as calls:
            cams = LayerGradCam(wrapper, layer_module).attribute(x, target=t,
                                                                 relu_attributions=True)
            calls.check(clf.name, layer)
        if cams.ndim != 4:
            raise OptionError(f"Grad-CAM needs a layer with N×C×H×W output; {layer!r} gives "
                              f"{tuple(cams.shape)}: pick a convolutional one")
        layer_shape = tuple(cams.shape[-2:])
        maps = to_original(cams.detach()[:, 0], clf.preprocess, tuple(x.shape[-2:]))
        maps = maps.cpu().numpy()
        scores = wrapper.scores(t)
        seconds = (time.perf_counter() - start) / len(indices)
        for k, i in enumerate(indices):
            values = maps[k]
            if guides is not None:
                values = values * guides[i].magnitude.values
                seconds_i = seconds + guides[i].seconds
            else:
                seconds_i = seconds
            results[i] = Heatmap(values, method=method, target=target_name, score=scores[k],
                                 seconds=seconds_i,
                                 params={"layer": layer, "layer_shape": layer_shape})
    return results[0] if single else results

