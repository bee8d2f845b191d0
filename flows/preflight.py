"""What every entry point does before DVC starts, and holds while it runs (`make feid`'s
`flows.server`, `seke run`, the pipeline and incremental flows), stale stages or not:

1. check the whole params.yaml: every mistake one line, named by its path, no traceback
   (`tasks.core.params_check`), and what the annotator backend needs from this environment
   (the local models' files: `Annotator.environment_problems`);
2. take the project's lock (one writer per project, `tasks.infra.projectlock`): a second run
   waits `incremental.lock_wait_s`, then steps aside with one line naming the holder;
3. repair a dvc.lock that a killed run cut short (`flows.lockfile`);
4. wait for the dead holders of DVC's own lock to be reaped (`wait_for_dead_holders`).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Iterator

from flows import lockfile
from flows.supervise import proc_stat
from tasks.core.params import ParamsError, load
from tasks.core.params_check import check
from tasks.core.yamlio import load_yaml
from tasks.infra.projectlock import ProjectBusy, project_lock

__all__ = ["ProjectBusy", "preflight"]


def wait_for_dead_holders(root: Path | str = ".", timeout: float = 10.0) -> list[int]:
    """Wait until no process named in DVC's read/write lock (`.dvc/tmp/rwlock`) is a zombie;
    return those still one after `timeout`.

    A `dvc repro` killed with its supervisor (`kill -9` of `seke run`) dies, but only init
    can reap it, and an init may take seconds to. Until then DVC counts the zombie's PID as
    a live holder and refuses every stage it had locked ("is busy"). A live holder is left
    alone: that is a real second run."""
    try:
        info = json.loads((Path(root) / ".dvc" / "tmp" / "rwlock").read_text())
    except (OSError, ValueError):
        return []
    holders = [
        h
        for kind in ("read", "write")
        for v in (info.get(kind) or {}).values()
        for h in (v if isinstance(v, list) else [v])
    ]
    pids = {int(h["pid"]) for h in holders if isinstance(h, dict) and str(h.get("pid", "")).isdigit()}
    deadline = time.monotonic() + timeout
    while (zombies := sorted(p for p in pids if (proc_stat(p) or [""])[0] == "Z")) and time.monotonic() < deadline:
        time.sleep(0.1)
    return zombies


def _backend_ready(params: Path, overrides: list[str] | None) -> None:
    """Raise ParamsError when the backend cannot run here: before any stage, not at sampling."""
    from tasks.annotators import backend_class

    p = load(params, overrides)
    try:
        cls = backend_class(p.annotator.backend)
    except (ImportError, AttributeError, TypeError):  # a module:Class only the stage's path holds: its own error there
        return
    errs = cls.environment_problems(p)
    if errs:
        raise ParamsError(f"{params}: this environment cannot run it, nothing was run:\n  " + "\n  ".join(errs))


def _wait_s(params: Path) -> float:
    d = load_yaml(params.read_text()) or {}
    return float(((d.get("incremental") or {}).get("lock_wait_s")) or 0.0)


@contextlib.contextmanager
def preflight(root: Path | str = ".", overrides: list[str] | None = None) -> Iterator[str | None]:
    """Raise `tasks.core.params.ParamsError` on a mistake in params.yaml, or ProjectBusy when
    another run holds the project; hold the lock for the `with` block, which gets the
    dvc.lock repair note (None when none was needed)."""
    params = Path(root) / "params.yaml"
    check(params, overrides)
    _backend_ready(params, overrides)
    with project_lock(root, _wait_s(params)):
        note = lockfile.repair(root)
        wait_for_dead_holders(root)
        yield note
