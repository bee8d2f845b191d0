"""Run the pipeline's command (`dvc repro`, `dvc exp run`) so that it always ends, and ends
with one line when it ends badly.

- **SIGTERM, SIGINT, SIGHUP** to `seke run` or `python -m flows.server`: the command's whole
  process group (DVC and the stages it started) gets SIGTERM, then SIGKILL after `GRACE_S`;
  the caller's `with` blocks then stop the Prefect server and the warm runner they started.
  One line says what stopped the run; the exit code is 128 + the signal's number.
- **A full disk.** DVC does not always fail on one: its state database (diskcache) retries a
  failed SQLite transaction for ever, so `dvc repro` spins on the CPU and never exits. The
  supervisor watches the file systems the run writes to (the project, Prefect's home, DVC's
  cache, the response cache, the temporary folder); when one stays below `MIN_FREE` bytes for
  `FULL_S` seconds, it stops the run. A command that fails by itself while one of them is
  that low gets the same line. Exit code 74 (EX_IOERR).

`kill -9` of the supervisor itself: the kernel sends its command, and the Prefect server
(`flows.server`), SIGTERM; the warm runner exits when its parent is gone (`flows.warm`).

A re-run after either resumes: DVC skips the stages that finished, and the response cache
answers every sample that was paid for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import yaml

from tasks.core.yamlio import load_yaml

GRACE_S = 15.0  # SIGTERM to SIGKILL
MIN_FREE = 1 << 20  # bytes: below this a file system counts as full
FULL_S = 10.0  # ... when it stays so this long
EXIT_DISK_FULL = 74


class Stopped(Exception):
    """The run was stopped; `str(e)` is the one line to print, `e.code` the exit code."""

    def __init__(self, line: str, code: int):
        super().__init__(line)
        self.code = code


def _free(path: Path) -> int:
    """Bytes this process can still write under `path` (root may use the reserved blocks)."""
    st = os.statvfs(path)
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def _existing(p: Path) -> Path:
    """`p`, or its nearest parent that exists: a folder not made yet lands on its parent's file system."""
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def targets(root: Path | str = ".") -> list[Path]:
    """The paths the run writes under: the project, Prefect's home, DVC's cache, the temporary
    folder and a local response cache (`runtime.cache`). Read once per run: a poll only stats."""
    root = Path(root).resolve()
    paths = [root, Path(os.environ.get("PREFECT_HOME", root)), root / ".dvc" / "cache", Path(tempfile.gettempdir())]
    try:
        cache = ((load_yaml((root / "params.yaml").read_text()) or {}).get("runtime") or {}).get("cache")
        if cache and "://" not in str(cache):
            paths.append(root / cache)
    except (OSError, AttributeError, yaml.YAMLError):  # no params.yaml, or not sections: the rest is watched
        pass
    return paths


def watched(paths: list[Path]) -> dict[int, Path]:
    """One existing path per file system the run writes to, keyed by device."""
    out: dict[int, Path] = {}
    for p in map(_existing, paths):
        out.setdefault(p.stat().st_dev, p)
    return out


def full(paths: list[Path]) -> tuple[Path, int] | None:
    """A watched file system with less than MIN_FREE bytes free, and its free bytes."""
    for p in watched(paths).values():
        try:
            free = _free(p)
        except OSError:
            continue
        if free < MIN_FREE:
            return p, free
    return None


def _full_line(where: tuple[Path, int], what: str = "the run was stopped") -> str:
    path, free = where
    return (
        f"no space left on the device holding {path} ({free // 1024} KiB free): {what}. "
        "Free space there and run again; it resumes where it stopped, and paid answers are not paid again"
    )


def disk_full(exc: BaseException) -> str | None:
    """One line for an exception that a full disk caused (anywhere in its chain), else None."""
    import errno
    import sqlite3

    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            path = _existing(Path(e.filename or ".").resolve())
            line = _full_line((path, _free(path)), f"writing {e.filename} failed" if e.filename else "a write failed")
            return f"{e.strerror}. {line}" if getattr(e, "unsaved", 0) else line
        if isinstance(e, sqlite3.OperationalError) and "full" in str(e):
            return f"no space left for a database ({e}); free space and run again"
        e = e.__cause__ or e.__context__
    return None


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _prctl():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _prctl()  # looked up here, not in the forked child (no loader lock taken after fork)


def die_with_parent() -> None:
    """`preexec_fn` for a child that must not outlive this process, even after its `kill -9`
    (Linux: the kernel sends SIGTERM; elsewhere a no-op). One system call, nothing imported."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid` (Linux /proc; elsewhere the leader)."""
    if not os.path.isdir("/proc/self"):
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except ProcessLookupError:
            return []
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fields = proc_stat(int(pid))
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(pid))
    return out


def proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: state, ppid, pgrp, ... (None: gone, or not Linux)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the command's group; SIGKILL to whatever of it is left after GRACE_S.

    Done when the group has no live member *and* the leader is reaped. A multi-threaded
    leader (DVC) shows as a zombie while its other threads are still being torn down, and
    cannot be reaped until they are: left unreaped, its PID lives on after this process, and
    the next `dvc repro` finds its read/write lock held by that PID ("is busy")."""
    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            proc.poll()
            return
        t0 = time.monotonic()
        while time.monotonic() - t0 < wait:
            if proc.poll() is not None and not members(proc.pid):
                return
            time.sleep(0.1)


def run(cmd: list[str], env: dict | None = None, root: Path | str = ".", output: IO | None = None) -> int:
    """Run `cmd` (in `root`) in its own process group and return its exit code; raise Stopped
    on a signal or a full disk, after its whole group has gone. `output`: a file for its
    stdout and stderr (default: this process's). Signals are handled from the main thread
    only (a Prefect task's thread leaves them to its process)."""
    got: list[int] = []
    handlers = {}
    paths = targets(root)

    def on_signal(signum, _frame):
        got.append(signum)

    proc = subprocess.Popen(
        cmd,
        cwd=root,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT if output else None,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            handlers[s] = signal.signal(s, on_signal)
    try:
        low_since: float | None = None
        while True:
            try:
                rc = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            if got:
                _stop_group(proc)
                name = signal.Signals(got[0]).name
                raise Stopped(
                    f"stopped by {name}: the run and every process it started have ended; "
                    "run again to resume (finished stages and paid answers are kept)",
                    128 + got[0],
                )
            where = full(paths)
            low_since = (low_since or time.monotonic()) if where else None
            if where and time.monotonic() - low_since >= FULL_S:
                _stop_group(proc)
                raise Stopped(_full_line(where), EXIT_DISK_FULL)
        if rc:
            where = full(paths)
            if where:
                raise Stopped(_full_line(where, f"the run failed (exit {rc})"), EXIT_DISK_FULL)
        return rc
    finally:
        if proc.poll() is None:
            _stop_group(proc)
        for s, h in handlers.items():
            signal.signal(s, h)
