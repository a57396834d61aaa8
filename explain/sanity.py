"""The model-randomisation sanity check (Adebayo et al. 2018, "Sanity checks for saliency maps"):
does a method's map depend on the model at all?

The top layers of a torch model are re-initialised in cascade, on a deep copy (the model given is
never touched): step k re-initialises the k last layers that hold parameters (in the order the
module registers them, which is the forward order for sequential networks such as open_nsfw),
k = 1..n, each with the layer's own ``reset_parameters`` (a normal draw scaled to the parameter's
spread when it has none) under a fixed seed, so the check repeats exactly. At each step each
method's map is computed again and compared with the original by Spearman's rank correlation
over the pixels. A method whose map still correlates ≥ :data:`SANITY_THRESHOLD` with the
original once the n top layers are random is *flagged*: its map shows the image more than the
model (guided backprop is the classic case, an edge detector in disguise).

A model that is not a torch module (ONNX, HTTP, a Python function) cannot be randomised: its
methods are *not checked*, with that reason; never a pass.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from explain.choices import SANITY_LAYERS, SANITY_THRESHOLD
from explain.errors import OptionError
from explain.heatmap import Heatmap
from explain.models.adapters import TorchClassifier
from explain.models.base import model_name

SANITY_SEED = 0


@dataclass
class Sanity:
    """One method's check on one image: the ``layers`` re-initialised (top first, cumulative)
    and the Spearman ``correlations`` of the map with the original after each step (None where
    a map is constant: no order to compare); ``flagged`` when the last is ≥ the threshold;
    ``checked`` False with the reason in ``note`` when the model cannot be randomised."""

    checked: bool
    layers: list[str] = field(default_factory=list)
    correlations: list[float | None] = field(default_factory=list)
    flagged: bool = False
    note: str = ""

    def as_dict(self) -> dict:
        """JSON-ready: checked, flagged, threshold, layers, correlations, note."""
        return {"checked": self.checked, "flagged": self.flagged,
                "threshold": SANITY_THRESHOLD, "layers": self.layers,
                "correlations": self.correlations, "note": self.note}


def check_layers(layers: int) -> int:
    """``layers`` when it is at least 1, else an OptionError."""
    if layers < 1:
        raise OptionError(f"--sanity-layers must be at least 1, got {layers}")
    return layers


def randomisable(model: object) -> str | None:
    """None when ``model`` can be randomised (an eager torch module), else the reason it
    cannot, for the page."""
    if isinstance(model, TorchClassifier) and not isinstance(model.module, torch.jit.ScriptModule):
        return None
    return (f"model {model_name(model)} is a black box ({type(model).__name__}) whose weights "
            "cannot be randomised: this map cannot be sanity-checked")


def top_layers(module: nn.Module, n: int) -> list[str]:
    """Names of the ``n`` last modules that hold parameters of their own, last first."""
    named = [name for name, m in module.named_modules()
             if name and any(True for _ in m.parameters(recurse=False))]
    return named[::-1][:n]


def cascade(model: TorchClassifier, n: int, seed: int = SANITY_SEED
            ) -> Iterator[tuple[str, TorchClassifier]]:
    """(layer name, the model with it and every layer above it re-initialised) for the ``n``
    top layers, top first, on one deep copy of ``model`` (see the module docstring)."""
    randomised = copy.deepcopy(model)
    for k, name in enumerate(top_layers(randomised.module, n)):
        layer = randomised.module.get_submodule(name)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed + k)
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
            else:
                for p in layer.parameters(recurse=False):
                    p.copy_(torch.randn_like(p) * (float(p.std()) if p.numel() > 1 else 1.0))
        yield name, randomised


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation of two maps over their pixels; None when either is
    constant."""
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def sanity_checks(maps: dict[str, Heatmap], model_of: Callable[[str], object],
                  run: Callable[[str, object], Heatmap], *, layers: int = SANITY_LAYERS,
                  seed: int = SANITY_SEED) -> dict[str, Sanity]:
    """Check every method of ``maps`` (name → its original map): ``model_of(name)`` is the
    model the method ran on, ``run(name, model)`` computes its map again on another model.
    Methods that ran on the same model share one cascade. A constant original map is not
    checked; a randomised map that is constant has lost every order (correlation None), which
    is no flag."""
    check_layers(layers)
    out: dict[str, Sanity] = {}
    groups: dict[int, list[str]] = {}
    for name in maps:
        model = model_of(name)
        reason = randomisable(model)
        if reason is not None:
            out[name] = Sanity(False, note=reason)
        elif np.ptp(maps[name].values) == 0:
            out[name] = Sanity(False, note="the map is constant: it orders no pixel before "
                               "another, so there is nothing to compare with a randomised "
                               "model's map")
        else:
            groups.setdefault(id(model), []).append(name)
    for names in groups.values():
        for name in names:
            out[name] = Sanity(True)
        for layer, randomised in cascade(model_of(names[0]), layers, seed):  # type: ignore[arg-type]
            for name in names:
                out[name].layers.append(layer)
                out[name].correlations.append(
                    rank_correlation(maps[name].values, run(name, randomised).values))
        for name in names:
            s = out[name]
            last = s.correlations[-1] if s.correlations else None
            s.flagged = last is not None and last >= SANITY_THRESHOLD
            s.note = _verdict(s)
    return out


def _verdict(s: Sanity) -> str:
    """The sentence the page shows under a checked map."""
    if not s.layers:
        return "the model has no layer with parameters to randomise"
    shown = ", ".join("none (the map became constant)" if c is None else f"{c:.2f}"
                      for c in s.correlations)
    steps = ", ".join(str(k) for k in range(1, len(s.layers) + 1))
    head = (f"Spearman rank correlation with this map after re-initialising the top {steps} "
            f"layers in turn: {shown}")
    if s.flagged:
        return (f"{head}. FLAGGED: the map still correlates ≥ {SANITY_THRESHOLD} with the "
                "original once the top layers are random, so it shows the image more than what "
                "the model learned")
    return f"{head}: the map depends on the model's weights (passes)"
