import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout, whatever the editable install says
sys.path.insert(0, str(Path(__file__).parent))  # test helpers (project.py, simserver.py)
SHARED = ROOT.parent / "shared" / "data"

os.environ.setdefault("PREFECT_HOME", str(ROOT / ".seke" / "prefect-tests"))
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest-xdist: each worker its own Prefect home (server, database)
    os.environ["PREFECT_HOME"] += "-" + os.environ["PYTEST_XDIST_WORKER"]
from flows import env  # noqa: E402

env.apply()

import contextlib  # noqa: E402

_SERVER = contextlib.ExitStack()


def pytest_collection_finish(session):
    """With any end-to-end test selected, start one real Prefect server before any fixture
    runs (module fixtures build projects with `dvc repro` too): every stage subprocess
    inherits PREFECT_API_URL instead of starting a temporary server of its own."""
    if any(item.get_closest_marker("e2e") for item in session.items):
        from prefectdb import seed

        from flows.server import shared_server

        seed(os.environ["PREFECT_HOME"])  # migrated once per checkout, not once per worker and run
        _SERVER.enter_context(shared_server())


def pytest_collection_modifyitems(session, config, items):
    """The order `make test` hands files to its workers (with --no-loadscope-reorder): the
    end-to-end files first, fewest tests first (one or two long scenarios each: the wheel, the
    incremental flow, the warm runner), then the unit files. The longest work starts first and
    the many short tests fill the end, so neither worker sits idle while the other finishes
    one long file. (pytest-xdist's own order, most tests first, left the longest for last.)"""
    tests: dict[str, int] = {}
    e2e: set[str] = set()
    for item in items:
        f = item.location[0]
        tests[f] = tests.get(f, 0) + 1
        if item.get_closest_marker("e2e"):
            e2e.add(f)
    items.sort(key=lambda i: (i.location[0] not in e2e, tests[i.location[0]], i.location[0]))  # stable within a file


def pytest_unconfigure(config):
    _SERVER.close()


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def prefect_quiet():
    """For flows run in the test's own process: the session's Prefect server (started above),
    no heartbeats. (prefect_test_harness would start a server of its own, on a fresh database:
    about 20 s of migrations each time.)"""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    api = os.environ.get("PREFECT_API_URL")
    assert api, "the session's Prefect server is not running"
    # named here: Prefect read its settings when this process first imported it, before the server started
    with temporary_settings({PREFECT_API_URL: api, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
