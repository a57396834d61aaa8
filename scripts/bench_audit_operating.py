"""What the audit's operating point costs on CPU: a first audit (scoring, embeddings for the
label issues and error clusters, outputs), then the same audit at another threshold and at a
target precision, counting the model's calls (predict and features) on each.

    python scripts/bench_audit_operating.py [--images 200] [--side 256] [--model open-nsfw:auto]

The dataset is bench_audit's (random crops of scikit-image photos labelled sfw/nsfw in turn).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_audit import write_dataset  # noqa: E402

from explain.audit import AuditOptions, audit  # noqa: E402
from explain.models import load  # noqa: E402


def counted(clf: object) -> list[int]:
    """Count the images that go through ``clf.predict`` and ``clf.features``."""
    calls = [0]
    for name in ("predict", "features"):
        method = getattr(clf, name, None)
        if callable(method):
            def wrapped(batch, _method=method):  # type: ignore[no-untyped-def]
                calls[0] += len(batch)
                return _method(batch)
            setattr(clf, name, wrapped)
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--model", default="open-nsfw:auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_dataset(data, args.images, args.side)
        clf = load(args.model, "cpu")
        calls = counted(clf)
        out = Path(tmp) / "out"
        runs = [("first audit, threshold 0.05", AuditOptions(threshold=0.05)),
                ("threshold 0.02", AuditOptions(threshold=0.02)),
                ("target precision 0.6", AuditOptions(target_precision=0.6))]
        for title, o in runs:
            o.top, o.concepts, o.cues, o.mosaic = 10, False, False, 0
            before, start = calls[0], time.perf_counter()
            result = audit(data, out, model=clf, options=o, model_spec=args.model)
            seconds = time.perf_counter() - start
            stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
            print(f"{title}: run {result.run}, threshold {result.threshold:.4g}, "
                  f"{calls[0] - before} images through the model, {seconds:.1f} s ({stages}); "
                  f"precision {result.metrics['precision']:.3f}, "
                  f"{len(result.metrics['slices_flagged'])} flagged slices, "
                  f"{result.metrics['label_issues']} label issues")


if __name__ == "__main__":
    main()
