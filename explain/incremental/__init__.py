"""Exact incremental inference for occlusion maps of torch models (Krypton, re-designed).

An occluded image differs from the intact one inside one window, so most activations of the
network are the intact image's: only a rectangle of each map changes, growing layer by layer
with the receptive field. For a torch classifier whose network ``torch.fx`` traces, the
intact image's activations are cached once; each batch of windows then recomputes, at every
convolution, pooling, padding and pixel-wise step, only each window's changed rectangle (see
:mod:`~explain.incremental.regions`), and runs whole maps where the rectangles cover most of the
map or where a step is not known to be local (global pooling, linear layers, any other op: never
silently wrong). The scores equal full re-inference up to float rounding (tests: 1e-4).

The classifier's preprocessing (:class:`~explain.models.base.Preprocess`: centre crop, channel
order, ``(x · scale − mean) / std``) is pixel-wise, so hiding a window then preprocessing equals
preprocessing the image and the fill and hiding the window in the network's input: a window
moves by the crop offset, and the part outside the crop changes nothing.

``tau`` (Krypton's projective-field threshold, approximate, off by default) caps each layer's
changed rectangle at ``⌈τ · side⌉`` of the map, dropping changes beyond it: faster, not exact.
"""

from __future__ import annotations

import numpy as np
import torch

from explain.errors import OptionError
from explain.incremental.engine import Incremental
from explain.incremental.graph import Full, Network, trace
from explain.models.base import Classifier, Differentiable, Preprocess, check_scores, model_name
from explain.progress import Progress

__all__ = ["AUTO_SIDE", "MOST", "Incremental", "check_incremental", "network_for", "pays",
           "window_scores"]

MOST = 0.6
"""A step runs on whole maps when its patches would cover more than this fraction of the map."""


def _why_not(classifier: Classifier) -> str | Network:
    """The traced network of ``classifier``, or why incremental inference cannot run on it."""
    if not isinstance(classifier, Differentiable):
        return (f"model {model_name(classifier)} is not a torch module "
                f"({type(classifier).__name__}); only torch models can reuse activations")
    module = classifier.module
    if classifier.input_transform is not None:
        return (f"model {classifier.name} transforms its input before the network (the "
                "reference JPEG round trip?), which is not pixel-wise")
    if type(classifier.preprocess) is not Preprocess:
        return f"model {classifier.name} has a preprocessing that is not a Preprocess"
    if isinstance(module, torch.jit.ScriptModule):
        return f"model {classifier.name} is TorchScript, which torch.fx cannot trace"
    try:
        net = trace(module)
    except Exception as exc:  # torch.fx raises many kinds of errors on untraceable code
        return (f"torch.fx cannot trace model {classifier.name}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}")
    return _local_start(net, classifier.name)


def _local_start(net: Network, name: str) -> Network | str:
    """``net``, or why nothing can be reused: an op that reads the input is not local."""
    for step in net.steps:
        if net.input in step.inputs and isinstance(step.rule, Full):
            return (f"the first op of model {name} ({step.name}) is not local "
                    f"({step.rule.why}), so no activation can be reused")
    return net


AUTO_SIDE = 0.25
"""``incremental=None`` reuses activations on the CPU for windows at most this fraction of the
work image's side (see :func:`pays`)."""


def pays(device: torch.device, window: tuple[int, int] | None, size: tuple[int, int] | None
         ) -> bool:
    """Whether incremental inference is expected to beat full re-inference for windows of
    ``window`` (H, W) work pixels on an image of ``size``: on the CPU, when the window's side is
    at most :data:`AUTO_SIDE` of the image's (open_nsfw torch, 2 CPU threads, 256² work size,
    quiet machine: 2.0× at box 64, 3.1× at 32, 3.7× at 16, ``scripts/bench_fast.py``); never
    on CUDA, where a full batch is so cheap that the per-layer gathers lose (H100: 0.14–0.36×
    at the same settings, batch 64–128). Unknown sizes: the CPU alone decides."""
    if device.type != "cpu":
        return False
    if window is None or size is None:
        return True
    return window[0] <= AUTO_SIDE * size[0] and window[1] <= AUTO_SIDE * size[1]


