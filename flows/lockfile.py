"""Getting past a `dvc.lock` that a `kill -9` cut short.

DVC rewrites dvc.lock in place after every stage (`dvc/utils/serialize/_common.py` opens it
with "w+"), so a kill at that moment leaves a truncated file, and the next `dvc repro` stops
with "'./dvc.lock' validation failed". So every stage command, before it starts, keeps a copy
of dvc.lock as DVC left it (`keep`: DVC has finished writing it by then), and the project's
entry points (`make feid`, `seke run`, the pipeline and incremental flows) call `repair` first: a
dvc.lock that DVC cannot read is moved aside and that copy put back. `dvc repro` then reruns
the stage whose record was lost; its outputs are rebuilt from the same inputs, and its calls
come from the response cache, so none is paid twice.

After a bare `dvc repro` was killed, run `python -m flows.lockfile` (or `make feid`).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from tasks.infra.io import put_whole

KEPT = Path(".seke") / "dvc.lock.kept"


def keep(root: Path | str = ".") -> None:
    """Keep a copy of dvc.lock (called by each stage command, before it starts)."""
    lock, kept = Path(root) / "dvc.lock", Path(root) / KEPT
    if lock.is_file():
        kept.parent.mkdir(parents=True, exist_ok=True)
        put_whole(str(kept), lock.read_bytes())


def problem(path: Path) -> str | None:
    """Why DVC cannot read the lock file at `path`, or None when it can."""
    from dvc.exceptions import DvcException
    from dvc.fs import LocalFileSystem
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA
    from dvc.utils.strictyaml import load

    try:
        load(str(path), COMPILED_LOCKFILE_SCHEMA, LocalFileSystem())
    except DvcException as e:
        text = str(e).strip()
        return text.splitlines()[0] if text else type(e).__name__
    return None


def repair(root: Path | str = ".") -> str | None:
    """Put back the kept copy of an unreadable dvc.lock (or remove it when there is none);
    return what was done, or None when dvc.lock was fine."""
    root = Path(root)
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    why = problem(lock)
    if why is None:
        return None
    broken = root / ".seke" / f"dvc.lock.broken-{time.strftime('%Y%m%dT%H%M%S')}"
    broken.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(lock), str(broken))
    kept = root / KEPT
    if kept.is_file() and problem(kept) is None:
        put_whole(str(lock), kept.read_bytes())
        done = "put back the copy kept when the last stage started; `dvc repro` reruns that stage"
    else:
        done = "no readable copy was kept, so it was removed; `dvc repro` reruns every stage"
    msg = (
        f"dvc.lock could not be read ({why}), most likely because a run was killed while DVC "
        f"was writing it. It was moved to {broken.relative_to(root)}; {done} (answers come from "
        f"the response cache, so no call is paid twice)."
    )
    print(msg, file=sys.stderr)
    return msg


if __name__ == "__main__":
    print(repair() or "dvc.lock is readable; nothing to do.")
