"""`seke`: the project's command-line tool (Typer).

Each command is one function decorated with `@app.command()`; shared pieces (loading params
with `-S` overrides, errors, progress bars, running DVC) are the helpers below. To add a
command group (e.g. `seke knowledge refit`), create a `typer.Typer()` and
`app.add_typer(group, name="knowledge")`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(
    name="seke",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    help="Build, benchmark, compare and export FEID, the facial-emotion instruction dataset.\n\n"
    "Run from the project root. Every command takes [bold]--params[/] (default params.yaml).",
)
console = Console(stderr=True)
out = Console()

PARAMS = typer.Option("params.yaml", "--params", "-p", help="params file", show_default=True)
SET = typer.Option(None, "--set", "-S", help="override a param for this command: -S section.key=value (repeatable)")


# ---------------------------------------------------------------- helpers
class Fail(typer.Exit):
    def __init__(self, msg: str, code: int = 1):
        console.print(f"[bold red]error:[/] {msg}")
        super().__init__(code)


def load_params(path: str, overrides: Optional[List[str]] = None):
    """params.yaml with `-S a.b=c` overrides applied, validated (`tasks.core.params.load`)."""
    from tasks.core.params import ParamsError, load

    try:
        return load(path, overrides)
    except ParamsError as ex:
        raise Fail(str(ex)) from None


@contextmanager
def progress(description: str, total: int | None = None, every_s: float = 10.0) -> Iterator:
    """Progress on stderr, yielding update(done, total, desc): a live bar on a terminal, else a
    plain line at most every `every_s` seconds (logs, CI)."""
    import time

    if console.is_terminal:
        cols = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        ]
        with Progress(*cols, console=console, transient=False) as pr:
            task = pr.add_task(description, total=total)

            def update(done: int, tot: int | None = None, desc: str | None = None):
                pr.update(
                    task,
                    completed=done,
                    total=tot if tot is not None else total,
                    **({"description": desc} if desc else {}),
                )

            yield update
        return
    t0 = last = time.monotonic()

    def update(done: int, tot: int | None = None, desc: str | None = None):
        nonlocal last
        now, tot = time.monotonic(), tot if tot is not None else total
        if now - last >= every_s or (tot and done >= tot):
            last = now
            rate = done / (now - t0) if now > t0 else 0
            eta = f", ETA {(tot - done) / rate:.0f} s" if tot and rate else ""
            console.print(f"{desc or description}: {done}/{tot or '?'} ({rate:.1f}/s{eta})")

    yield update


def _tool_env() -> dict:
    """DVC stage commands call `python`: put this interpreter's bin first; DVC/Prefect quiet and local."""
    from flows import env

    env.apply()
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e.setdefault("DVC_NO_ANALYTICS", "1")
    return e


def _dvc_exe() -> str:
    exe = Path(sys.executable).with_name("dvc")
    return str(exe) if exe.exists() else "dvc"


def _table(title: str, rows: list[tuple], headers: tuple[str, ...]) -> Table:
    t = Table(title=title, title_justify="left")
    for h in headers:
        t.add_column(h)
    for r in rows:
        t.add_row(*[("" if x is None else str(x)) for x in r])
    return t


def _fmt(v: dict | None) -> str:
    if not v or v.get("value") is None:
        return "n/a"
    return f"{v['value']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]" if v.get("lo") is not None else f"{v['value']:.3f}"


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
    if set_:  # validate before DVC spends any time
        load_params("params.yaml", set_)
    from flows.server import shared_server

    with shared_server():  # one Prefect server for every stage of this run
        r = subprocess.run(cmd, env=_tool_env())
    if r.returncode:
        raise Fail(
            f"{' '.join(cmd[1:3])} failed (exit {r.returncode}); the failing stage's message is above", r.returncode
        )


