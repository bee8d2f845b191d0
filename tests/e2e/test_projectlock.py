"""One writer per project (tasks/infra/projectlock.py): a second run steps aside with one line
naming the holder, a `kill -9` of the holder frees the project at once, and three incremental
runs started together, with files arriving while they land, leave the inbox whole."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.infra.projectlock import ProjectBusy, project_lock

ROOT = Path(__file__).resolve().parents[2]
HOLD = (
    "import sys, time; from tasks.infra.projectlock import project_lock\n"
    "with project_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n"
)


def _holder(root: Path) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_run_steps_aside_and_a_killed_holder_frees_the_project(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(ProjectBusy) as e:
            with project_lock(tmp_path, wait_s=0.3):
                pass
        msg = str(e.value)
        assert f"pid {holder.pid} on host" in msg and "since" in msg and "waited 0.3 s" in msg and "\n" not in msg
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with project_lock(tmp_path):  # the kernel released a dead holder's lock: taken over at once
        info = json.loads((tmp_path / ".seke" / "project.lock").read_text())
        assert info["pid"] == os.getpid()


def test_nested_runs_in_the_holder_do_not_lock_again(tmp_path):
    with project_lock(tmp_path):
        with project_lock(tmp_path):  # e.g. seke run -> the pipeline flow: no deadlock
            pass


def test_a_waiting_run_gets_the_project_when_the_holder_ends(tmp_path):
    holder = _holder(tmp_path)
    t0 = time.monotonic()
    try:
        subprocess.Popen(["sh", "-c", f"sleep 1; kill {holder.pid}"])
        with project_lock(tmp_path, wait_s=20):
            assert 0.8 < time.monotonic() - t0 < 20
    finally:
        holder.kill()
        holder.wait()


# the real command, with every write to the inbox slowed (as on a slow store): the landing
# that an unlocked second run used to interleave with
SLOW_STORE = (
    "import runpy, sys, time\n"
    "import tasks.infra.io as io\n"
    "put = io.put_whole\n"
    "io.put_whole = lambda *a, **k: (time.sleep(0.5), put(*a, **k))[1]\n"
    "sys.argv = ['flows.incremental', '--no-record']\n"
    "runpy.run_module('flows.incremental', run_name='__main__', alter_sys=True)\n"
)


@pytest.mark.e2e
@pytest.mark.parametrize("n, store", [(3, "real"), (2, "slowed")])
def test_incremental_runs_started_together_lose_nothing(tmp_path, n, store):
    import opsproj
    from simserver import TEST_KEY
    from test_incremental import project

    from simvllm.server import ServerThread, SimConfig, SimVLLM

    proj, incoming = project(tmp_path, base=1)
    opsproj.put_images(incoming, opsproj.london(3, start=1))
    with ServerThread(SimVLLM(SimConfig())) as server:
        env = opsproj.env(proj, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY=TEST_KEY)
        cmd = [sys.executable, "-m", "flows.incremental", "--no-record"]
        start = cmd if store == "real" else [sys.executable, "-c", SLOW_STORE]
        runs = []
        for i in range(n):
            runs.append(
                subprocess.Popen(start, cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            )
            if i == 0:
                opsproj.put_images(incoming, opsproj.london(3, start=4))  # files arrive while the first lands
        outs = [r.communicate(timeout=900) for r in runs]
        assert all(r.returncode == 0 for r in runs), [o[1][-2000:] for o in outs]
        built = [json.loads(o[0][o[0].index("{") :]) for o in outs]
        aside = [b for b in built if "stepped_aside" in b]
        assert len(aside) >= 1 and all("holds the project" in b["stepped_aside"] for b in aside)
        assert all("stepped aside" in o[0] + o[1] for o, b in zip(outs, built) if "stepped_aside" in b)
        # whatever the runs missed, the next run brings in
        r = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(proj / "data/inbox/manifest.csv")))
    files = sorted(p.name for p in (proj / "data/inbox/images").iterdir())
    assert len(rows) == len({r["sha256"] for r in rows}) == len(files) == 6  # every arrived image once
    assert sorted(Path(r["path"]).name for r in rows) == files
    assert not list((proj / "data/inbox").rglob("*.tmp-*"))
