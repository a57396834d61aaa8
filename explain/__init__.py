
from explain.heatmap import Heatmap
from explain.render import overlay
from explain.grid import GridQuality, SimilarityGrid, draw_mosaic, read_grid_json, similarity_grid
