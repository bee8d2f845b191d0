"""How Learn-then-Test's walks (tasks/method/trust.py: WALKS) turn a run's calibration scores
into certified coverage, replayed on recorded runs, next to the best any Clopper-Pearson
certification of those calibration faces could do in hindsight.

Input: the folders that `benchmarks/quality_study.py --self-calibrated SHARES --scores DIR`
wrote (one per simulator seed). For each run and each way of splitting delta over the walks,
the threshold is chosen on the run's calibration faces and applied to its unlabelled faces:
coverage and realised error are measured there. The last row is not a valid procedure: it
takes, with hindsight, the most lenient threshold whose Clopper-Pearson bound at the whole
delta is <= the target. No Clopper-Pearson certification of the same calibration faces can
reach further, so it bounds what any split of delta could buy.

    .venv/bin/python benchmarks/ltt_walks.py /tmp/scores/seed*   [--share 0.3]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.method import trust  # noqa: E402

SPLITS = {
    "1/5, 3/10, 1/2 (previous)": (("need", 0.2), ("quarter", 0.3), ("half", 0.5)),
    "1/5, 1/10, 7/10 (default)": (("need", 0.2), ("quarter", 0.1), ("half", 0.7)),
    "1/5, 4/5 (no quarter walk)": (("need", 0.2), ("half", 0.8)),
    "1/10, 1/10, 4/5": (("need", 0.1), ("quarter", 0.1), ("half", 0.8)),
}


def select(d: dict, walks, target: float, delta: float) -> float | None:
    sc = [x[0] for x in d["calibration"]]
    ok = [x[1] for x in d["calibration"]]
    return trust.select_threshold(sc, ok, target, delta, d["gated"], table=walks).threshold


def hindsight(d: dict, target: float, delta: float) -> float | None:
    s = np.array([x[0] for x in d["calibration"]], float)
    ok = np.array([x[1] for x in d["calibration"]], bool)
    live = ~np.array(d["gated"], bool)
    m, k = trust._counts(s, ok, live, trust.GRID)
    good = np.flatnonzero(trust._upper(k, m, delta) <= target)
    return trust.GRID[good.max()] if len(good) else None


def outcome(d: dict, t: float | None) -> tuple[float, float]:
    u = d["unlabelled"]
    conf = np.array([x[0] if x[0] is not None else -1.0 for x in u], float)
    right = np.array([x[1] for x in u], bool)
    can = np.array([x[2] for x in u], bool)
    if t is None:
        return 0.0, float("nan")
    acc = can & (conf >= t)
    return float(acc.mean()), (1 - float(right[acc].mean())) if acc.any() else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--share", default="0.3")
    ap.add_argument("--target", type=float, default=0.05)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--goal", type=float, default=0.8, help="coverage each run should reach")
    args = ap.parse_args(argv)
    runs = []
    for x in args.dirs:
        f = Path(x) / f"scores_{args.share}.json"
        if f.exists():
            runs.append((Path(x).name, json.loads(f.read_text())))
    if not runs:
        print(f"no scores_{args.share}.json under the folders given", file=sys.stderr)
        return 2
    print(
        f"{len(runs)} runs at {float(args.share):.0%} labelled; target {args.target}, delta {args.delta}; "
        "unlabelled faces"
    )
    print(
        f"{'delta over the walks':32} {'mean cov':>8} {'min cov':>8} {'< goal':>7} {'err > target':>12} {'max err':>8}"
    )
    rows = {name: [outcome(d, select(d, w, args.target, args.delta)) for _, d in runs] for name, w in SPLITS.items()}
    rows["hindsight, whole delta (invalid)"] = [outcome(d, hindsight(d, args.target, args.delta)) for _, d in runs]
    for name, r in rows.items():
        c = np.array([x[0] for x in r])
        e = np.array([x[1] for x in r])
        worst = float(np.nanmax(e)) if np.isfinite(e).any() else float("nan")
        print(
            f"{name:32} {c.mean():8.3f} {c.min():8.3f} {int((c < args.goal).sum()):>3d}/{len(c):<3d} "
            f"{int((np.nan_to_num(e) > args.target).sum()):>8d}/{len(c):<3d} {worst:8.3f}"
        )
    print("\nper run (coverage, default split / hindsight):")
    print(
        "  "
        + "  ".join(
            f"{n}: {a[0]:.3f}/{b[0]:.3f}"
            for (n, _), a, b in zip(runs, rows["1/5, 1/10, 7/10 (default)"], rows["hindsight, whole delta (invalid)"])
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
