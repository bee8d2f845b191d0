"""One Prefect server for a whole run of several stages.

With no `PREFECT_API_URL`, every Prefect process starts a temporary server of its own, and
each DVC stage is its own process: about 10 s of every stage went there (measured on 2
cores, see README "Stage overhead"). `shared_server()` starts one real `prefect server
start` on 127.0.0.1, points `PREFECT_API_URL` at it for everything started inside (DVC's
stage commands inherit the environment), and stops it afterwards. Its database lives under
`PREFECT_HOME`, so the flow runs stay visible to a later `prefect server start`. Next to it
runs a warm stage runner (`flows.warm`, SEKE_STAGE_SERVER): stage commands fork from a
process that has imported the heavy libraries once, instead of importing them again.

    python -m flows.server dvc repro          # what `make feid` runs
    python -m flows.server -- pytest -q       # any command

A `PREFECT_API_URL` that is already set (your own server or Prefect Cloud) is used as is.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from flows import env

env.apply()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _prefect() -> str:
    return env.tool("prefect")


@contextmanager
def shared_server(timeout: float = 120.0) -> Iterator[str]:
    """A Prefect server (`_prefect_server`) and a warm stage runner (`flows.warm`) for the
    `with` block; yields the API URL."""
    from flows.warm import runner

    with _prefect_server(timeout) as api, runner(), _prefect_settings(api):
        yield api


@contextmanager
def _prefect_settings(api: str) -> Iterator[None]:
    """This process's own flow runs (`flows.incremental`, `flows.pipeline`) on the server too.
    Prefect reads `PREFECT_API_URL` once, when first imported: a process that imported it
    before the server started would send them to a temporary server it starts in-process
    (about 8 s of CPU, on the same database). Processes started inside read the environment."""
    if "prefect.context" not in sys.modules:
        yield  # imported later (or never), Prefect reads the environment
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        yield


@contextmanager
def _prefect_server(timeout: float) -> Iterator[str]:
    """Yield the API URL of a Prefect server that lives as long as the `with` block."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    from flows.supervise import die_with_parent, stop

    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    log_path = Path(os.environ["PREFECT_HOME"]) / "server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [_prefect(), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,  # gone with this process, even after its kill -9
        )
    try:
        t0 = time.monotonic()
        while not _healthy(api):
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}; see {log_path}")
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"prefect server did not answer within {timeout:.0f} s; see {log_path}")
            time.sleep(0.25)
        os.environ["PREFECT_API_URL"] = api
        yield api
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        stop(proc)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print(__doc__)
        return 2
    from flows import supervise
    from flows.preflight import ProjectBusy, preflight
    from tasks.core.params import ParamsError

    try:  # params.yaml checked whole, the project locked, a cut-short dvc.lock repaired
        with preflight(), shared_server():
            return supervise.run(args)  # a signal or a full disk ends it, and everything it started
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ProjectBusy as e:
        print(f"stepped aside: {e}", file=sys.stderr)
        return 75
    except supervise.Stopped as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code


if __name__ == "__main__":
    raise SystemExit(main())
