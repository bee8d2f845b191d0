"""crop and sample on a `distributed.LocalCluster` with two workers (Prefect's Dask task
runner, `runtime.task_runner: dask` + `runtime.dask_address`) give the same FEID as one
process."""

from __future__ import annotations

import opsproj
import pyarrow.parquet as pq
import pytest

from tasks.core.params import stage_names

pytestmark = pytest.mark.e2e
PARAMS = {
    "expectations": {"max_class_share": 1.0, "min_classes": 1},
    "verify": {"use_priors": False},
    "runtime": {"batch_size": 2},
}  # several batches for four images


@pytest.fixture(scope="module")
def prefect_quiet():
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90), temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _feid(proj) -> list[dict]:
    return pq.read_table(proj / "data/feid/feid.parquet").to_pylist()


def _run(proj, monkeypatch) -> list[dict]:
    from flows import stages

    monkeypatch.chdir(proj)
    for name in stage_names():
        stages.stage_flow(name)(params_path="params.yaml")
    return _feid(proj)


def test_crop_and_sample_on_a_local_cluster_match_one_process(tmp_path, monkeypatch, prefect_quiet):
    from distributed import LocalCluster

    rows = opsproj.london(4)
    single = _run(opsproj.make_project(tmp_path / "single", rows, params=PARAMS, git=False), monkeypatch)
    p = {**PARAMS, "runtime": {**PARAMS["runtime"], "task_runner": "dask", "cache": str(tmp_path / "dask-cache")}}
    proj = opsproj.make_project(tmp_path / "dask", rows, params=p, git=False)
    monkeypatch.chdir(proj)  # workers start here: the ingest stage's image URIs are relative to it
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        opsproj.set_params(proj, runtime={"dask_address": cluster.scheduler_address})
        with cluster.get_client() as client:
            distributed = _run(proj, monkeypatch)
            # the batches really ran on the cluster's worker processes
            built = client.run(lambda: bool(__import__("tasks.stages.sample").stages.sample._WORKER))
            assert len(built) == 2 and any(built.values())
    assert len(single) >= 1
    assert distributed == single
    assert (proj / "data/crop/faces.parquet").read_bytes() != b""
    assert (
        pq.read_table(proj / "data/sample_runs/samples.parquet")
        .drop(["latency_ms", "cached"])
        .equals(pq.read_table(tmp_path / "single/proj/data/sample_runs/samples.parquet").drop(["latency_ms", "cached"]))
    )
