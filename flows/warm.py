"""A warm stage runner: one process that has imported the heavy libraries once (Great
Expectations, Prefect, pandas, pyarrow, polars, ...) and forks a child for each stage.

Every DVC stage is its own process, and about 4-5 of a stage's 6-9 seconds of fixed cost
were imports, Great Expectations' most of all (measured by `benchmarks/stage_overhead.py`,
README "Stage overhead"). `flows.server.shared_server()` (what `make feid`, `seke run` and the
incremental flow use) starts this runner next to its Prefect server and exports
`SEKE_STAGE_SERVER` (a Unix socket). A stage's command, `python -m flows.run <stage>`, then
hands its arguments, working directory, environment and standard streams to the runner and
waits for the exit code; the stage runs in a fresh fork of the runner. Nothing else changes:
the same Prefect flow runs, the same outputs, the same exit codes.

- Project code is never imported by the runner, only by each child, so an edited stage is
  picked up, and the dependency trace (`SEKE_TRACE_DIR`) sees what the stage imported.
- A client that dies (`kill -9` of `dvc repro`) closes its socket: the runner then kills its
  child's process group at once, as if the stage had been killed itself.
- No runner (not started, or gone): the stage runs in its own process as before.

    python -m flows.warm SOCKET        # started by flows.server; stops on SIGTERM
"""

from __future__ import annotations

import gc
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Iterator

ENV = "SEKE_STAGE_SERVER"
IN_RUNNER = "SEKE_IN_RUNNER"  # set in a forked stage
PROJECT = ("flows", "tasks", "expectations", "simvllm")  # imported by each stage from its project, never kept
PRELOAD = (
    "great_expectations",
    "prefect",
    "prefect.flow_engine",
    "prefect.artifacts",
    "prefect.utilities.visualization",  # what a flow run imports on its way: once here, not in every stage
    "fastapi.encoders",
    "pandas",
    "numpy",
    "pyarrow",
    "pyarrow.parquet",
    "polars",
    "PIL.Image",
    "fsspec",
    "pydantic",
    "yaml",
    "openai",
)


