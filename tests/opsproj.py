"""Small real copies of the project for the operations tests (S3, incremental, deployments,
Dask): code, dvc.yaml, params.yaml, a few images, its own git + DVC repository, and an
environment whose Prefect and DVC state live inside it."""

from __future__ import annotations

import atexit
import csv
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SAMPLE = ROOT / "data" / "sample"


def london(n: int, start: int = 0) -> list[dict]:
    """`n` manifest rows of single-face London images (neutral and happy alternating)."""
    rows = [
        r
        for r in csv.DictReader(open(SAMPLE / "manifest.csv"))
        if r["path"].startswith("images/london_") and "copy" not in r["path"]
    ]
    return rows[start : start + n]


def put_images(dest: Path, rows: list[dict], manifest: bool = True) -> None:
    """Copy the rows' images under `dest` (same relative paths) and (re)write its manifest."""
    (dest / "images").mkdir(parents=True, exist_ok=True)
    for r in rows:
        if not r["path"].startswith(".."):  # a row pointing outside the root stays in the manifest only
            shutil.copy(SAMPLE / r["path"], dest / r["path"])
    if manifest:
        old = list(csv.DictReader(open(dest / "manifest.csv"))) if (dest / "manifest.csv").exists() else []
        have = {r["path"] for r in old}
        with open(dest / "manifest.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["path", "expression", "subject", "source"])
            w.writeheader()
            w.writerows(old + [r for r in rows if r["path"] not in have])


@functools.cache
def _initialised() -> Path:
    """An empty git repository with a committer and `dvc init` run in it: copied into every
    project (a repository is relocatable), instead of three git and one dvc process each."""
    d = Path(tempfile.mkdtemp(prefix="seke-repo-"))
    atexit.register(shutil.rmtree, d, True)
    e = env(d)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "t@example.org"],
        ["git", "config", "user.name", "test"],
        [str(BIN / "dvc"), "init", "-q"],
    ):
        subprocess.run(cmd, cwd=d, env=e, check=True, capture_output=True)
    return d


def make_project(tmp: Path, rows: list[dict], params: dict | None = None, git: bool = True) -> Path:
    proj = tmp / "proj"
    proj.mkdir(parents=True)
    for d in ("tasks", "flows", "expectations"):
        shutil.copytree(ROOT / d, proj / d, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / f, proj / f)
    put_images(proj / "data" / "sample", rows)
    (proj / "data" / "review").mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "data" / "inbox", proj / "data" / "inbox")  # empty: ingest's dependency must exist
    shutil.copy(ROOT / "data" / "review" / "labels.csv", proj / "data" / "review" / "labels.csv")
    p = yaml.safe_load((proj / "params.yaml").read_text())
    p["crop"]["detector"] = "none"
    for section, values in (params or {}).items():
        if isinstance(values, dict):
            p.setdefault(section, {}).update(values)
        else:
            p[section] = values
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    (proj / ".gitignore").write_text(".seke/\n__pycache__/\n")
    if git:
        for name in (".git", ".dvc", ".dvcignore"):  # `git init` + `dvc init`, done once per test process
            src = _initialised() / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, proj / name)
        e = env(proj)
        for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
            subprocess.run(cmd, cwd=proj, env=e, check=True, capture_output=True)
    return proj


def set_params(proj: Path, **sections: dict) -> None:
    p = yaml.safe_load((proj / "params.yaml").read_text())
    for section, values in sections.items():
        p.setdefault(section, {}).update(values)
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def env(proj: Path, **extra: str) -> dict:
    # the project's own Prefect database (under its PREFECT_HOME), not the checkout's
    e = {k: v for k, v in os.environ.items() if k != "PREFECT_API_DATABASE_CONNECTION_URL"}
    e.update(
        PATH=f"{BIN}:{e.get('PATH', '')}",
        PYTHONPATH=str(proj),
        DVC_NO_ANALYTICS="1",
        PREFECT_HOME=str(proj / ".seke" / "prefect"),
        DVC_SITE_CACHE_DIR=str(proj / ".seke" / "dvc-site"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_LOGGING_LEVEL="WARNING",  # test output stays short; a test may ask for INFO
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
        AWS_EC2_METADATA_DISABLED="true",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    e.update(extra)
    return e


def run(
    proj: Path, *args: str, env_: dict | None = None, check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess:
    exe = str(BIN / args[0]) if (BIN / args[0]).exists() else args[0]
    r = subprocess.run(
        [exe, *args[1:]], cwd=proj, env=env_ or env(proj), capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert r.returncode == 0, f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r
