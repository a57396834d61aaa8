"""``Heatmap``: a per-pixel map in ORIGINAL image coordinates plus how it was made and what its
values mean.

What a value means is part of the map, set by the method that made it, so that the renderer can
draw it without overstating it:

- ``signed``: the sign carries meaning (occlusion: a positive drop supports the target, a negative
  one works against it); drawn on a diverging colormap centred on 0.
- ``unit``: what one unit of value is, named on the colour bar ("drop in p(nsfw)",
  "p(nsfw) of the crop alone", "relevance (a.u.)").
- ``bounds``: the values' natural range when there is one (a probability: (0, 1)); drawn on it
  rather than stretched over the map's own min..max.
- ``noise_floor``: the signal below which the map says nothing: :data:`NOISE_FLOOR` for maps in
  probability units, :data:`WHITE_BOX_FLOOR` for white-box maps (derivatives of the model's
  output); :meth:`Heatmap.no_signal` names a map that stays under it. The signal (its raw,
  unnormalised magnitude, :attr:`Heatmap.signal`) is saved with the map.
Two ``params`` say what the values are measured against and where they mean anything:

- ``baseline_score`` (with ``baseline``, what was scored): p(target) of the image with
  everything hidden (occlusion: the whole image filled; sliding: a blank crop). Occlusion drops
  are measured against it: :meth:`Heatmap.baseline_note` warns when it is not below the image's
  own score (the drops then measure the fill, not the image).
- ``model_view``: ``[top, left, bottom, right)`` in the original image's pixels (those of the
  values, or of ``params["original_shape"]`` for a map shrunk for display), the part of the
  image the model sees (:func:`~explain.models.base.model_view`); outside it the map means
  nothing, and pictures hatch it.

A map of a torch model run in bf16 or fp16 (``precision=``) records ``params["precision"]`` and
``params["precision_delta"]``, the largest |Δp| of the image's probabilities against fp32;
:meth:`Heatmap.precision_note` says it wherever the map's notes are shown. An fp32 map records
neither.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from explain.files import atomic_write, write_json

NOISE_FLOOR = 0.01
"""One percentage point of probability: a black-box map whose signal (largest |value| of a signed
map, max − min of an unsigned one) stays below it is called "no signal". Score changes this
small are below what any moderation threshold acts on and of the order of what re-encoding or
resampling the same image moves the score by; the map's pattern is then noise."""

WHITE_BOX_FLOOR = 1e-6
"""The floor of white-box maps (deconvnet, guided backprop, Grad-CAM), whose values are in units
of the explained output, the target's logit (or probability), per unit of input on the [0, 1]
scale (per cell of the layer for Grad-CAM). float32 resolves an output of magnitude |z| to
|z| · 2^-23; for the logits of any confident score (|z| <= 8, p within 0.9997 of 0 or 1) that is
<= 1e-6. A map whose largest value stays below it moves the output, through any one input value
or cell, by less than float32 can show: it is rounding noise, what a model that ignores its
input gives (its gradients are then exactly 0). Real maps are far above it: open_nsfw's maps of
eight scikit-image photos, both classes, have largest values >= 0.034 (guided backprop), >= 0.094
(Grad-CAM, before its ReLU), >= 2.4 (deconvnet), 3·10^4 times the floor and more
(``scripts/whitebox_signal.py``; ``tests/test_whitebox_signal.py`` checks three of them)."""

RELEVANCE = "relevance (a.u.)"


