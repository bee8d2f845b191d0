"""Benchmark the local annotator on the labelled sets in ../shared/data.

For each image: face detection with the crop stage's defaults (BlazeFace), the largest face,
a square crop (margin 0.3, 256 px), then the local annotator with ask=(expression, va, aus)
and K seeded samples. Prints per set: n, top-1 accuracy of the majority vote and of a single sample (the mean over the K
samples), macro-F1 over the classes present in the ground truth, accuracy and coverage at
vote share >= 0.8, faces per second (end to end with detection, and annotator only), and
peak RSS. Also the AU rates and mean derived VA per ground-truth class, as a sanity check.

    .venv/bin/python benchmarks/local_annotator.py [--limit 200] [--k 5] [--temperature 1.0]
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.core.answer import parse  # noqa: E402
from tasks.core.calls import Call  # noqa: E402
from tasks.core.knowledge import load  # noqa: E402
from tasks.core.params import Annotator, Crop  # noqa: E402
from tasks.core.params import LocalAnnotator as LocalParams
from tasks.infra.detect import decode, detect_faces, encode_crop, square_crop  # noqa: E402
from tasks.tools.feab import macro_f1  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SETS = ("london", "muxspace", "namba")
ASK = ("expression", "va", "aus")
CROP = Crop()  # the crop stage's defaults: detector, min score, sizes


def rows_of(name: str, limit: int) -> list[dict]:
    rows = list(csv.DictReader(open(DATA / name / "labels.csv", newline="")))
    if len(rows) > limit:  # a fixed, class-stratified-ish subset: every n-th row
        step = len(rows) / limit
        rows = [rows[int(i * step)] for i in range(limit)]
    return rows


def majority(labels: list[str]) -> tuple[str, float]:
    """Most common label; ties go to the label seen first. Returns (label, vote share)."""
    c = Counter(labels)
    top = max(c.values())
    label = next(x for x in labels if c[x] == top)
    return label, top / len(labels)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=200, help="images per set (default 200)")
    ap.add_argument("--k", type=int, default=5, help="samples per face (default 5)")
    ap.add_argument("--temperature", type=float, default=None, help="default: params default")
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--classifiers", default="fer,facex")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)

    from tasks.annotators.local import LocalAnnotator

    p = Annotator(
        local=LocalParams(classifiers=args.classifiers.split(","), tta=not args.no_tta),
        **({"temperature": args.temperature} if args.temperature is not None else {}),
    )
    t0 = time.perf_counter()
    ann = LocalAnnotator(p)
    ann.warm_up()
    cold = time.perf_counter() - t0
    k = load()
    print(
        f"local annotator {ann.version}: classifiers={list(ann.classifiers)} tta={ann.tta} "
        f"T={ann.temperature:g} K={args.k}; cold load {cold:.2f} s"
    )
    results = {"cold_load_s": cold, "k": args.k, "temperature": ann.temperature, "sets": {}}
    for name in args.sets.split(","):
        rows = rows_of(name, args.limit)
        truth, votes, shares, singles = [], [], [], []
        au_rates: dict[str, Counter] = defaultdict(Counter)
        va_by: dict[str, list] = defaultdict(list)
        va_std, no_face, bad, t_ann, t_all = [], 0, 0, 0.0, 0.0
        for i, r in enumerate(rows):
            ts = time.perf_counter()
            im = decode((DATA / name / r["path"]).read_bytes())
            boxes = detect_faces(im, min_score=CROP.min_score, min_size=CROP.min_size, max_side=CROP.max_side)
            if not boxes:
                no_face += 1
                t_all += time.perf_counter() - ts
                continue
            crop, _ = square_crop(im, boxes[0], 0.3, 256)
            seeds = tuple(args.seed * 100_003 + i * 101 + j for j in range(args.k))
            call = Call(
                request_id=f"{name}-{i}",
                face_id=f"{name}-{i}",
                messages=[],
                schema={},
                ask=ASK,
                image=encode_crop(crop),
                indices=tuple(range(args.k)),
                seeds=seeds,
            )
            ta = time.perf_counter()
            res = next(iter(ann.run([call])))
            t_ann += time.perf_counter() - ta
            t_all += time.perf_counter() - ts
            if res.error:
                bad += 1
                continue
            parsed = [parse(a.text, ASK) for a in res.answers]
            if any(x.status != "ok" for x in parsed):
                bad += 1
                continue
            gt = k.expression(r["label"])
            labels = [x.expression for x in parsed]
            lab, share = majority(labels)
            truth.append(gt)
            votes.append(lab)
            shares.append(share)
            singles.append(float(np.mean([x == gt for x in labels])))
            au_rates[gt].update(a for x in parsed for a in x.aus)
            au_rates[gt]["_n"] += len(parsed)
            va = np.array([[x.valence, x.arousal] for x in parsed])
            va_by[gt].append(va.mean(0))
            va_std.append(va.std(0).mean())
        n = len(truth)
        correct = np.array([t == v for t, v in zip(truth, votes)])
        sh = np.array(shares)
        keep = sh >= 0.8
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        m = {
            "images": len(rows),
            "n": n,
            "no_face": no_face,
            "failed": bad,
            "acc_vote": float(correct.mean()) if n else None,
            "acc_single": float(np.mean(singles)) if n else None,
            "macro_f1": macro_f1(truth, votes) if n else None,
            "acc_at_share80": float(correct[keep].mean()) if keep.any() else None,
            "coverage_share80": float(keep.mean()) if n else None,
            "mean_vote_share": float(sh.mean()) if n else None,
            "faces_per_s_end_to_end": (n + no_face) / t_all if t_all else None,
            "faces_per_s_annotator": n / t_ann if t_ann else None,
            "mean_va_std": float(np.mean(va_std)) if n else None,
            "peak_rss_mb": rss_mb,
        }
        results["sets"][name] = m
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"\n== {name}: {len(rows)} images, n={n} faces (no face {no_face}, failed {bad})")
        print(
            f"  top-1 majority vote {fmt(m['acc_vote'])} | single sample {fmt(m['acc_single'])} | "
            f"macro-F1 {fmt(m['macro_f1'])} (over {len(set(truth))} classes)"
        )
        print(
            f"  vote share >= 0.8: accuracy {fmt(m['acc_at_share80'])}, coverage {fmt(m['coverage_share80'])}"
            f" | mean vote share {fmt(m['mean_vote_share'])}"
        )
        print(
            f"  faces/s end to end {fmt(m['faces_per_s_end_to_end'])} | annotator only "
            f"{fmt(m['faces_per_s_annotator'])} (K={args.k}) | peak RSS {rss_mb:.0f} MB"
        )
        print(f"  confusion (truth -> vote): {dict(Counter(zip(truth, votes)).most_common(8))}")
        for gt in sorted(au_rates):
            c = au_rates[gt]
            rates = {a: round(c[a] / c["_n"], 2) for a in k.aus if c[a] / c["_n"] >= 0.2}
            v = np.mean(va_by[gt], axis=0)
            print(f"  {gt:9s} n={len(va_by[gt]):3d} VA=({v[0]:+.2f},{v[1]:+.2f}) AUs>=20%: {rates}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
