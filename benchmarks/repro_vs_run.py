"""A bare `dvc repro` (the design's own command) against `seke run` on the same project, in one
run: N synthetic faces, `crop.detector: none`, the `openai` backend against the simulated VLLM
on 127.0.0.1 at zero latency, an empty response cache each time. `seke run` starts a Prefect
server and the warm stage runner for the whole run; a bare `dvc repro` gets them from the
project's on-demand daemon (`flows/daemon.py`), which its first stage starts. The daemon is
stopped between runs, so each bare run pays for starting it.

Prints each command's wall time per repetition and the ratio bare / seke run (target <= 1.2).

    .venv/bin/python benchmarks/repro_vs_run.py [--faces 280] [--reps 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from end_to_end import make_project  # noqa: E402
from openai_throughput import start_sim  # noqa: E402


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "SEKE_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def _stop_daemon(proj: Path) -> None:
    from flows.daemon import folder

    info = folder(proj) / "env.json"
    if info.exists():
        try:
            os.kill(json.loads(info.read_text())["pid"], signal.SIGTERM)
        except (OSError, ValueError, KeyError):
            pass
        for _ in range(100):
            if not info.exists():
                break
            time.sleep(0.1)


def timed(cmd: list[str], proj: Path) -> float:
    for d in ("data/ingest", "data/crop", "data/prompt", "data/sample_runs", "data/verify", "data/feid", ".seke/cache"):
        shutil.rmtree(proj / d, ignore_errors=True)
    (proj / "dvc.lock").unlink(missing_ok=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=proj, env=_clean_env(), capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=280)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    sim, _ = start_sim(0.0)
    tmp = Path(tempfile.mkdtemp(prefix="seke-rvr-"))
    try:
        proj = make_project(tmp / "proj", a.faces, 32)
        subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q", "--no-scm"], cwd=proj, check=True)
        dvc = [str(Path(sys.executable).parent / "dvc"), "repro"]
        seke = [sys.executable, "-m", "flows.cli", "run"]
        rows = []
        for rep in range(a.reps):
            _stop_daemon(proj)
            bare = timed(dvc, proj)
            _stop_daemon(proj)
            run = timed(seke, proj)
            rows.append({"rep": rep, "bare_dvc_repro_s": round(bare, 2), "seke_run_s": round(run, 2)})
            print(
                f"rep {rep}: bare dvc repro {bare:6.1f} s   seke run {run:6.1f} s   ratio {bare / run:.2f}", flush=True
            )
        b = sum(r["bare_dvc_repro_s"] for r in rows) / len(rows)
        s = sum(r["seke_run_s"] for r in rows) / len(rows)
        print(f"{a.faces} faces, mean of {a.reps}: bare dvc repro {b:.1f} s, seke run {s:.1f} s, ratio {b / s:.2f}")
        if a.json:
            Path(a.json).write_text(json.dumps({"faces": a.faces, "runs": rows, "ratio": round(b / s, 3)}, indent=1))
        _stop_daemon(proj)
    finally:
        sim.terminate()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
