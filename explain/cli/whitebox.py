"""`explain deconv`, `explain guided`, `explain gradcam`, `explain layers`: white-box pictures.

Per image NAME in the output folder (the file's stem, made unique within the call by
:func:`explain.files.output_names`; see the README, "Output files"):

- deconv / guided: ``NAME.deconv.png`` (the Zeiler-style reconstruction: grey = zero, with a
  grey legend strip of its ±robust max),
  ``NAME.deconv.overlay.png`` (its magnitude on the photo, with the legend strip of
  :func:`explain.render.figure` below unless ``--no-legend``), ``NAME.deconv.json`` (metadata:
  score, layer, neuron position and activation, what the values mean: signed, unit, the
  picture's scale; the overlay's drawn scale and reading, :func:`explain.render.described`);
  ``guided`` writes ``NAME.guided.*``.
- gradcam: ``NAME.gradcam.png`` (overlay with legend) and ``NAME.gradcam.json`` (the map's
  metadata with its unit, raw signal and no-signal note, plus ``drawn`` and ``reading``);
  ``--guided`` writes ``NAME.guided-gradcam.*``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from explain.choices import WHITE_BOX_BATCH, WHITE_BOX_MODEL
from explain.cli.common import (
    EXIT_BAD_INPUT,
    AlphaOpt,
    BatchOpt,
    ColormapOpt,
    ImageOutDirOpt,
    Images,
    ModelOptions,
    NoLegendOpt,
    NormalizeOpt,
    TargetOpt,
    VmaxOpt,
    VminOpt,
    console,
    error_line,
    file_error,
    gather_images,
    output_stems,
    result_line,
    user_errors,
    with_method_options,
    with_model_options,
)
from explain.errors import ExplainError
from explain.files import display, to_storable
from explain.methods import METHODS

if TYPE_CHECKING:
    import numpy as np

    from explain.heatmap import Heatmap
    from explain.reconstruction import Reconstruction


def _note(heatmap: Heatmap) -> str:
    """The result line's ending for a map below its noise floor: ``"  (no signal: …)"``."""
    note = heatmap.no_signal()
    return f"  ({note})" if note else ""


def _run(paths: list[Path], stems: list[Path], failed: int, batch_size: int | None,
         explain_chunk: Callable[[list[np.ndarray]], list], write: Callable) -> None:
    """Explain the images through :func:`explain.whitebox.explain_files` and write each result
    under its stem; unreadable ones, and those the model fails on, are reported by name and
    skipped, and make the exit code 2 at the end."""
    from explain.whitebox import explain_files

    for k, img, result in explain_files(paths, explain_chunk, batch_size or WHITE_BOX_BATCH):
        if isinstance(result, ExplainError):
            error_line(file_error(paths[k], result))
            failed += 1
        else:
            write(paths[k], stems[k], img, result)
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT)


def _reconstruction_command(method: str, suffix: str, doc: str) -> Callable:
    """The `explain deconv` / `explain guided` command for a :func:`explain.backprop.reconstruct`
    ``method`` (``suffix``: its registry name)."""

    @user_errors
    @with_model_options(WHITE_BOX_MODEL)
    @with_method_options(METHODS[suffix].options)
    def command(images: Images, models: ModelOptions, settings: dict | None = None,
                target: TargetOpt = "nsfw",
                output: ImageOutDirOpt = Path("."), batch_size: BatchOpt = None,
                colormap: ColormapOpt = None, alpha: AlphaOpt = 0.5,
                normalize: NormalizeOpt = None, vmin: VminOpt = None, vmax: VmaxOpt = None,
                no_legend: NoLegendOpt = False) -> None:
        from explain.backprop import reconstruct
        from explain.outputs import record, write_map
        from explain.render import check_look, figure

        check_look(colormap, normalize, vmin, vmax)
        drawing = dict(colormap=colormap, normalize=normalize or "percentile", vmin=vmin,
                       vmax=vmax)
        look = dict(drawing, alpha=alpha, legend=not no_legend)
        paths, failed = gather_images(images)
        stems = output_stems(paths, output, suffix, [".png", ".overlay.png", ".json"])
        clf = models.load()

        def explain_chunk(chunk: list[np.ndarray]) -> list:
            return reconstruct(method, clf, chunk, target=target, **settings,
                               batch_size=batch_size or WHITE_BOX_BATCH)

        def write(path: Path, stem: Path, img: np.ndarray, rec: Reconstruction) -> None:
            written = write_map(stem, pictures={
                ".png": rec.picture(legend=not no_legend),
                ".overlay.png": figure(img, rec.magnitude, **look)},
                extra={"image": to_storable(path), **rec.metadata(),
                       "overlay": record(rec.magnitude, drawing)})
            where = f", {rec.layer}{list(rec.neuron or ())} = {rec.activation:.4g}" \
                if rec.layer else ""
            result_line(f"{display(path)}: {rec.target} {rec.score:.4f}{where} -> "
                        f"{', '.join(map(display, written))}" + _note(rec.magnitude))

        _run(paths, stems, failed, batch_size, explain_chunk, write)

    command.__doc__ = doc
    command.__name__ = suffix
    return command


