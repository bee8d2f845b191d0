"""The package outside this repository: build the wheel, install it in a fresh venv, make a
project with `seke init`, and build FEID there with `seke run` (local annotator)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
UV = shutil.which("uv", path=str(Path(sys.executable).parent))


def _sh(*cmd, cwd=None, env=None, timeout=900) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_seke_init_and_run_from_an_installed_wheel(tmp_path):
    if UV is None:
        pytest.skip("uv is not installed in this environment")
    # the build backend as the registry held it on a fixed date, not whatever setuptools is newest
    _sh(
        UV,
        "build",
        "-q",
        "--exclude-newer",
        "2026-12-01T00:00:00Z",
        "--wheel",
        "-o",
        tmp_path / "dist",
        ROOT,
        cwd=tmp_path,
    )
    wheel = next((tmp_path / "dist").glob("seke-*.whl"))
    venv = tmp_path / "venv"
    _sh(UV, "venv", "-q", "-p", sys.executable, venv)
    py = venv / "bin" / "python"
    pins = tmp_path / "pins.txt"  # the locked versions (and uv's cache) instead of whatever is newest
    lines = (ROOT / "requirements-test.lock").read_text().splitlines()
    pins.write_text("\n".join(ln.split(" ;")[0] for ln in lines if ln[:1].isalpha() and not ln.startswith("seke")))
    _sh(UV, "pip", "install", "-q", "--python", py, f"{wheel}[local]", "-c", pins)

    images = tmp_path / "faces"
    images.mkdir()
    rows = []
    for r in csv.DictReader(open(ROOT / "data/sample/manifest.csv")):
        if r["path"].startswith("images/london_") and "copy" not in r["path"] and len(rows) < 3:
            shutil.copy(ROOT / "data/sample" / r["path"], images / Path(r["path"]).name)
            rows.append({"path": Path(r["path"]).name, "expression": r["expression"], "subject": r["subject"]})
    with open(images / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "expression", "subject"])
        w.writeheader()
        w.writerows(rows)

    # nothing of this test session's: its Prefect server, DVC settings, and its warm stage runner
    # (SEKE_STAGE_SERVER), whose stages would run in this checkout's environment, not the wheel's
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DVC_", "PYTHONPATH", "SEKE_"))}
    env.update(PATH=f"{venv / 'bin'}:{Path(UV).parent}:{env.get('PATH', '')}", DO_NOT_TRACK="1")
    work = tmp_path / "elsewhere"  # nowhere near the repository
    work.mkdir()
    seke = venv / "bin" / "seke"
    assert _sh(seke, "--version", env=env).stdout.startswith("seke ")
    _sh(seke, "init", "proj", "--images", images, "--manifest", images / "labels.csv", cwd=work, env=env)
    proj = work / "proj"
    assert {"params.yaml", "dvc.yaml", ".gitignore", "README.md", "seke.version"} <= {p.name for p in proj.iterdir()}
    assert (proj / ".dvc").is_dir() and "tasks/" not in (proj / "dvc.yaml").read_text()
    # without the model files, the stage stops before sampling and names the fix
    r = subprocess.run([seke, "run"], cwd=proj, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode != 0 and "seke models install" in r.stdout + r.stderr, r.stdout[-2000:] + r.stderr[-2000:]
    assert "samples failed" not in r.stdout + r.stderr
    _sh(seke, "models", "install", cwd=work, env=env)  # the documented step, outside the repository
    _sh(seke, "run", cwd=proj, env=env, timeout=1200)
    feid = pq.read_table(proj / "data/feid/feid.parquet")
    assert feid.num_rows == 3 and set(feid.column("expression").to_pylist()) <= {"neutral", "happy"}
    # the code came from the wheel, not from this checkout
    where = _sh(py, "-c", "import tasks; print(tasks.__file__)", cwd=work, env=env).stdout
    assert str(venv) in where and str(ROOT) not in where
