"""`seke compare`: statistics against scikit-learn, and end to end on a small clone of the
project: two DVC experiments that differ in one verify threshold, then a fresh clone that
reads two tagged versions from a DVC remote only. The same clone also exercises
`seke quality` (held-out labels) and `seke export --rev`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from browser import CHROMIUM, render
from sklearn.metrics import cohen_kappa_score

from tasks.tools import compare as C
from tasks.tools import compare_report

ROOT = Path(__file__).resolve().parents[2]
N_PER_CLASS = 5  # London images per class (neutral, happy)


# ---------------------------------------------------------------- unit
def test_kappa_matches_sklearn_and_handles_one_class():
    a = ["happy", "neutral", "sad", "happy", "neutral", "happy", "sad", "sad"]
    b = ["happy", "neutral", "happy", "happy", "sad", "happy", "sad", "neutral"]
    assert C.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    assert C.cohen_kappa(["happy"] * 4, ["happy"] * 4) == 1.0  # perfect agreement, one class


def test_divergence_and_param_diff():
    assert C.js_divergence({"a": 3, "b": 1}, {"a": 3, "b": 1}) == 0
    assert C.js_divergence({"a": 1}, {"b": 1}) == pytest.approx(1.0)
    d = C.param_diff({"verify": {"x": 1, "y": 2}, "s": 1}, {"verify": {"x": 1, "y": 3}, "s": 1, "n": 0})
    assert d == [{"param": "n", "a": None, "b": 0}, {"param": "verify.y", "a": 2, "b": 3}]


def _v(name, verdicts, params):
    feid = [
        {
            "id": v["face_id"],
            "source": "s",
            "expression": v["expression"],
            "valence": v["valence"],
            "arousal": v["arousal"],
            "aus": v["aus"],
            "confidence": 1.0,
            "annotator": "x",
            "model": "m",
            "prompt_version": "p",
            "params_hash": "h",
            "knowledge_version": "k",
        }
        for v in verdicts
        if v["accepted"]
    ]
    return C.Version(name=name, rev=None, repo=".", params=params, verdicts=verdicts, feid=feid)


def test_compare_on_constructed_versions():
    def ver(i, expr, acc, reasons=()):
        return {
            "face_id": f"f{i}",
            "accepted": acc,
            "reasons": list(reasons),
            "confidence": 1.0,
            "expression": expr,
            "valence": 0.1 * i,
            "arousal": 0.0,
            "aus": ["AU12"] if expr == "happy" else [],
        }

    a = _v(
        "A",
        [ver(0, "happy", True), ver(1, "neutral", True), ver(2, "happy", True), ver(3, "sad", True)],
        {"verify": {"t": 0.5}},
    )
    b = _v(
        "B",
        [
            ver(0, "happy", True),
            ver(1, "happy", True),
            ver(2, "happy", False, ["uncertain_expression"]),
            ver(3, "sad", True),
            ver(4, "neutral", True),
        ],
        {"verify": {"t": 0.9}},
    )
    c = C.compare(a, b)
    assert c["a"]["acceptance_rate"] == 1.0 and c["b"]["acceptance_rate"] == 0.8
    assert c["agreement"]["shared_faces"] == 3
    assert c["changed"]["faces"] == [{"face_id": "f1", "a": "neutral", "b": "happy"}]
    assert c["changed"]["left"] == {"n": 1, "reasons": {"uncertain_expression": 1}, "faces": ["f2"]}
    assert c["changed"]["entered"]["faces"] == ["f4"]
    assert c["agreement"]["kappa_unchanged"] == 1.0
    assert c["agreement"]["kappa"] == pytest.approx(
        cohen_kappa_score(["happy", "neutral", "sad"], ["happy", "happy", "sad"]), abs=1e-4
    )
    assert c["params"] == [{"param": "verify.t", "a": 0.5, "b": 0.9}]
    assert "verify.t" in compare_report.markdown(c)


# ---------------------------------------------------------------- end to end
def _env(proj: Path) -> dict:
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(proj),
        PREFECT_HOME=str(proj / ".seke" / "prefect"),
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(proj / ".seke" / "dvc-site"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    return env


def _sh(cwd: Path, env: dict, *cmd: str, timeout: int = 900) -> str:
    r = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _seke(cwd: Path, env: dict, *args: str) -> str:
    return _sh(cwd, env, sys.executable, "-m", "flows.cli", *args)


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    """A clone of the project with the working tree's code, a 10-face London manifest whose
    expression labels are held out (so the annotator labels every face and verify's
    vote-share threshold matters), built once, and two experiments: min_vote_share 0.5 / 1.0."""
    tmp = tmp_path_factory.mktemp("cmp")
    proj = tmp / "proj"
    env = _env(proj)
    _sh(tmp, env, "git", "clone", "-q", str(ROOT), str(proj))
    for d in ("tasks", "flows", "expectations"):  # the code as it is now, committed or not
        shutil.rmtree(proj / d)
        shutil.copytree(ROOT / d, proj / d, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / f, proj / f)
    src = ROOT / "data" / "sample"
    rows = list(csv.DictReader(open(src / "manifest.csv")))
    keep, count = [], {}
    for r in rows:
        e = r.get("expression") or ""
        if r["path"].startswith("images/london_") and count.get(e, 0) < N_PER_CLASS and "copy" not in r["path"]:
            count[e] = count.get(e, 0) + 1
            keep.append(r)
    sample = proj / "data" / "sample"
    for f in (sample / "images").iterdir():
        if f"images/{f.name}" not in {r["path"] for r in keep}:
            f.unlink()
    with (sample / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "subject", "source"])
        w.writeheader()
        w.writerows([{k: r[k] for k in ("path", "subject", "source")} for r in keep])
    with (tmp / "truth.csv").open("w", newline="") as fh:  # the held-out labels
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    p = yaml.safe_load((proj / "params.yaml").read_text())
    p["runtime"]["cache"] = ".seke/cache"
    p["verify"]["min_vote_share"] = 0.5
    p["verify"]["target_error"] = 0  # no labelled faces: a plain threshold, which is what this compares
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    if (proj / "dvc.lock").exists():
        (proj / "dvc.lock").unlink()
    # a DVC remote from the start (every version's config names it), pushed to in the fresh-clone test
    _sh(proj, env, sys.executable, "-m", "dvc", "remote", "add", "-d", "store", str(tmp / "dvcstore"))
    _sh(proj, env, "git", "add", "-A")
    _sh(proj, env, "git", "commit", "-qm", "test baseline")
    _seke(proj, env, "run")
    _sh(proj, env, "git", "add", "-A")
    _sh(proj, env, "git", "commit", "-qm", "baseline built")
    _sh(proj, env, "git", "tag", "base")
    _seke(proj, env, "run", "-n", "vs-050", "-S", "verify.min_vote_share=0.5")
    _seke(proj, env, "run", "-n", "vs-100", "-S", "verify.min_vote_share=1.0")
    return proj, tmp


def _verdicts(proj: Path, env: dict, rev: str) -> list[dict]:
    import io

    import pyarrow.parquet as pq

    out = _sh(
        proj,
        env,
        sys.executable,
        "-c",
        "import dvc.api,sys; sys.stdout.buffer.write("
        f"dvc.api.read('data/verify/verdicts.parquet', rev='{rev}', mode='rb').hex().encode())",
    )
    return pq.read_table(io.BytesIO(bytes.fromhex(out))).to_pylist()


@pytest.mark.e2e
def test_compare_two_experiments_differing_in_one_threshold(project):
    proj, tmp = project
    env = _env(proj)
    text = _seke(proj, env, "compare", "vs-050", "vs-100", "--out", str(tmp / "cmp"), "--html")
    c = json.loads((tmp / "cmp" / "compare.json").read_text())
    va = _verdicts(proj, env, "vs-050")
    # expected: the faces accepted at 0.5 whose vote share is below 1.0 leave FEID, nothing enters
    acc_a = {v["face_id"] for v in va if v["accepted"]}
    expected_b = {v["face_id"] for v in va if v["accepted"] and v["vote_share"] == 1.0}
    assert len(acc_a) > len(expected_b), "the threshold change should reject some faces here"
    assert c["a"]["accepted"] == len(acc_a) and c["b"]["accepted"] == len(expected_b)
    assert c["acceptance_change"] == pytest.approx((len(expected_b) - len(acc_a)) / len(va), abs=1e-4)
    assert c["changed"]["left"]["n"] == len(acc_a - expected_b)
    assert set(c["changed"]["left"]["reasons"]) == {"uncertain_expression"}
    assert c["changed"]["entered"]["n"] == 0
    # a verify threshold never changes a label: kappa 1.0 on the faces both contain
    assert c["changed"]["n"] == 0
    assert c["agreement"]["kappa_unchanged"] == 1.0 and c["agreement"]["kappa"] == 1.0
    assert c["agreement"]["va_mad"] == {"valence": 0.0, "arousal": 0.0}
    assert c["params"] == [{"param": "verify.min_vote_share", "a": 0.5, "b": 1.0}]
    assert "verify.min_vote_share" in text and "acceptance change" in text
    md = (tmp / "cmp" / "compare.md").read_text()
    assert "verify.min_vote_share" in md and "Cohen's kappa" in md
    assert (tmp / "cmp" / "label_distribution.csv").exists() and (tmp / "cmp" / "compare.png").exists()
    # --html: both versions' reports side by side, every image loading in headless Chromium
    page = (tmp / "cmp" / "compare.html").read_text()
    assert "vs-050" in page and "vs-100" in page and page.count("<h2>Figures</h2>") == 2
    if CHROMIUM:
        loaded, total = render(tmp / "cmp" / "compare.html", tmp / "cmp" / "shot.png")
        assert total >= 8 and loaded == total


@pytest.mark.e2e
def test_compare_in_a_fresh_clone_reads_from_the_dvc_remote(project):
    """Tag the strict experiment, push git + DVC data to local 'remotes', clone afresh (no
    DVC cache) and compare the two tags there."""
    proj, tmp = project
    env = _env(proj)
    origin = tmp / "origin.git"
    if not origin.exists():
        _sh(tmp, env, "git", "init", "-q", "--bare", str(origin))
        _sh(proj, env, sys.executable, "-m", "dvc", "exp", "branch", "vs-100", "strict-branch")
        _sh(proj, env, "git", "tag", "strict", "strict-branch")
        _sh(proj, env, "git", "remote", "set-url", "origin", str(origin))
        _sh(proj, env, "git", "push", "-q", "origin", "HEAD:refs/heads/main", "strict-branch", "--tags")
        _sh(proj, env, sys.executable, "-m", "dvc", "push", "-q", "--all-tags")
    fresh = tmp / "fresh"
    if not fresh.exists():
        _sh(tmp, env, "git", "clone", "-q", "-b", "main", str(origin), str(fresh))
    fenv = _env(fresh)
    # the fresh clone has no DVC cache and no data: everything comes from the remote
    assert not (fresh / "data" / "feid" / "feid.parquet").exists()
    _seke(fresh, fenv, "compare", "base", "strict", "--out", str(tmp / "fresh_cmp"))
    c = json.loads((tmp / "fresh_cmp" / "compare.json").read_text())
    assert c["params"] == [{"param": "verify.min_vote_share", "a": 0.5, "b": 1.0}]
    assert c["b"]["accepted"] <= c["a"]["accepted"] and c["agreement"]["kappa"] == 1.0


@pytest.mark.e2e
def test_quality_and_export_of_an_experiment(project):
    proj, tmp = project
    env = _env(proj)
    _seke(
        proj,
        env,
        "quality",
        "--truth",
        str(tmp / "truth.csv"),
        "--root",
        str(ROOT / "data" / "sample"),
        "--rev",
        "vs-050",
        "--out",
        str(tmp / "q"),
        "-S",
        "bench.bootstrap=50",
    )
    q = json.loads((tmp / "q" / "quality_all.json").read_text())
    assert q["meta"]["matched_faces"] == 2 * N_PER_CLASS
    assert q["expression"]["n"] == 2 * N_PER_CLASS  # every label came from the annotator
    assert 0 <= q["expression"]["accuracy"]["value"] <= 1
    assert (tmp / "q" / "quality.md").exists()
    _seke(proj, env, "export", "--format", "llava", "--rev", "vs-100", "--out", str(tmp / "llava"))
    data = json.loads((tmp / "llava" / "feid_llava.json").read_text())
    c = json.loads((tmp / "cmp" / "compare.json").read_text()) if (tmp / "cmp").exists() else None
    if c:
        assert len(data) == c["b"]["accepted"]
    assert all((tmp / "llava" / d["image"]).exists() for d in data)
