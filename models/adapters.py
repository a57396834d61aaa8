"""Adapters that turn every kind of model into a :class:`~explain.models.base.Classifier`.

- :class:`TorchClassifier`: an ``nn.Module`` (or a loaded TorchScript module) plus its
  :class:`~explain.models.base.Preprocess`; white-box methods use its ``module``.
- :class:`OnnxClassifier`: an ONNX file on onnxruntime (the CUDA provider on a CUDA device when
  onnxruntime offers it: the ``gpu`` extra; the provider used is its ``provider``), NCHW or
  NHWC input layout read from the graph.
- :class:`CallableClassifier`: a Python function taking a uint8 N×H×W×3 numpy batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from explain.errors import ModelError
from explain.models.base import (
    AUTOCAST_DTYPES,
    BaseClassifier,
    Preprocess,
    check_precision,
    default_device,
    onnx_providers,
    to_uint8_images,
)
from explain.models.specs import DEFAULT_PRECISION


class TorchClassifier(BaseClassifier):
    """A torch module with its preprocessing; the module runs in eval mode on ``device``.

    ``precision``: ``fp32`` (the default), or ``bf16``/``fp16``: every forward pass of the
    module (scores, features, the white-box and incremental engines, through :meth:`autocast`)
    runs under ``torch.autocast`` in that dtype. The weights stay fp32, so :meth:`fp32_predict`
    gives the fp32 answer that a map's ``params["precision_delta"]`` is measured against.
    :class:`~explain.models.base.Differentiable` (and so
    :class:`~explain.models.base.FixedInput`: its input is NCHW)."""

    layout = "NCHW"

    def __init__(self, module: nn.Module, preprocess: Preprocess, *,
                 class_names: Sequence[str] | None = None, device: str | torch.device | None = None,
                 logits: bool = False, name: str | None = None,
                 input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 sigmoid: bool = False, precision: str = DEFAULT_PRECISION) -> None:
        self.device = default_device(device)
        self.precision = check_precision(precision, self.device)
        self.module = module.to(self.device).eval()
        try:  # conv weights in channels-last order: open_nsfw's forward on 2 CPU cores runs
            # 1.5x faster (batch 16: 0.31 s against 0.47 s); the inputs need no conversion
            self.module.to(memory_format=torch.channels_last)
        except (RuntimeError, TypeError):  # a module whose tensors cannot take it stays as is
            pass
        self.preprocess = preprocess
        self.input_size = preprocess.input_size
        self.logits = logits
        self.sigmoid = sigmoid
        self.name = name or type(module).__name__
        self.input_transform = input_transform
        names = class_names or getattr(module, "class_names", None)
        self.class_names = list(names) if names is not None else None

    def model_input(self, batch: torch.Tensor) -> torch.Tensor:
        """The tensor the module sees for an RGB [0, 1] batch (on the module's device)."""
        x = batch.to(self.device, non_blocking=True)
        if self.input_transform is not None:
            x = self.input_transform(x)
        return self.preprocess(x)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context every forward pass of :attr:`module` runs in: ``torch.autocast`` in the
        classifier's precision, nothing in fp32."""
        if self.precision == DEFAULT_PRECISION:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def _scores(self, batch: torch.Tensor) -> torch.Tensor:
        inputs = self.model_input(batch)
        with self.autocast():
            return self.module(inputs)

    @torch.no_grad()
    def fp32_predict(self, batch: torch.Tensor) -> torch.Tensor:
        """``predict`` in fp32 whatever the precision: the reference of
        :func:`~explain.models.base.precision_deltas`."""
        return self._checked(self.module(self.model_input(batch)), len(batch))

    @torch.no_grad()
    def predict_input(self, inputs: torch.Tensor) -> torch.Tensor:
        """Probabilities (N×C, on the module's device) of a batch already in the module's input
        form (:meth:`model_input`'s), with the checks of ``predict``."""
        with self.autocast():
            out = self.module(inputs)
        return self._checked(out, len(inputs))

    @torch.no_grad()
    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """Penultimate features (float32 in any precision), when the module has a ``features``
        method."""
        return self._features(self.model_input(batch)).float()

    def _features(self, inputs: torch.Tensor) -> torch.Tensor:
        if not hasattr(self.module, "features"):
            raise ModelError(f"model {self.name} has no features() method")
        with self.autocast():
            return self.module.features(inputs)

    @torch.no_grad()
    def features_and_scores(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, probabilities) of ``batch``. One forward pass when the module declares
        its head (``head(features(x))`` is ``forward(x)``, as open_nsfw does); otherwise the
        features, then ``forward`` on the same inputs."""
        inputs = self.model_input(batch)
        feats = self._features(inputs)
        head = getattr(self.module, "head", None)
        with self.autocast():
            raw = head(feats) if callable(head) else self.module(inputs)
        return feats.float(), self._checked(raw, len(inputs)).to(batch.device)


def load_torchscript(path: str | os.PathLike, preprocess: Preprocess, **kwargs: object
                     ) -> TorchClassifier:
    """A TorchScript file (``.pt``/``.ts``) as a classifier."""
    device = default_device(kwargs.pop("device", None))  # type: ignore[arg-type]
    try:
        module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelError(f"cannot load TorchScript file {path}: {exc}") from exc
    return TorchClassifier(module, preprocess, device=device, name=Path(path).name,
                           **kwargs)  # type: ignore[arg-type]


class OnnxClassifier(BaseClassifier):
    """An ONNX model on onnxruntime. The first output is the scores; ``feature_output``, when
    given, names a graph output holding penultimate features.

    The graph's one input says what it takes: NCHW or NHWC layout, and any fixed dimension. A
    fixed batch is honoured (batches are cut to it, the last one padded with copies of its last
    image, whose answers are dropped); a fixed height and width is the input size when the
    preprocessing gives none (``--mean``/``--std`` alone), and a preprocessing that makes
    another size is refused at load, naming the input the graph expects.
    """

    def __init__(self, model: str | os.PathLike | bytes, preprocess: Preprocess | None = None, *,
                 class_names: Sequence[str] | None = None, device: str | torch.device | None = None,
                 logits: bool = False, name: str | None = None,
                 feature_output: str | None = None,
                 input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 sigmoid: bool = False) -> None:
        import onnxruntime as ort

        providers = onnx_providers(default_device(device))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"cannot load ONNX model {name or model!s:.200}: {exc}") from exc
        self.provider = self.session.get_providers()[0]  # what it runs on, not what was asked
        self.device = torch.device("cuda" if self.provider.startswith("CUDA") else "cpu")
        self.name = name or Path(str(model)).name
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"ONNX model {self.name} has {len(inputs)} inputs ("
                             + "; ".join(expected_input(i) for i in inputs)
                             + "); explain feeds one image tensor")
        inp = inputs[0]
        self.expects = expected_input(inp)
        shape = list(inp.shape)
        if inp.type != "tensor(float)" or len(shape) != 4:
            raise ModelError(f"ONNX model {self.name} takes {self.expects}; explain feeds "
                             "float32 images N×3×H×W or N×H×W×3")
        self.input_name = inp.name
        self.layout = "NHWC" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "NCHW"
        channels = shape[3] if self.layout == "NHWC" else shape[1]
        if isinstance(channels, int) and channels != 3:
            raise ModelError(f"ONNX model {self.name} takes {self.expects}: {channels} "
                             "channel(s); explain feeds RGB (3 channels)")
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        spatial = shape[1:3] if self.layout == "NHWC" else shape[2:4]
        static = tuple(spatial) if all(isinstance(d, int) and d > 0 for d in spatial) else None
        self.preprocess = graph_preprocess(preprocess, static, self.name, self.expects)
        self.input_size = self.preprocess.input_size
        self.logits = logits
        self.sigmoid = sigmoid
        self.input_transform = input_transform
        self.output_name = self.session.get_outputs()[0].name
        self.feature_output = feature_output
        self.class_names = list(class_names) if class_names is not None else None

    def model_input(self, batch: torch.Tensor) -> torch.Tensor:
        """The tensor the graph sees for an RGB [0, 1] batch, in its layout (:attr:`layout`)."""
        x = batch if self.input_transform is None else self.input_transform(batch)
        x = self.preprocess(x)
        return x.permute(0, 2, 3, 1) if self.layout == "NHWC" else x

    @torch.no_grad()
    def predict_input(self, inputs: torch.Tensor) -> torch.Tensor:
        """Probabilities (N×C, on the CPU) of a batch already in the graph's input form
        (:meth:`model_input`'s), with the checks of ``predict``."""
        return self._checked(self._session_run(inputs, [self.output_name])[0], len(inputs))

    def _run(self, batch: torch.Tensor, outputs: list[str]) -> list[np.ndarray]:
        return self._session_run(self.model_input(batch), outputs)

    def _session_run(self, x: torch.Tensor, outputs: list[str]) -> list[np.ndarray]:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        step = self.fixed_batch
        if step is None or len(arr) == step:
            return self._session_call(arr, outputs)
        parts = []
        for start in range(0, len(arr), step):
            chunk = arr[start:start + step]
            n = len(chunk)
            if n < step:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - n, axis=0)])
            parts.append([out[:n] for out in self._session_call(chunk, outputs)])
        return [np.concatenate([part[k] for part in parts]) for k in range(len(outputs))]

    def _session_call(self, arr: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
        try:
            return self.session.run(outputs, {self.input_name: arr})
        except Exception as exc:
            raise ModelError(f"ONNX model {self.name} failed on a batch of shape "
                             f"{arr.shape} (float32); it takes {self.expects}: {exc}") from exc

    def _scores(self, batch: torch.Tensor) -> np.ndarray:
        return self._run(batch, [self.output_name])[0]

    @torch.no_grad()
    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """The graph's feature output (``feature_output``) for ``batch``."""
        return torch.from_numpy(self._run(batch, [self._feature_name()])[0]).to(batch.device)

    @torch.no_grad()
    def features_and_scores(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, probabilities) of ``batch``: both outputs of one session run."""
        scores, feats = self._run(batch, [self.output_name, self._feature_name()])
        probs = self._checked(scores, len(batch)).to(batch.device)
        return torch.from_numpy(feats).to(batch.device), probs

    def _feature_name(self) -> str:
        if self.feature_output is None:
            raise ModelError(f"ONNX model {self.name} has no feature output")
        return self.feature_output


def expected_input(inp: object) -> str:
    """An ONNX graph input in words: name, shape (``N`` for a named dimension, ``?`` for an
    unknown one) and element type, e.g. ``input 'data' of shape [1, 3, 224, 224] (float)``."""
    dims = [d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) and d else "?")
            for d in getattr(inp, "shape", None) or []]
    kind = str(getattr(inp, "type", "?")).removeprefix("tensor(").removesuffix(")")
    return f"input {getattr(inp, 'name', '?')!r} of shape [{', '.join(map(str, dims))}] ({kind})"


def graph_preprocess(preprocess: Preprocess | None, static: tuple[int, int] | None, name: str,
                     expects: str) -> Preprocess:
    """The preprocessing of a graph whose fixed height and width are ``static`` (None: free):
    ``preprocess`` with that input size when it gives none (nor a crop), refused when what it
    makes has another size."""
    pre = preprocess or Preprocess(input_size=static)
    if static is None:
        return pre
    if pre.input_size is None and pre.crop is None:
        pre = dataclasses.replace(pre, input_size=static)
    made = tuple(pre.crop or pre.input_size)  # type: ignore[arg-type]
    if made != tuple(static):
        fix = (f"give --input-size {static[0]} or leave it out" if static[0] == static[1]
               else "leave --input-size out")
        raise ModelError(f"ONNX model {name} takes {expects}, but its preprocessing makes "
                         f"inputs of {made[0]}×{made[1]}: {fix}")
    return pre


def raised(exc: BaseException) -> str:
    """What a user's code did, in words: ``raised ValueError: …`` or ``called sys.exit(3)``."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    return f"raised {type(exc).__name__}: {exc}"


def import_callable(spec: str) -> Callable[..., object]:
    """``package.module:function`` or ``path/to/file.py:function`` → the function."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ModelError(f"python model spec {spec!r} must look like package.module:function")
    try:
        if target.endswith(".py"):
            file = Path(target)
            if not file.is_file():
                raise ModelError(f"python file {target} not found")
            module_spec = importlib.util.spec_from_file_location(file.stem, file)
            module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(target)
    except ModelError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit too: a user's module must not end the program
        raise ModelError(f"cannot import {target!r} for model {spec!r}: "
                         f"{raised(exc)}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ModelError(f"{target} has no callable named {attr!r}")
    return fn


class CallableClassifier(BaseClassifier):
    """A Python function ``f(uint8 N×H×W×3 RGB numpy) -> N×C scores``.

    Class names come from ``class_names=``, else the function's ``class_names`` attribute, else
    they are the indices "0".."C-1" learnt from one probe call.
    """

    def __init__(self, fn: Callable[[np.ndarray], object], *,
                 class_names: Sequence[str] | None = None, logits: bool = False,
                 name: str | None = None, input_size: tuple[int, int] | None = None,
                 sigmoid: bool = False) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callable")
        self.device = torch.device("cpu")
        self.input_size = input_size
        self.logits = logits
        self.sigmoid = sigmoid
        names = class_names or getattr(fn, "class_names", None)
        self.class_names = list(names) if names is not None else None

    def _scores(self, batch: torch.Tensor) -> object:
        try:
            return self.fn(to_uint8_images(self.at_input_size(batch)))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit too: a model must not end the program
            raise ModelError(f"model {self.name} {raised(exc)}") from exc
