"""New data, incrementally: watch a location, bring the images the project does not hold into
its DVC-tracked inbox, and build the next FEID version with `dvc repro`.

    python -m flows.incremental [--input s3://bucket/incoming] [--manifest URL] [--budget 5]

One run, each step idempotent (a run killed anywhere is completed by the next one):
1. **Land** (`tasks.tools.incremental.land`): list the location, read each file not seen
   before (by URL and size), and copy the images whose SHA-256 the project does not hold to
   `<paths.inbox>/images/<sha256><ext>`; add them to `<paths.inbox>/manifest.csv` with the
   location manifest's labels. Files that cannot be read safely go to `refused.csv`.
2. **Track**: `dvc add <inbox>/images` (the images go to DVC's cache, `images.dvc` to git).
3. **Build**: when `dvc status` says anything changed, the whole pipeline (`flows.pipeline`,
   one `dvc repro`, each stage a Prefect flow run). Ingest reads the inbox next to
   `paths.input`, so the version in `dvc.lock` is rebuilt by the stages' own commands from
   versioned inputs, and every later `dvc repro` (after a parameter change, on another
   machine after `dvc pull`) gives the same rows. Answers come from the response cache: no
   call is paid twice.
4. **Record**: `dvc push` to the default remote (`incremental.record`), and with
   `incremental.git_commit` a git commit of dvc.lock, the inbox's manifest, refusals and
   .dvc file, and the metrics. `seke compare HEAD~1 HEAD` then compares two versions.

With the location being `paths.input` itself there is nothing to land: its files are the
ingest stage's dependency already, and the run only builds and records.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

from flows import env

env.apply()

from prefect import flow, get_run_logger  # noqa: E402

from tasks.core.params import Params, load  # noqa: E402
from tasks.tools.incremental import IMAGES, MANIFEST, REFUSED, crash_point, inbox_dir, land  # noqa: E402


def _log():
    try:
        return get_run_logger()
    except Exception:
        import logging

        return logging.getLogger("seke.incremental")


@contextlib.contextmanager
def _dvc(root: str) -> Iterator:
    """The project's DVC repository, in this process: status, add and push are DVC's own
    Python calls here, not one `dvc` process each (about a second of start-up apiece). Only the
    build runs DVC as its own process, supervised (`flows.pipeline`)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(root) as repo:
            yield repo
    except DvcException as e:
        raise RuntimeError(f"dvc: {e}") from e


def _git(root: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=check)


def track(root: str, p: Params) -> bool:
    """`dvc add` the inbox's images when they differ from what images.dvc records; True if it did."""
    images = inbox_dir(p) / IMAGES
    if not (Path(root) / images).is_dir():
        return False
    dvcfile = f"{images}.dvc"
    with _dvc(root) as repo:
        if (Path(root) / dvcfile).exists() and not repo.status(targets=[dvcfile]):
            return False
        repo.add(str(images))
    return True


def stale(root: str) -> dict:
    """`dvc status` of the whole project ({} = every stage is up to date)."""
    with _dvc(root) as repo:
        return repo.status()


def build(root: str, budget_usd: float) -> dict[str, str]:
    """The pipeline flow (one `dvc repro`): what DVC did with each stage. A budget reaches the
    sample stage through SEKE_BUDGET_USD (it stops a run, it never shapes a row: not a DVC param)."""
    from flows.pipeline import pipeline

    saved = os.environ.get("SEKE_BUDGET_USD")
    if budget_usd:
        os.environ["SEKE_BUDGET_USD"] = str(budget_usd)
    try:
        return pipeline(root=root)
    finally:
        if budget_usd:
            if saved is None:
                os.environ.pop("SEKE_BUDGET_USD", None)
            else:
                os.environ["SEKE_BUDGET_USD"] = saved


def push(root: str) -> dict:
    with _dvc(root) as repo:
        remote = repo.config["core"].get("remote", "")  # `dvc remote default`
        if not remote:
            _log().warning("no default DVC remote: the version is in the local DVC cache only (dvc remote add -d ...)")
            return {"pushed": False}
        repo.push()
    return {"pushed": True, "remote": remote}


