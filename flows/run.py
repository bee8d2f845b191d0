"""`python -m flows.run <stage> [--params params.yaml]`: run one stage as a Prefect flow.
This is each DVC stage's `cmd`. A failure exits non-zero with a readable message."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
from pathlib import Path

from flows import env

env.apply()

ROOT = Path(__file__).resolve().parents[1]
# what a stage may read from the project without DVC tracking it as a dep: its params (DVC's
# `params:`), its inputs and outputs (DVC's deps/outs), scratch state, and DVC's own record
# (dvc.lock: copied by flows/lockfile.py, never read for data)
UNTRACKED = ("params.yaml", "dvc.yaml", "dvc.lock", "data/", "metrics/", "plots/", ".seke/", ".dvc/", ".git/")


def trace(stage: str) -> None:
    """With SEKE_TRACE_DIR set, record every project file this stage's process read (the
    modules it imported and the files it opened) in <dir>/<stage>.json. The dependency
    test compares them with the stage's `deps` in dvc.yaml."""
    out = os.environ.get("SEKE_TRACE_DIR")
    if not out:
        return
    opened: set[str] = set()

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.add(os.path.abspath(os.fsdecode(args[0])))

    def rel(path: str) -> str | None:
        try:
            f = Path(path).resolve()
            r = f.relative_to(ROOT).as_posix()
        except (ValueError, OSError):
            return None
        return None if not f.is_file() or "__pycache__" in r or r.startswith(UNTRACKED) else r

    def write() -> None:
        files = {rel(getattr(m, "__file__", None) or "") for m in list(sys.modules.values())}
        files |= {rel(p) for p in opened}
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"{stage}.json").write_text(json.dumps(sorted(f for f in files if f), indent=1))

    sys.addaudithook(hook)
    atexit.register(write)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.run")
    ap.add_argument("stage")
    ap.add_argument("--params", default="params.yaml")
    a = ap.parse_args(argv)
    trace(a.stage)

    from expectations import ExpectationsFailed
    from flows.stages import stage_flow
    from tasks.core.dvcfile import stage_names

    if a.stage not in stage_names():
        ap.error(f"unknown stage {a.stage!r}; stages: {', '.join(stage_names())}")
    from flows import lockfile  # here, not at the top: a client of the warm runner never needs it (pyarrow, fsspec)

    lockfile.keep()  # dvc.lock as DVC left it, in case a kill cuts short its next write
    try:
        with env.no_heartbeats():
            stage_flow(a.stage)(params_path=a.params)
        from prefect.events.worker import EventsWorker

        EventsWorker.instance().wait_until_empty()  # the run's last events (artifact, state) before exit
    except ExpectationsFailed as e:
        print(f"\nstage {a.stage} FAILED its expectations; its output was not written.\n{e}", file=sys.stderr)
        return 1
    except Exception as e:  # a full disk is one line, not a traceback; anything else as it was
        from flows.supervise import EXIT_DISK_FULL, disk_full

        line = disk_full(e)
        if line is None:
            raise
        print(f"\nstage {a.stage}: {line}", file=sys.stderr)
        return EXIT_DISK_FULL
    return 0


if __name__ == "__main__":
    from flows.warm import ENV, IN_RUNNER, run_remote

    if not os.environ.get(ENV) and not os.environ.get(IN_RUNNER):  # a bare `dvc repro`: flows/daemon.py
        from flows.daemon import ensure

        for k, v in (ensure(".") or {}).items():
            if k != "pid":
                os.environ[k] = v
    code = run_remote(sys.argv[1:])  # in the warm stage runner when there is one (flows/warm.py)
    raise SystemExit(main() if code is None else code)
