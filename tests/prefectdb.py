"""A Prefect database already migrated, for the Prefect servers the tests start themselves (the
session's, the on-demand daemon's, the deployment test's).

A server on an empty database first runs every Alembic migration: about 12 s of CPU on this
machine, each time. The migrated, empty database of the locked Prefect version is kept in the
repository, `tests/prefect-<version>.db.gz` (18 KB; `python tests/prefectdb.py template`
rewrites it after a Prefect upgrade, and a unit test fails until then); without it, the
migrations run once per checkout (`prefect server database upgrade`, into
`.seke/prefect-template-<version>/prefect.db`). Each new Prefect home gets a copy. What a
new user's first run does, migrating a fresh database, is `make feid`'s and test_wheel.py's
to show.
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

from dbtemplate import keep, restore

ROOT = Path(__file__).resolve().parents[1]


def _version() -> str:
    from importlib.metadata import version

    return version("prefect")


def committed() -> Path:
    """The migrated, empty database of the installed Prefect version, as kept in tests/."""
    return ROOT / "tests" / f"prefect-{_version()}.db.gz"


def _migrate(dest: Path) -> None:
    """`prefect server database upgrade` on a new database, moved to `dest`."""
    home = Path(tempfile.mkdtemp(prefix="prefect-", dir=dest.parent))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    upgrade = [str(Path(sys.executable).with_name("prefect")), "server", "database", "upgrade", "-y"]
    subprocess.run(upgrade, env=env, check=True, capture_output=True)
    os.replace(home / "prefect.db", dest)
    shutil.rmtree(home, ignore_errors=True)


def _migrated() -> Path:
    """Without a kept template for this Prefect: one migrated database per checkout."""
    db = ROOT / ".seke" / f"prefect-template-{_version()}" / "prefect.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / ".lock", "w") as lock:  # the test workers start at once: one migrates
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not db.exists():
            _migrate(db)
    return db


def write_template() -> Path:
    """Migrate a new database with the installed Prefect and keep it in tests/."""
    with tempfile.TemporaryDirectory() as d:
        _migrate(Path(d) / "prefect.db")
        return keep(Path(d) / "prefect.db", committed(), "prefect-*.db.gz")


def seed(home: Path | str, env: Mapping[str, str] = os.environ) -> None:
    """Give the Prefect home `home` a migrated database, unless it has one or the server's
    environment `env` keeps its database elsewhere (PREFECT_API_DATABASE_CONNECTION_URL)."""
    db = Path(home) / "prefect.db"
    if db.exists() or env.get("PREFECT_API_DATABASE_CONNECTION_URL"):
        return
    if committed().exists():
        restore(committed(), db)
    else:
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(_migrated(), db)


if __name__ == "__main__":
    if sys.argv[1:] != ["template"]:
        raise SystemExit("usage: python tests/prefectdb.py template")
    print(write_template())
