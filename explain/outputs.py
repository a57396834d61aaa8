"""The one result writer: the files of an explained image, whichever surface computed it (the
CLI's commands, clips, the audit's heatmaps, the service's jobs).

One layout, next to a ``STEM`` the surface names (``folder/NAME.METHOD`` in the CLI,
``heatmaps/KIND_ID`` in the audit, ``JOB/heatmap`` in the service), written in this order:

- ``STEM.gif``: an animation (a clip's overlays, :func:`explain.render_clip.save_gif`);
- ``STEM`` + suffix: each picture (PNG: ``.png``, ``.side.png``, ``.overlay.png``,
  ``.timeline.png``, ``.frameINDEX.png``);
- ``STEM.npy``: the map's values (float32, (H, W));
- ``STEM.json``: its record, one shape: the map's metadata (:meth:`Heatmap.metadata
  <explain.heatmap.Heatmap.metadata>`: method, target, score, signed, unit, bounds, params, …)
  plus what :func:`record` adds: ``image`` (the input explained, when the surface knows its
  path), ``drawn`` and ``reading`` (the scale its pictures are drawn on and what their colours
  mean, :func:`explain.render.described`). :meth:`Heatmap.load <explain.heatmap.Heatmap.load>`
  reads ``.npy`` + ``.json`` back. A deconvnet/guided reconstruction has a record of its own
  (:meth:`explain.reconstruction.Reconstruction.metadata` with ``image`` and ``overlay``),
  written here all the same.

Every file is written atomically (:mod:`explain.files`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from explain.files import to_storable, write_json
from explain.heatmap import Heatmap
from explain.render import described, save_png, scale
from explain.render_clip import save_gif


def record(heatmap: Heatmap, drawing: Mapping[str, object] | None = None, *,
           image: str | os.PathLike | None = None) -> dict:
    """What a map's record adds to its metadata: ``image`` (when given) and how its pictures
    are drawn with ``drawing`` (colormap, normalize, vmin, vmax; default: the map's own
    scale)."""
    given = {} if image is None else {"image": to_storable(image)}
    return {**given, **described(heatmap, scale(heatmap, **(drawing or {})))}


def write_map(stem: str | os.PathLike, heatmap: Heatmap | None = None, *,
              pictures: Mapping[str, np.ndarray] | None = None,
              animation: tuple[Sequence[np.ndarray], Sequence[float]] | None = None,
              values: bool = False, extra: Mapping[str, object] | None = None,
              json: bool = True) -> list[Path]:
    """Write the files of one explained image next to ``stem`` (the layout of the module
    docstring) and return their paths, in that order: ``animation`` (its pictures and each
    one's seconds) as ``STEM.gif``, each of ``pictures`` as ``STEM`` + its suffix, with
    ``values`` the map's ``STEM.npy``, and (unless ``json=False``) ``STEM.json``: the map's
    metadata and ``extra`` (:func:`record`), or ``extra`` alone without a map."""
    written = []
    if animation is not None:
        written.append(save_gif(animation[0], animation[1], f"{stem}.gif"))
    written += [save_png(picture, f"{stem}{suffix}") for suffix, picture in
                (pictures or {}).items()]
    if heatmap is not None and (values or json):
        written += heatmap.save(stem, dict(extra or {}), values=values)
    elif json and extra is not None:
        written.append(write_json(f"{stem}.json", dict(extra)))
    return written
