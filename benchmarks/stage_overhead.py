"""Fixed overhead of each stage process, three ways side by side in one run: a temporary
Prefect server per process (what a bare `dvc repro` gets with no PREFECT_API_URL), one shared
server (`python -m flows.server` with SEKE_NO_WARM=1), and the shared server with the warm
stage runner (`flows/warm.py`: what `make feid`, `seke run` and the incremental flow use).

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
from tasks.core.dvcfile import stage_names  # noqa: E402


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
    from flows.warm import ENV

    runs: dict[str, list[dict]] = {"temporary": [], "shared": [], "warm": []}
    start: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="seke_overhead_") as tmp:
        proj = make_project(Path(tmp) / "proj", a.faces)
        base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", ENV)}
        # each stage alone: no on-demand daemon either (flows/daemon.py)
        base.update(PYTHONPATH=str(proj), PREFECT_HOME=str(proj / ".seke" / "prefect"), SEKE_NO_WARM="1")
        (proj / ".seke" / "prefect").mkdir(parents=True)
        os.environ["PREFECT_HOME"] = base["PREFECT_HOME"]
        for _ in range(a.repeats):
            runs["temporary"].append(run_stages(proj, base))
            for kind in ("shared", "warm"):
                os.environ.pop(ENV, None)
                os.environ["SEKE_NO_WARM"] = "1" if kind == "shared" else ""
                t0 = time.perf_counter()
                with shared_server() as api:
                    start[kind] = time.perf_counter() - t0
                    env = {**base, "PREFECT_API_URL": api}
                    if os.environ.get(ENV):
                        env[ENV] = os.environ[ENV]
                    elif kind == "warm":
                        raise SystemExit("the warm stage runner did not start")
                    runs[kind].append(run_stages(proj, env))
    best = lambda kind, s: min(r[s] for r in runs[kind])  # noqa: E731
    print(
        f"{a.faces} faces, best of {a.repeats}; shared server started in {start['shared']:.1f} s, "
        f"shared server + warm stage runner in {start['warm']:.1f} s"
    )
    print(f"{'stage':<8} {'temporary server':>17} {'shared server':>14} {'+ warm runner':>14} {'warm/temporary':>15}")
    tot = dict.fromkeys(runs, 0.0)
    for s in stage_names(ROOT / "dvc.yaml"):
        x = {k: best(k, s) for k in runs}
        for k in runs:
            tot[k] += x[k]
        ratio = x["warm"] / x["temporary"]
        print(f"{s:<8} {x['temporary']:>17.1f} {x['shared']:>14.1f} {x['warm']:>14.1f} {ratio:>15.2f}")
    t, sh, w = tot["temporary"], tot["shared"] + start["shared"], tot["warm"] + start["warm"]
    print(f"{'all':<8} {t:>17.1f} {sh:>14.1f} {w:>14.1f} {w / t:>15.2f}  (shared and warm include their start)")


if __name__ == "__main__":
    main()
