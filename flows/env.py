"""Quiet, offline, project-local defaults for Prefect and DVC, applied before either is
imported (a user's explicit settings win). See docs/architecture.md."""

import hashlib
import os
import tempfile
from pathlib import Path

_ROOT = Path.cwd()
DEFAULTS = {
    "PREFECT_HOME": str(_ROOT / ".seke" / "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "GLOG_minloglevel": "2",  # MediaPipe / TFLite C++ logging
    "TF_CPP_MIN_LOG_LEVEL": "3",
}


# SQLite cannot open a database whose path is longer than 512 bytes (SQLITE_MAX_PATHNAME)
_SQLITE_MAX_PATH = 400


def _short_database_url(home: str) -> str | None:
    """For a checkout so deep that `PREFECT_HOME/prefect.db` is too long for SQLite, a
    database file of the same project under a short per-user folder; None otherwise."""
    if len(str(Path(home) / "prefect.db")) <= _SQLITE_MAX_PATH:
        return None
    key = hashlib.sha256(str(Path(home).resolve()).encode()).hexdigest()[:16]
    for base in (Path.home() / ".cache" / "seke", Path(tempfile.gettempdir()) / "seke"):
        if len(str(base / key / "prefect.db")) <= _SQLITE_MAX_PATH:
            (base / key).mkdir(parents=True, exist_ok=True)
            return f"sqlite+aiosqlite:///{base / key / 'prefect.db'}"
    return None


def apply() -> None:
    for k, v in DEFAULTS.items():
        os.environ.setdefault(k, v)
    # Prefect creates its home without parents; an absent .seke/ would make its SQLite fail
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    if not os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL"):
        url = _short_database_url(os.environ["PREFECT_HOME"])
        if url:
            os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = url
    for k in ("NO_PROXY", "no_proxy"):
        cur = os.environ.get(k, "")
        if "127.0.0.1" not in cur:
            os.environ[k] = ",".join(x for x in (cur, "127.0.0.1", "localhost") if x)