# ---------------------------------------------------------------- split
@app.command(
    epilog="Examples:\n\n"
    "  seke split                                  # sources from params.yaml bench.sources\n\n"
    "  seke split -S bench.dev_fraction=0 -S bench.seed=1\n\n"
    "  seke split --out /tmp/split.csv"
)
def split(
    params: str = PARAMS,
    set_: Optional[List[str]] = SET,
    out_path: Optional[str] = typer.Option(None, "--out", "-o", help="split CSV (default bench.split)"),
):
    """Build the FEAB benchmark split from labelled sources.

    People are assigned to [bold]dev[/] or [bold]test[/] as a whole (subject-disjoint), and every image
    and every person FEID was built from (data/ingest, data/feid) is left out.
    """
    from tasks.core.knowledge import load as load_knowledge

    p = load_params(params, set_)
    if not p.bench.sources:
        raise Fail("bench.sources is empty in params.yaml: list the labelled sources first")
    ids, subjects = bench.training_set(f"{p.paths.ingest}/images.parquet", p.paths.feid)
    if not ids:
        console.print(
            "[yellow]warning:[/] no FEID training set found (data/ingest, data/feid): "
            "nothing is excluded. Run `seke run` first to keep the benchmark disjoint from FEID."
        )
    try:
        with progress("hashing images") as up:
            rows, summary = bench.build_split(
                list(p.bench.sources),
                load_knowledge(),
                ids,
                subjects,
                p.bench.dev_fraction,
                p.bench.seed,
                lambda s, i, n: up(i, n, f"hashing {s}"),
            )
    except FileNotFoundError as ex:
        raise Fail(str(ex)) from None
    bench.check_disjoint(rows, ids, subjects)
    dest = out_path or p.bench.split
    bench.write_split(dest, rows)
    t = _table(
        f"split -> {dest}",
        [
            (s, v.get("rows"), v.get("subjects"), v.get("dev", 0), v.get("test", 0))
            for s, v in summary["sources"].items()
        ],
        ("source", "labelled", "subjects kept", "dev", "test"),
    )
    out.print(t)
    if summary["excluded"]:
        out.print("excluded: " + ", ".join(f"{k} {v}" for k, v in summary["excluded"].items()))


# ---------------------------------------------------------------- bench
@app.command(
    epilog="Examples:\n\n"
    "  seke bench                                  # local annotator on bench.split (test)\n\n"
    "  seke bench --limit 50 --bootstrap 200       # quick look\n\n"
    "  OPENAI_BASE_URL=http://host:8000/v1 OPENAI_API_KEY=... \\\n"
    "    seke bench --backend openai --model Qwen2.5-VL-7B-Instruct"
)
def bench(
    params: str = PARAMS,
    set_: Optional[List[str]] = SET,
    backend: Optional[str] = typer.Option(None, help="annotator backend: local | openai (default: params)"),
    model: Optional[str] = typer.Option(None, help="model name (openai backend)"),
    which: Optional[str] = typer.Option(None, "--split", help="dev | test | all (default bench.eval_split)"),
    limit: Optional[int] = typer.Option(None, help="images per source, 0 = all (default bench.limit)"),
    bootstrap: Optional[int] = typer.Option(None, help="bootstrap resamples (default bench.bootstrap)"),
):
    """FEAB: evaluate an annotator (local, or any OpenAI-compatible model) on the benchmark split.

    Each image gets exactly the requests FEID sends for an unlabelled face, FEID's adaptive
    sampling, and verify's aggregation. Writes DVC metrics (bench.metrics), DVC plots
    (bench.plots: confusion, per-AU F1, VA scatter) and a markdown report (bench.report).
    Answers are cached (runtime.cache), so a re-run costs nothing.
    """
    import json

    from tasks.core.knowledge import load as load_knowledge
    from tasks.tools import feab as B

    ov = list(set_ or [])
    ov += [f"annotator.backend={backend}"] if backend else []
    ov += [f"annotator.model={model}"] if model else []
    ov += [f"bench.eval_split={which}"] if which else []
    ov += [f"bench.limit={limit}"] if limit is not None else []
    ov += [f"bench.bootstrap={bootstrap}"] if bootstrap is not None else []
    p = load_params(params, ov)
    try:
        items = B.read_split(p.bench.split, p.bench.eval_split, p.bench.limit)
    except FileNotFoundError as ex:
        raise Fail(str(ex)) from None
    if not items:
        raise Fail(f"no `{p.bench.eval_split}` rows in {p.bench.split}")
    missing = [i["path"] for i in items if not Path(i["path"]).exists()]
    if missing:
        raise Fail(f"{len(missing)} benchmark images are missing (first: {missing[0]}); rebuild with `seke split`")
    k = load_knowledge()
    try:
        with progress(f"FEAB {p.annotator.backend}/{p.annotator.model}", len(items)) as up:
            rows, info = B.predict(items, p, k, progress=lambda d, n: up(d, n))
    except Exception as ex:  # annotator set-up or a run-stopping failure (budget, endpoint down)
        raise Fail(f"benchmark run failed: {type(ex).__name__}: {ex}") from None
    work = Path(p.bench.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "predictions.jsonl").write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    with progress("bootstrap", None):
        res = B.evaluate(rows, p.bench.bootstrap, p.bench.ci, p.bench.seed)
    res["selective"] = B.selective(rows)
    meta = {
        "annotator": info["annotator"],
        "model": info["model"],
        "split": p.bench.split,
        "eval_split": p.bench.eval_split,
        "limit": p.bench.limit,
        "prompt_version": p.prompt.version,
        "knowledge": p.prompt.knowledge,
        "sampling": info,
        "params": {"annotator": p.annotator.model_dump(mode="json"), "sample": p.sample.model_dump(mode="json")},
    }
    files = B.write_outputs(
        res,
        rows,
        metrics=p.bench.metrics,
        plots=p.bench.plots,
        report=p.bench.report,
        title=f"FEAB: {info['annotator']} / {info['model']}",
        meta=meta,
    )
    _print_eval(res, f"FEAB ({p.bench.eval_split}, {res['n']} images)")
    sel = res["selective"]
    out.print(f"verify would accept {sel['coverage']} of the faces; accuracy on those {sel['accuracy_accepted']}")
    out.print(f"wrote {files['metrics']}, {files['plots']}/, {files['report']}")


