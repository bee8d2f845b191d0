"""What every stage's `run(p)` shares: its logger, its metrics file and its validation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from tasks.core.params import Params
from tasks.infra import io


def log():
    """The Prefect run logger inside a flow run, else the `seke` logger (unit tests)."""
    from prefect import get_run_logger

    try:
        return get_run_logger()
    except Exception:  # outside a flow run
        return logging.getLogger("seke")


def write_metrics(p: Params, stage: str, m: dict) -> None:
    io.write_json(Path(p.paths.metrics) / f"{stage}.json", m)


def validate(stage: str, frames: dict, p: Params, counts: dict | None = None) -> dict:
    """The stage's Great Expectations suite (GX is imported here, when a check runs). Every
    expectation's result, with its observed values, goes to `<paths.metrics>/validation/<stage>.json`
    whether the stage passes or fails, so a user can see why without re-running it."""
    from expectations import ExpectationsFailed, check

    dest = Path(p.paths.metrics) / "validation" / f"{stage}.json"
    try:
        summary = check(stage, frames, p, counts)
    except ExpectationsFailed as e:
        io.write_json(dest, e.report)
        raise
    io.write_json(dest, summary.pop("report"))
    return summary


def grouped(rows: Iterator[dict], key: str) -> Iterator[tuple[str, list[dict]]]:
    """Consecutive rows sharing `key` (stage outputs are written grouped by face)."""
    cur, buf = None, []
    for r in rows:
        if r[key] != cur and buf:
            yield cur, buf
            buf = []
        cur = r[key]
        buf.append(r)
    if buf:
        yield cur, buf


def annotator_of(p: Params, samples_url: str) -> tuple[str, str]:
    """(annotator, model) that wrote the samples (params' when there are none)."""
    smp = io.read_table(samples_url, columns=["annotator", "model"]).slice(0, 1).to_pylist()
    return (smp[0]["annotator"], smp[0]["model"]) if smp else (p.annotator.backend, p.annotator.model)
