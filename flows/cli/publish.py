"""`seke export | report`: a FEID version for training frameworks (`tasks.tools.publish`), and
its static HTML report (`tasks.tools.report`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from flows.cli.common import Fail, app, out, progress


class Format(str, Enum):
    """The export formats (`tasks.tools.publish.FORMATS`)."""

    hf = "hf"
    sharegpt = "sharegpt"
    llava = "llava"


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


# ---------------------------------------------------------------- export
@app.command(
    epilog="Examples:\n\n"
    "  seke export --format hf                     # -> exports/hf (datasets.load_dataset)\n\n"
    "  seke export --format sharegpt --out /data/feid_lf   # LLaMA-Factory\n\n"
    "  seke export --format llava --rev v1.0 --overwrite"
)
def export(
    fmt_: Format = typer.Option(..., "--format", "-f", help="export format"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="export folder (default exports/<format>)"),
    rev: str = typer.Option("workspace", help="FEID version: git rev, tag or DVC experiment"),
    name: str = typer.Option("FEID", help="dataset name (LLaMA-Factory entry, file names)"),
    overwrite: bool = typer.Option(False, help="replace a non-empty export folder"),
    repo: str = typer.Option(".", help="project (a path or git URL)"),
    push_to_hub: Optional[str] = typer.Option(
        None, "--push-to-hub", help="upload the export as this Hugging Face dataset repo (token: HF_TOKEN)"
    ),
    public: bool = typer.Option(False, help="with --push-to-hub: a public repository (default private)"),
):
    """Export a FEID version for training frameworks, with a dataset card (README.md).

    hf: Parquet that `datasets.load_dataset("parquet", ...)` decodes (image column = Image);
    sharegpt: LLaMA-Factory multimodal JSON + dataset_info.json; llava: LLaVA JSON + images/.
    """
    from tasks.tools import publish as X
    from tasks.tools.compare import VersionError

    fmt = fmt_.value
    try:
        with progress("reading FEID"):
            table, card = X.version_for_export(repo, rev, name)
    except VersionError as ex:
        raise Fail(str(ex)) from None
    if table.num_rows == 0:
        raise Fail(f"FEID at {rev} has no rows: nothing to export")
    dest = out_dir or Path("exports") / fmt
    try:
        with progress(f"writing {fmt}"):
            res = X.export(table, fmt, dest, card, overwrite=overwrite)
    except (FileExistsError, ValueError) as ex:
        raise Fail(str(ex)) from None
    out.print(
        f"exported {res['rows']} faces as {fmt} to {res['out']}: "
        + ", ".join(Path(f).name for f in res["files"])
        + " + README.md"
    )
    if push_to_hub:
        try:
            with progress(f"uploading to {push_to_hub}"):
                url = X.push_to_hub(dest, push_to_hub, private=not public)
        except Exception as ex:  # auth, network, a name taken: the export stays on disk
            raise Fail(f"upload to {push_to_hub} failed ({type(ex).__name__}: {ex}); the export is in {dest}") from None
        out.print(f"uploaded to {url}")