@dataclass
class Heatmap:
    """``values`` is float32 (H, W) aligned with the original image; the rest is metadata.

    ``score`` is the unperturbed probability of ``target``; ``box``/``stride``/``windows`` are set
    by window methods (in original pixels), ``params`` holds anything else a method wants to
    record. ``signed``, ``unit``, ``bounds``, ``noise_floor`` (and ``raw_signal``, see
    :attr:`signal`) say what the values mean (see the module docstring); the defaults describe an
    unsigned map in arbitrary units.
    """

    values: np.ndarray
    method: str
    target: str
    score: float | None = None
    box: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    windows: int | None = None
    seconds: float | None = None
    params: dict = field(default_factory=dict)
    signed: bool = False
    unit: str = RELEVANCE
    bounds: tuple[float, float] | None = None
    noise_floor: float | None = None
    raw_signal: float | None = None

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float32)

    @property
    def signal(self) -> float:
        """How much the map says, on its raw (unnormalised) values: the largest |value| of a map
        whose 0 means "no effect" (signed maps, white-box maps: any map without ``bounds``),
        max − min of a map on a natural range (a probability), whose level alone says nothing;
        ``raw_signal`` when the method measured it before a last step (Grad-CAM's ReLU)."""
        if self.raw_signal is not None:
            return self.raw_signal
        if self.values.size:
            top, bottom = self.values.max(), self.values.min()
            if np.isfinite(top) and np.isfinite(bottom):  # no NaN, no inf: read off the two
                return float(max(abs(top), abs(bottom)) if self.bounds is None else top - bottom)
        finite = self.values[np.isfinite(self.values)]
        if finite.size == 0:
            return 0.0
        if self.bounds is None:
            return float(np.abs(finite).max())
        return float(finite.max() - finite.min())

    def no_signal(self) -> str | None:
        """``"no signal: …"`` when the map's signal is below its noise floor, else ``None``."""
        if self.noise_floor is None or self.signal >= self.noise_floor:
            return None
        if self.bounds is not None:
            return f"no signal: {self.unit} spans {self.signal:.2g} < {self.noise_floor:g}"
        return f"no signal: largest |{self.unit}| {self.signal:.2g} < {self.noise_floor:g}"

    def baseline_text(self) -> str | None:
        """``"<baseline>: p(<target>) = <score>"`` when the map records its baseline."""
        value = self.params.get("baseline_score")
        if value is None:
            return None
        return f"{self.params.get('baseline', 'baseline')}: p({self.target}) = {value:.3g}"

    def baseline_note(self) -> str | None:
        """A warning when a signed map's baseline (the fill's own score) is not below the
        image's score: every drop is then measured against a fill the model scores at least as
        high as the image, so the map measures the fill, not the image."""
        value = self.params.get("baseline_score")
        if not self.signed or value is None or self.score is None or value < self.score:
            return None
        hint = "" if self.params.get("fill_asked") == "auto" else " (try fill auto)"
        return (f"baseline {value:.3g} >= image's p({self.target}) {self.score:.3g}: "
                f"the drops measure the fill{hint}")

    def precision_note(self) -> str | None:
        """``"bf16: the intact image's p differs from fp32 by up to …"`` for a map computed in a
        precision below fp32 (see the module docstring), else ``None``."""
        delta = self.params.get("precision_delta")
        if delta is None:
            return None
        return (f"{self.params.get('precision')}: the intact image's p differs from fp32 by up "
                f"to {delta:.2g}; the perturbed copies were not checked and may differ more")

    def notes(self) -> list[str]:
        """The map's warnings, in order: no signal, a baseline not below the image's score, a
        precision below fp32."""
        return [n for n in (self.no_signal(), self.baseline_note(), self.precision_note()) if n]

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape  # type: ignore[return-value]

    def metadata(self) -> dict:
        meta = asdict(self)
        del meta["values"]
        meta["shape"] = list(self.shape)
        meta["min"], meta["max"] = float(self.values.min()), float(self.values.max())
        meta["signal"], meta["no_signal"] = self.signal, self.no_signal()
        meta["warnings"] = self.notes()
        return meta

    def save(self, stem: str | Path, extra: dict | None = None, *, values: bool = True
             ) -> tuple[Path, ...]:
        """Write ``<stem>.npy`` (values; not with ``values=False``) and ``<stem>.json``
        (metadata, plus ``extra``: e.g. how a picture of it was drawn), each atomically; return
        the paths. A surface writes a map's files through :func:`explain.outputs.write_map`."""
        stem = Path(stem)
        npy, meta = stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".json")
        if values:
            with atomic_write(npy) as f:
                np.save(f, self.values)
        write_json(meta, {**self.metadata(), **(extra or {})})
        return (npy, meta) if values else (meta,)

    @classmethod
    def load(cls, stem: str | Path) -> Heatmap:
        """The map :meth:`save` wrote (what it derived or was given as ``extra`` is dropped)."""
        stem = Path(stem)
        meta = json.loads(stem.with_name(stem.name + ".json").read_text())
        meta = {key: value for key, value in meta.items() if key in _FIELDS}
        for key in ("box", "stride", "bounds"):
            if meta.get(key) is not None:
                meta[key] = tuple(meta[key])
        return cls(values=np.load(stem.with_name(stem.name + ".npy")), **meta)


_FIELDS = frozenset(f.name for f in fields(Heatmap)) - {"values"}
