"""crop and sample on a `distributed.LocalCluster` with two workers (Prefect's Dask task
runner, `runtime.task_runner: dask` + `runtime.dask_address`) give the same FEID as one
process."""

from __future__ import annotations

import opsproj
import pyarrow.parquet as pq
import pytest

from tasks.core.dvcfile import stage_names

pytestmark = pytest.mark.e2e
PARAMS = {
    "expectations": {"max_class_share": 1.0, "min_classes": 1},
    "verify": {"use_priors": False},
    "runtime": {"batch_size": 2},
}  # several batches for four images


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


def _worker_run(base_url: str, key: str, shared: bool, first: int, n: int, budget: float, rpm: int) -> dict:
    """On a Dask worker: an openai annotator with a budget and a rate limit answers n calls."""
    import os
    import sys
    import time

    sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
    from simserver import TEST_KEY, make_call, params

    from tasks.annotators.base import AnnotatorStop
    from tasks.annotators.openai_compat import OpenAIAnnotator
    from tasks.infra.limits import DaskLimits

    os.environ.update(OPENAI_BASE_URL=base_url, OPENAI_API_KEY=TEST_KEY, NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    a, rt = params(price_in_per_mtok=10.0, price_out_per_mtok=10.0, budget_usd=budget, requests_per_minute=rpm)
    ann = OpenAIAnnotator(a, rt)
    if shared:
        ann.shared = DaskLimits(key)
    stop, t0, got = "", time.time(), 0
    try:
        for _ in ann.run([make_call(i, k=1) for i in range(first, first + n)]):
            got += 1
    except AnnotatorStop as e:
        stop = str(e)
    ann.close()
    return {"spent": ann.spent_usd, "results": got, "stop": stop, "t0": t0, "rate_waits": ann._rpm.waits}


@pytest.fixture(scope="module")
def two_workers():
    """One two-worker cluster for the four runs below (each builds its annotator afresh on
    the workers and shares limits under a key of its own): three cluster start-ups fewer."""
    from distributed import LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        cluster.get_client() as client,
    ):
        yield client


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "control"])
@pytest.mark.parametrize("limit", ["budget", "rate"])
def test_two_workers_share_one_budget_and_one_rate(limit, shared, two_workers):
    """Two Dask workers, each with the whole budget or rate in its params: with the shared
    limits (what the sample stage sets up on Dask) they stay under one budget and one rate
    together; without them (the control) each gets its own."""
    import uuid

    from simserver import sim_server

    budget, rpm, n = (0.15, 0, 40) if limit == "budget" else (0.0, 120, 65)
    client = two_workers
    with sim_server(set_env=False) as server:
        key = f"seke-test-{uuid.uuid4().hex}"
        workers = list(client.scheduler_info()["workers"])
        futs = [
            client.submit(_worker_run, server.base_url, key, shared, i * n, n, budget, rpm, workers=[w], pure=False)
            for i, w in enumerate(workers)
        ]
        out = client.gather(futs)
        requests = len(server.sim.log)
    if limit == "budget":
        spent = sum(r["spent"] for r in out)
        if shared:
            assert 0.5 * budget < spent <= budget * 1.05, out
            assert all("budget" in r["stop"] and "all Dask workers" in r["stop"] for r in out), out
        else:
            assert spent > 1.5 * budget, out  # each worker spent the whole budget: what sharing prevents
    else:
        assert requests == 2 * n
        # 2 x 65 requests: one shared bucket of 120 a minute makes some of them wait for a refill;
        # a bucket of 120 per worker (the control) never does. An event count, not a timing.
        waits = sum(r["rate_waits"] for r in out)
        assert (waits > 0) == shared, out


def test_the_dask_path_reads_only_its_deps(tmp_path):
    """The dependency trace on the Dask path: `dvc repro` with `runtime.task_runner: dask` (a
    local cluster in each stage's process); each project file a stage's process read is one
    of its dvc.yaml deps."""
    import json

    import yaml
    from depcheck import uncovered

    p = {**PARAMS, "runtime": {**PARAMS["runtime"], "task_runner": "dask", "dask_workers": 1}}
    proj = opsproj.make_project(tmp_path, opsproj.london(4), params=p)
    opsproj.run(proj, "dvc", "repro", env_=opsproj.env(proj, SEKE_TRACE_DIR=str(proj / ".seke" / "trace")))
    stages = yaml.safe_load((proj / "dvc.yaml").read_text())["stages"]
    trace = proj / ".seke" / "trace"
    traces = {s: json.loads((trace / f"{s}.json").read_text()) for s in stage_names(proj / "dvc.yaml")}
    assert any("tasks/infra/dask.py" in f for f in traces["sample"]), traces["sample"]
    assert uncovered(stages, traces) == {}