# ---------------------------------------------------------------------------- client
def _send(sock: socket.socket, data: bytes, fds: list[int] | None = None) -> None:
    head = struct.pack("!I", len(data))
    if fds:
        socket.send_fds(sock, [head], fds)
        sock.sendall(data)
    else:
        sock.sendall(head + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def run_remote(argv: list[str]) -> int | None:
    """Run `python -m flows.run *argv` in the warm runner; its exit code, or None when there
    is no runner to ask (the caller then runs the stage itself)."""
    path = os.environ.get(ENV)
    if not path:
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        s.close()
        return None
    with s:
        msg = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        sys.stdout.flush(), sys.stderr.flush()
        _send(s, msg, [0, 1, 2])
        try:
            return struct.unpack("!i", _recv_exact(s, 4))[0]
        except ConnectionError:
            print("the warm stage runner went away while the stage ran", file=sys.stderr)
            return 1


# ---------------------------------------------------------------------------- runner
@contextmanager
def runner(timeout: float = 120.0) -> Iterator[str | None]:
    """Start a warm stage runner for the `with` block and export its socket in SEKE_STAGE_SERVER
    (None, and stages run as before, when it cannot start)."""
    if os.environ.get(ENV) or os.environ.get("SEKE_NO_WARM"):
        yield os.environ.get(ENV)
        return
    d = tempfile.mkdtemp(prefix="seke-")  # short: a Unix socket path has at most ~100 bytes
    path = os.path.join(d, "stage.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.warm", path],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    try:
        ready = proc.stdout.readline().strip() == "ready" if proc.stdout else False
        if ready:
            os.environ[ENV] = path
        else:
            print("warm stage runner did not start: stages start their own processes", file=sys.stderr)
        yield path if ready else None
    finally:
        from flows.supervise import stop

        os.environ.pop(ENV, None)
        stop(proc)
        shutil.rmtree(d, ignore_errors=True)


def _child(req: dict, fds: list[int]) -> None:
    """In the fork: become the stage's process, run flows.run, exit with its code."""
    code = 1
    try:
        os.setpgid(0, 0)  # its own group: the runner can kill it and whatever it started
        for i, fd in enumerate(fds[:3]):
            os.dup2(fd, i)
            os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        os.environ.pop(ENV, None)  # the stage itself runs here, not in another fork
        os.environ[IN_RUNNER] = "1"  # ... nor in an on-demand runner's (flows/daemon.py)
        import prefect.context

        prefect.context.refresh_global_settings_context()  # Prefect's settings from this environment
        sys.argv = ["-m", *req["argv"]]
        sys.path[0] = req["cwd"]
        for name in [m for m in sys.modules if m.split(".")[0] in PROJECT]:
            del sys.modules[name]  # the runner's own `flows` (it was started as flows.warm): the project's instead
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        import runpy

        try:
            runpy.run_module("flows.run", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported on the stage's own stderr
        import traceback

        traceback.print_exc()
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()  # what a normal exit runs (the dependency trace is written there)
            sys.stdout.flush(), sys.stderr.flush()
        finally:
            os._exit(code)


_CHILDREN: set[int] = set()  # the stages running now (each its own process group)
_ACTIVE = [0]
_ACTIVE_LOCK = threading.Lock()


def _activity(path: str, delta: int) -> None:
    """Count the stages running in `<runner dir>/active`; its mtime is the last start or end
    (the on-demand daemon, `flows.daemon`, stops when it is idle)."""
    with _ACTIVE_LOCK:
        _ACTIVE[0] += delta
        with open(os.path.join(os.path.dirname(path), "active"), "w") as fh:
            fh.write(str(_ACTIVE[0]))


def _watch(conn: socket.socket, pid: int, path: str = "") -> None:
    """Wait for the child; kill its group if the client goes away first."""
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                try:
                    conn.sendall(struct.pack("!i", code if code >= 0 else 128 - code))
                except OSError:
                    pass
                return
            r, _, _ = select.select([conn], [], [], 0.05)
            if r and not conn.recv(1, socket.MSG_PEEK):  # the client died (kill -9 of dvc repro)
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)
                return
    finally:
        _CHILDREN.discard(pid)
        conn.close()
        if path:
            _activity(path, -1)


def _orphan_guard(parent: int, srv: socket.socket) -> None:
    """Exit when the process that started the runner is gone (`kill -9` of `seke run`): a
    runner nobody will stop must not be left behind. Running stages keep their own groups."""
    while os.getppid() == parent:
        time.sleep(1.0)
    srv.close()
    for pid in list(_CHILDREN):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os._exit(0)


def serve(path: str) -> None:
    import warnings

    warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)  # 3.12+: see _watch
    for m in PRELOAD:
        try:
            __import__(m)
        except ImportError:
            pass
    # what was imported stays out of the collector's way: no child scans it again, and no
    # collection in a child writes to (and so copies) the pages it shares with the runner
    gc.freeze()
    sys.path[0] = ""  # children put their own project first
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    signal.signal(signal.SIGTERM, lambda *_: (srv.close(), os._exit(0)))
    threading.Thread(target=_orphan_guard, args=(os.getppid(), srv), daemon=True).start()
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        try:
            head, fds, _, _ = socket.recv_fds(conn, 4, 3)
            req = json.loads(_recv_exact(conn, struct.unpack("!I", head)[0]))
        except (OSError, ValueError, struct.error):
            conn.close()
            continue
        pid = os.fork()
        if pid == 0:
            srv.close()
            conn.close()
            _child(req, fds)
        for fd in fds:
            os.close(fd)
        with open(os.path.join(os.path.dirname(path), "stages.log"), "a") as log:  # what ran where (tests)
            log.write(f"{pid} {req['cwd']} {' '.join(req['argv'])}\n")
        _CHILDREN.add(pid)
        _activity(path, +1)
        threading.Thread(target=_watch, args=(conn, pid, path), daemon=True).start()


if __name__ == "__main__":
    serve(sys.argv[1])
