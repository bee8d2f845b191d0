"""`seke review export | import`: a human review loop with Label Studio (`tasks.tools.review`)."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.cli.common import Fail, app, load_params, out

review_app = typer.Typer(
    no_args_is_help=True,
    help="Review faces in Label Studio, and bring people's labels back as priors and calibration labels.",
    epilog="Examples:\n\n"
    "  seke review export --calibration 300 --review 200   # -> review/label_config.xml, review/tasks.json\n\n"
    "  seke review import ~/Downloads/project-1-at-2026-12-05.json",
)
app.add_typer(review_app, name="review")


@review_app.command(
    "export",
    epilog="Examples:\n\n"
    "  seke review export                          # 100 calibration + 100 review tasks -> review/\n\n"
    "  seke review export --calibration 400 --review 0 --seed 1",
)
def review_export(
    out_dir: Path = typer.Option(Path("review"), "--out", "-o", help="the Label Studio project folder to write"),
    calibration: int = typer.Option(100, help="a random sample of this many faces with no known expression"),
    review: int = typer.Option(100, help="this many rejected, then least confident, faces"),
    seed: int = typer.Option(0, help="seed of the calibration sample"),
    params: str = typer.Option("params.yaml", help="the project's params (paths.crop, paths.verify)"),
):
    """Write a Label Studio project from the workspace's faces: `label_config.xml` (expression,
    valence/arousal, AUs) and `tasks.json`. Calibration tasks come without the model's answer
    (it would bias the person); review tasks carry it as a pre-annotation. In Label Studio:
    create a project, paste the config under Settings > Labeling Interface, import tasks.json."""
    from tasks.tools.review import export_project

    p = load_params(params)
    try:
        n = export_project(p, out_dir, calibration, review, seed)
    except FileNotFoundError as ex:
        raise Fail(f"{ex}: build the workspace first (dvc repro)") from None
    out.print(
        f"wrote {out_dir}/label_config.xml and {out_dir}/tasks.json: {n['calibration']} calibration and "
        f"{n['review']} review tasks"
    )


@review_app.command(
    "import",
    epilog="Examples:\n\n"
    "  seke review import export.json              # -> paths.review (data/review/labels.csv)\n\n"
    "  seke review import export.json --params params.yaml",
)
def review_import(
    export: Path = typer.Argument(..., help="Label Studio's JSON export of the project", exists=True, dir_okay=False),
    params: str = typer.Option("params.yaml", help="the project's params (paths.review: where the labels go)"),
):
    """Add the people's labels of a Label Studio JSON export to `paths.review` (a labels CSV,
    merged by path). The next `dvc repro` uses them as priors and as calibration labels, and
    FEID's `label_origin` says which labels came from people."""
    from tasks.tools.review import import_labels

    p = load_params(params)
    if not p.paths.review:
        raise Fail("paths.review is empty in params.yaml: set it to where the review labels go")
    try:
        n = import_labels(export, Path(p.paths.review))
    except ValueError as ex:
        raise Fail(f"{export}: {ex}") from None
    skipped = ", ".join(f"{v} {k}" for k, v in n["skipped"].items()) or "none"
    rejected = ", ".join(f"{v} {k}" for k, v in n["rejected"].items()) or "none"
    out.print(
        f"{n['imported']} labels imported into {p.paths.review} ({n['labels']} in all); rejected: {rejected}; "
        f"skipped: {skipped}; {n['conflicts']} conflicting duplicates (newest kept); every task: {n['report']}"
    )
