"""Visual-similarity grid: embed images, reduce to 2-D with t-SNE, snap to a grid, draw a mosaic.

1. **Embed** each image (:mod:`explain.grid.embed`): the classifier's penultimate features, its
   probabilities for a black box, a user function or raw pixels.
2. **Lay out** (:mod:`explain.grid.arrange`): t-SNE to 2-D snapped to a rows×cols grid by an
   optimal dense assignment (:mod:`explain.grid.layout`) or a windowed one, FLAS on the
   features, a local polish (:mod:`explain.grid.sorting`), swaps that optimise DPQ16's own
   objective (:mod:`explain.grid.swaps`); ``auto`` keeps the best by DPQ16.
4. **Measure** (:mod:`explain.grid.quality`): DPQ16, the field's measure, and the mean k-NN
   preservation of the layout against seeded random placements, with labels the share of
   same-label grid neighbours.
5. **Draw** the mosaic (:mod:`explain.grid.mosaic`: square thumbnails, optional border coloured
   by score or label, legend), write ``grid.json`` (:mod:`explain.grid.result`) and the tiled
   pyramid with its pan/zoom page ``grid.html`` (:mod:`explain.grid.tiles`).

:func:`similarity_grid` (:mod:`explain.grid.build`) runs steps 1–4; :func:`draw_mosaic` draws.
Every public name is re-exported here: ``from explain.grid import X`` is the way in.
"""

from explain.grid.arrange import JV_MAX, Arranged, arrange, candidates
from explain.grid.build import (
    MIN_IMAGES,
    GridProgress,
    check_grid_memory,
    grid_bytes,
    similarity_grid,
)
from explain.grid.embed import (
    DEFAULT_INPUT,
    NO_LABEL,
    PIXEL_SIDE,
    Embedder,
    ImageSource,
    folder_labels,
    thumbnail,
)
from explain.grid.layout import (
    TSNE_ITERATIONS,
    assign_to_grid,
    grid_cells,
    grid_shape,
    scaled_points,
    tsne_layout,
)
from explain.grid.mosaic import (
    EMPTY_CELL,
    TAB10,
    draw_mosaic,
    label_colours,
    mosaic_bytes,
    score_colours,
)
from explain.grid.quality import (
    DPQ_P,
    GridQuality,
    dpq_and_neighbours,
    dpq_bytes,
    dpq_scores,
    grid_quality,
    knn_preservation,
    label_agreement,
    nearest_neighbours,
    neighbourhood_radius,
    random_cells,
)
from explain.grid.result import GRID_JSON_VERSION, SimilarityGrid, read_grid_json
from explain.grid.sorting import (
    LAYOUT_DIMS,
    flas_layout,
    polish_layout,
    principal_components,
    snap_to_grid,
)
from explain.grid.swaps import SWAP_MAX, swap_bytes, swap_polish
from explain.grid.tiles import (
    PNG_MAX_PX,
    TILE_PX,
    fits_png,
    pyramid_levels,
    pyramid_tiles,
    tiles_folder,
    write_grid,
    write_pyramid,
    write_viewer,
)

__all__ = [
    "DEFAULT_INPUT", "DPQ_P", "EMPTY_CELL", "GRID_JSON_VERSION", "JV_MAX", "LAYOUT_DIMS",
    "MIN_IMAGES",
    "NO_LABEL", "PIXEL_SIDE", "PNG_MAX_PX", "SWAP_MAX", "TAB10", "TILE_PX", "TSNE_ITERATIONS",
    "Arranged", "Embedder", "GridProgress", "GridQuality", "ImageSource", "SimilarityGrid",
    "arrange", "assign_to_grid", "candidates", "check_grid_memory", "dpq_and_neighbours",
    "dpq_bytes", "dpq_scores",
    "draw_mosaic", "fits_png", "flas_layout", "folder_labels", "grid_bytes", "grid_cells",
    "grid_quality", "grid_shape", "knn_preservation", "label_agreement", "label_colours",
    "mosaic_bytes", "nearest_neighbours", "neighbourhood_radius", "polish_layout",
    "principal_components", "pyramid_levels", "pyramid_tiles", "random_cells", "read_grid_json",
    "scaled_points", "score_colours", "similarity_grid", "snap_to_grid", "swap_bytes",
    "swap_polish", "thumbnail", "tiles_folder",
    "tsne_layout", "write_grid", "write_pyramid", "write_viewer",
]
