"""`kill -9` at a random moment of each stage, then the run again as `make feid` runs it
(`python -m flows.server dvc repro`): the FEID equals an uninterrupted run's, and no temporary
file is left in the outputs. A kill just after a stage can land while DVC rewrites dvc.lock in
place; the entry point repairs that (flows/lockfile.py, tests/e2e/test_lockfile.py). (The sample
stage's kill test, with the response cache, is tests/e2e/test_openai_resume.py.)"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from project import BIN, make_project, project_env, run

pytestmark = pytest.mark.e2e

STAGES = ("ingest", "crop", "prompt", "verify", "export")
OUTPUTS = ("data", "metrics", "plots")


def _feid(proj: Path) -> list[dict]:
    rows = pq.read_table(proj / "data/feid/feid.parquet").to_pylist()
    return sorted(rows, key=lambda r: r["id"])


def _running(stage: str) -> bool:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return f"flows.run {stage}" in ps


def _strays(proj: Path) -> list[str]:
    return [str(p.relative_to(proj)) for d in OUTPUTS for p in (proj / d).rglob("*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted build of the same project, and the digest of its FEID."""
    proj = make_project(tmp_path_factory.mktemp("ref"), london=1)
    run(proj, "dvc", "repro", env=project_env(proj))
    return _feid(proj)


@pytest.mark.parametrize("stage", STAGES)
def test_kill_9_in_a_stage_then_resume(stage, reference, tmp_path):
    proj = make_project(tmp_path, london=1)
    env = project_env(proj)
    proc = subprocess.Popen(
        [str(BIN / "dvc"), "repro"], cwd=proj, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 600
    while not _running(stage) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the pipeline ended before {stage} started"
    seed = int(hashlib.sha256(stage.encode()).hexdigest()[:8], 16)
    time.sleep(random.Random(seed).uniform(0, 2.0))  # a moment inside the stage (or just after it)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    run(proj, "python", "-m", "flows.server", "dvc", "repro", env=env)
    assert _feid(proj) == reference
    assert _strays(proj) == [], "a killed run left temporary files in the outputs"
    status = run(proj, "dvc", "status", env=env).stdout
    assert "changed" not in status, status
