"""The face detector, BlazeFace (MediaPipe's short- and full-range models on LiteRT) against
yuface (libfacedetection), measured side by side on ../shared/data.

Per set, on the same images: how many images each detector finds a face in, the time per
image, how well the two largest-face boxes agree (IoU), and the expression accuracy of the
local annotator (majority of K seeded samples) on each detector's crop of the largest face
(the crop stage's geometry: margin 0.3, 256 px). yuface has wheels for Python <= 3.11 only;
without it the script measures BlazeFace alone.

    .venv/bin/python benchmarks/detector_compare.py [--limit 200] [--k 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from local_annotator import ASK, DATA, SETS, majority, rows_of  # noqa: E402

from tasks.core.answer import parse  # noqa: E402
from tasks.core.calls import Call  # noqa: E402
from tasks.core.knowledge import load  # noqa: E402
from tasks.core.params import Annotator  # noqa: E402
from tasks.infra.detect import decode, detect_faces, encode_crop, square_crop  # noqa: E402


def iou(a, b) -> float:
    x1, y1 = max(a.x, b.x), max(a.y, b.y)
    x2, y2 = min(a.x + a.w, b.x + b.w), min(a.y + a.h, b.y + b.h)
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / (a.w * a.h + b.w * b.h - inter)


def label_of(ann, im, box, key: str, k: int, seed: int) -> str | None:
    crop, _ = square_crop(im, box, 0.3, 256)
    seeds = tuple(seed * 100_003 + j for j in range(k))
    call = Call(key, key, [], {}, ASK, encode_crop(crop), tuple(range(k)), seeds)
    res = next(iter(ann.run([call])))
    parsed = [parse(a.text, ASK) for a in res.answers] if not res.error else []
    if not parsed or any(x.status != "ok" for x in parsed):
        return None
    return majority([x.expression for x in parsed])[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=200, help="images per set")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    from tasks.annotators.local import LocalAnnotator

    try:
        import yuface  # noqa: F401

        detectors = ("blazeface", "yuface")
    except ImportError:
        detectors = ("blazeface",)
    ann, kn = LocalAnnotator(Annotator()), load()
    ann.warm_up()
    out = {}
    print(
        f"{'set':>9} {'images':>6} "
        + " ".join(f"{d + ' found':>15} {d + ' ms':>12} {d + ' acc':>13}" for d in detectors)
        + "  IoU mean / >=0.5"
    )
    for name in SETS:
        rows = rows_of(name, a.limit)
        found = {d: 0 for d in detectors}
        secs = {d: 0.0 for d in detectors}
        right = {d: 0 for d in detectors}
        ious = []
        for i, r in enumerate(rows):
            im = decode((DATA / name / r["path"]).read_bytes())
            truth = kn.expression(r["label"])
            boxes = {}
            for d in detectors:
                t0 = time.perf_counter()
                b = detect_faces(im, detector=d, min_score=0.5, min_size=24, max_side=960)
                secs[d] += time.perf_counter() - t0
                if b:
                    found[d] += 1
                    boxes[d] = b[0]
                    right[d] += label_of(ann, im, b[0], f"{name}-{i}-{d}", a.k, i) == truth
            if len(boxes) == 2:
                ious.append(iou(boxes["blazeface"], boxes["yuface"]))
        n = len(rows)
        res = {
            "images": n,
            **{f"{d}_found": found[d] for d in detectors},
            **{f"{d}_ms_per_image": round(secs[d] / n * 1000, 1) for d in detectors},
            # accuracy over all images: an image with no face found counts as wrong
            **{f"{d}_accuracy": round(right[d] / n, 3) for d in detectors},
            "iou_mean": round(float(np.mean(ious)), 3) if ious else None,
            "iou_ge_0.5": round(float(np.mean(np.array(ious) >= 0.5)), 3) if ious else None,
        }
        out[name] = res
        cells = " ".join(f"{found[d]:>15} {res[d + '_ms_per_image']:>12} {res[d + '_accuracy']:>13}" for d in detectors)
        print(f"{name:>9} {n:>6} {cells}  {res['iou_mean']} / {res['iou_ge_0.5']}")
    if a.json:
        Path(a.json).write_text(json.dumps({"k": a.k, "limit": a.limit, "sets": out}, indent=2) + "\n")


if __name__ == "__main__":
    main()
