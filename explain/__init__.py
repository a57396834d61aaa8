
from explain.backprop import deconvnet, guided_backprop, layers
from explain.faithfulness import faithfulness
from explain.gradcam import gradcam
from explain.heatmap import Heatmap
from explain.reconstruction import Reconstruction
from explain.occlusion import occlusion_map
from explain.render import overlay
from explain.sliding import sliding_window_map
from explain.grid import GridQuality, SimilarityGrid, draw_mosaic, read_grid_json, similarity_grid
from explain.report import build_report, render_html, report_json, write_report
from explain.audit import AuditOptions, AuditResult, NudeNetDetector, audit
