"""What every entry point does before DVC starts, and holds while it runs (`make feid`'s
`flows.server`, `seke run`, the pipeline and incremental flows), stale stages or not:

1. check the whole params.yaml: every mistake one line, named by its path, no traceback
   (`tasks.core.params_check`);
2. take the project's lock (one writer per project, `tasks.infra.projectlock`): a second run
   waits `incremental.lock_wait_s`, then steps aside with one line naming the holder;
3. repair a dvc.lock that a killed run cut short (`flows.lockfile`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from flows import lockfile
from tasks.core.params_check import check
from tasks.core.yamlio import load_yaml
from tasks.infra.projectlock import ProjectBusy, project_lock

__all__ = ["ProjectBusy", "preflight"]


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
    with project_lock(root, _wait_s(params)):
        yield lockfile.repair(root)
