"""Project copies for the pipeline's own end-to-end tests, built by `opsproj` (one builder
for every e2e test) from a chosen part of the sample set, with the real face detector."""

from __future__ import annotations

import csv
from pathlib import Path

from opsproj import BIN, SAMPLE
from opsproj import env as project_env
from opsproj import make_project as _make
from opsproj import run as _run

__all__ = ["BIN", "make_project", "project_env", "run"]


def make_project(tmp: Path, *, london: int = 4, extra: tuple[str, ...] = (), params: dict | None = None) -> Path:
    """`london` images per class (neutral, happy) plus the sample-set rows named in `extra`."""
    rows, count = [], {}
    for r in csv.DictReader(open(SAMPLE / "manifest.csv")):
        e = r.get("expression") or ""
        if (r["path"].startswith("images/london_") and "copy" not in r["path"] and count.get(e, 0) < london) or r[
            "path"
        ] in extra:
            count[e] = count.get(e, 0) + 1
            rows.append(r)
    merged: dict = {"crop": {"detector": "blazeface"}}  # opsproj's default is `none`
    for section, values in (params or {}).items():
        merged.setdefault(section, {}).update(values)
    return _make(tmp, rows, merged)


def run(proj: Path, *args: str, env: dict | None = None, check: bool = True):
    return _run(proj, *args, env_=env, check=check, timeout=1200)
