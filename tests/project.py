"""A small, real copy of the project for end-to-end tests: code, dvc.yaml, params.yaml, a
chosen subset of the sample set, its own git + DVC repository, and an environment whose
Prefect and DVC state live inside it."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def make_project(tmp: Path, *, london: int = 4, extra: tuple[str, ...] = (), params: dict | None = None) -> Path:
    """`london` images per class (neutral, happy) plus `extra` sample-set paths."""
    proj = tmp / "proj"
    proj.mkdir()
    for d in ("tasks", "flows", "expectations"):
        shutil.copytree(ROOT / d, proj / d, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / f, proj / f)
    src = ROOT / "data" / "sample"
    (proj / "data" / "sample" / "images").mkdir(parents=True)
    rows = list(csv.DictReader(open(src / "manifest.csv")))
    keep, count = [], {}
    for r in rows:
        e = r.get("expression") or ""
        if (r["path"].startswith("images/london_") and "copy" not in r["path"] and count.get(e, 0) < london) \
                or r["path"] in extra:
            count[e] = count.get(e, 0) + 1
            keep.append(r)
            if (src / r["path"]).exists() and not r["path"].startswith(".."):
                shutil.copy(src / r["path"], proj / "data" / "sample" / r["path"])
    with open(proj / "data" / "sample" / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    if params:
        p = yaml.safe_load((proj / "params.yaml").read_text())
        for section, values in params.items():
            p.setdefault(section, {}).update(values)
        (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    e = project_env(proj)
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.org"],
                ["git", "config", "user.name", "test"], [str(BIN / "dvc"), "init", "-q"],
                [str(BIN / "dvc"), "config", "core.analytics", "false"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=proj, env=e, check=True, capture_output=True)
    return proj


def project_env(proj: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", PYTHONPATH=str(proj), DVC_NO_ANALYTICS="1",
               PREFECT_HOME=str(proj / ".seke" / "prefect"), DVC_SITE_CACHE_DIR=str(proj / ".seke" / "dvc-site"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", **extra)
    return env


def run(proj: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    exe = str(BIN / args[0]) if (BIN / args[0]).exists() else args[0]
    r = subprocess.run([exe, *args[1:]], cwd=proj, env=env or project_env(proj), capture_output=True,
                       text=True, timeout=1200)
    if check:
        assert r.returncode == 0, f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r
