"""Benchmark clips on open_nsfw: decoding, scoring, and occlusion maps with and without reuse.

Two synthetic 10-second clips at 10 frames/s, 224×224 (open_nsfw's input size, so no resize
hides anything), written losslessly (FFV1 in MKV) and read back through ``read_clip``:

- ``static``: a photo as a static background and one textured 40×40 object moving across it;
- ``panning``: the same photo panning 2 px a frame, so that every pixel changes every frame.

Prints, per clip: decoding frames/s (``read_clip``, every frame); scoring frames/s
(``score_clip``) beside raw ``predict`` on the same frames at the same batch size (its limit);
then, on the frames sampled at ``--fps`` (default 2: 20 frames), occlusion and sliding-window
maps per second for the peer (``occlusion_map`` / ``sliding_window_map`` on each frame: the
single-image path at its default, best batch size), for ``occlusion_maps`` / ``sliding_maps``
without reuse, and with region reuse (threshold 0), with the windows re-scored and how far the
reused maps are from the recomputed ones (exact for sliding windows; for occlusion a kept drop
is an approximation on open_nsfw, see explain.frame_reuse). Prints the load average beside the
figures.

    python scripts/bench_video.py [--box 48] [--stride 24] [--fps 2] [--model open-nsfw:auto]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from explain.clips import score_clip
from explain.frame_reuse import occlusion_maps, sliding_maps
from explain.frames import read_clip
from explain.images import load_image, to_batch
from explain.models import load
from explain.occlusion import occlusion_map
from explain.sliding import sliding_window_map

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "astronaut.jpg"
SIDE, FPS, SECONDS, OBJECT = 224, 10, 10, 40


def make_clips(folder: Path) -> dict[str, Path]:
    """The two clips (see the module docstring), as lossless MKV files in ``folder``."""
    photo = cv2.resize(load_image(SAMPLE), (SIDE + 2 * FPS * SECONDS, SIDE),
                       interpolation=cv2.INTER_AREA)
    patch = cv2.resize(load_image(SAMPLE)[180:260, 200:280], (OBJECT, OBJECT))
    n = FPS * SECONDS
    static, panning = [], []
    for k in range(n):
        frame = photo[:, :SIDE].copy()
        x = int(round(k * (SIDE - OBJECT) / (n - 1)))
        y = int(round((SIDE - OBJECT) / 2 + 60 * np.sin(k / 8)))
        frame[y:y + OBJECT, x:x + OBJECT] = patch
        static.append(frame)
        panning.append(photo[:, 2 * k:2 * k + SIDE].copy())
    paths = {}
    for name, frames in (("static", static), ("panning", panning)):
        paths[name] = folder / f"{name}.mkv"
        writer = cv2.VideoWriter(str(paths[name]), cv2.VideoWriter_fourcc(*"FFV1"), FPS,
                                 (SIDE, SIDE))
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
        writer.release()
    return paths


def timed(fn, *args, **kwargs):  # noqa: ANN001, ANN201
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def compare(clf, sampled: list[np.ndarray], single, sequence, windows: dict) -> None:  # noqa: ANN001
    """Maps/s of the single-image method on each frame (the peer), of the sequence without
    reuse, and with region reuse; how many windows were re-scored and how far the reused maps
    are from the recomputed ones."""
    peer, peer_s = timed(lambda: [single(clf, f, **windows) for f in sampled])
    full, full_s = timed(sequence, clf, sampled, reuse="none", **windows)
    reused, reuse_s = timed(sequence, clf, sampled, reuse="region", **windows)
    m, n = len(sampled), peer[0].windows
    rescored = sum(h.params["rescored"] for h in reused)
    drift = max(float(np.abs(r.values - f.values).max()) for r, f in zip(reused, full, strict=True))
    scale = max(float(np.abs(f.values).max()) for f in full)
    same = max(float(np.abs(a.values - b.values).max()) for a, b in zip(full, peer, strict=True))
    print(f"  {peer[0].method}, {m} frames x {n} windows:")
    print(f"    {single.__name__} per frame (peer)  {m / peer_s:6.2f} maps/s")
    print(f"    {sequence.__name__}, no reuse  {m / full_s:6.2f} maps/s  (max |diff| vs peer "
          f"{same:.1e})")
    print(f"    {sequence.__name__}, region reuse  {m / reuse_s:6.2f} maps/s  "
          f"x{peer_s / reuse_s:.2f} vs peer; windows re-scored {rescored}/{m * n} "
          f"({100 * rescored / (m * n):.0f} %)")
    print(f"    reused vs recomputed maps: max |diff| {drift:.2e} (largest |value| {scale:.4f})",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="open-nsfw:auto")
    parser.add_argument("--box", type=int, default=48)
    parser.add_argument("--stride", type=int, default=24)
    parser.add_argument("--fps", type=float, default=2.0)
    args = parser.parse_args()
    clf = load(args.model)
    print(f"model {args.model} on {clf.device}; clips {SECONDS} s at {FPS} fps, {SIDE}x{SIDE}; "
          f"occlusion box {args.box} stride {args.stride} on frames at {args.fps:g} fps; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in make_clips(Path(tmp)).items():
            clip, decode_s = timed(read_clip, path, "all")
            n = len(clip.frames)
            score_clip(clf, clip)  # warm-up
            _, score_s = timed(score_clip, clf, clip)
            batches = [to_batch([f.rgb for f in clip.frames[lo:lo + 32]], clf.device)
                       for lo in range(0, n, 32)]
            _, raw_s = timed(lambda bs=batches: [clf.predict(b) for b in bs])
            print(f"\n[{name}] {n} frames: decode {n / decode_s:.0f} frames/s; score "
                  f"{n / score_s:.1f} frames/s (raw predict {n / raw_s:.1f} frames/s, "
                  f"ratio {raw_s / score_s:.2f})", flush=True)
            sampled = [f.rgb for f in read_clip(path, f"fps:{args.fps:g}").frames]
            windows = dict(box=args.box, stride=args.stride)
            for single, sequence in ((occlusion_map, occlusion_maps),
                                     (sliding_window_map, sliding_maps)):
                compare(clf, sampled, single, sequence, windows)
    print(f"\nload average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
