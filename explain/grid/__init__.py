"""Visual-similarity grid: embed images, reduce to 2-D with t-SNE, snap to a grid, draw a mosaic.

1. **Embed** each image (:mod:`explain.grid.embed`): the classifier's penultimate features, its
   probabilities for a black box, a user function or raw pixels.
2. **Reduce** to 2-D with openTSNE and 3. **snap** the points to a rows×cols grid with an optimal
   one-to-one assignment (:mod:`explain.grid.layout`).
4. **Measure** (:mod:`explain.grid.quality`): mean k-NN preservation of the layout against
   seeded random placements, and with labels the share of same-label grid neighbours.
5. **Draw** the mosaic (:mod:`explain.grid.mosaic`: square thumbnails, optional border coloured
   by score or label, legend) and write ``grid.json`` (:mod:`explain.grid.result`).

:func:`similarity_grid` (:mod:`explain.grid.build`) runs steps 1–4; :func:`draw_mosaic` draws.
Every public name is re-exported here: ``from explain.grid import X`` is the way in.
"""

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
from explain.grid.layout import TSNE_ITERATIONS, assign_to_grid, grid_cells, grid_shape, tsne_layout
from explain.grid.mosaic import (
    EMPTY_CELL,
    TAB10,
    draw_mosaic,
    label_colours,
    mosaic_bytes,
    score_colours,
)
from explain.grid.quality import (
    GridQuality,
    grid_quality,
    knn_preservation,
    label_agreement,
    nearest_neighbours,
    neighbourhood_radius,
    random_cells,
)
from explain.grid.result import GRID_JSON_VERSION, SimilarityGrid, read_grid_json

__all__ = [
    "DEFAULT_INPUT", "EMPTY_CELL", "GRID_JSON_VERSION", "MIN_IMAGES", "NO_LABEL", "PIXEL_SIDE",
    "TAB10", "TSNE_ITERATIONS",
    "Embedder", "GridProgress", "GridQuality", "ImageSource", "SimilarityGrid",
    "assign_to_grid", "check_grid_memory", "draw_mosaic", "folder_labels", "grid_bytes",
    "grid_cells", "grid_quality", "grid_shape", "knn_preservation", "label_agreement",
    "label_colours", "mosaic_bytes", "nearest_neighbours", "neighbourhood_radius",
    "random_cells", "read_grid_json", "score_colours", "similarity_grid", "thumbnail",
    "tsne_layout",
]
