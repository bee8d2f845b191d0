"""End to end: `dvc repro` on a small copy of the project with `annotator.backend: openai`,
pointed at the simulated VLLM through OPENAI_BASE_URL.

- FEID builds;
- a re-run (and a forced re-run of `sample`) sends zero requests: the response cache answers;
- with ~20% mixed faults, every face ends accepted or rejected with a reason, and no
  request that had succeeded is sent again.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from simserver import TEST_KEY

from simvllm.server import ServerThread, SimConfig, SimVLLM, Truth
from tasks.core.knowledge import load as load_knowledge

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
N_PER_CLASS = 4  # London images: neutral and happy


def _project(tmp: Path) -> Path:
    proj = tmp / "proj"
    proj.mkdir()
    for d in ("tasks", "flows", "expectations"):
        shutil.copytree(ROOT / d, proj / d, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / f, proj / f)
    src = ROOT / "data" / "sample"
    (proj / "data" / "sample" / "images").mkdir(parents=True)
    rows = list(csv.DictReader(open(src / "manifest.csv")))
    keep, count = [], {}
    for r in rows:
        e = r.get("expression") or ""
        if r["path"].startswith("images/london_") and count.get(e, 0) < N_PER_CLASS:
            count[e] = count.get(e, 0) + 1
            keep.append(r)
            shutil.copy(src / r["path"], proj / "data" / "sample" / r["path"])
    (proj / "data" / "review").mkdir()
    shutil.copytree(ROOT / "data" / "inbox", proj / "data" / "inbox")
    shutil.copy(ROOT / "data" / "review" / "labels.csv", proj / "data" / "review" / "labels.csv")
    with open(proj / "data" / "sample" / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    p = yaml.safe_load((proj / "params.yaml").read_text())
    p["annotator"].update(
        backend="openai", model="sim-vllm", temperature=1.0, price_in_per_mtok=2.5, price_out_per_mtok=10.0
    )
    p["runtime"].update(
        cache=".seke/cache",
        concurrency=8,
        timeout_s=1.0,
        max_retries=4,
        retry_base_s=0.02,
        retry_max_s=0.2,
        max_consecutive_failures=50,
    )
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return proj


def _env(proj: Path, base_url: str) -> dict:
    env = dict(os.environ)
    env.update(
        OPENAI_BASE_URL=base_url,
        OPENAI_API_KEY=TEST_KEY,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        PREFECT_HOME=str(proj / ".seke" / "prefect"),
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(proj / ".seke" / "dvc-site"),
        PYTHONPATH=str(proj),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    env.pop("AZURE_OPENAI_ENDPOINT", None)
    return env


def run_dvc(proj: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _dvc(proj: Path, env: dict, *args: str) -> str:
    r = run_dvc(proj, env, *args)
    assert r.returncode == 0, f"dvc {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _ok_keys(sim: SimVLLM) -> list[tuple]:
    return [(e["fingerprint"], e["seed"]) for e in sim.log if e["status"] == 200]


def _deps_cover_what_the_stages_read(proj: Path) -> None:
    """The dependency trace on the openai path: each project file the stage processes read
    (the openai backend's package, the second opinion, the cache) is one of their dvc.yaml deps."""
    from depcheck import uncovered

    stages = yaml.safe_load((proj / "dvc.yaml").read_text())["stages"]
    traces = {s: json.loads(f.read_text()) for s in stages if (f := proj / ".seke" / "trace" / f"{s}.json").exists()}
    assert {"prompt", "sample", "verify", "export"} <= set(traces)
    assert any("tasks/annotators/openai_compat/annotator.py" in f for f in traces["sample"])
    assert uncovered(stages, traces) == {}


def test_dvc_repro_with_openai_backend(tmp_path):
    import polars as pl

    proj = _project(tmp_path)
    sim = SimVLLM(SimConfig(accuracy=0.9, difficulty_spread=0.1, va_noise=0.05, au_flip=0.02, follow_stated=0.8))
    with ServerThread(sim) as server:
        env = _env(proj, server.base_url)
        subprocess.run(
            [str(Path(sys.executable).parent / "dvc"), "init", "--no-scm", "-q"], cwd=proj, env=env, check=True
        )
        _dvc(proj, env, "repro", "crop")
        # the sim's truth: each crop's prior label (the London set's posed expression)
        k = load_knowledge()
        faces = pl.read_parquet(proj / "data" / "crop" / "faces.parquet")
        for f in faces.iter_rows(named=True):
            if f.get("prior_expression"):
                e = f["prior_expression"]
                v, a, _ = k.va_centroid(e)
                sim.truth[f["crop_sha256"]] = Truth(e, v, a, k.prototype(e)[0])
        _dvc(proj, {**env, "SEKE_TRACE_DIR": str(proj / ".seke" / "trace")}, "repro")
        feid = pl.read_parquet(proj / "data" / "feid" / "feid.parquet")
        assert feid.height >= 1
        _deps_cover_what_the_stages_read(proj)
        first = len(sim.log)
        assert first > 0 and all(e["response_format"] == "json_schema" for e in sim.log)
        # n: one request per face and round, not one per sample
        assert sum(e["n"] for e in sim.log) > len(sim.log)

        # re-running sends nothing: DVC skips, and a forced `sample` is answered by the cache
        paid = json.loads((proj / "metrics" / "sample.json").read_text())
        assert paid["cost_usd"] > 0 and paid["version_cost_usd"] == pytest.approx(paid["cost_usd"], abs=1e-5)
        _dvc(proj, env, "repro")
        _dvc(proj, env, "repro", "-f", "-s", "sample")
        assert len(sim.log) == first
        again = json.loads((proj / "metrics" / "sample.json").read_text())
        assert again["cost_usd"] == 0 and again["version_cost_usd"] == pytest.approx(paid["cost_usd"], abs=1e-5)

        # 20% mixed faults, fresh samples (new seed): every face ends accepted or rejected
        sim.config.update(
            dict(
                rate_429=0.05,
                rate_500=0.05,
                rate_timeout=0.02,
                timeout_sleep_s=3.0,
                retry_after_s=0.02,
                rate_truncated=0.03,
                rate_refusal=0.03,
                rate_out_of_range=0.02,
            )
        )
        p = yaml.safe_load((proj / "params.yaml").read_text())
        p["sample"]["seed"] = 99
        (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        sim.reset_state()
        _dvc(proj, env, "repro")
        verdicts = pl.read_parquet(proj / "data" / "verify" / "verdicts.parquet")
        assert set(verdicts["face_id"]) == set(faces["face_id"])
        for v in verdicts.iter_rows(named=True):
            assert v["accepted"] or v["reasons"], v
        assert any(e["status"] in (429, 500) or e["fault"] for e in sim.log)
        ok = _ok_keys(sim)
        assert len(ok) == len(set(ok))  # no successful request repeated
        # and nothing is sent again once everything that succeeded is cached
        n = len(sim.log)
        sim.config.update(dict(rate_429=0.0, rate_500=0.0, rate_timeout=0.0))
        _dvc(proj, env, "repro", "-f", "-s", "sample")
        ok2 = _ok_keys(sim)
        assert len(ok2) == len(set(ok2)), "a request that had succeeded was sent again"
        assert all(e["status"] == 200 for e in sim.log[n:])
