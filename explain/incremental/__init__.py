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
from explain.perturbation.loop import Cancel, Copies, scored
from explain.progress import Progress

__all__ = ["AUTO_SIDE", "MOST", "Incremental", "IncrementalCopies", "check_incremental",
           "network_for", "pays", "window_scores"]

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


class IncrementalCopies(Copies):
    """Occluded copies of one image scored by incremental inference: a copy builder of the
    engine's loop (:mod:`explain.perturbation.loop`), so that batching, progress and
    cancellation are the loop's (:func:`~explain.perturbation.scored`).

    ``classifier``: a torch classifier ``net`` was traced from (:func:`network_for`); ``x``:
    1×3×H×W RGB in [0, 1] at the classifier's input size; ``fill``: what hidden pixels become,
    broadcastable to ``x``; ``bounds``: n×4 int64 windows [y0, x0, y1, x1) in ``x``'s pixels.
    The intact image runs once, here (:class:`Incremental` caches its activations). The copies
    are the windows that change the network's input, in order of size (so that a batch's
    patches have one size), as rectangles on that input (:attr:`rows` says which row of
    ``bounds`` each is); :meth:`score` runs the cached network on a batch of them, in the
    classifier's precision (its ``autocast``). A window that misses the input (empty, or
    outside the crop) is no copy: it scores as the intact image (:attr:`intact`) without
    running. Its scores depend on this builder's own image, so its copies never share a model
    call with another builder's (:attr:`~explain.perturbation.Copies.alone`)."""

    alone = True

    def __init__(self, classifier: Differentiable, net: Network, x: torch.Tensor,
                 fill: torch.Tensor, bounds: torch.Tensor, tau: float | None = None) -> None:
        pre = classifier.preprocess
        if pre.input_size is not None and tuple(x.shape[-2:]) != tuple(pre.input_size):
            raise OptionError(f"incremental inference needs the image at the model's input size "
                              f"{tuple(pre.input_size)}, got {tuple(x.shape[-2:])}")
        self.classifier = classifier
        model_input = classifier.model_input
        with classifier.autocast():
            self.engine = Incremental(net, model_input(x), model_input(fill.expand_as(x)),
                                      most=MOST, tau=tau)
        self.n = len(bounds)
        self.rect = pre.input_windows(bounds.cpu().numpy(), tuple(x.shape[-2:]))
        sides = self.rect[:, 2:] - self.rect[:, :2]
        todo = np.flatnonzero(sides.min(axis=1) > 0)
        self.rows = todo[np.lexsort((sides[todo, 1], sides[todo, 0]))]
        self.intact = self._probs(self.engine.output, 1)

    def __len__(self) -> int:
        return len(self.rows)

    def copies(self, lo: int, hi: int) -> torch.Tensor:
        """The windows of copies ``lo:hi`` on the network's input (int64 N×4, on the host)."""
        return torch.from_numpy(self.rect[self.rows[lo:hi]])

    def score(self, batch: torch.Tensor) -> torch.Tensor:
        with self.classifier.autocast():
            out = self.engine.run(batch.numpy())
        return self._probs(out, len(batch))

    def _probs(self, out: object, n: int) -> torch.Tensor:
        clf = self.classifier
        return check_scores(out, n, len(clf.class_names), logits=clf.logits, sigmoid=clf.sigmoid,
                            name=clf.name)


@torch.no_grad()
def window_scores(classifier: Differentiable, net: Network, x: torch.Tensor, fill: torch.Tensor,
                  bounds: torch.Tensor, target: int, step: int,
                  progress: Progress | None = None, *, tau: float | None = None,
                  cancel: Cancel | None = None) -> torch.Tensor:
    """p(``target``) of ``x`` with each window of ``bounds`` filled, by incremental inference:
    :class:`IncrementalCopies` (the arguments' meaning) through the engine's loop, ``step``
    windows per batch, ``progress(done, n)`` after each batch (the windows that do not run
    counted in the first), ``cancel()`` before each
    (:class:`~explain.perturbation.Cancelled`). Returns the n probabilities (float32, on
    ``x``'s device), in the order of ``bounds``."""
    copies = IncrementalCopies(classifier, net, x, fill, bounds.to(x.device), tau)
    n, skipped = copies.n, copies.n - len(copies)
    scores = copies.intact[:, target].expand(n).clone()
    report = None if progress is None else lambda done, _: progress(skipped + done, n)
    for lo, hi, probs in scored(copies, step, progress=report, cancel=cancel):
        scores[torch.from_numpy(copies.rows[lo:hi]).to(scores.device)] = probs[:, target]
    if progress is not None and not len(copies):
        progress(n, n)
    return scores