def check_incremental(incremental: bool | None, tau: float | None) -> None:
    """An :class:`~explain.errors.OptionError` for a ``tau`` outside (0, 1] or given with
    ``incremental=False`` (the checks :func:`network_for` makes, to run before other work)."""
    if tau is not None and not (isinstance(tau, int | float) and 0 < tau <= 1):
        raise OptionError(f"tau must be in (0, 1] (a fraction of each map's side), not {tau!r}")
    if incremental is False and tau is not None:
        raise OptionError("tau applies to incremental inference; drop tau or allow "
                          "incremental inference")


def network_for(classifier: Classifier, incremental: bool | None, tau: float | None = None,
                window: tuple[int, int] | None = None, size: tuple[int, int] | None = None
                ) -> Network | None:
    """The traced network to score ``classifier``'s windows incrementally, or None for full
    re-inference. ``incremental``: None = whenever possible and expected to pay (:func:`pays`
    for windows of ``window`` work pixels on an image of ``size``), True = required (an
    :class:`~explain.errors.OptionError` saying why when impossible), False = never.
    ``tau``: None (exact) or the projective-field threshold in (0, 1], which needs
    incremental inference (asking for it is asking for incremental inference)."""
    check_incremental(incremental, tau)
    if incremental is False:
        return None
    if incremental is None and tau is None and not pays(classifier.device, window, size):
        return None
    found = _why_not(classifier)
    if isinstance(found, Network):
        return found
    if incremental or tau is not None:
        asked = "incremental=True" if incremental else f"tau={tau}"
        raise OptionError(f"{asked} needs incremental inference, but {found}; use "
                          "incremental=None (automatic) or False")
    return None


@torch.no_grad()
def window_scores(classifier: Differentiable, net: Network, x: torch.Tensor, fill: torch.Tensor,
                  bounds: torch.Tensor, target: int, step: int,
                  progress: Progress | None = None, *, tau: float | None = None
                  ) -> torch.Tensor:
    """p(``target``) of ``x`` with each window of ``bounds`` filled, by incremental inference.

    ``classifier``: a torch classifier ``net`` was traced from (:func:`network_for`); ``x``:
    1×3×H×W RGB in [0, 1] at the classifier's input size; ``fill``: what hidden pixels become,
    broadcastable to ``x``; ``bounds``: n×4 int64 windows [y0, x0, y1, x1) in ``x``'s pixels (an
    empty window = the intact image); ``step``: windows per batch; ``progress(done, n)`` after
    each batch. Returns the n probabilities (float32, on ``x``'s device). Windows that miss the
    network's input (outside the crop) score as the intact image without running. Windows run
    in order of size, so that a batch's patches have one size. The network runs in the
    classifier's precision (its ``autocast``, bf16 or fp16 as for full re-inference)."""
    pre = classifier.preprocess
    if pre.input_size is not None and tuple(x.shape[-2:]) != tuple(pre.input_size):
        raise OptionError(f"incremental inference needs the image at the model's input size "
                          f"{tuple(pre.input_size)}, got {tuple(x.shape[-2:])}")
    model_input = classifier.model_input
    with classifier.autocast():
        engine = Incremental(net, model_input(x), model_input(fill.expand_as(x)), most=MOST,
                             tau=tau)
    n_classes = len(classifier.class_names)

    def probs(out: object, n: int) -> torch.Tensor:
        return check_scores(out, n, n_classes, logits=classifier.logits,
                            sigmoid=classifier.sigmoid, name=classifier.name)[:, target]

    rect = pre.input_windows(bounds.cpu().numpy(), tuple(x.shape[-2:]))
    scores = probs(engine.output, 1).expand(len(rect)).clone()
    sides = rect[:, 2:] - rect[:, :2]
    todo = np.flatnonzero(sides.min(axis=1) > 0)
    todo = todo[np.lexsort((sides[todo, 1], sides[todo, 0]))]
    done = len(rect) - len(todo)
    for lo in range(0, len(todo), step):
        rows = todo[lo:lo + step]
        with classifier.autocast():
            out = engine.run(rect[rows])
        scores[torch.from_numpy(rows).to(scores.device)] = probs(out, len(rows))
        done += len(rows)
        if progress is not None:
            progress(done, len(rect))
    if progress is not None and not len(todo):
        progress(done, len(rect))
    return scores
