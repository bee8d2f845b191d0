"""`kill -9` in the middle of `sample`, then `dvc repro` again: the final FEID equals an
uninterrupted run's, and no request that had succeeded is sent again (issue 3)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest
from project import BIN, make_project, project_env, run
from simserver import TEST_KEY

from simvllm.server import ServerThread, SimConfig, SimVLLM

pytestmark = pytest.mark.e2e

PARAMS = {
    "annotator": {"backend": "openai", "model": "sim-vllm", "temperature": 1.0},
    "runtime": {"cache": ".seke/cache", "concurrency": 3, "timeout_s": 10, "max_retries": 2},
    # six faces may all land in one class; the label-distribution bound is not under test here
    "expectations": {"max_class_share": 1.0},
}


def _ok(sim: SimVLLM, since: float = 0.0, until: float = float("inf")) -> list[tuple]:
    return [(e["fingerprint"], e.get("seed")) for e in sim.log if e["status"] == 200 and since <= e["t"] < until]


# The simulator logs a response when it sends it. A response sent in the last moment before
# the kill may never have reached the client (it died first): that request had not succeeded
# for the client and may rightly be sent again. Responses older than this had been received.
IN_FLIGHT_S = 1.0


def _feid(proj) -> list[dict]:
    rows = pq.read_table(proj / "data/feid/feid.parquet").to_pylist()
    return sorted(rows, key=lambda r: r["id"])


def test_kill_9_mid_sample_then_resume(tmp_path):
    proj = make_project(tmp_path, london=3, params=PARAMS)
    sim = SimVLLM(SimConfig(accuracy=0.8, latency_ms=300))
    with ServerThread(sim) as server:
        env = project_env(proj, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY=TEST_KEY)
        run(proj, "dvc", "repro", "prompt", env=env)
        proc = subprocess.Popen(
            [str(BIN / "dvc"), "repro"],
            cwd=proj,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 300
        while len(_ok(sim, until=time.time() - IN_FLIGHT_S)) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "sample finished before it could be killed; slow the simulator down"
        killed_at = time.time()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        succeeded = set(_ok(sim, until=killed_at - IN_FLIGHT_S))
        assert len(succeeded) >= 3
        assert not (proj / "data/sample_runs/samples.parquet").exists(), "a killed stage publishes nothing"

        time.sleep(0.5)  # let the simulator log what it sent to the dead client
        sim.config.update({"latency_ms": 0})  # slow only so that the kill lands mid-stage
        resumed_at = time.time()
        run(proj, "dvc", "repro", env=env)
        again = _ok(sim, since=resumed_at)
        assert not succeeded & set(again), "a request that had succeeded before the kill was sent again"
        assert len(again) == len(set(again))
        resumed = _feid(proj)
        assert resumed

        # the same pipeline, uninterrupted, from an empty cache
        n = len(sim.log)
        subprocess.run(["rm", "-rf", str(proj / ".seke/cache")], check=True)
        run(proj, "dvc", "repro", "-f", env=env)
        assert len(sim.log) > n, "the uninterrupted run really called the endpoint"
        assert _feid(proj) == resumed


def _cache_cost(proj) -> float:
    """What every answer in the response cache cost when it was paid for (one per key)."""
    import json

    costs = {}
    for f in (proj / ".seke/cache").rglob("*"):
        if f.name.startswith(("live-", "seg-")) and f.name.endswith(".jsonl"):
            for line in f.read_text().splitlines():
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:
                    continue
                costs[e["key"]] = e["cost_usd"]
        elif f.name.startswith("pack-") and f.name.endswith(".parquet"):
            t = pq.read_table(f)
            costs.update(zip(t.column("key").to_pylist(), t.column("cost_usd").to_pylist()))
    return sum(costs.values())


def test_a_budget_stop_then_a_resumed_run_report_the_versions_spend_and_the_runs(tmp_path):
    import json

    params = {**PARAMS, "annotator": {**PARAMS["annotator"], "price_in_per_mtok": 2.5, "price_out_per_mtok": 10.0}}
    proj = make_project(tmp_path, london=3, params=params)
    with ServerThread(SimVLLM(SimConfig(accuracy=0.8))) as server:
        env = project_env(proj, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY=TEST_KEY)
        stopped = run(proj, "dvc", "repro", env={**env, "SEKE_BUDGET_USD": "0.01"}, check=False)
        assert stopped.returncode != 0 and "budget" in (stopped.stdout + stopped.stderr)
        first = _cache_cost(proj)
        assert 0 < first <= 0.01
        run(proj, "dvc", "repro", env=env)  # no cap: the rest is paid for
    m = json.loads((proj / "metrics/sample.json").read_text())
    assert m["cost_usd"] > 0 and m["version_cost_usd"] == pytest.approx(m["cost_usd"] + first, abs=1e-5)
    assert m["version_cost_usd"] == pytest.approx(_cache_cost(proj), abs=1e-5)
