"""`seke split | bench | quality | compare`: FEAB, label quality and version comparison (their
logic is in `tasks.tools`; `export` and `report` are in cli_publish.py)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from flows.cli.common import (
    PARAMS,
    SET,
    Backend,
    Fail,
    _fmt,
    _table,
    app,
    console,
    load_params,
    out,
    progress,
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
    from tasks.tools import feab as B

    p = load_params(params, set_)
    if not p.bench.sources:
        raise Fail("bench.sources is empty in params.yaml: list the labelled sources first")
    ids, subjects = B.training_set(f"{p.paths.ingest}/images.parquet", p.paths.feid)
    if not ids:
        console.print(
            "[yellow]warning:[/] no FEID training set found (data/ingest, data/feid): "
            "nothing is excluded. Run `seke run` first to keep the benchmark disjoint from FEID."
        )
    try:
        with progress("hashing images") as up:
            rows, summary = B.build_split(
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
    B.check_disjoint(rows, ids, subjects)
    dest = out_path or p.bench.split
    B.write_split(dest, rows)
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
    backend: Optional[Backend] = typer.Option(None, help="annotator backend (default: params)"),
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
    ov += [f"annotator.backend={backend.value}"] if backend else []
    ov += [f"annotator.model={model}"] if model else []
    ov += [f"bench.eval_split={which}"] if which else []
    ov += [f"bench.limit={limit}"] if limit is not None else []
    ov += [f"bench.bootstrap={bootstrap}"] if bootstrap is not None else []
    p = load_params(params, ov)
    items = _bench_items(p)
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
    meta = _bench_meta(p, info)
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


def _bench_items(p) -> list[dict]:
    """The benchmark split's rows to evaluate; a missing split or image is a clear error."""
    from tasks.tools import feab as B

    try:
        items = B.read_split(p.bench.split, p.bench.eval_split, p.bench.limit)
    except FileNotFoundError as ex:
        raise Fail(str(ex)) from None
    if not items:
        raise Fail(f"no `{p.bench.eval_split}` rows in {p.bench.split}")
    missing = [i["path"] for i in items if not Path(i["path"]).exists()]
    if missing:
        raise Fail(f"{len(missing)} benchmark images are missing (first: {missing[0]}); rebuild with `seke split`")
    return items


def _bench_meta(p, info: dict) -> dict:
    return {
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
    from tasks.tools.feab import quality as Q

    p = load_params(params, set_)
    try:
        with progress("hashing ground-truth images"):
            q = Q.score(rev, truth, root, p.bench)
    except Q.QualityError as ex:
        raise Fail(str(ex)) from None
    for name, res in q.scores.items():
        if res:
            _print_eval(res, f"annotation quality of {q.version}: {name} faces (n={res['n']})")
    files = Q.write(q, truth, out_dir)
    out.print("wrote " + ", ".join(str(f) for f in files))


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
    as_html: bool = typer.Option(False, "--html", help="also write compare.html: both versions' reports side by side"),
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
    files = {**compare_report.write(c, dest, va, vb), **(_side_by_side(repo, a, b, Path(dest)) if as_html else {})}
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
    out.print(f"wrote {', '.join(str(files[k]) for k in ('markdown', 'json', 'html') if k in files)}")


def _side_by_side(repo: str, a: str, b: str, dest: Path) -> dict:
    """compare.html: both versions' reports (`seke report`) side by side."""
    from tasks.tools import report as R

    return {"html": str(R.write_side_by_side(R.load(repo, a), R.load(repo, b), dest / "compare.html"))}


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in s)[:40]
