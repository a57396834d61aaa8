"""The black-box engine: every perturbation method is a copy builder over one scoring loop.

- :mod:`~explain.perturbation.work` — the plan of the work image (original → work size → model
  input, and the part of the original the model sees);
- :class:`~explain.windows.WindowPlan` — the window plan: box and stride validated once, the
  grid of windows of any image;
- :mod:`~explain.perturbation.loop` — the scoring loop: copies built batch by batch, one model
  call per batch, progress and cancellation, several builders in one call.

The builders live beside their methods (occlusion's windows, sliding's crops, RISE's and the
audit's masks, faithfulness's steps); see ARCHITECTURE.md.
"""

from explain.perturbation.loop import (
    Batch,
    Buffers,
    Cancel,
    Cancelled,
    Copies,
    Images,
    Part,
    build_parts,
    probabilities,
    score_all,
    score_built,
    score_parts,
    scored,
)
from explain.perturbation.work import WorkImage, at_size, scale_windows, work_image, work_size
from explain.windows import WindowPlan

__all__ = ["Batch", "Buffers", "Cancel", "Cancelled", "Copies", "Images", "Part", "WindowPlan",
           "WorkImage", "at_size", "build_parts", "probabilities", "scale_windows", "score_all",
           "score_built", "score_parts", "scored", "work_image", "work_size"]
