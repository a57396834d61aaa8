
from explain.heatmap import Heatmap
from explain.occlusion import occlusion_map
from explain.render import overlay
from explain.sliding import sliding_window_map
from explain.grid import GridQuality, SimilarityGrid, draw_mosaic, read_grid_json, similarity_grid
