"""End to end, as a new user with no labelled faces and the `openai` backend (the simulated VLLM):

- `verify.guarantee_mode: required`: the run stops before the first request reaches the
  endpoint (the simulator's log is empty) and says why and how to get a guarantee;
- `auto` (the default): FEID still holds generated labels, every row and the metrics say there
  is no guarantee, and the summary names the command that gets one.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_openai_pipeline import _env, _project, run_dvc

from simvllm.server import ServerThread, SimConfig, SimVLLM

pytestmark = pytest.mark.e2e


def _unlabelled(proj: Path) -> None:
    m = proj / "data" / "sample" / "manifest.csv"
    rows = list(csv.DictReader(open(m)))
    with open(m, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path"])
        w.writeheader()
        w.writerows({"path": r["path"]} for r in rows)
    (proj / "data" / "review" / "labels.csv").write_text("path,expression\n")


def _set(proj: Path, **verify) -> None:
    p = yaml.safe_load((proj / "params.yaml").read_text())
    p["verify"].update(verify)
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def test_no_labelled_faces_required_stops_before_paying_and_auto_builds_unguaranteed(tmp_path):
    import polars as pl

    proj = _project(tmp_path)
    _unlabelled(proj)
    sim = SimVLLM(SimConfig(accuracy=0.9, difficulty_spread=0.1))
    with ServerThread(sim) as server:
        env = _env(proj, server.base_url)
        subprocess.run(
            [str(Path(sys.executable).parent / "dvc"), "init", "--no-scm", "-q"], cwd=proj, env=env, check=True
        )
        _set(proj, guarantee_mode="required")
        r = run_dvc(proj, env, "repro")
        assert r.returncode != 0
        out = r.stdout + r.stderr
        assert "stopped before any call" in out and "0 labelled faces" in out and "seke review export" in out
        assert sim.log == []  # not one request reached the endpoint

        _set(proj, guarantee_mode="auto")
        r = run_dvc(proj, env, "repro")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert sim.log
        feid = pl.read_parquet(proj / "data" / "feid" / "feid.parquet")
        gen = feid.filter(pl.col("expression_status") == "accepted")
        assert gen.height >= 1 and set(gen["guarantee"]) == {"none"}
        m = json.loads((proj / "metrics" / "verify.json").read_text())["calibration"]
        assert m["guaranteed"] is False and "seke review export" in m["how_to_certify"]
        s = subprocess.run(
            [sys.executable, "-m", "flows.summary"], cwd=proj, env=env, capture_output=True, text=True, timeout=120
        )
        assert "guarantee: NONE" in s.stdout and "seke review export" in s.stdout, s.stdout