def _print_eval(res: dict, title: str) -> None:
    e, au, va = res.get("expression", {}), res.get("au", {}), res.get("va", {})
    level = int(round(res["bootstrap"]["level"] * 100))
    rows = [("expression", m, _fmt(e.get(m))) for m in ("accuracy", "macro_f1", "uar")]
    if au.get("annotated"):
        rows.append(("AU", "mean F1", _fmt(au.get("mean_f1"))))
    for d in ("valence", "arousal"):
        if d in va:
            rows += [(d, m, _fmt(va[d].get(m))) for m in ("ccc", "rmse", "pearson_r")]
    out.print(_table(title, rows, ("", "metric", f"value [{level}% CI]")))
    if "per_source" in res:
        out.print(
            _table(
                "per source",
                [
                    (
                        s,
                        m["n"],
                        _fmt(m.get("expression", {}).get("accuracy")),
                        _fmt(m.get("expression", {}).get("macro_f1")),
                    )
                    for s, m in res["per_source"].items()
                ],
                ("source", "n", "accuracy", "macro-F1"),
            )
        )


# ---------------------------------------------------------------- quality
@app.command(
    epilog="Examples:\n\n"
    "  seke quality --truth ../held_out/manifest.csv\n\n"
    "  seke quality --truth bench/split.csv --rev v1.0       # a tagged FEID version\n\n"
    "  seke quality --truth labels.csv --root ../images --rev strict-exp"
)
def quality(
    truth: Path = typer.Option(
        ...,
        "--truth",
        "-t",
        help="ground truth: ingest-style manifest (path, expression, valence, arousal, AUxx) or a `seke split` CSV",
    ),
    root: Optional[Path] = typer.Option(
        None, help="folder the manifest's paths are relative to (default: the manifest's folder)"
    ),
    rev: str = typer.Option("workspace", help="FEID version: git rev, tag or DVC experiment"),
    params: str = PARAMS,
    set_: Optional[List[str]] = SET,
    out_dir: Path = typer.Option(Path("reports/quality"), "--out", "-o", help="report folder"),
):
    """Annotation quality of a FEID version against ground truth the annotator was not shown.

    Faces are matched to the ground truth by image bytes (SHA-256); each granularity
    (expression, VA, AUs) is scored only where FEID's label came from the annotator, not from
    a prior label it was shown. Scores accepted faces (FEID) and all faces (before
    verification), with the same metrics code as FEAB.
    """
    import json

    from tasks.core.knowledge import load as load_knowledge
    from tasks.tools import compare as C
    from tasks.tools import feab as B

    p = load_params(params, set_)
    if not truth.exists():
        raise Fail(f"{truth} not found")
    try:
        v = C.load_version(".", rev)
        params_at = v.params.get("paths", {})
        verdicts = C.Store(".", v.rev).parquet(f"{params_at.get('verify', 'data/verify')}/verdicts.parquet").to_pylist()
    except C.VersionError as ex:
        raise Fail(str(ex)) from None
    with progress("hashing ground-truth images"):
        gt = B.truth_from_manifest(truth, root, load_knowledge())
    rows = B.quality_rows(verdicts, gt)
    if not rows:
        raise Fail(f"no FEID face of {rev} matches an image of {truth} (matched by SHA-256 of the bytes)")
    res = {}
    for name, sub in (("accepted", [r for r in rows if r["accepted"]]), ("all", rows)):
        res[name] = B.evaluate(sub, p.bench.bootstrap, p.bench.ci, p.bench.seed) if sub else None
        if res[name]:
            _print_eval(res[name], f"annotation quality of {v.label}: {name} faces (n={len(sub)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "version": v.label,
        "truth": str(truth),
        "matched_faces": len(rows),
        "accepted": sum(r["accepted"] for r in rows),
    }
    if res["accepted"]:
        B.write_outputs(
            res["accepted"],
            [r for r in rows if r["accepted"]],
            metrics=out_dir / "quality.json",
            plots=out_dir / "plots",
            report=out_dir / "quality.md",
            title=f"Annotation quality: {v.label} (accepted faces)",
            meta=meta,
        )
    (out_dir / "quality_all.json").write_text(
        json.dumps({"meta": meta, **(res["all"] or {})}, indent=2, sort_keys=True, default=str)
    )
    out.print(f"wrote {out_dir}/quality.json, quality_all.json, quality.md, plots/")


