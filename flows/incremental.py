"""New data, incrementally: watch a location, process only the images FEID has not seen, and
append them to FEID as a new Parquet part; then validate FEID and record the new version.

    python -m flows.incremental [--input s3://bucket/incoming] [--annotator openai] [--budget 5]

One run:
1. **List** the location (a folder or any fsspec URL; with `paths.manifest` when the location
   is `paths.input`, so prior labels come along) and find the images not yet in FEID **by
   content hash** (SHA-256 of the bytes, the image id). Files already seen at the same URL
   and size are not read again. An image counts as seen when FEID's ledger (or the export
   stage's own ingest, for `feid.parquet`) holds it with the current `params_hash`.
2. Nothing new: stop. No stage runs, no annotator is built, nothing is written or recorded.
3. Run the **same stage flows** (`flows.stages`: ingest, crop, prompt, sample, verify) on a
   manifest of only the new files, in a scratch folder (`incremental.workdir`). The response
   cache (`runtime.cache`) is shared with the pipeline, so an answer paid for once is never
   paid for again.
4. **Append** the accepted faces (`tasks.stages.export.feid_row`, as the export stage does) as
   `<feid>/part-<UTC time>-<hash>.parquet`, rejected faces under `<feid>/.rejects/`, and one
   ledger row per file looked at under `<feid>/.ledger/`. The whole FEID is validated with the
   export suite (`expectations.check`) before the part is published.
5. Images seen before under a different `params_hash` (the data-shaping parameters changed)
   are processed again; their old rows are removed from older parts once the new part is in.
6. **Record**: `dvc commit export` (FEID is the export stage's output directory) and
   `dvc push` to the default remote, then optionally `git commit dvc.lock`.

FEID layout (`datasets.load_dataset("parquet", data_dir=<feid>)` loads all rows; hidden
folders are skipped by `datasets`):

    data/feid/feid.parquet              export stage (whole pipeline)
    data/feid/part-*.parquet            one per incremental run that found new faces
    data/feid/.rejects/*.parquet        rejected faces with reasons (Verdict)
    data/feid/.ledger/*.parquet         every file an incremental run looked at (LedgerRecord)

A later full `dvc repro` that re-runs export rebuilds FEID from `paths.input` (answers come
from the response cache) and so replaces the parts: point `paths.input` at the watched
location for scheduled use.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from flows import env

env.apply()

import yaml  # noqa: E402
from prefect import flow, get_run_logger  # noqa: E402

from tasks.core.params import Params, load, stage_names  # noqa: E402
from tasks.infra import io, storage  # noqa: E402
from tasks.tools.incremental import (  # noqa: E402
    append_part,
    find_new,
    outcomes,
    supersede,
    write_ledger,
    write_manifest,
)


def _log():
    try:
        return get_run_logger()
    except Exception:
        import logging

        return logging.getLogger("seke.incremental")


def run_params(p: Params, wd: Path, location: str, manifest: str) -> Params:
    """The stages' params for this run: the same data-shaping sections, with paths into the
    scratch folder `wd` (typed sections, never a scratch params.yaml)."""
    verify = p.verify
    if not verify.trust_from:
        # too few labelled faces among the new ones: use the main run's confidence model and threshold
        verify = verify.model_copy(update={"trust_from": io.join(p.paths.verify, "trust.json")})
    dirs = {d: str(wd / d) for d in ("ingest", "crop", "prompt", "sample", "verify", "feid", "metrics", "plots")}
    paths = p.paths.model_copy(update={"input": location, "manifest": manifest, **dirs})
    return p.model_copy(update={"paths": paths, "verify": verify})


def _dvc(root: str, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("dvc")
    return subprocess.run(
        [str(exe) if exe.exists() else "dvc", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )


def record_version(p: Params, root: str, git_commit: bool, message: str) -> dict:
    """`dvc commit export` + `dvc push` (+ `git commit dvc.lock`). FEID must be the export
    stage's local output in a DVC project whose export stage has a version in dvc.lock."""
    log = _log()
    rootp = Path(root)
    lock = rootp / "dvc.lock"
    if not storage.is_local(p.paths.feid) or not (rootp / ".dvc").is_dir():
        log.warning("FEID is not a local DVC-tracked folder: version not recorded")
        return {"recorded": False, "reason": "not a DVC-tracked local FEID"}
    if not lock.exists() or "export" not in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}):
        log.warning("the export stage has no version in dvc.lock yet (run `dvc repro` once): not recorded")
        return {"recorded": False, "reason": "no export stage in dvc.lock"}
    r = _dvc(root, "commit", "-f", "export")
    if r.returncode != 0:
        raise RuntimeError(f"dvc commit export failed:\n{r.stdout}\n{r.stderr}")
    out = {"recorded": True, "pushed": False, "git_commit": None}
    remote = _dvc(root, "remote", "default").stdout.strip()
    if remote:
        r = _dvc(root, "push")
        if r.returncode != 0:
            raise RuntimeError(f"dvc push to {remote} failed:\n{r.stdout}\n{r.stderr}")
        out.update(pushed=True, remote=remote)
    else:
        log.warning("no default DVC remote: committed to the local cache only (dvc remote add -d ...)")
    if git_commit:
        subprocess.run(["git", "add", "dvc.lock"], cwd=root, check=True, capture_output=True)
        r = subprocess.run(["git", "commit", "-m", message, "--", "dvc.lock"], cwd=root, capture_output=True, text=True)
        if r.returncode == 0:
            out["git_commit"] = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True
            ).stdout.strip()
    return out


