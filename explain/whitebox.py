"""The white-box engine: the skeleton every gradient method runs (deconvnet, guided backprop,
their neuron mode, Grad-CAM), like TorchRay's ``saliency``.

:func:`run` does, for a :class:`Method` (a small strategy object, one per call)::

    model → Differentiable (refused if it is not an eager torch module)   → target index
    → layer (the method's default when none is given) → method.start (once)
    → images grouped by shape in batches
    → per batch: prepared(module) { method.attribute } → method.maps (original coordinates)
    → method.result per image

All gradients are taken with respect to the ORIGINAL-size RGB image on the [0, 1] scale through
the classifier's own preprocessing in torch (:class:`OnOriginal`), so maps land in original image
coordinates. :func:`prepared` sets up each pass: everything is registered inside ``try`` and
undone in ``finally`` (as captum does): hooks removed, activations' ``inplace``, the training
flags and the parameters' ``requires_grad`` restored, also when the pass raises. A method that
changes the backward pass at activations (deconvnet, guided backprop) does it the same way inside
its ``attribute``: :func:`explain.backprop.activation_rules`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explain.choices import WHITE_BOX_BATCH
from explain.errors import ExplainError, ImageError, OptionError, TargetError, WhiteBoxError
from explain.images import ImageInput, as_rgb, load_image, to_batch
from explain.models import check_scores, load, resolve_target
from explain.models.base import Differentiable, model_name, precision_deltas
from explain.windows import batch_limit

BLACK_BOX_COMMANDS = "`explain occlude` or `explain slide`"
# activation modules with an ``inplace`` flag, switched to out-of-place for a pass
INPLACE_ACTIVATIONS = (nn.ReLU, nn.Hardtanh, nn.LeakyReLU, nn.RReLU)

Images = ImageInput | Sequence[ImageInput]


def white_box(model: object) -> Differentiable:
    """``model`` as a :class:`~explain.models.base.Differentiable` classifier whose gradients we
    can take, or a WhiteBoxError: the one check of that capability for every white-box method
    (and the service's refusal)."""
    clf = model if isinstance(model, Differentiable) else load(model)
    if not isinstance(clf, Differentiable):
        raise WhiteBoxError(
            f"model {model_name(clf)} is a black box ({type(clf).__name__}): "
            "deconvnet, guided backprop and Grad-CAM need a torch module (e.g. --model "
            f"open-nsfw); for this model use the black-box commands {BLACK_BOX_COMMANDS}"
        )
    if isinstance(clf.module, torch.jit.ScriptModule):
        raise WhiteBoxError(
            f"model {clf.name} is TorchScript, which takes no Python hooks, so its activations and "
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
    fewer when that many would not fit the memory budget on ``device`` for a model fed
    ``model_shape`` inputs (:func:`explain.windows.batch_limit`; the maps do not depend on the
    batching)."""
    if batch_size < 1:
        raise OptionError(f"batch_size must be at least 1, got {batch_size}")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(img.shape, []).append(i)
    for shape, indices in groups.items():
        step = min(batch_size, batch_limit(device, shape[:2], model_shape))
        for start in range(0, len(indices), step):
            yield indices[start:start + step]


def find_layer(clf: Differentiable, name: str) -> nn.Module:
    """The submodule of ``clf``'s module called ``name`` (a name of ``named_modules()``), or an
    OptionError."""
    try:
        return clf.module.get_submodule(name)
    except AttributeError:
        raise OptionError(f"model {clf.name} has no layer {name!r}; `explain layers` lists "
                          "the names") from None


class OnOriginal(nn.Module):
    """The classifier as a module of the original-size RGB [0, 1] batch, preprocessing inside,
    so gradients land in original image coordinates. Keeps its last output for the scores. A
    one-column (binary) module gets two output columns, one per class name. The module runs in
    the classifier's precision (:meth:`TorchClassifier.autocast`); gradients reach the fp32
    image."""

    def __init__(self, clf: Differentiable) -> None:
        super().__init__()
        self.net = clf.module
        self.clf = clf
        self.output: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = self.clf.model_input(x)
        with self.clf.autocast():
            out = self.net(inputs)
        self.output = out.detach()
        if out.ndim == 2 and out.shape[1] == 1:  # a binary model: its negative class's output
            # is −z for a logit z (sigmoid(−z) = 1 − sigmoid(z)), 1 − p for a probability p
            reads_logits = self.clf.logits or self.clf.sigmoid
            out = torch.cat([-out, out] if reads_logits else [1 - out, out], dim=1)
        return out

    def probabilities(self) -> torch.Tensor:
        """The class probabilities (N×C) of each image of the last pass."""
        n = self.output.shape[0]  # type: ignore[union-attr]
        return check_scores(self.output, n, None, logits=self.clf.logits,
                            sigmoid=self.clf.sigmoid, name=self.clf.name)

    def scores(self, target: int) -> list[float]:
        """Probability of ``target`` per image of the last pass."""
        return self.probabilities()[:, target].tolist()


@dataclass
class Calls:
    """What one forward pass did: how many times the chosen layer ran."""

    layer: int = 0

    def check(self, model: str, layer: str | None) -> None:
        if layer is not None and self.layer != 1:
            raise OptionError(f"layer {layer!r} ran {self.layer} times in one forward pass; "
                              "pick a layer that runs exactly once (`explain layers`)")


@contextmanager
def prepared(module: nn.Module, *, layer: nn.Module | None = None) -> Iterator[Calls]:
    """Eval mode, frozen parameters, out-of-place activations and call counting for one pass
    of ``module``; all undone (hooks removed, flags restored) on the way out, also when the
    pass raises. ``layer``: count that submodule's calls (it must run once)."""
    training = [(m, m.training) for m in module.modules()]
    requires_grad = [(p, p.requires_grad) for p in module.parameters()]
    inplace = [m for m in module.modules() if isinstance(m, INPLACE_ACTIVATIONS) and m.inplace]
    calls = Calls()
    handles = []

    def count_layer(*_: object) -> None:
        calls.layer += 1

    try:
        module.eval()
        for p, _ in requires_grad:
            p.requires_grad_(False)
        for m in inplace:
            m.inplace = False
        if layer is not None:
            handles.append(layer.register_forward_hook(count_layer))
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


@dataclass
class Context:
    """What :func:`run` resolved once per call and hands to every step of the method."""

    clf: Differentiable
    target: int
    target_name: str
    layer: str | None
    layer_module: nn.Module | None
    wrapper: OnOriginal
    images: list[np.ndarray]
    batch_size: int

    @property
    def output(self) -> str:
        """What the methods differentiate, as units name it: the module's output for the
        target, ``logit(t)`` when the module returns logits (``--logits`` or ``--sigmoid``),
        else ``p(t)``."""
        reads_logits = self.clf.logits or self.clf.sigmoid
        return f"{'logit' if reads_logits else 'p'}({self.target_name})"


class Method:
    """A white-box method as :func:`run` drives it; subclasses fill in the three steps."""

    def default_layer(self, clf: Differentiable) -> str | None:
        """The layer used when none is given (None: no layer, class mode)."""
        return None

    def start(self, ctx: Context) -> None:
        """Anything computed once for all the images, before the first batch."""

    def attribute(self, ctx: Context, x: torch.Tensor, calls: Calls) -> torch.Tensor:
        """The batch's raw attribution, inside :func:`prepared` (``x``: N×3×H×W, requires grad)."""
        raise NotImplementedError

    def maps(self, ctx: Context, out: torch.Tensor, x: torch.Tensor) -> np.ndarray:
        """The batch's maps as one array, in original image coordinates."""
        raise NotImplementedError

    def result(self, ctx: Context, values: np.ndarray, index: int, k: int, score: float,
               seconds: float) -> object:
        """The result for image ``index`` (position ``k`` in its batch) from its map ``values``."""
        raise NotImplementedError


def run(method: Method, model: object, image: Images, *, target: str | int, layer: str | None,
        batch_size: int) -> object:
    """``method`` on one image (its result) or a list of images (a list of results, in order);
    see the module docstring for the steps. ``model``: a TorchClassifier or a spec for
    :func:`explain.models.load`; ``target``: class name or index; ``layer``: a layer name, or None
    for the method's default; ``batch_size``: images per pass at most. A model in bf16 or fp16
    adds ``precision`` and ``precision_delta`` (:func:`~explain.models.base.precision_deltas`,
    one fp32 forward per batch) to each map's params."""
    clf = white_box(model)
    images, single = as_images(image)
    t = resolve_target(clf, target)
    layer = layer or method.default_layer(clf)
    ctx = Context(clf, t, str(clf.class_names[t]), layer,
                  find_layer(clf, layer) if layer else None, OnOriginal(clf), images, batch_size)
    method.start(ctx)
    results: list[object] = [None] * len(images)
    for indices in batches(images, batch_size, clf.device, clf.input_size):
        start = time.perf_counter()
        x = to_batch([images[i] for i in indices], clf.device).requires_grad_(True)
        with prepared(clf.module, layer=ctx.layer_module) as calls:
            out = method.attribute(ctx, x, calls)
            calls.check(clf.name, layer)
        maps = method.maps(ctx, out, x)
        scores = ctx.wrapper.scores(t)
        deltas = precision_deltas(clf, x.detach(), ctx.wrapper.probabilities())
        seconds = (time.perf_counter() - start) / len(indices)
        for k, i in enumerate(indices):
            results[i] = method.result(ctx, maps[k], i, k, scores[k], seconds)
            if deltas is not None:
                magnitude = getattr(results[i], "magnitude", results[i])  # a Reconstruction's
                magnitude.params.update(precision=clf.precision, precision_delta=deltas[k])
    return results[0] if single else results


def layers(model: object, *, size: tuple[int, int] | None = None
           ) -> list[tuple[str, str, tuple[int, ...] | None]]:
    """Every named layer of a white-box ``model``: what ``layer=`` accepts.

    ``model``: a TorchClassifier or a spec for :func:`explain.models.load`; ``size``: (h, w) of
    the grey probe image run once (default: the model's input size, else 224×224). Returns
    (name, type, output shape per image) for every named module; the shape is None when the
    module did not run or returned no single tensor.
    """
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


def explain_files(paths: Sequence[str | os.PathLike], explain: Callable[[list[np.ndarray]], list],
                  batch_size: int = WHITE_BOX_BATCH
                  ) -> Iterator[tuple[int, np.ndarray | None, object]]:
    """Explain the image files ``paths`` ``batch_size`` at a time with ``explain`` (a list of RGB
    images → one result each), yielding ``(index, image, result)`` as soon as it is known: an
    unreadable file at once, with image None and its :class:`ImageError` as the result; the
    others when their batch is done, a model failure on one image as its
    :class:`ExplainError` (a batch that fails is explained again image by image to find
    them). An error of the call itself (an option, a target, a model that is no torch module)
    stops the run. The CLI's deconv, guided and gradcam run over it."""
    chunk: list[tuple[int, np.ndarray]] = []

    def each(images: list[np.ndarray]) -> list:
        try:
            return explain(images)
        except (OptionError, TargetError, WhiteBoxError):
            raise
        except ExplainError as exc:
            if len(images) == 1:
                return [exc]
            return [each([img])[0] for img in images]

    def flush() -> Iterator[tuple[int, np.ndarray | None, object]]:
        done = each([img for _, img in chunk])
        yield from ((k, img, result) for (k, img), result in zip(chunk, done, strict=True))
        chunk.clear()

    for k, path in enumerate(paths):
        try:
            chunk.append((k, load_image(path)))
        except ImageError as exc:
            yield k, None, exc
        if len(chunk) == batch_size:
            yield from flush()
    if chunk:
        yield from flush()
