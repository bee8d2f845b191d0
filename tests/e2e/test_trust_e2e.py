"""End to end: `dvc repro` with the `openai` backend against the simulated VLLM, a manifest
that labels part of the faces, and no calibration file. verify fits the confidence on the
run's labelled faces, picks the threshold for `verify.target_error`, and says so in
`metrics/verify.json`."""

from __future__ import annotations

import json

import polars as pl
import pytest
from opsproj import env, london, make_project, run
from simserver import TEST_KEY

from simvllm.server import ServerThread, SimConfig, SimVLLM, Truth
from tasks.core.knowledge import load as load_knowledge

pytestmark = pytest.mark.e2e


def test_self_calibrated_run_reports_its_calibration_and_bound(tmp_path):
    rows = london(120)
    truth_of = {r["path"]: r["expression"] for r in rows}
    subjects = sorted({r["subject"] for r in rows})
    hidden = set(subjects[: len(subjects) * 3 // 10])  # 30% of the people are unlabelled
    rows = [{**r, "expression": "" if r["subject"] in hidden else r["expression"]} for r in rows]
    params = {
        "annotator": {"backend": "openai", "model": "sim-vllm", "temperature": 1.0},
        "runtime": {"concurrency": 8, "timeout_s": 5.0, "max_retries": 2, "retry_base_s": 0.02},
        "verify": {"calibration": "", "min_calibration_faces": 50, "target_error": 0.1, "delta": 0.1},
    }
    proj = make_project(tmp_path, rows, params)
    sim = SimVLLM(SimConfig(accuracy=0.85, difficulty_spread=0.15))
    with ServerThread(sim) as server:
        e = env(proj, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY=TEST_KEY)
        run(proj, "dvc", "repro", "crop", env_=e)
        k = load_knowledge()
        faces = pl.read_parquet(proj / "data" / "crop" / "faces.parquet")
        for f in faces.iter_rows(named=True):
            t = truth_of[f["path"]]
            v, a, _ = k.va_centroid(t)
            sim.truth[f["crop_sha256"]] = Truth(t, v, a, k.prototype(t)[0])
        run(proj, "dvc", "repro", env_=e)

    text = (proj / "metrics" / "verify.json").read_text()
    assert TEST_KEY not in text
    m = json.loads(text)
    cal = m["calibration"]
    n_labelled = sum(1 for r in rows if r["expression"])
    assert cal["source"] == "self" and cal["calibration_faces"] == n_labelled, cal
    assert cal["annotator"] == "openai" and cal["model"] == "sim-vllm" and cal["prompt_version"]
    assert cal["mode"] == "target_error" and cal["target_error"] == 0.1 and cal["delta"] == 0.1
    assert cal["threshold"] is not None and cal["bound"] <= 0.1 and 0 < cal["expected_coverage"] <= 1
    assert 0 <= cal["oof_ece"] <= 1 and cal["confidence_model"]["coef"] and cal["confidence_model"]["source"] == "self"

    ver = pl.read_parquet(proj / "data" / "verify" / "verdicts.parquet")
    by_path = dict(zip(faces["face_id"], faces["path"]))
    gen = ver.filter(pl.col("expression_source") == "annotator")
    assert gen.height == len(hidden) * 2
    acc = gen.filter(pl.col("expression_status") == "accepted")
    assert acc.height > 0 and (acc["expression_confidence"] >= cal["threshold"]).all()
    assert (gen.filter(pl.col("expression_status") == "withheld")["accepted"] == False).all()  # noqa: E712
    assert m["accepted_generated_expressions"] == acc.height
    # the labelled faces keep their source's label
    assert set(ver.filter(pl.col("expression_source") == "prior")["expression_status"]) == {"prior"}
    right = sum(truth_of[by_path[f]] == e for f, e in zip(acc["face_id"], acc["expression"]))
    assert right / acc.height >= 0.8

    feid = pl.read_parquet(proj / "data" / "feid" / "feid.parquet")
    assert feid.height == m["accepted"]
    for r in feid.iter_rows(named=True):
        asked = " ".join(t["value"] for t in r["conversations"] if t["from"] == "human")
        assert (r["valence"] is None) == (r["va_status"] == "withheld")
        assert r["valence"] is not None or "valence" not in asked.lower()  # a withheld granularity has no turn