def effective_params(p: Params, annotator: str = "", budget_usd: float = 0.0) -> tuple[Params, str]:
    """(params for this run, params_hash of its rows). A budget only stops a run: it never
    shapes a row, so it does not enter the hash."""
    shaping = p
    if annotator:
        shaping = p.model_copy(update={"annotator": p.annotator.model_copy(update={"backend": annotator})})
    run_p = shaping
    if budget_usd:
        run_p = shaping.model_copy(
            update={"annotator": shaping.annotator.model_copy(update={"budget_usd": budget_usd})}
        )
    return run_p, shaping.data_digest()


def _run_stages(rp: Params) -> dict[str, dict]:
    """The stage flows before export, in dvc.yaml's order, on the new images (the incremental
    flow appends its own FEID part instead of exporting); stops early when no face is left."""
    from flows import stages

    out: dict[str, dict] = {}
    for name in stage_names():
        if name == "export":
            break
        out[name] = stages.stage_flow(name)(params=rp)
        if out[name].get("faces", 1) == 0:
            break
    return out


@flow(name="feid-incremental", log_prints=True)
def incremental_flow(
    input: str = "",
    annotator: str = "",
    budget_usd: float = 0.0,
    params_path: str = "params.yaml",
    root: str = ".",
    record: Optional[bool] = None,
    git_commit: Optional[bool] = None,
) -> dict:
    """Append the faces of new images at `input` (default: incremental.input, else
    paths.input) to FEID; see the module docstring. `annotator` and `budget_usd` override
    annotator.backend / annotator.budget_usd for this run."""
    log = _log()
    t0 = time.perf_counter()
    base = load(params_path)
    p, params_hash = effective_params(base, annotator, budget_usd)
    location = input or p.incremental.input or p.paths.input
    new, skipped, stale = find_new(p, location, params_hash)
    summary = {"location": location, "new_images": len(new), "stale_images": len(stale), "params_hash": params_hash}
    if not new:  # nothing is written either: the ledger only grows with a part
        log.info(f"incremental: nothing new at {location}")
        return {**summary, "part": None, "recorded": False, "seconds": round(time.perf_counter() - t0, 2)}
    digest = hashlib.sha256("".join(sorted(s for *_, s in new)).encode()).hexdigest()[:8]
    part = f"part-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{digest}"
    wd = Path(p.incremental.workdir) / part
    wd.mkdir(parents=True, exist_ok=True)
    log.info(f"incremental: {len(new)} new images at {location} ({len(stale)} seen with other parameters) -> {part}")
    try:
        write_manifest(wd / "new.csv", new)
        rp = run_params(p, wd, location, str(wd / "new.csv"))
        ran = _run_stages(rp)
        if "verify" in ran:
            sample = ran["sample"]
            summary.update(calls=sample["calls"], cache_hits=sample["cache_hits"], cost_usd=sample["cost_usd"])
            summary.update(append_part(base, p, wd, part, params_hash, stale))
        else:
            summary.update(faces=0, accepted=0, rejected=0, calls=0)
        ledger = outcomes(wd, new, params_hash, part) + [{**s, "part": part} for s in skipped]
        summary["superseded_rows"] = supersede(p, stale, part)
        write_ledger(p, ledger, part)
    finally:
        if wd.exists():
            shutil.rmtree(wd, ignore_errors=True)
    summary["part"] = part
    rec = record if record is not None else p.incremental.record
    gc = git_commit if git_commit is not None else p.incremental.git_commit
    summary.update(
        record_version(p, root, gc, f"FEID: +{summary.get('accepted', 0)} faces ({part})")
        if rec
        else {"recorded": False}
    )
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    log.info(f"incremental: {summary}")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.incremental")
    ap.add_argument("--input", default="")
    ap.add_argument("--annotator", default="")
    ap.add_argument("--budget", type=float, default=0.0)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--git-commit", action="store_true")
    a = ap.parse_args(argv)
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        print(
            incremental_flow(
                input=a.input,
                annotator=a.annotator,
                budget_usd=a.budget,
                params_path=a.params,
                record=False if a.no_record else None,
                git_commit=a.git_commit or None,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
