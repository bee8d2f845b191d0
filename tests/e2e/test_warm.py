"""The warm stage runner (flows/warm.py): stages forked from a process that imported the heavy
libraries once. The same FEID as stages in their own processes; a `kill -9` of `dvc repro`
kills the forked stage too, and the next run completes it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import opsproj
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.e2e


def feid(proj: Path) -> list[dict]:
    return sorted(pq.read_table(proj / "data/feid/feid.parquet").to_pylist(), key=lambda r: r["id"])


def started(log: Path) -> list[tuple[int, str]]:
    if not log.exists():
        return []
    return [(int(p), line.split()[-1]) for line in log.read_text().splitlines() for p in [line.split()[0]]]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(state) and not state.startswith("Z")


def test_warm_stages_build_the_same_feid_and_die_with_their_client(tmp_path, monkeypatch):
    from flows.warm import ENV, runner

    ref = opsproj.make_project(tmp_path / "ref", opsproj.london(2), git=False)
    proj = opsproj.make_project(tmp_path / "warm", opsproj.london(2), git=False)
    for p in (ref, proj):
        opsproj.run(p, "dvc", "init", "-q", "--no-scm")
    # not the test session's runner, nor an on-demand one (flows/daemon.py): every stage in its own process
    plain = {**{k: v for k, v in opsproj.env(ref).items() if k != ENV}, "SEKE_NO_WARM": "1"}
    opsproj.run(ref, "dvc", "repro", env_=plain)  # every stage in its own process
    monkeypatch.delenv("SEKE_NO_WARM", raising=False)
    monkeypatch.delenv(ENV, raising=False)  # a runner of this test's own
    env = opsproj.env(proj)
    monkeypatch.chdir(proj)
    with runner() as sock:
        assert sock, "the warm runner did not start"
        log = Path(sock).parent / "stages.log"
        env[ENV] = sock
        proc = subprocess.Popen(
            [str(opsproj.BIN / "dvc"), "repro"], cwd=proj, env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.time() + 300
        while not any(s == "sample" for _, s in started(log)) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before the sample stage started"
        time.sleep(random.Random(5).uniform(0, 0.5))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        child = next(pid for pid, s in started(log) if s == "sample")
        deadline = time.time() + 5
        while alive(child) and time.time() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the forked stage outlived the dvc repro that ran it"

        opsproj.run(proj, "dvc", "repro", env_=env)
        stages = [s for _, s in started(log)]
        assert stages[: stages.index("sample") + 1] == ["ingest", "crop", "prompt", "sample"]
        assert stages.count("sample") == 2 and stages[-1] == "export", stages
    assert feid(proj) == feid(ref)
    assert not [p for d in ("data", "metrics") for p in (proj / d).rglob("*.tmp*")]
