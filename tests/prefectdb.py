"""A Prefect database already migrated, for the Prefect servers the tests start themselves (the
session's, the on-demand daemon's, the deployment test's).

A server on an empty database first runs every Alembic migration: about 13 s of CPU on this
machine, each time. The migrations run once per checkout and Prefect version, into
`.seke/prefect-template-<version>/prefect.db` (`prefect server database upgrade`), and each new
Prefect home gets a copy. What a new user's first run does, migrating a fresh database, is
`make feid`'s and test_wheel.py's to show.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parents[1]


def _template() -> Path:
    from importlib.metadata import version

    db = ROOT / ".seke" / f"prefect-template-{version('prefect')}" / "prefect.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / ".lock", "w") as lock:  # the test workers start at once: one migrates
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not db.exists():
            home = Path(tempfile.mkdtemp(prefix="prefect-", dir=db.parent))
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
            env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
            upgrade = [str(Path(sys.executable).with_name("prefect")), "server", "database", "upgrade", "-y"]
            subprocess.run(upgrade, env=env, check=True, capture_output=True)
            os.replace(home / "prefect.db", db)
            shutil.rmtree(home, ignore_errors=True)
    return db


def seed(home: Path | str, env: Mapping[str, str] = os.environ) -> None:
    """Give the Prefect home `home` a migrated database, unless it has one or the server's
    environment `env` keeps its database elsewhere (PREFECT_API_DATABASE_CONNECTION_URL)."""
    db = Path(home) / "prefect.db"
    if db.exists() or env.get("PREFECT_API_DATABASE_CONNECTION_URL"):
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(_template(), db)
