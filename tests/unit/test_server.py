"""flows.server: a run's one Prefect server also gets the flow runs of the process that started
it, however early that process imported Prefect."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

API = "http://127.0.0.1:9/api"


def test_a_process_that_imported_prefect_first_sends_its_own_flow_runs_to_the_run_server(monkeypatch):
    import prefect  # noqa: F401  (as flows.incremental and flows.pipeline do, before the server starts)
    from prefect.context import get_settings_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import server, warm

    @contextmanager
    def started(timeout):  # what _prefect_server does once the server answers
        monkeypatch.setenv("PREFECT_API_URL", API)
        yield API

    monkeypatch.setattr(server, "_prefect_server", started)
    monkeypatch.setattr(warm, "runner", nullcontext)
    # Prefect's settings as read at its import, with no server yet: flow runs would go to a
    # temporary server it starts in-process
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert get_settings_context().settings.api.url is None
        with server.shared_server() as api:
            assert api == API and get_settings_context().settings.api.url == API
        assert get_settings_context().settings.api.url is None
