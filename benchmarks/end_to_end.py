"""The whole pipeline at zero latency: every stage as DVC runs it (`python -m flows.run
<stage>`, a fresh process, one shared Prefect server and the warm stage runner, as `make feid`
runs them), on N synthetic faces with
`crop.detector: none` and the `openai` backend against the simulated VLLM on 127.0.0.1 with
no latency, next to the same on 2 faces (what is left there is each stage's fixed overhead).

Prints, per stage: the wall time on 2 and on N faces, the marginal time per face, and for the
whole run the faces per second.

    .venv/bin/python benchmarks/end_to_end.py [--faces 2000] [--concurrency 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from openai_throughput import start_sim  # noqa: E402
from simserver import face_image  # noqa: E402
from stage_overhead import run_stages  # noqa: E402 - each stage as DVC runs it, timed

from flows.server import shared_server  # noqa: E402


def make_project(dest: Path, n: int, conc: int) -> Path:
    for d in ("tasks", "flows", "expectations"):
        shutil.copytree(ROOT / d, dest / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", dest / "dvc.yaml")
    (dest / "data/sample/images").mkdir(parents=True)
    (dest / "data/review").mkdir(parents=True)
    shutil.copytree(ROOT / "data/inbox", dest / "data/inbox")
    shutil.copy(ROOT / "data/review/labels.csv", dest / "data/review/labels.csv")
    with open(dest / "data/sample/manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path"])
        for i in range(n):
            (dest / f"data/sample/images/f{i:05d}.jpg").write_bytes(face_image(i, 96))
            w.writerow([f"images/f{i:05d}.jpg"])
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["crop"]["detector"] = "none"
    p["annotator"].update(backend="openai", model="sim-vllm")
    p["runtime"].update(cache=str(dest / ".seke" / "cache"), concurrency=conc, progress_every_s=3600)
    p["expectations"].update(max_class_share=1.0, min_classes=1)
    p["verify"]["target_error"] = 0  # a speed benchmark: no labelled faces, plain threshold
    (dest / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    proc, _ = start_sim(0)
    try:
        with tempfile.TemporaryDirectory(prefix="seke_e2e_") as tmp:
            small = make_project(Path(tmp) / "small", 2, a.concurrency)
            big = make_project(Path(tmp) / "big", a.faces, a.concurrency)
            base = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
            os.environ["PREFECT_HOME"] = str(Path(tmp) / "prefect")
            Path(os.environ["PREFECT_HOME"]).mkdir()
            with shared_server() as api:
                env = {**base, "PREFECT_API_URL": api, "PREFECT_HOME": os.environ["PREFECT_HOME"]}
                env.update({k: os.environ[k] for k in ("SEKE_STAGE_SERVER",) if k in os.environ})  # warm runner
                t_small = run_stages(small, {**env, "PYTHONPATH": str(small)})
                t_big = run_stages(big, {**env, "PYTHONPATH": str(big)})
            faces = json.loads((big / "metrics" / "sample.json").read_text())["faces"]
    finally:
        proc.terminate()
        proc.wait(10)
    total = sum(t_big.values())
    print(f"{a.faces} synthetic faces ({faces} sampled), openai backend, simulated VLLM at 0 ms,", end=" ")
    print(f"concurrency {a.concurrency}")
    print(f"{'stage':<8} {'2 faces (s)':>12} {f'{a.faces} faces (s)':>16} {'ms per face':>12}")
    rows = []
    for s in t_big:
        per = (t_big[s] - t_small[s]) / (a.faces - 2) * 1000
        rows.append({"stage": s, "two_faces_s": t_small[s], "faces_s": t_big[s], "ms_per_face": per})
        print(f"{s:<8} {t_small[s]:>12.1f} {t_big[s]:>16.1f} {per:>12.2f}")
    print(f"{'all':<8} {sum(t_small.values()):>12.1f} {total:>16.1f}", end="")
    print(f"   -> {a.faces / total:.1f} faces per second end to end")
    if a.json:
        out = {"faces": a.faces, "concurrency": a.concurrency, "stages": rows, "faces_per_s": a.faces / total}
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