# ---------------------------------------------------------------- compare
@app.command(
    epilog="Examples:\n\n"
    "  seke compare HEAD workspace                 # last commit vs. the working tree\n\n"
    "  seke compare v1.0 v1.1                      # two tags\n\n"
    "  seke compare base strict-exp --out reports/compare   # two DVC experiments"
)
def compare(
    a: str = typer.Argument(..., help="version A: git rev, tag, branch, DVC experiment or `workspace`"),
    b: str = typer.Argument(..., help="version B"),
    out_dir: Optional[Path] = typer.Option(
        None, "--out", "-o", help="folder for compare.md/.json and plots (default reports/compare/<A>_vs_<B>)"
    ),
    repo: str = typer.Option(".", help="project (a path or a git URL: read through dvc.api)"),
    show_changed: int = typer.Option(10, help="changed faces listed in the terminal"),
):
    """Compare two FEID versions: sizes, acceptance, label shift, agreement, changes, params.

    Versions are read through DVC (`dvc.api`), so they may live only in a DVC remote.
    """
    from tasks.tools import compare as C
    from tasks.tools import compare_report

    try:
        with progress("reading versions", 2) as up:
            va = C.load_version(repo, a)
            up(1)
            vb = C.load_version(repo, b)
            up(2)
    except C.VersionError as ex:
        raise Fail(str(ex)) from None
    c = C.compare(va, vb)
    dest = out_dir or Path("reports/compare") / f"{_slug(a)}_vs_{_slug(b)}"
    files = compare_report.write(c, dest, va, vb)
    A, Bv = c["a"], c["b"]
    rows = [(k, A[k], Bv[k]) for k in ("faces", "accepted", "rejected", "acceptance_rate", "feid_rows")]
    rows += [
        (f"reason: {r}", A["reasons"].get(r, 0), Bv["reasons"].get(r, 0))
        for r in sorted(set(A["reasons"]) | set(Bv["reasons"]))
    ]
    rows += [(f"class: {d['expression']}", d["a"], d["b"]) for d in c["label_distribution"]]
    out.print(_table(f"A = {va.label}   B = {vb.label}", rows, ("", "A", "B")))
    g = c["agreement"]
    out.print(
        f"acceptance change {c['acceptance_change']:+.4f}; label shift JS {c['divergence']['js_bits']} bits, "
        f"TV {c['divergence']['total_variation']}"
    )
    out.print(
        f"shared faces {g['shared_faces']}: expression kappa {g['kappa']} (unchanged faces "
        f"{g['kappa_unchanged']}), VA MAD valence {g['va_mad']['valence']} arousal {g['va_mad']['arousal']}"
    )
    ch = c["changed"]
    out.print(
        f"changed label {ch['n']}; left FEID {ch['left']['n']} {ch['left']['reasons'] or ''}; "
        f"entered FEID {ch['entered']['n']}"
    )
    for x in ch["faces"][:show_changed]:
        out.print(f"  {x['face_id'][:20]}…  {x['a']} -> {x['b']}")
    if c["params"]:
        out.print(
            _table("parameter differences", [(d["param"], d["a"], d["b"]) for d in c["params"]], ("param", "A", "B"))
        )
    else:
        out.print("no parameter differences")
    out.print(f"wrote {files['markdown']}, {files['json']}")


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in s)[:40]


