"""A bare `dvc repro` gets what `make feid` and `seke run` start for a whole run: one Prefect
server and one warm stage runner (`flows.server.shared_server`), started on demand by the
first stage and stopped by themselves once idle, as build daemons do.

A stage's command (`python -m flows.run <stage>`) with no runner in its environment calls
`ensure(root)`: it connects to the project's daemon, whose folder is keyed by the project's
path (`<tmp>/seke-<uid>-<hash>`, so two projects never share one), or starts it under a file
lock (two stages starting together start one daemon). The daemon writes the server's URL and
the runner's socket to `env.json`, and exits, with its server and runner, once no stage has
run for `IDLE_S` seconds. A daemon left by a crash is found dead (its pid is gone, or its
socket refuses) and replaced. A `kill -9` of `dvc repro` still kills its stage: the runner
kills a child whose client went away. `SEKE_NO_WARM=1` turns it all off.

    python -m flows.daemon DIR          # started by ensure(); stops by itself
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IDLE_S = float(os.environ.get("SEKE_DAEMON_IDLE_S", "30"))
START_TIMEOUT_S = 120.0


def folder(root: Path | str) -> Path:
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"seke-{os.getuid()}-{key}"


def _alive(d: Path) -> dict | None:
    """The running daemon's env ({SEKE_STAGE_SERVER, PREFECT_API_URL}), or None."""
    try:
        info = json.loads((d / "env.json").read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(info["SEKE_STAGE_SERVER"])
    except OSError:
        return None
    finally:
        s.close()
    return info


def ensure(root: Path | str = ".") -> dict | None:
    """Connect to the project's daemon, starting it if needed; its env, or None (stages then
    run as before, in their own processes)."""
    if os.environ.get("SEKE_NO_WARM"):
        return None
    d = folder(root)
    d.mkdir(mode=0o700, exist_ok=True)
    if info := _alive(d):
        return info
    with open(d / "start.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # one starter; the others find its daemon alive
        if info := _alive(d):
            return info
        (d / "env.json").unlink(missing_ok=True)
        env = {
            **os.environ,
            "PREFECT_HOME": os.environ.get("PREFECT_HOME") or str(Path(root).resolve() / ".seke" / "prefect"),
        }
        Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
        with open(d / "daemon.log", "ab") as log:
            subprocess.Popen(
                [sys.executable, "-m", "flows.daemon", str(d)],
                cwd=str(Path(root).resolve()),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # not in dvc repro's process group: it outlives the stage
            )
        t0 = time.monotonic()
        while time.monotonic() - t0 < START_TIMEOUT_S:
            if info := _alive(d):
                return info
            time.sleep(0.1)
    print(
        f"warm stage runner did not start (see {d / 'daemon.log'}): stages start their own processes", file=sys.stderr
    )
    return None


def _idle(runner_dir: Path, since: float) -> bool:
    """No stage running, and none started or ended for IDLE_S seconds (`flows.warm` keeps
    `active` up to date)."""
    f = runner_dir / "active"
    try:
        active, last = int(f.read_text() or 0), f.stat().st_mtime
    except (OSError, ValueError):
        active, last = 0, since
    return active == 0 and time.time() - max(last, since) > IDLE_S


def serve(d: Path) -> None:
    import signal

    from flows.server import shared_server

    # SIGTERM or SIGINT: leave the `with` blocks, so the server and the runner go too
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    with contextlib.ExitStack() as stack:
        api = stack.enter_context(shared_server())
        sock = os.environ.get("SEKE_STAGE_SERVER")
        if not sock:
            raise SystemExit("no warm stage runner")
        info = {"pid": os.getpid(), "SEKE_STAGE_SERVER": sock, "PREFECT_API_URL": api}
        tmp = d / "env.json.tmp"
        tmp.write_text(json.dumps(info))
        tmp.replace(d / "env.json")
        since = time.time()
        try:
            while not _idle(Path(sock).parent, since):
                time.sleep(1.0)
        finally:
            (d / "env.json").unlink(missing_ok=True)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
