"""Deployments against a real local Prefect server: `prefect server start` on 127.0.0.1 and
`python -m flows.deploy serve`, both started and stopped (SIGTERM) by PID; the incremental
deployment is triggered with `prefect deployment run` and must complete (in batch mode).

Skipped only when the server cannot start on this machine (the reason is printed).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import opsproj
import pyarrow.parquet as pq
import pytest
import yaml
from prefectdb import seed
from simserver import TEST_KEY, sim_server

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_prefect_yaml_declares_the_deployment_with_schedule_and_parameters():
    d = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"][0]
    assert d["entrypoint"] == "flows/incremental.py:incremental_flow"
    assert set(d["parameters"]) == {"input", "budget_usd"} and d["schedules"][0]["cron"]


def test_deployment_builds_with_schedule_and_parameters_without_a_server():
    from flows.deploy import deployments

    inc = deployments(str(ROOT / "params.yaml"))[0]
    assert set(inc.parameters) >= {"input", "budget_usd"} and inc.schedules


@pytest.fixture
def prefect_server(tmp_path):
    port = _free_port()
    home = tmp_path / "prefect-server"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_API_URL": "",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    seed(home, env)  # migrated once per checkout, not in this test
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 180
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    reason = (tmp_path / "server.log").read_text()[-1500:]
                    pytest.skip(f"`prefect server start` could not start on this machine: {reason}")
                time.sleep(0.25)
        yield url
    finally:
        _stop(proc)
        log.close()


def test_triggered_deployment_run_completes(tmp_path, prefect_server):
    incoming = tmp_path / "incoming"
    opsproj.put_images(incoming, opsproj.london(1, start=2))
    proj = opsproj.make_project(
        tmp_path,
        opsproj.london(2),
        params={
            "verify": {"use_priors": False},
            "expectations": {"max_class_share": 1.0, "min_classes": 1},
            # batch mode: a scheduled deployment carries a run whose rounds are OpenAI Batch jobs
            "annotator": {"backend": "openai", "model": "sim-vllm", "mode": "batch"},
            "incremental": {"input": str(incoming), "manifest": str(incoming / "manifest.csv")},
            "deploy": {"interval_s": 0},
            "runtime": {
                "timeout_s": 5,
                "max_retries": 2,
                "retry_base_s": 0.01,
                "retry_max_s": 0.2,
                "batch_poll_s": 0.2,
            },
        },
    )
    with sim_server(set_env=False) as sim:
        env = opsproj.env(proj, PREFECT_API_URL=prefect_server, OPENAI_BASE_URL=sim.base_url, OPENAI_API_KEY=TEST_KEY)
        env["PREFECT_RUNNER_POLL_FREQUENCY"] = "1"  # the runner asks for triggered runs every second, not every 10
        log = open(tmp_path / "serve.log", "w")
        serve = subprocess.Popen(
            [sys.executable, "-m", "flows.deploy", "serve"], cwd=proj, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.time() + 180
            while "being served" not in (tmp_path / "serve.log").read_text():
                assert serve.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.25)
            r = opsproj.run(
                proj,
                "prefect",
                "deployment",
                "run",
                "feid-incremental/feid-incremental",
                "-p",
                "budget_usd=1.0",
                "--watch",
                "--watch-timeout",
                "600",
                env_=env,
                check=False,
                timeout=700,
            )
            out = r.stdout + r.stderr
            assert r.returncode == 0 and "Completed" in out, out[-3000:] + (tmp_path / "serve.log").read_text()[-3000:]
        finally:
            _stop(serve)
            log.close()
        assert len(sim.sim.log) > 0, "the run called the annotator"
        assert sim.sim.batch_api.batches and all(e.get("batch") for e in sim.sim.log), "only through batches"
    images = pq.read_table(proj / "data/ingest/images.parquet", columns=["path"]).column("path").to_pylist()
    assert len(images) == 3 and sum(p.startswith("inbox/") for p in images) == 1, "the new image came in"
    assert (proj / "data/feid/feid.parquet").exists() and (proj / "data/inbox/images.dvc").exists()