# ---------------------------------------------------------------- export
@app.command(
    epilog="Examples:\n\n"
    "  seke export --format hf                     # -> exports/hf (datasets.load_dataset)\n\n"
    "  seke export --format sharegpt --out /data/feid_lf   # LLaMA-Factory\n\n"
    "  seke export --format llava --rev v1.0 --overwrite"
)
def export(
    fmt: str = typer.Option(..., "--format", "-f", help="hf | sharegpt | llava"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="export folder (default exports/<format>)"),
    rev: str = typer.Option("workspace", help="FEID version: git rev, tag or DVC experiment"),
    name: str = typer.Option("FEID", help="dataset name (LLaMA-Factory entry, file names)"),
    overwrite: bool = typer.Option(False, help="replace a non-empty export folder"),
    repo: str = typer.Option(".", help="project (a path or git URL)"),
):
    """Export a FEID version for training frameworks, with a dataset card (README.md).

    hf: Parquet that `datasets.load_dataset("parquet", ...)` decodes (image column = Image);
    sharegpt: LLaMA-Factory multimodal JSON + dataset_info.json; llava: LLaVA JSON + images/.
    """
    import json

    from tasks.tools import compare as C
    from tasks.tools import publish as X

    if fmt not in X.FORMATS:
        raise Fail(f"--format {fmt!r}: choose one of {', '.join(X.FORMATS)}")
    try:
        sha = C.resolve(repo, rev)
        st = C.Store(repo, sha)
        prm = yaml.safe_load(st.read("params.yaml")) or {}
        paths = prm.get("paths", {})
        with progress("reading FEID"):
            table = st.feid(paths.get("feid", "data/feid"))
    except C.VersionError as ex:
        raise Fail(str(ex)) from None
    if table.num_rows == 0:
        raise Fail(f"FEID at {rev} has no rows: nothing to export")
    sources = ""
    inp = paths.get("input", "")
    if inp and "://" not in inp:
        try:
            sources = st.read(f"{inp.rstrip('/')}/README.md").decode()
        except C.VersionError:
            pass
    metrics = {}
    for stage in ("verify", "export"):
        try:
            metrics[stage] = json.loads(st.read(f"{paths.get('metrics', 'metrics')}/{stage}.json"))
            metrics[stage].pop("validation", None)
        except (C.VersionError, ValueError):
            pass
    card = X.CardInfo(name=name, version=rev, rev=sha, params=prm, sources_text=sources, metrics=metrics)
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


# ---------------------------------------------------------------- estimate
@app.command(
    epilog="Examples:\n\n"
    "  dvc repro prompt && seke estimate           # price the sample stage before spending\n\n"
    "  seke estimate -S annotator.backend=openai -S annotator.model=gpt-4o"
)
def estimate(params: str = PARAMS, set_: Optional[List[str]] = SET):
    """Dry run: calls, image sends, tokens and cost of the sample stage; sends nothing.

    Needs the prompt stage's output (ingest, crop and prompt make no annotator calls). The
    [bold]floor[/] is every face stopping after sample.k0, the [bold]ceiling[/] every face going on
    to sample.kmax. Samples already in the response cache are free.
    """
    from tasks.tools.estimate import dry_run

    p = load_params(params, set_)
    try:
        est = dry_run(p)
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


# ---------------------------------------------------------------- pipeline
@app.command(
    epilog="Examples:\n\n"
    "  seke pipeline            # the whole pipeline as one Prefect flow run\n\n"
    "  seke pipeline --force"
)
def pipeline(force: bool = typer.Option(False, "--force", "-f", help="re-run every stage")):
    """Run the whole pipeline as one Prefect flow: one task per DVC stage, in DVC's order,
    with DVC deciding which stages are stale (flows/pipeline.py)."""
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
    out_path: str = typer.Option("tasks/knowledge/va.yaml", "--out", "-o", help="where to write"),
    min_n: int = typer.Option(20, "--min-n", help="keep the literature value for classes with fewer rows"),
):
    """Refit the expression -> VA centroids and spreads from data labelled with both.

    Classes with fewer than --min-n rows keep their literature values; the file records
    the source manifest's hash. The knowledge files are DVC dependencies, so the next
    `dvc repro` re-runs what they shape.
    """
    from tasks.tools.refit import refit

    try:
        fitted = refit(manifest, out_path, min_n=min_n)
    except (FileNotFoundError, KeyError, ValueError) as ex:
        raise Fail(str(ex)) from None
    rows = [(e, *(f"{x:.3f}" if isinstance(x, float) else x for x in v)) for e, v in fitted.items()]
    out.print(_table(f"refit -> {out_path}", rows, ("expression", "n", "valence", "arousal", "spread")))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":
    app()
