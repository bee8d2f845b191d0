"""`seke report`: a static HTML report of a FEID version (`tasks.tools.report`)."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.cli_common import Fail, app, out, progress


@app.command(
    epilog="Examples:\n\n"
    "  seke report                                 # the workspace -> reports/feid.html\n\n"
    "  seke report --rev v1.0 --out reports/v1.html\n\n"
    "  seke report --per-group 8                   # a larger gallery"
)
def report(
    rev: str = typer.Option("workspace", help="FEID version: git rev, tag, branch or DVC experiment"),
    out_path: Path = typer.Option(Path("reports/feid.html"), "--out", "-o", help="the HTML page"),
    repo: str = typer.Option(".", help="project (a path or a git URL: read through dvc.api)"),
    per_group: int = typer.Option(4, help="gallery faces per class (accepted) and per reason (rejected)"),
    seed: int = typer.Option(0, help="seed of the gallery draw"),
):
    """Write a static HTML report of one FEID version: label and AU distributions, VA density,
    confidence, reliability and risk-coverage (from the run's calibration faces), and a
    gallery of accepted and rejected faces. Needs no network to view."""
    from tasks.tools import report as R
    from tasks.tools.compare import VersionError

    try:
        with progress(f"reading {rev}", None):
            v = R.load(repo, rev)
    except VersionError as ex:
        raise Fail(str(ex)) from None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with progress("drawing", None):
        R.write(v, out_path, per_group, seed)
    out.print(f"wrote {out_path} ({len(v.figures)} figures, {len(v.gallery)} gallery faces)")
