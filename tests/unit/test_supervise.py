"""flows.supervise: a signal or a full disk ends the supervised command's whole process group
with one line; a command that ends by itself keeps its exit code. (The real full disk and a
real `seke run` are in test_failing_cleanly.py.)"""

from __future__ import annotations

import os
import signal
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
    t0 = time.monotonic()
    with pytest.raises(supervise.Stopped) as e:
        supervise.run(SPIN, root=tmp_path)
    assert e.value.code == supervise.EXIT_DISK_FULL and time.monotonic() - t0 < 20
    assert str(e.value).startswith(f"no space left on the device holding {tmp_path} (4 KiB free): the run was stopped")
    assert not _alive(seen[0].pid)  # its forked child too


def test_a_short_dip_in_free_space_does_not_stop_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(supervise, "FULL_S", 3.0)
    t0 = time.monotonic()
    monkeypatch.setattr(supervise, "full", lambda paths: (tmp_path, 0) if time.monotonic() - t0 < 1.5 else None)
    assert supervise.run([sys.executable, "-c", "import time; time.sleep(4)"], root=tmp_path) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_whole_group_with_one_line(tmp_path, monkeypatch, sig):
    seen = _spawned(monkeypatch)
    threading.Timer(1.0, os.kill, (os.getpid(), sig)).start()
    with pytest.raises(supervise.Stopped) as e:
        supervise.run(SPIN, root=tmp_path)
    assert e.value.code == 128 + sig and str(e.value).startswith(f"stopped by {signal.Signals(sig).name}")
    assert not _alive(seen[0].pid)
    assert signal.getsignal(sig) is not None  # the handler was put back


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