deconv = _reconstruction_command(
    "deconvnet", "deconv", "Deconvnet reconstruction (Zeiler & Fergus) of the target class or of "
    "one neuron.")
guided = _reconstruction_command(
    "guided_backprop", "guided", "Guided backprop (Springenberg et al.) of the target class or of "
    "one neuron.")


@user_errors
@with_model_options(WHITE_BOX_MODEL)
@with_method_options(METHODS["gradcam"].options)
def gradcam(images: Images, models: ModelOptions, settings: dict | None = None,
            target: TargetOpt = "nsfw", output: ImageOutDirOpt = Path("."),
            batch_size: BatchOpt = None, colormap: ColormapOpt = None, alpha: AlphaOpt = 0.5,
            normalize: NormalizeOpt = None, vmin: VminOpt = None, vmax: VmaxOpt = None,
            no_legend: NoLegendOpt = False) -> None:
    """Grad-CAM (or guided Grad-CAM) heatmap of the target class, on the photo."""
    from explain.grad_cam import gradcam as gradcam_maps
    from explain.outputs import record, write_map
    from explain.render import check_look, figure

    check_look(colormap, normalize, vmin, vmax)
    guided = settings["guided"]
    drawing = dict(colormap=colormap, vmin=vmin, vmax=vmax,
                   normalize=normalize or ("percentile" if guided else "minmax"))
    look = dict(drawing, alpha=alpha, legend=not no_legend)
    suffix = "guided-gradcam" if guided else "gradcam"
    paths, failed = gather_images(images)
    stems = output_stems(paths, output, suffix, [".png", ".json"])
    clf = models.load()

    def explain_chunk(chunk: list[np.ndarray]) -> list:
        return gradcam_maps(clf, chunk, target=target, **settings,
                            batch_size=batch_size or WHITE_BOX_BATCH)

    def write(path: Path, stem: Path, img: np.ndarray, heatmap: Heatmap) -> None:
        written = write_map(stem, heatmap, pictures={".png": figure(img, heatmap, **look)},
                            extra=record(heatmap, drawing, image=path))
        result_line(f"{display(path)}: {heatmap.target} {heatmap.score:.4f}, layer "
                    f"{heatmap.params['layer']} -> {', '.join(map(display, written))}"
                    + _note(heatmap))

    _run(paths, stems, failed, batch_size, explain_chunk, write)


@user_errors
@with_model_options(WHITE_BOX_MODEL)
def layers_command(models: ModelOptions) -> None:
    """List a torch model's layer names and output shapes (for --layer)."""
    from explain.backprop import layers

    clf = models.load()
    table = Table(title=f"{escape(display(clf.name))}: layers (output per image)")
    table.add_column("layer")
    table.add_column("type")
    table.add_column("output shape")
    for name, kind, shape in layers(clf):
        table.add_row(escape(name), escape(kind), "×".join(map(str, shape)) if shape else "-")
    console.print(table)
