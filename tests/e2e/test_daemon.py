"""A bare `dvc repro` gets the warm stage runner and one Prefect server from the project's
on-demand daemon (flows/daemon.py), and nothing of it is left running once it is idle."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import opsproj
import pytest
from prefectdb import seed

pytestmark = pytest.mark.e2e


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_bare_dvc_repro_runs_its_stages_in_the_on_demand_runner_which_then_stops(tmp_path):
    from flows.daemon import folder

    proj = opsproj.make_project(tmp_path, opsproj.london(2), git=False)
    opsproj.run(proj, "dvc", "init", "-q", "--no-scm")
    env = {k: v for k, v in opsproj.env(proj).items() if not k.startswith(("SEKE_", "PREFECT_API"))}
    env["SEKE_DAEMON_IDLE_S"] = "4"
    seed(env["PREFECT_HOME"], env)  # the daemon's Prefect server: migrated once, not in this test
    opsproj.run(proj, "dvc", "repro", env_=env)
    info = json.loads((folder(proj) / "env.json").read_text())  # still up: idle for less than 4 s
    ran = (Path(info["SEKE_STAGE_SERVER"]).parent / "stages.log").read_text().split("\n")
    assert [ln.split()[-1] for ln in ran if ln] == ["ingest", "crop", "prompt", "sample", "verify", "export"]
    assert (proj / "data/feid/feid.parquet").exists()
    deadline = time.time() + 60
    while _alive(info["pid"]) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(info["pid"]), "the daemon did not stop once idle"
    assert not Path(info["SEKE_STAGE_SERVER"]).exists(), "its warm runner's socket is left behind"
    # a second bare run starts a new one (a dead daemon is replaced, never waited for)
    opsproj.run(proj, "dvc", "repro", "-f", "export", env_=env)
    again = json.loads((folder(proj) / "env.json").read_text())
    assert again["pid"] != info["pid"]
