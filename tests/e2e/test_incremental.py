"""The incremental flow (flows/incremental.py), run as users run it (`python -m
flows.incremental`, its own processes, a git + DVC project with a local DVC remote), against
the simulated VLLM whose request log counts the annotator's calls.

- Three runs bring new images from a watched folder into the DVC-tracked inbox and build
  three versions with `dvc repro`; each annotates only the new faces. A full `dvc repro -f`
  then rebuilds the last version's FEID row for row and pays for no call; `seke compare`
  compares two versions, and `dvc exp run` works on top of one.
- `kill -9` after each step of the flow (and at a random moment of its build), each followed
  by the next run: the last one ends with the FEID of an uninterrupted run, a clean DVC and
  git state, no stray temporary file, and no successful request sent twice.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import opsproj
import pyarrow.parquet as pq
import pytest
import yaml
from simserver import TEST_KEY

from simvllm.server import ServerThread, SimConfig, SimVLLM
from tasks.core.dvcfile import stage_names

pytestmark = pytest.mark.e2e
PARAMS = {
    "annotator": {"backend": "openai", "model": "sim-vllm"},
    "runtime": {"cache": ".seke/cache", "timeout_s": 5, "max_retries": 2, "retry_base_s": 0.01, "retry_max_s": 0.2},
    "verify": {"use_priors": False},
    "expectations": {"max_class_share": 1.0, "min_classes": 1},
}
STEPS = ("landing", "landed", "manifest", "tracked", "build", "built", "pushed")
ANSWER = ["face_id", "request_id", "sample_index", "seed", "status", "raw", "expression", "valence", "arousal", "aus"]
IN_FLIGHT_S = 1.0  # a response the simulator sent in the last second before a kill may never have arrived


def project(tmp: Path, base: int, git_commit: bool = True) -> tuple[Path, Path]:
    """A project with `base` images in paths.input, an empty watched folder, a DVC remote."""
    incoming = tmp / "incoming"
    incoming.mkdir(parents=True)
    params = {**PARAMS, "incremental": {"input": str(incoming), "manifest": str(incoming / "manifest.csv")}}
    params["incremental"]["git_commit"] = git_commit
    proj = opsproj.make_project(tmp, opsproj.london(base), params=params)
    opsproj.run(proj, "dvc", "remote", "add", "-q", "-d", "local", str(tmp / "remote"))
    opsproj.run(proj, "git", "commit", "-qam", "a DVC remote")
    return proj, incoming


def flow(proj: Path, env: dict, crash_after: str = "", check: bool = True) -> dict | None:
    e = {**env, "SEKE_CRASH_AFTER": crash_after} if crash_after else env
    r = opsproj.run(proj, sys.executable, "-m", "flows.incremental", env_=e, check=False)
    if crash_after:
        assert r.returncode == -signal.SIGKILL, f"the run did not stop after {crash_after}:\n{r.stderr[-3000:]}"
        return None
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(r.stdout[r.stdout.index("\n{") + 1 :] if not r.stdout.startswith("{") else r.stdout)


def feid(proj: Path) -> list[dict]:
    return sorted(pq.read_table(proj / "data/feid/feid.parquet").to_pylist(), key=lambda r: r["id"])


def ok(sim: SimVLLM, since: float = 0.0, until: float = float("inf")) -> list[tuple]:
    return [(e["fingerprint"], e.get("seed")) for e in sim.log if e["status"] == 200 and since <= e["t"] < until]


def faces_annotated(sim: SimVLLM, since: float) -> set[str]:
    return {e["image_sha256"] for e in sim.log if e.get("image_sha256") and e["t"] >= since}


def strays(proj: Path) -> list[str]:
    return [
        str(p.relative_to(proj))
        for d in ("data", "metrics", "plots")
        for p in (proj / d).rglob("*")
        if ".tmp" in p.name
    ]


def versioned(proj: Path) -> dict[str, float]:
    """What makes a version, with modification times."""
    files = [proj / "dvc.lock", *(f for d in ("data", "metrics", "plots") for f in (proj / d).rglob("*"))]
    return {str(f.relative_to(proj)): f.stat().st_mtime for f in files if f.is_file()}


def data_outs(proj: Path) -> dict[str, str]:
    """md5 of every stage's data output in dvc.lock, but the sample stage's: its rows and the
    metrics say what this run paid (`cached`, `latency_ms`, `cost_usd`), so they differ."""
    lock = yaml.safe_load((proj / "dvc.lock").read_text())["stages"]
    outs = {o["path"]: o["md5"] for s in lock.values() for o in s["outs"] if o["path"].startswith("data/")}
    assert "data/sample_runs" in outs
    return {k: v for k, v in outs.items() if k != "data/sample_runs"}


def samples(proj: Path, columns: list[str]) -> list[dict]:
    t = pq.read_table(proj / "data/sample_runs/samples.parquet")
    return t.select([c for c in columns if c in t.column_names]).to_pylist()


def test_three_versions_rebuild_compare_and_experiment(tmp_path):
    proj, incoming = project(tmp_path, base=1)
    with ServerThread(SimVLLM(SimConfig())) as server:
        sim = server.sim
        env = opsproj.env(proj, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY=TEST_KEY)
        heads, held = [], 1
        for i, n_new in enumerate((1, 2, 1)):
            rows = opsproj.london(n_new, start=held)
            opsproj.put_images(incoming, rows)
            t = time.time()
            r = flow(proj, env)
            assert r["new_images"] == n_new and r["pushed"] and r["git_commit"]
            # one `dvc repro`, and what it did with each stage: every stage ran on the new images
            assert [s for s, did in r["stages"].items() if did == "ran" and s != "code"] == stage_names(), r["stages"]
            assert r["stages"]["code"] == ("ran" if i == 0 else "skipped"), r["stages"]
            # the first run builds the base too; later ones annotate only the new faces
            assert len(faces_annotated(sim, t)) == n_new + (1 if i == 0 else 0)
            held += n_new
            images = pq.read_table(proj / "data/ingest/images.parquet")
            assert images.num_rows == held, "ingest read paths.input and the inbox"
            heads.append(r["git_commit"])
            assert opsproj.run(proj, "git", "rev-parse", "HEAD").stdout.strip() == r["git_commit"]
            assert "new" not in opsproj.run(proj, "dvc", "status", "-c", env_=env).stdout
        last = feid(proj)

        # nothing new: no stage runs, no call, nothing written or committed
        t, files = time.time(), versioned(proj)
        r = flow(proj, env)
        assert r["new_images"] == 0 and r["stages"] == {} and r["git_commit"] is None
        assert not [e for e in sim.log if e["t"] >= t]
        assert versioned(proj) == files

        # every version is rebuilt by the stages' own commands: the same rows, no call paid again
        t, lock, paid = time.time(), data_outs(proj), samples(proj, ANSWER)
        opsproj.run(proj, "dvc", "repro", "-f", env_=env)
        assert feid(proj) == last
        assert not [e for e in sim.log if e["t"] >= t and e["status"] == 200], "a full rebuild paid for a call"
        assert data_outs(proj) == lock, "every other stage's data output is the version's, byte for byte"
        assert samples(proj, ANSWER) == paid, "the same answers, now from the cache"

        # two versions compared, and an experiment on top of the last one
        out = tmp_path / "cmp"
        opsproj.run(proj, sys.executable, "-m", "flows.cli", "compare", heads[1], heads[2], "--out", str(out), env_=env)
        c = json.loads((out / "compare.json").read_text())
        assert c["b"]["faces"] == c["a"]["faces"] + 1 and c["params"] == []
        opsproj.run(proj, "dvc", "exp", "run", "-q", "-n", "looser", "-S", "verify.target_error=0.2", env_=env)
        opsproj.run(proj, sys.executable, "-m", "flows.cli", "compare", "HEAD", "looser", "--out", str(out), env_=env)
        c = json.loads((out / "compare.json").read_text())
        assert c["params"] == [{"param": "verify.target_error", "a": 0.05, "b": 0.2}]
        assert c["a"]["faces"] == c["b"]["faces"] == held


def test_kill_9_after_every_step_then_resume(tmp_path):
    ref, ref_in = project(tmp_path / "ref", base=1)
    proj, incoming = project(tmp_path / "run", base=1)
    new = opsproj.london(3, start=1)
    opsproj.put_images(ref_in, new)
    opsproj.put_images(incoming, new)
    for folder in (ref_in, incoming):  # a link out of the watched folder: refused, nothing of it read
        (folder / "outside.jpg").symlink_to("/etc/hostname")
        with open(folder / "manifest.csv", "a") as fh:
            fh.write("outside.jpg,,,\n")
    with ServerThread(SimVLLM(SimConfig())) as server:
        sim = server.sim
        flow(ref, opsproj.env(ref, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY=TEST_KEY))
        reference = feid(ref)
        env = opsproj.env(proj, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY=TEST_KEY)
        start, paid_before_kill, resumed_at = time.time(), set(), None
        for step in STEPS:
            if step != "build":
                flow(proj, env, crash_after=step)
                continue
            # a random moment of the build, while the sample stage is calling the (slowed) endpoint
            sim.config.update({"latency_ms": 300})
            proc = subprocess.Popen(
                [sys.executable, "-m", "flows.incremental"], cwd=proj, env=env, start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.time() + 600
            while not ok(sim, since=start) and proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, "the build ended before it could be killed"
            time.sleep(random.Random(7).uniform(0, 0.5))
            killed_at = time.time()
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            paid_before_kill = set(ok(sim, since=start, until=killed_at - IN_FLIGHT_S))
            time.sleep(0.5)
            sim.config.update({"latency_ms": 0})
            resumed_at = time.time()
        r = flow(proj, env)
    assert r["git_commit"], "the last run committed the version the killed runs had left"
    again = ok(sim, since=resumed_at)
    assert not paid_before_kill & set(again), "a request that had succeeded before the kill was sent again"
    assert len(again) == len(set(again))
    assert feid(proj) == reference
    assert strays(proj) == [] and not list((proj / "data/inbox").rglob("*.tmp-*"))
    refused = list(csv.DictReader(open(proj / "data/inbox/refused.csv")))
    assert [x["reason"] for x in refused] == ["outside_root"]
    assert "changed" not in opsproj.run(proj, "dvc", "status", env_=env).stdout
    assert "new" not in opsproj.run(proj, "dvc", "status", "-c", env_=env).stdout
    assert opsproj.run(proj, "git", "status", "--porcelain", "dvc.lock", "data/inbox").stdout == ""
    manifest = list(csv.DictReader(open(proj / "data/inbox/manifest.csv")))
    assert len(manifest) == len({m["sha256"] for m in manifest}) == len(new)
