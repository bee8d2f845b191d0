"""A dvc.lock cut short by a kill while DVC rewrote it (DVC writes it in place): the entry
points put back the copy that the last stage command kept (flows/lockfile.py)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from project import BIN, make_project, project_env, run

from flows import lockfile

ROOT = Path(__file__).resolve().parents[2]
GOOD = (ROOT / "dvc.lock").read_bytes()


def _cut(data: bytes, start: float) -> bytes:
    """The first cut of `data` at or after `start` (a fraction) that DVC cannot read. Many
    cuts are readable YAML that only lacks stages or hashes: DVC reruns those stages."""
    with tempfile.TemporaryDirectory() as d:
        probe = Path(d) / "dvc.lock"
        for n in range(int(len(data) * start), len(data)):
            probe.write_bytes(data[:n])
            if lockfile.problem(probe):
                return data[:n]
    raise AssertionError("no cut of dvc.lock is unreadable")


def test_most_cuts_are_readable_and_some_are_not(tmp_path):
    probe = tmp_path / "dvc.lock"
    verdicts = []
    for i in range(0, 40):
        probe.write_bytes(GOOD[: len(GOOD) * i // 40])
        verdicts.append(lockfile.problem(probe) is None)
    assert any(verdicts) and not all(verdicts), verdicts


@pytest.mark.parametrize("start", [0.0, 0.13, 0.5, 0.77])
def test_repair_puts_back_the_kept_copy(tmp_path, start):
    (tmp_path / "dvc.lock").write_bytes(GOOD)
    lockfile.keep(tmp_path)
    assert (tmp_path / lockfile.KEPT).read_bytes() == GOOD
    bad = _cut(GOOD, start)
    (tmp_path / "dvc.lock").write_bytes(bad)
    note = lockfile.repair(tmp_path)
    assert note and "put back" in note
    assert (tmp_path / "dvc.lock").read_bytes() == GOOD
    broken = list((tmp_path / ".seke").glob("dvc.lock.broken-*"))
    assert len(broken) == 1 and broken[0].read_bytes() == bad
    assert lockfile.repair(tmp_path) is None  # readable now: nothing to do


def test_without_a_kept_copy_the_lock_is_moved_aside(tmp_path):
    (tmp_path / "dvc.lock").write_bytes(_cut(GOOD, 0.5))
    note = lockfile.repair(tmp_path)
    assert note and "removed" in note
    assert not (tmp_path / "dvc.lock").exists()
    assert lockfile.repair(tmp_path) is None


def test_a_readable_lock_is_left_alone(tmp_path):
    (tmp_path / "dvc.lock").write_bytes(GOOD)
    assert lockfile.problem(tmp_path / "dvc.lock") is None
    assert lockfile.repair(tmp_path) is None
    assert (tmp_path / "dvc.lock").read_bytes() == GOOD


@pytest.mark.e2e
def test_cut_lock_then_make_feid_reruns_only_the_last_stage(tmp_path):
    proj = make_project(tmp_path, london=1)
    env = project_env(proj)
    run(proj, "dvc", "repro", env=env)
    feid = pq.read_table(proj / "data/feid/feid.parquet").to_pylist()
    whole = (proj / "dvc.lock").read_bytes()
    (proj / "dvc.lock").write_bytes(_cut(whole, 0.5))  # what a kill during DVC's write can leave

    bare = run(proj, "dvc", "repro", env=env, check=False)
    assert bare.returncode != 0 and "dvc.lock" in bare.stderr + bare.stdout  # DVC alone cannot go on

    r = subprocess.run(
        [str(BIN / "python"), "-m", "flows.server", "dvc", "repro"], cwd=proj, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "dvc.lock could not be read" in r.stderr
    ran = [line for line in r.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'export':"], ran  # the kept copy is the lock as export started
    assert pq.read_table(proj / "data/feid/feid.parquet").to_pylist() == feid
    status = run(proj, "dvc", "status", env=env).stdout
    assert "changed" not in status, status
