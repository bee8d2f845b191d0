"""What every entry point does before DVC starts (`make feid`'s `flows.server`, `seke run`, the
pipeline and incremental flows), stale stages or not: check the whole params.yaml (every
mistake one line, named by its path, no traceback: `tasks.core.params_check.problems`), then repair a
dvc.lock that a killed run cut short (`flows.lockfile`)."""

from __future__ import annotations

from pathlib import Path

from flows import lockfile
from tasks.core.params_check import check


def preflight(root: Path | str = ".", overrides: list[str] | None = None) -> str | None:
    """Raise `tasks.core.params.ParamsError` on a mistake in params.yaml; return the dvc.lock
    repair note, if one was needed."""
    check(Path(root) / "params.yaml", overrides)
    return lockfile.repair(root)
