"""Quiet, offline, project-local defaults for Prefect and DVC, applied before either is
imported (a user's explicit settings win). See docs/architecture.md."""

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

_ROOT = Path.cwd()
DEFAULTS = {
    "PREFECT_HOME": str(_ROOT / ".seke" / "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_LEVEL": "INFO",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "GLOG_minloglevel": "2",  # MediaPipe / TFLite C++ logging
    "TF_CPP_MIN_LOG_LEVEL": "3",
}


# SQLite cannot open a database whose path is longer than 512 bytes (SQLITE_MAX_PATHNAME)
_SQLITE_MAX_PATH = 400


def _short_home(path: str, kind: str) -> Path | None:
    """A short per-user folder standing in for `path` (keyed by it), or None when `path`
    leaves SQLite room for its files."""
    if len(str(path)) + 40 <= _SQLITE_MAX_PATH:
        return None
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]
    for base in (Path.home() / ".cache" / "seke", Path(tempfile.gettempdir()) / "seke"):
        d = base / f"{kind}-{key}"
        if len(str(d)) + 40 <= _SQLITE_MAX_PATH:
            d.mkdir(parents=True, exist_ok=True)
            return d
    return None


def _short_database_url(home: str) -> str | None:
    """For a checkout so deep that `PREFECT_HOME/prefect.db` is too long for SQLite, a
    database file of the same project under a short per-user folder; None otherwise."""
    d = _short_home(home, "prefect")
    return f"sqlite+aiosqlite:///{d / 'prefect.db'}" if d else None


def tool(name: str) -> str:
    """A command installed next to this Python (the venv's `dvc`, `prefect`), else from PATH."""
    import sys

    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else name


def apply() -> None:
    for k, v in DEFAULTS.items():
        os.environ.setdefault(k, v)
    # Prefect creates its home without parents; an absent .seke/ would make its SQLite fail
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    # DVC keeps SQLite databases in its site cache dir: project-local, unless too deep for SQLite
    site = os.environ.setdefault("DVC_SITE_CACHE_DIR", str(_ROOT / ".seke" / "dvc-site"))
    short = _short_home(site, "dvc-site")
    if short:
        os.environ["DVC_SITE_CACHE_DIR"] = str(short)
    if not os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL"):
        url = _short_database_url(os.environ["PREFECT_HOME"])
        if url:
            os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = url
    for k in ("NO_PROXY", "no_proxy"):
        cur = os.environ.get(k, "")
        if "127.0.0.1" not in cur:
            os.environ[k] = ",".join(x for x in (cur, "127.0.0.1", "localhost") if x)


@contextlib.contextmanager
def no_heartbeats() -> Iterator[None]:
    """Prefect's flow-run heartbeats off for the `with` block. A heartbeat thread sleeps in
    one-second steps and is joined when the run ends, so it added up to a second to every
    stage, and our runs do not need them (a crashed stage fails its `dvc repro`). The same as
    `temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})`, without validating every
    setting again (about 70 ms of CPU per stage)."""
    from prefect.context import SettingsContext, get_settings_context

    ctx = get_settings_context()
    flows = ctx.settings.flows.model_copy(update={"heartbeat_frequency": None})
    with SettingsContext(profile=ctx.profile, settings=ctx.settings.model_copy(update={"flows": flows})):
        yield
