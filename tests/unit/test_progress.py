"""The one progress mechanism (`tasks.infra.progress`): plain lines off a terminal, a live bar
on one, the extra numbers a stage adds. The Prefect progress artifacts of real stage runs are
checked in tests/e2e/test_pipeline_e2e.py."""

from __future__ import annotations

import io

from rich.console import Console

from tasks.infra import progress as P


def test_off_a_terminal_it_prints_plain_lines_with_rate_eta_and_extras(capsys):
    with P.Progress("sample", 4, every_s=0.0, live=False) as pr:
        for i in range(1, 5):
            pr.update(i, calls=i, cache_hits=2 * i, cost_usd=0.01 * i)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 5  # one per update (every_s 0), then the final one
    assert lines[0].startswith("sample: 1/4 faces, ") and "ETA" in lines[0]
    assert "calls 1, cache hits 2, cost $0.0100" in lines[0]
    assert lines[-1].startswith("sample: done, 4/4 faces") and "ETA" not in lines[-1]
    assert "cost $0.0400" in lines[-1]


def test_lines_are_throttled_to_every_s(capsys):
    with P.Progress("crop", 1000, unit="images", every_s=3600, live=False) as pr:
        for _ in range(1000):
            pr.update(advance=1)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [lines[-1]] and lines[-1].startswith("crop: done, 1000/1000 images")


def test_track_counts_a_stream_of_unknown_length(capsys):
    assert list(P.track(iter(range(7)), "ingest", None, "files", every_s=3600)) == list(range(7))
    assert capsys.readouterr().err.strip().startswith("ingest: done, 7/7 files")


def test_on_a_terminal_it_draws_one_live_bar(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr("rich.console.Console", lambda **kw: Console(file=buf, force_terminal=True, width=160))
    with P.Progress("verify", 10, every_s=3600, live=True) as pr:
        pr.update(10, errors=0)
    out = buf.getvalue()
    assert "verify" in out and "10/10" in out and "errors 0" in out


def test_a_phase_with_nothing_to_count_ends_with_its_time():
    from tasks.infra.progress import Progress

    p = Progress("drawing", None, live=False)
    assert p.line(final=True).startswith("drawing: done in ") and p.line(final=True).endswith(" s")
    p.update(3)
    assert p.line(final=True).startswith("drawing: done, 3")
