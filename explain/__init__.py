
from explain.heatmap import Heatmap
from explain.render import overlay
