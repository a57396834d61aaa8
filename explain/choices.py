"""The values the library's options take: fixed choices and shared defaults.

Their one home, in a module that imports nothing heavy, so that the command line can list them in
``--help`` without loading torch. The modules that use them import them from here; the
built-in models' table lives with the models (:mod:`explain.models.specs`), as light.
"""

from __future__ import annotations

# the default models (black-box: the fastest backend; white-box: the torch port) are the
# options' defaults too; their home is the model table
from explain.models.specs import BLACK_BOX_MODEL as BLACK_BOX_MODEL
from explain.models.specs import DEFAULT_PRECISION as DEFAULT_PRECISION
from explain.models.specs import PRECISIONS as PRECISIONS
from explain.models.specs import WHITE_BOX_MODEL as WHITE_BOX_MODEL

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
