"""Quiet, offline, project-local defaults for Prefect and DVC, applied before either is
imported (a user's explicit settings win). See docs/architecture.md."""

import os
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


def apply() -> None:
    for k, v in DEFAULTS.items():
        os.environ.setdefault(k, v)
    # Prefect creates its home without parents; an absent .seke/ would make its SQLite fail
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    for k in ("NO_PROXY", "no_proxy"):
        cur = os.environ.get(k, "")
        if "127.0.0.1" not in cur:
            os.environ[k] = ",".join(x for x in (cur, "127.0.0.1", "localhost") if x)
