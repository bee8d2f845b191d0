"""One writer per project: an exclusive lock that `make feid`, `seke run`, the pipeline flow and
the incremental flow hold for their whole run (`project_lock`).

It is an OS file lock (`fcntl.flock`) on `<project>/.seke/project.lock`, so a holder that dies,
even by `kill -9`, releases it at once: a crashed holder's lock is never left behind, and the
next run takes it over. The file also records who holds it (pid, host, start time), for the
one line a second run prints. A run started inside a run that holds the lock (the stages that
`dvc repro` runs, a flow called by `seke run`) sees `SEKE_PROJECT_LOCK` and does not take it
again. Local file systems only: on a network file system flock may not be shared between
machines (docs/operations.md says what holds).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

ENV = "SEKE_PROJECT_LOCK"


class ProjectBusy(RuntimeError):
    """Another run holds the project; the message is the one line to print."""


def _holder(path: Path) -> str:
    try:
        d = json.loads(path.read_text() or "{}")
        return f"pid {d.get('pid')} on host {d.get('host')} since {d.get('since')}"
    except (OSError, ValueError):
        return "an unknown process"


@contextlib.contextmanager
def project_lock(root: Path | str = ".", wait_s: float = 0.0, poll_s: float = 0.2) -> Iterator[Path]:
    """Hold the project's lock for the `with` block; wait up to `wait_s` for it, then raise
    ProjectBusy naming the holder."""
    root = Path(root).resolve()
    if os.environ.get(ENV) == str(root):  # this run's parent holds it
        yield root
        return
    path = root / ".seke" / "project.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ProjectBusy(
                        f"another run, {_holder(path)}, holds the project {root}"
                        + (f" (waited {wait_s:g} s)" if wait_s else "")
                    ) from None
                time.sleep(poll_s)
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.environ[ENV] = str(root)
        try:
            yield root
        finally:
            os.environ.pop(ENV, None)
    finally:
        os.close(fd)  # closing the descriptor releases the lock
