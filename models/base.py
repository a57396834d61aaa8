"""The Classifier contract every explanation method relies on.

A classifier takes a float32 batch N×3×H×W, RGB, values in [0, 1], on any device, and returns
N×C class probabilities as a torch tensor. It owns its preprocessing (resize, crop, channel order,
normalisation), its device and its batching limits. ``input_size`` (H, W), when set, is the size
the model resizes every input to: the engine may resize an image there once and work at that size.

What a model can do besides scoring is declared by the protocols it satisfies, never probed
where it is used: :class:`HasFeatures` (penultimate features), :class:`FixedInput` (a known,
pixel-wise input: copies can be built in the model's own input), :class:`Differentiable` (a torch
module gradients flow through: the white-box methods, incremental inference).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# the 3.12 protocol check on 3.11 too: isinstance reads members statically (inspect.getattr_static),
# so checking a capability never runs a property such as class_names (which may call the model)
from typing_extensions import Protocol, runtime_checkable

from explain.errors import ModelError, TargetError
from explain.models.specs import DEFAULT_PRECISION, PRECISIONS

PROBE_SIZE = 64
# the dtypes torch.autocast runs a torch model's forward in, per precision but fp32
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@runtime_checkable
class Classifier(Protocol):
    """What every black-box method needs of a model."""

    class_names: Sequence[str]
    device: torch.device
    input_size: tuple[int, int] | None

    def predict(self, batch: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class HasFeatures(Classifier, Protocol):
    """A classifier that also gives its penultimate features (the torch and ONNX adapters,
    open_nsfw on both backends); either method raises ModelError when the model behind it has
    none (a torch module without ``features``, an ONNX graph without a feature output)."""

    def features(self, batch: torch.Tensor) -> torch.Tensor: ...

    def features_and_scores(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features N×F, probabilities N×C as ``predict`` gives them) of one batch, from one
        forward pass where the model allows it."""
        ...


FeatureClassifier = HasFeatures
"""The name :class:`HasFeatures` had first."""


