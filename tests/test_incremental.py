"""The incremental flow (flows/incremental.py), in-process, against the simulated VLLM whose
request log counts the annotator's calls (one crop hash per face annotated).

Base: the six stage flows on N images, versioned with `dvc commit` and a local DVC remote.
Then +M images: exactly M faces are annotated, FEID grows by their accepted faces, the export
stage's version in dvc.lock changes and is pushed. A third run with nothing new makes no
call and writes nothing.
"""

from __future__ import annotations

import opsproj
import pytest
import yaml
from simserver import sim_server

from tasks.core.params import stage_names

pytestmark = pytest.mark.e2e
N, M = 3, 2
PARAMS = {
    "annotator": {"backend": "openai", "model": "sim-vllm"},
    "runtime": {"timeout_s": 5, "max_retries": 2, "retry_base_s": 0.01, "retry_max_s": 0.2},
    "verify": {"use_priors": False},
    "expectations": {"max_class_share": 1.0, "min_classes": 1},
}


@pytest.fixture(scope="module")
def prefect_quiet():
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90), temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def faces_annotated(sim, since: int = 0) -> set[str]:
    return {e["image_sha256"] for e in sim.log[since:] if e.get("image_sha256")}


def feid_rows(proj) -> int:
    import pyarrow.parquet as pq

    return sum(
        pq.read_metadata(f).num_rows
        for f in [proj / "data/feid/feid.parquet", *sorted((proj / "data/feid").glob("part-*.parquet"))]
        if f.exists()
    )


def base_pipeline(proj) -> None:
    from flows import stages

    for name in stage_names():
        stages.stage_flow(name)(params_path="params.yaml")


def test_incremental_annotates_only_new_faces_and_records_a_version(tmp_path, monkeypatch, prefect_quiet):
    from flows.incremental import incremental_flow

    proj = opsproj.make_project(tmp_path, opsproj.london(N), params=PARAMS)
    remote = tmp_path / "remote"
    opsproj.run(proj, "dvc", "remote", "add", "-d", "local", str(remote))
    monkeypatch.chdir(proj)
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(proj / ".seke" / "dvc-site"))
    with sim_server() as server:
        sim = server.sim
        base_pipeline(proj)
        opsproj.run(proj, "dvc", "commit", "-f")
        assert len(faces_annotated(sim)) == N
        base_rows = feid_rows(proj)
        lock0 = yaml.safe_load((proj / "dvc.lock").read_text())["stages"]["export"]["outs"][0]["md5"]

        opsproj.put_images(proj / "data" / "sample", opsproj.london(M, start=N))
        mark = len(sim.log)
        r = incremental_flow(root=str(proj))
        assert r["new_images"] == M and r["part"]
        assert len(faces_annotated(sim, mark)) == M, "only the new faces are annotated"
        assert faces_annotated(sim, mark).isdisjoint(faces_annotated(sim, 0) - faces_annotated(sim, mark))
        assert feid_rows(proj) == base_rows + r["accepted"]
        assert r["recorded"] and r["pushed"]
        lock1 = yaml.safe_load((proj / "dvc.lock").read_text())["stages"]["export"]["outs"][0]["md5"]
        assert lock1 != lock0
        assert (
            opsproj.run(proj, "dvc", "status", "-c").stdout.strip().endswith("up to date.")
            or "new" not in opsproj.run(proj, "dvc", "status", "-c").stdout
        )

        mark = len(sim.log)
        files = sorted(p.name for p in (proj / "data/feid").rglob("*"))
        r3 = incremental_flow(root=str(proj))
        assert r3["new_images"] == 0 and r3["part"] is None
        assert len(sim.log) == mark, "nothing new: zero annotator calls"
        assert sorted(p.name for p in (proj / "data/feid").rglob("*")) == files


def test_feid_directory_loads_with_datasets(tmp_path, monkeypatch, prefect_quiet):
    """Base + a part, read as one dataset with `load_dataset("parquet", data_dir=...)`; the
    hidden .rejects/ and .ledger/ folders are not rows."""
    datasets = pytest.importorskip("datasets")
    from flows.incremental import incremental_flow

    proj = opsproj.make_project(tmp_path, opsproj.london(2), params=PARAMS, git=False)
    monkeypatch.chdir(proj)
    with sim_server():
        r1 = incremental_flow(root=str(proj), record=False)  # no base: the first part
        opsproj.put_images(proj / "data" / "sample", opsproj.london(2, start=2))
        r2 = incremental_flow(root=str(proj), record=False)
    assert r1["new_images"] == 2 and r2["new_images"] == 2
    ds = datasets.load_dataset(
        "parquet", data_dir=str(proj / "data/feid"), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert len(ds) == r1["accepted"] + r2["accepted"] == feid_rows(proj)
    assert len(set(ds["id"])) == len(ds)


def test_changed_parameters_reprocess_and_supersede(tmp_path, monkeypatch, prefect_quiet):
    """A data-shaping parameter changes: seen images are processed again (answers come from
    the response cache: no new calls) and their old rows are replaced, not duplicated."""
    import pyarrow.parquet as pq

    from flows.incremental import incremental_flow

    proj = opsproj.make_project(tmp_path, opsproj.london(2), params=PARAMS, git=False)
    monkeypatch.chdir(proj)
    with sim_server() as server:
        r1 = incremental_flow(root=str(proj), record=False)
        opsproj.set_params(proj, verify={"min_confidence": 0.0})
        mark = len(server.sim.log)
        r2 = incremental_flow(root=str(proj), record=False)
        assert r2["stale_images"] == 2 and r2["new_images"] == 2
        assert len(server.sim.log) == mark, "cached answers are not paid for again"
    parts = sorted((proj / "data/feid").glob("part-*.parquet"))
    ids = [i for f in parts for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
    hashes = {h for f in parts for h in pq.read_table(f, columns=["params_hash"]).column("params_hash").to_pylist()}
    assert len(ids) == len(set(ids)) == r2["accepted"] and hashes == {r2["params_hash"]}
    assert r2["params_hash"] != r1["params_hash"]
