"""flows.supervise: a signal or a full disk ends the supervised command's whole process group
with one line; a command that ends by itself keeps its exit code. (The real full disk and a
real `seke run` are in test_failing_cleanly.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from flows import supervise

SPIN = [sys.executable, "-c", "import os, time; os.fork(); time.sleep(120)"]  # a group of two


def _alive(pgid: int) -> bool:
    return bool(supervise.members(pgid))


def _spawned(monkeypatch) -> list:
    seen: list = []
    real = supervise.subprocess.Popen

    def popen(*a, **kw):
        seen.append(real(*a, **kw))
        return seen[-1]

    monkeypatch.setattr(supervise.subprocess, "Popen", popen)
    return seen


def test_an_exit_code_passes_through(tmp_path):
    assert supervise.run([sys.executable, "-c", "raise SystemExit(3)"], root=tmp_path) == 3
    assert supervise.run([sys.executable, "-c", "pass"], root=tmp_path) == 0


def test_a_full_disk_stops_a_command_that_would_spin_for_ever(tmp_path, monkeypatch):
    monkeypatch.setattr(supervise, "FULL_S", 1.0)
    monkeypatch.setattr(supervise, "full", lambda paths: (tmp_path, 4096))
    seen = _spawned(monkeypatch)
    with pytest.raises(supervise.Stopped) as e:  # SPIN left alone would exit 0 after 120 s
        supervise.run(SPIN, root=tmp_path)
    assert e.value.code == supervise.EXIT_DISK_FULL
    assert str(e.value).startswith(f"no space left on the device holding {tmp_path} (4 KiB free): the run was stopped")
    assert not _alive(seen[0].pid)  # its forked child too


def test_a_short_dip_in_free_space_does_not_stop_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(supervise, "FULL_S", 1.5)
    t0 = time.monotonic()
    monkeypatch.setattr(supervise, "full", lambda paths: (tmp_path, 0) if time.monotonic() - t0 < 0.6 else None)
    assert supervise.run([sys.executable, "-c", "import time; time.sleep(2)"], root=tmp_path) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_whole_group_with_one_line(tmp_path, monkeypatch, sig):
    seen = _spawned(monkeypatch)
    threading.Timer(0.5, os.kill, (os.getpid(), sig)).start()
    with pytest.raises(supervise.Stopped) as e:
        supervise.run(SPIN, root=tmp_path)
    assert e.value.code == 128 + sig and str(e.value).startswith(f"stopped by {signal.Signals(sig).name}")
    assert not _alive(seen[0].pid)
    assert signal.getsignal(sig) is not None  # the handler was put back


# A leader that is a zombie while its process still runs: its main thread has exited
# (pthread_exit), another thread goes on for 1.5 s and SIGTERM is ignored. So is a dying DVC for a
# moment: its main thread gone, its thread pool still being torn down.
HALF_DEAD = [
    sys.executable,
    "-c",
    "import ctypes, signal, threading, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "threading.Thread(target=time.sleep, args=(1.5,)).start(); ctypes.CDLL(None).pthread_exit(None)",
]


def test_a_stopped_run_reaps_its_command_so_no_pid_outlives_it(tmp_path, monkeypatch):
    """An unreaped leader keeps its PID after `seke run` returns, and the next `dvc repro`
    finds DVC's lock held by that PID ("is busy")."""
    seen = _spawned(monkeypatch)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    with pytest.raises(supervise.Stopped):
        supervise.run(HALF_DEAD, root=tmp_path)
    assert seen[0].returncode is not None  # reaped: the PID is free


def test_a_full_disk_in_an_exception_chain_is_one_line(tmp_path):
    try:
        try:
            raise OSError(28, "No space left on device", str(tmp_path / "x.parquet"))
        except OSError as inner:
            raise RuntimeError("flow failed") from inner
    except RuntimeError as e:
        line = supervise.disk_full(e)
    assert line and line.startswith(f"no space left on the device holding {tmp_path}") and "x.parquet" in line
    assert supervise.disk_full(ValueError("no")) is None


def test_params_that_are_not_sections_leave_the_run_watched_not_broken(tmp_path):
    (tmp_path / "params.yaml").write_text("- a list, not sections\n")
    assert supervise.targets(tmp_path)[0] == tmp_path.resolve()  # the project is still watched
    assert supervise.run([sys.executable, "-c", "raise SystemExit(5)"], root=tmp_path) == 5
    (tmp_path / "params.yaml").write_text("runtime:\n  cache: .seke/cache\n")
    assert tmp_path.resolve() / ".seke/cache" in supervise.targets(tmp_path)


def _rwlock(root, pids: list[int]) -> None:
    d = root / ".dvc" / "tmp"
    d.mkdir(parents=True)
    holders = [{"pid": p, "cmd": "dvc repro"} for p in pids]
    (d / "rwlock").write_text(json.dumps({"read": {str(root / "a"): holders}, "write": {str(root / "b"): holders[0]}}))


def test_the_next_run_waits_for_a_killed_dvc_to_be_reaped_not_for_a_live_one(tmp_path):
    """After `kill -9` of `seke run`, its DVC is a zombie until init reaps it, and DVC reads
    the zombie's PID as a holder of its lock: preflight waits for the reaping."""
    from flows.preflight import wait_for_dead_holders

    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # exits at once; this test is its "init"
    while not open(f"/proc/{dead.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
        time.sleep(0.01)
    _rwlock(tmp_path, [dead.pid, os.getpid()])  # and a live holder: a real second run
    assert wait_for_dead_holders(tmp_path, timeout=0.5) == [dead.pid]  # not reaped: said so
    threading.Timer(0.3, dead.wait).start()
    assert wait_for_dead_holders(tmp_path, timeout=10) == []
    assert not os.path.exists(f"/proc/{dead.pid}")  # it returned once the zombie was reaped
    assert wait_for_dead_holders(tmp_path / "nowhere") == []  # no lock file: nothing to wait for
