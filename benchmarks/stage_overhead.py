"""Fixed overhead of each stage process: a temporary Prefect server per process (what a bare
`dvc repro` gets with no PREFECT_API_URL) against one shared server (`python -m flows.server`,
what `make feid`, `seke run` and the test suite use), measured side by side in one run.

    python benchmarks/stage_overhead.py [--faces 2] [--repeats 1]

Each stage runs as DVC runs it (`python -m flows.run <stage>`, a fresh process) on a tiny
project of a few London faces with `crop.detector: none` and the local annotator, so almost
all of the time is fixed cost: interpreter start, imports, Prefect's API, Great Expectations.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.server import shared_server  # noqa: E402
from tasks.core.params import stage_names  # noqa: E402


def make_project(dest: Path, n_faces: int) -> Path:
    for d in ("tasks", "flows", "expectations"):
        shutil.copytree(ROOT / d, dest / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", dest / "dvc.yaml")
    rows = [
        r for r in csv.DictReader(open(ROOT / "data/sample/manifest.csv")) if r["path"].startswith("images/london_")
    ]
    (dest / "data/sample/images").mkdir(parents=True)
    (dest / "data/review").mkdir(parents=True)
    shutil.copy(ROOT / "data/review/labels.csv", dest / "data/review/labels.csv")
    shutil.copytree(ROOT / "data/inbox", dest / "data/inbox")
    with open(dest / "data/sample/manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows[:n_faces]:
            shutil.copy(ROOT / "data/sample" / r["path"], dest / "data/sample" / r["path"])
            w.writerow(r)
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["crop"]["detector"] = "none"
    p["runtime"]["cache"] = str(dest / ".seke" / "cache")
    (dest / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return dest


def run_stages(proj: Path, env: dict) -> dict[str, float]:
    out = {}
    for stage in stage_names(proj / "dvc.yaml"):
        t0 = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "flows.run", stage], cwd=proj, env=env, capture_output=True, text=True
        )
        out[stage] = time.perf_counter() - t0
        if r.returncode:
            raise SystemExit(f"{stage} failed:\n{r.stderr[-3000:]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="seke_overhead_") as tmp:
        proj = make_project(Path(tmp) / "proj", a.faces)
        base = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        base.update(PYTHONPATH=str(proj), PREFECT_HOME=str(proj / ".seke" / "prefect"))
        (proj / ".seke" / "prefect").mkdir(parents=True)
        temp, shared, t_server = [], [], 0.0
        for _ in range(a.repeats):
            temp.append(run_stages(proj, base))
            os.environ["PREFECT_HOME"] = base["PREFECT_HOME"]
            t0 = time.perf_counter()
            with shared_server() as api:
                t_server = time.perf_counter() - t0
                shared.append(run_stages(proj, {**base, "PREFECT_API_URL": api}))
    best = lambda runs, s: min(r[s] for r in runs)  # noqa: E731
    print(f"{a.faces} faces, best of {a.repeats}; one shared server started in {t_server:.1f} s")
    print(f"{'stage':<8} {'temporary server (s)':>21} {'shared server (s)':>18} {'ratio':>6}")
    tt = ts = 0.0
    for s in stage_names(ROOT / "dvc.yaml"):
        x, y = best(temp, s), best(shared, s)
        tt, ts = tt + x, ts + y
        print(f"{s:<8} {x:>21.1f} {y:>18.1f} {y / x:>6.2f}")
    print(f"{'all':<8} {tt:>21.1f} {ts + t_server:>18.1f} {(ts + t_server) / tt:>6.2f}  (shared includes its start)")


if __name__ == "__main__":
    main()