@runtime_checkable
class FixedInput(Classifier, Protocol):
    """A classifier whose model input is a known function of the RGB batch, reachable apart
    from the model (the torch and ONNX adapters): ``model_input`` (an RGB [0, 1] batch → the
    tensor the model sees, in its ``layout``, "NCHW" or "NHWC") through ``input_transform``
    (None, or a step outside the :class:`Preprocess`, such as a JPEG round trip) and
    ``preprocess``; ``predict_input`` scores such tensors. Where the transform is None and the
    preprocessing a plain :class:`Preprocess`, hiding a window can be done in the model input
    (:func:`pixelwise_input`)."""

    preprocess: Preprocess
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None
    layout: str

    def model_input(self, batch: torch.Tensor) -> torch.Tensor: ...

    def predict_input(self, inputs: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Differentiable(FixedInput, Protocol):
    """A white-box classifier: a torch ``module`` that gradients flow through, fed
    ``model_input``'s tensors, whose raw outputs are read as ``logits``/``sigmoid`` say
    (:func:`check_scores`) under its ``name`` (the torch adapter: open_nsfw's torch port,
    nudity-mobilenet, any ``nn.Module`` or TorchScript file)."""

    module: torch.nn.Module
    name: str
    logits: bool
    sigmoid: bool
    precision: str

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context every forward of ``module`` runs in (its ``precision``)."""


def resolve_target(classifier: Classifier, target: str | int) -> int:
    """Class index of ``target``, given by name (``"nsfw"``) or index (``1`` or ``"1"``)."""
    names = list(classifier.class_names)
    if isinstance(target, str) and target in names:
        return names.index(target)
    try:
        index = int(target)
    except (TypeError, ValueError):
        raise TargetError(
            f"unknown target {target!r}; this model's classes are {', '.join(names)} "
            "(give a name or an index)"
        ) from None
    if not 0 <= index < len(names):
        raise TargetError(
            f"target index {index} is out of range; this model has {len(names)} classes "
            f"({', '.join(names)})"
        )
    return index


def check_scores(scores: object, n: int, n_classes: int | None, *, logits: bool, name: str,
                 sigmoid: bool = False) -> torch.Tensor:
    """Validate a model's raw answer for a batch of ``n`` (:func:`score_columns`) and return it
    as probabilities. How the columns are read:

    - one column (a binary model): ``p = sigmoid(z)`` with ``logits`` or ``sigmoid``, else the
      probability itself; returned as the two columns ``1 − p, p``. Never a softmax over one
      column, which is 1 whatever the model says.
    - ``sigmoid``: independent (multi-label) columns, ``p_c = sigmoid(z_c)`` each.
    - ``logits``: exclusive classes, a softmax over the columns.
    - neither: probabilities as they are; values outside [0, 1] are an error (logits were
      meant).
    """
    t = score_columns(scores, n, n_classes, name=name)
    binary = t.shape[1] == 1
    if sigmoid or (logits and binary):
        t = torch.sigmoid(t)
    elif logits:
        return torch.softmax(t, dim=1)
    elif t.numel() and (t.min() < -1e-4 or t.max() > 1 + 1e-4):
        raise ModelError(
            f"model {name} returned values outside [0, 1] (min {t.min():.3g}, max "
            f"{t.max():.3g}): these look like logits; pass --logits (logits=True) for "
            "exclusive classes (a softmax; one column: a sigmoid), or --sigmoid (sigmoid=True) "
            "for independent labels"
        )
    return torch.cat([1 - t, t], dim=1) if binary else t


def score_columns(scores: object, n: int, n_classes: int | None, *, name: str) -> torch.Tensor:
    """A model's raw answer for a batch of ``n`` as a float N×C tensor, C as the model gave it.

    Anything but a real-valued N×C array with C ≥ 1 and finite values (strings, objects, ragged
    lists, booleans, complex numbers, a wrong number of rows or classes, no classes at all) is an
    error naming the model. ``n_classes`` is the number of named classes; a one-column answer
    is a binary model, and fits two.
    """
    try:
        t = scores if torch.is_tensor(scores) else torch.as_tensor(np.asarray(scores))
    except Exception as exc:  # np.asarray runs the object's own conversion code
        raise ModelError(f"model {name} returned a {type(scores).__name__} that is not an "
                         f"N×C array of numbers ({str(exc)[:120]})") from exc
    if t.dtype == torch.bool or t.is_complex():
        raise ModelError(f"model {name} returned {t.dtype} values; scores must be real numbers")
    t = t.detach().float()
    if t.ndim == 1 and n == 1:
        t = t.unsqueeze(0)
    binary = t.ndim == 2 and t.shape[1] == 1 and n_classes in (None, 2)
    if t.ndim != 2 or t.shape[0] != n or (n_classes is not None and t.shape[1] != n_classes
                                          and not binary):
        want = f"({n}, {n_classes})" if n_classes is not None else f"({n}, C)"
        if n_classes == 2:
            want += f" or ({n}, 1)"
        raise ModelError(
            f"model {name} returned scores of shape {tuple(t.shape)} for a batch of {n}; "
            f"expected {want}"
        )
    if t.shape[1] == 0:
        raise ModelError(f"model {name} returned no class scores (shape {tuple(t.shape)} for a "
                         f"batch of {n}); a classifier must score at least one class")
    if not torch.isfinite(t).all():
        raise ModelError(f"model {name} returned NaN or infinite scores")
    return t


def binary_names(names: Sequence[str] | None) -> list[str] | None:
    """Class names as a classifier keeps them: one name ``x`` (a one-column model's column)
    becomes the binary pair ``not-x, x``; anything else stays as given."""
    if names is None:
        return None
    names = [str(c) for c in names]
    return [f"not-{names[0]}", names[0]] if len(names) == 1 else names


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its input: the description a torch/ONNX adapter needs.

    ``input_size`` is what the image is resized to (bilinear, antialiased), ``crop`` an optional
    centre crop taken after it, ``mean``/``std`` are given on the ``value_scale`` (1 for [0, 1]
    inputs, 255 for 0–255 inputs) and in the model's ``channel_order``.
    """

    input_size: tuple[int, int] | None = (224, 224)
    crop: tuple[int, int] | None = None
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: str = "RGB"
    value_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ModelError(f"channel_order must be 'RGB' or 'BGR', not {self.channel_order!r}")

    def input_windows(self, bounds: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Windows ``bounds`` (n×4 int [top, left, bottom, right) in the pixels of an image of
        ``size``, already at :attr:`input_size`) → the same rectangles in the model's input,
        after the centre crop (clipped; a window that misses the crop becomes all zeros, i.e.
        empty). Every other step of the preprocessing is pixel-wise, so hiding a window and then
        preprocessing equals preprocessing and then hiding this rectangle."""
        h, w = size
        ch, cw = self.crop if self.crop is not None else (h, w)
        top, left = (h - ch) // 2, (w - cw) // 2
        rect = np.asarray(bounds, dtype=np.int64) - np.array([top, left, top, left])
        rect = np.clip(rect, 0, np.array([ch, cw, ch, cw]))
        rect[(rect[:, 2] <= rect[:, 0]) | (rect[:, 3] <= rect[:, 1])] = 0
        return rect

    def view(self, shape: tuple[int, int]) -> list[int]:
        """[top, left, bottom, right) of an image of ``shape`` (H, W) that reaches the model: the
        centre crop mapped back through the resize to :attr:`input_size`, rounded to the image's
        pixels (open_nsfw, 256 then 224: the centre 224/256 of each axis); the whole image
        without a crop. The pixels outside never reach the model, whatever they hold."""
        h, w = shape
        if self.crop is None:
            return [0, 0, h, w]
        rh, rw = self.input_size if self.input_size is not None else (h, w)
        ch, cw = min(self.crop[0], rh), min(self.crop[1], rw)
        top, left = (rh - ch) // 2, (rw - cw) // 2
        fy, fx = h / rh, w / rw
        return [_nearest(top * fy), _nearest(left * fx), _nearest((top + ch) * fy),
                _nearest((left + cw) * fx)]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """RGB [0, 1] batch → the model's input tensor (same device)."""
        x = batch
        if self.input_size is not None and tuple(x.shape[-2:]) != tuple(self.input_size):
            x = resize(x, self.input_size)
        if self.crop is not None:
            x = center_crop(x, self.crop)
        if self.channel_order == "BGR":
            x = x.flip(1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        # (x · scale − mean) / std, in one new tensor: the same operations in the same order
        # (the same bits), without two more batch-sized temporaries to write and read
        return (x * self.value_scale).sub_(mean).div_(std)


def _nearest(value: float) -> int:
    return int(np.floor(value + 0.5))


def model_name(classifier: object, default: str | None = None) -> str:
    """The name ``classifier`` is shown by: its ``name`` (every adapter has one), else
    ``default``, else its type's name (a classifier of the user's own with no name)."""
    name = getattr(classifier, "name", None)
    return str(name) if name is not None else default or type(classifier).__name__


def model_geometry(classifier: object) -> Preprocess | None:
    """The resize and centre crop ``classifier`` applies: its ``geometry`` (the resize and crop
    it applies when they are not its ``preprocess``'s, as an input transform that crops), else
    its ``preprocess``; None when it declares neither (a function, an endpoint)."""
    pre = getattr(classifier, "geometry", None) or getattr(classifier, "preprocess", None)
    return pre if isinstance(pre, Preprocess) else None


def model_view(classifier: object, shape: tuple[int, int]) -> list[int]:
    """``[top, left, bottom, right)``: the part of an ORIGINAL image of ``shape`` (H, W) that
    reaches ``classifier``'s model after its resize and centre crop (:meth:`Preprocess.view`
    of :func:`model_geometry`); the whole image when no crop is known."""
    pre = model_geometry(classifier)
    if pre is not None:
        return pre.view(shape)
    return [0, 0, int(shape[0]), int(shape[1])]


def execution_provider(classifier: object) -> str | None:
    """The onnxruntime execution provider ``classifier`` runs on ("CUDAExecutionProvider",
    "CPUExecutionProvider"), recorded in every black-box map's ``params["provider"]``; None
    for a model that is not run by onnxruntime (its ``device`` says where it runs)."""
    return getattr(classifier, "provider", None)


def onnx_providers(device: torch.device) -> list[str]:
    """The onnxruntime providers to ask for on ``device``: CUDA first when the device is CUDA
    and onnxruntime offers it (the ``gpu`` extra, onnxruntime-gpu), then the CPU."""
    import onnxruntime as ort

    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def check_precision(precision: str, device: torch.device) -> str:
    """``precision`` when it is one of :data:`~explain.models.specs.PRECISIONS` and torch runs it
    on ``device``, else a ModelError saying what to use. A probe under ``torch.autocast`` must
    give the dtype asked for: a torch that cannot (fp16 on the CPU before torch 2.3, bf16 on a
    GPU without it) warns and turns autocast off, which would run fp32 under another name."""
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == DEFAULT_PRECISION:
        return precision
    dtype = AUTOCAST_DTYPES[precision]
    ones = torch.ones(1, 1, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.autocast(device.type, dtype=dtype):
                made = F.linear(ones, ones).dtype
        except RuntimeError:
            made = None
    if made != dtype:
        raise ModelError(f"torch {torch.__version__} does not run {precision} on {device} "
                         f"(torch.autocast gives no {dtype} there); use --precision fp32"
                         + (" or bf16" if device.type == "cpu" else ""))
    return precision


def precision_deltas(classifier: object, batch: torch.Tensor,
                     probs: torch.Tensor | None = None) -> list[float] | None:
    """Per image of ``batch`` (RGB [0, 1], unperturbed), the largest |Δp| over the classes
    between ``classifier``'s answer in its precision (``probs`` when the caller has them, else
    one ``predict``) and in fp32 (one extra fp32 forward, :meth:`fp32_predict`); None for a
    model that runs in fp32 (every model but a torch one given bf16 or fp16)."""
    if getattr(classifier, "precision", DEFAULT_PRECISION) == DEFAULT_PRECISION:
        return None
    low = classifier.predict(batch) if probs is None else probs  # type: ignore[attr-defined]
    exact = classifier.fp32_predict(batch)  # type: ignore[attr-defined]
    return (low.float().to(exact.device) - exact).abs().amax(dim=1).tolist()


def precision_params(classifier: object, batch: torch.Tensor,
                     probs: torch.Tensor | None = None) -> dict:
    """What a map of the one image ``batch`` (1×3×H×W) records about its precision:
    ``precision`` and ``precision_delta`` (:func:`precision_deltas`) for a model run in bf16 or
    fp16; nothing in fp32, so that fp32 maps stay as they were."""
    deltas = precision_deltas(classifier, batch, probs)
    if deltas is None:
        return {}
    return {"precision": classifier.precision,  # type: ignore[attr-defined]
            "precision_delta": deltas[0]}


def to_uint8_images(batch: torch.Tensor) -> np.ndarray:
    """RGB [0, 1] batch N×3×H×W → contiguous uint8 N×H×W×3 numpy array (rounded, clamped)."""
    arr = (batch.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return np.ascontiguousarray(arr.cpu().numpy())


def resize(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with antialiasing when shrinking (close to PIL's BILINEAR)."""
    shrink = size[0] < batch.shape[-2] or size[1] < batch.shape[-1]
    return F.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=shrink)


def center_crop(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = batch.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    if top < 0 or left < 0:
        raise ModelError(f"cannot centre-crop {size} out of an input of {(h, w)}")
    return batch[..., top:top + size[0], left:left + size[1]]


class BaseClassifier:
    """Shared machinery of the adapters: validation of answers and class-name probing.

    Subclasses implement ``_scores(batch)`` returning raw N×C scores for an RGB [0, 1] batch.
    ``geometry``: the resize and crop the model applies when they are not in its ``preprocess``
    (an input transform that crops), read by :func:`model_view`. ``provider``: the onnxruntime
    execution provider an ONNX model's session really runs on (None for other models), read by
    :func:`execution_provider`.
    """

    name: str = "model"
    device: torch.device = torch.device("cpu")
    input_size: tuple[int, int] | None = None
    logits: bool = False
    sigmoid: bool = False
    geometry: Preprocess | None = None
    provider: str | None = None
    precision: str = DEFAULT_PRECISION
    _class_names: list[str] | None = None

    def _scores(self, batch: torch.Tensor) -> object:
        raise NotImplementedError

    @property
    def class_names(self) -> list[str]:
        """The names of the classes, one per column of ``predict``'s answer. Unnamed, they are
        learnt from one probe: "0".."C-1", or "not-positive", "positive" for one column."""
        if self._class_names is None:
            side = self.input_size or (PROBE_SIZE, PROBE_SIZE)
            probe = torch.full((1, 3, *side), 0.5, device=self.device)
            columns = score_columns(self._scores(probe), 1, None, name=self.name).shape[1]
            self._class_names = (["not-positive", "positive"] if columns == 1
                                 else [str(i) for i in range(columns)])
        return self._class_names

    @class_names.setter
    def class_names(self, names: Sequence[str] | None) -> None:
        self._class_names = binary_names(names)

    def at_input_size(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` resized to ``input_size`` when one is declared and the batch is not at it:
        what an adapter without a :class:`Preprocess` (a function, an endpoint) does, so that
        the engine's resize-once and a direct ``predict`` give the same scores."""
        if self.input_size is None or tuple(batch.shape[-2:]) == tuple(self.input_size):
            return batch
        return resize(batch, tuple(self.input_size))

    @torch.no_grad()
    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ModelError(f"a batch must be N×3×H×W, got shape {tuple(batch.shape)}")
        return self._checked(self._scores(batch), batch.shape[0]).to(batch.device)

    def _checked(self, scores: object, n: int) -> torch.Tensor:
        """The model's raw answer for ``n`` inputs as checked probabilities
        (:func:`check_scores`)."""
        n_classes = len(self._class_names) if self._class_names is not None else None
        return check_scores(scores, n, n_classes, logits=self.logits, sigmoid=self.sigmoid,
                            name=self.name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} on {self.device}>"


def pixelwise_input(classifier: Classifier, size: tuple[int, int]) -> bool:
    """Whether a window hidden in an image of ``size`` (H, W) can be hidden in ``classifier``'s
    model input instead: it is :class:`FixedInput` (the torch and ONNX adapters) with a plain
    :class:`Preprocess` and no ``input_transform`` (a JPEG round trip is not pixel-wise), and
    ``size`` is its input size (no resize runs)."""
    if not isinstance(classifier, FixedInput) or classifier.input_transform is not None:
        return False
    pre = classifier.preprocess
    return type(pre) is Preprocess and (pre.input_size is None
                                        or tuple(pre.input_size) == tuple(size))


NO_GPU = "no GPU on this machine"


def gpu_line() -> str:
    """The CUDA GPUs torch sees, each by its card's name (``torch.cuda.get_device_name``):
    "GPU: cuda:0 NVIDIA H100 80GB HBM3"; :data:`NO_GPU` when it sees none. The line every
    benchmark prints first, so that a figure always says what it ran on."""
    if not torch.cuda.is_available():
        return NO_GPU
    return "GPU: " + ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}"
                               for i in range(torch.cuda.device_count()))


def device_label(device: str | torch.device) -> str:
    """``device`` in words: as torch writes it on the CPU ("cpu"), with the card's name on a
    GPU ("cuda:0 (NVIDIA H100 80GB HBM3)")."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return str(dev)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def default_device(device: str | torch.device | None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else CPU; anything else as given, validated."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' asked for, but torch sees no CUDA GPU; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(f"device {device!r} asked for, but torch sees "
                         f"{torch.cuda.device_count()} CUDA GPU(s): use cuda:0 … "
                         f"cuda:{torch.cuda.device_count() - 1}")
    return dev