def commit(root: str, p: Params, message: str) -> str | None:
    """git-commit what makes the version (nothing else); the commit's sha, or None."""
    if not (Path(root) / ".git").exists():
        _log().warning("not a git repository: the version is not committed")
        return None
    inbox = inbox_dir(p)
    paths = ["dvc.lock", p.paths.metrics, p.paths.plots]
    paths += [str(inbox / f) for f in (MANIFEST, REFUSED, f"{IMAGES}.dvc", ".gitignore")]
    paths = [x for x in paths if (Path(root) / x).exists()]
    _git(root, "add", "--", *paths)
    if _git(root, "diff", "--cached", "--quiet", "--", *paths, check=False).returncode == 0:
        return None
    _git(root, "commit", "-q", "-m", message, "--", *paths)
    return _git(root, "rev-parse", "HEAD").stdout.strip()


def _version(p, log, t0: float, input: str, manifest: str, budget_usd: float, record, git_commit) -> dict:
    """The incremental run's steps, in the project folder, with its lock held."""
    location = input or p.incremental.input or p.paths.input
    summary: dict = {"location": location}
    if location.rstrip("/") != p.paths.input.rstrip("/"):
        got = land(p, location, manifest or p.incremental.manifest)
        summary.update(got.summary())
        for r in got.refused:
            log.warning(f"incremental: not brought in: {r['origin']}: {r['reason']} ({r['detail']})")
    summary["tracked"] = track(".", p)
    crash_point("tracked")
    todo = stale(".")
    if todo:
        log.info(f"incremental: {summary.get('new_images', 0)} new images; building ({', '.join(todo)} changed)")
        summary["stages"] = build(".", budget_usd)
        crash_point("built")
    else:
        log.info(f"incremental: nothing new at {location}; FEID is up to date")
        summary["stages"] = {}
    if p.incremental.record if record is None else record:
        summary.update(push("."))
        crash_point("pushed")
    if p.incremental.git_commit if git_commit is None else git_commit:
        n = summary.get("new_images", 0)
        summary["git_commit"] = commit(".", p, f"FEID: +{n} images from {location}")
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    log.info(f"incremental: {summary}")
    return summary


@flow(name="feid-incremental", log_prints=True)
def incremental_flow(
    input: str = "",
    manifest: str = "",
    budget_usd: float = 0.0,
    params_path: str = "params.yaml",
    root: str = ".",
    record: bool | None = None,
    git_commit: bool | None = None,
) -> dict:
    """Bring the images new at `input` (default: incremental.input, else paths.input) into the
    inbox and build the next FEID version; see the module docstring."""
    log = _log()
    t0 = time.perf_counter()
    p = load(Path(root) / params_path if not Path(params_path).is_absolute() else params_path)
    if not (Path(root) / ".dvc").is_dir():
        raise RuntimeError(f"{Path(root).resolve()} is not a DVC project: a version is its dvc.lock (run `dvc init`)")
    here = os.getcwd()
    os.chdir(root)  # every path in params.yaml is relative to the project
    try:
        from flows.preflight import ProjectBusy, preflight

        with preflight(".") as note:  # params checked whole; one writer; a cut-short dvc.lock repaired
            if note:
                log.warning(note)
            return _version(p, log, t0, input, manifest, budget_usd, record, git_commit)
    except ProjectBusy as e:  # a scheduled run beside another: it steps aside, and says so in one line
        log.warning(f"incremental: stepped aside: {e}")
        return {"stepped_aside": str(e)}
    finally:
        os.chdir(here)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.incremental")
    ap.add_argument("--input", default="")
    ap.add_argument("--manifest", default="")
    ap.add_argument("--budget", type=float, default=0.0)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--git-commit", action="store_true")
    a = ap.parse_args(argv)

    from flows.server import shared_server

    with shared_server(), env.no_heartbeats():
        r = incremental_flow(
            input=a.input,
            manifest=a.manifest,
            budget_usd=a.budget,
            params_path=a.params,
            record=False if a.no_record else None,
            git_commit=a.git_commit or None,
        )
    print(json.dumps(r, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
