"""S3 for real: a moto server on 127.0.0.1 (in-process `@mock_aws` does not work with
s3fs/aiobotocore), reached only through the standard AWS environment variables and the DVC
remote's own config.

- ingest reads images (and their manifest) from s3://, and FEID is written to s3://;
- `dvc push` to an S3 remote, then deleting the outputs and the cache, then `dvc pull`
  restores every stage's artifacts byte for byte.
"""

from __future__ import annotations

import hashlib
import shutil

import opsproj
import pytest

from tasks.core.dvcfile import STAMP_STAGE, stage_names, write_stamp
from tasks.infra import storage

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def moto():
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto, monkeypatch):
    for k, v in dict(
        AWS_ENDPOINT_URL=moto,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    ).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto


PARAMS = {"expectations": {"max_class_share": 1.0, "min_classes": 1}, "verify": {"use_priors": False}}


def _bucket(name: str):
    """s3fs for the moto server (plain: with an explicit us-east-1 region, s3fs would send a
    LocationConstraint that S3 rejects for that region)."""
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir(name)
    return fs


def _run_stages():
    from flows import stages

    write_stamp()  # stage `code`, as `dvc repro` would run it first
    for name in stage_names():
        stages.stage_flow(name)(params_path="params.yaml")


def test_storage_options_come_from_the_aws_environment(aws_env):
    o = storage.storage_options("s3://b/k")
    assert o["client_kwargs"]["endpoint_url"] == aws_env and o["key"] == "testing"
    assert storage.storage_options("data/feid") == {}
    assert storage.polars_options()["aws_allow_http"] == "true"


def test_ingest_from_s3_and_feid_to_s3(tmp_path, monkeypatch, aws_env, prefect_quiet):
    import polars as pl
    import pyarrow.parquet as pq

    fs = _bucket("seke-in")
    fs.mkdir("seke-out")
    local = tmp_path / "incoming"
    rows = opsproj.london(3)
    opsproj.put_images(local, rows)
    fs.put(str(local) + "/", "seke-in/incoming/", recursive=True)
    proj = opsproj.make_project(
        tmp_path,
        [],
        git=False,
        params={
            **PARAMS,
            "paths": {
                "input": "s3://seke-in/incoming",
                "manifest": "s3://seke-in/incoming/manifest.csv",
                "feid": "s3://seke-out/feid",
            },
        },
    )
    monkeypatch.chdir(proj)
    _run_stages()
    images = pq.read_table(proj / "data/ingest/images.parquet").to_pylist()
    assert len(images) == 3 and all(r["uri"].startswith("s3://seke-in/incoming/images/") for r in images)
    assert {r["id"] for r in images} == {hashlib.sha256((local / r["path"]).read_bytes()).hexdigest() for r in rows}
    assert fs.exists("seke-out/feid/feid.parquet") and not (proj / "data/feid").exists()
    feid = pl.read_parquet("s3://seke-out/feid/feid.parquet", storage_options=storage.polars_options())
    assert feid.height >= 1 and set(feid["id"].str.slice(0, 64)) <= {r["id"] for r in images}


def _digests(root, dirs) -> dict:
    return {
        str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
        for d in dirs
        for f in sorted((root / d).rglob("*"))
        if f.is_file()
    }


def test_dvc_push_then_pull_restores_every_artifact(tmp_path, monkeypatch, aws_env, prefect_quiet):
    fs = _bucket("seke-dvc")
    proj = opsproj.make_project(tmp_path, opsproj.london(3), params=PARAMS)
    monkeypatch.chdir(proj)
    _run_stages()
    for cmd in storage.dvc_remote_commands("s3", "s3://seke-dvc/store"):
        opsproj.run(proj, "dvc", *cmd)
    assert "testing" not in (proj / ".dvc/config").read_text(), "secrets go to config.local only"
    opsproj.run(proj, "dvc", "commit", "-f")
    outs = ["data/ingest", "data/crop", "data/prompt", "data/sample_runs", "data/verify", "data/feid"]
    before = _digests(proj, outs)
    assert any(k.startswith("data/feid/") for k in before)
    opsproj.run(proj, "dvc", "push")
    assert fs.find("seke-dvc/store"), "the remote holds the objects"
    for d in outs:
        shutil.rmtree(proj / d)
    shutil.rmtree(proj / ".dvc" / "cache")
    # the pull uses only the remote's own config: no AWS variables in its environment
    bare = {k: v for k, v in opsproj.env(proj).items() if not k.startswith("AWS_") or k == "AWS_EC2_METADATA_DISABLED"}
    opsproj.run(proj, "dvc", "pull", env_=bare)
    assert _digests(proj, outs) == before


def _feid_rows(url: str) -> list[dict]:
    import polars as pl

    df = pl.read_parquet(url, storage_options=storage.polars_options())
    keep = [c for c in df.columns if c not in ("image", "created_at", "run_id")]
    return sorted(df.select(keep).to_dicts(), key=lambda r: r["id"])


def test_a_flaky_s3_slows_the_run_but_loses_nothing(tmp_path, monkeypatch, aws_env, prefect_quiet):
    """Input, FEID and the response cache on S3 behind a proxy that fails 10% of the calls
    (throttling, an error after the work was done, a dropped connection): the run completes
    and FEID is the same as on a healthy store; `dvc push` through it stores every object."""
    import s3fs
    from faultproxy import FaultProxy

    from tasks.infra.cache import ResponseCache

    fs = _bucket("seke-flaky")
    local = tmp_path / "incoming"
    rows = opsproj.london(8)
    opsproj.put_images(local, rows)
    fs.put(str(local) + "/", "seke-flaky/incoming/", recursive=True)
    feids = {}
    for name in ("healthy", "flaky"):
        proj = opsproj.make_project(
            tmp_path / name,
            [],
            git=name == "flaky",
            params={
                **PARAMS,
                "paths": {
                    "input": "s3://seke-flaky/incoming",
                    "manifest": "s3://seke-flaky/incoming/manifest.csv",
                    "feid": f"s3://seke-flaky/{name}/feid",
                },
                "runtime": {"cache": f"s3://seke-flaky/{name}/cache"},
            },
        )
        monkeypatch.chdir(proj)
        with FaultProxy(aws_env, rate=0.1 if name == "flaky" else 0.0, seed=3) as proxy:
            monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
            s3fs.S3FileSystem.clear_instance_cache()  # fsspec keeps one client per process: renew it
            _run_stages()
            if name == "flaky":
                for cmd in storage.dvc_remote_commands("s3", "s3://seke-flaky/dvc"):
                    opsproj.run(proj, "dvc", *cmd)
                # FEID is on S3 here: not a DVC out
                local_stages = [STAMP_STAGE, *(s for s in stage_names() if s != "export")]
                opsproj.run(proj, "dvc", "commit", "-f", *local_stages)
                opsproj.run(proj, "dvc", "push", *local_stages)
        monkeypatch.setenv("AWS_ENDPOINT_URL", aws_env)
        s3fs.S3FileSystem.clear_instance_cache()
        feids[name] = _feid_rows(f"s3://seke-flaky/{name}/feid/feid.parquet")
        if name == "flaky":
            assert sum(proxy.counts[k] for k in ("slowdown", "after", "reset")) >= 8, proxy.counts
            assert {"slowdown", "after", "reset"} <= set(proxy.counts), proxy.counts
    assert feids["flaky"] == feids["healthy"] and feids["flaky"]
    assert not [f for f in fs.find("seke-flaky/flaky/feid") if "tmp" in f.rsplit("/", 1)[-1]], (
        "no stray temporary files"
    )
    # every answer was stored, and compacted into one pack per annotator
    fs.invalidate_cache()
    sigs = fs.ls("seke-flaky/flaky/cache")
    assert sigs and all([p.rsplit("/", 1)[-1].split("-")[0] for p in fs.ls(s)] == ["pack"] for s in sigs)
    caches = {
        n: sum(len(ResponseCache(f"s3://seke-flaky/{n}/cache", s.rsplit("/", 1)[-1])) for s in sigs) for n in feids
    }
    assert caches["flaky"] == caches["healthy"] > 0
    # the DVC remote holds every object the workspace's cache holds (asked of the healthy store)
    proj = tmp_path / "flaky" / "proj"
    opsproj.run(proj, "dvc", "remote", "modify", "s3", "endpointurl", aws_env)
    r = opsproj.run(proj, "dvc", "status", "--cloud", STAMP_STAGE, *[s for s in stage_names() if s != "export"])
    assert "in sync" in r.stdout, r.stdout


def test_the_incremental_flow_brings_images_in_from_an_s3_prefix(tmp_path, aws_env):
    """`python -m flows.incremental` watching s3://: the new images (and their manifest's
    labels) land in the local, DVC-tracked inbox, and the version is built from them."""
    import csv
    import json
    import sys

    import pyarrow.parquet as pq

    fs = _bucket("incoming")
    rows = opsproj.london(2, start=1)
    for r in rows:
        fs.pipe(f"incoming/{r['path']}", (opsproj.SAMPLE / r["path"]).read_bytes())
    with fs.open("incoming/manifest.csv", "w") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "expression", "subject", "source"])
        w.writeheader()
        w.writerows({k: r[k] for k in ("path", "expression", "subject", "source")} for r in rows)
    params = {**PARAMS, "incremental": {"input": "s3://incoming", "manifest": "s3://incoming/manifest.csv"}}
    proj = opsproj.make_project(tmp_path, opsproj.london(1), params=params)
    r = opsproj.run(proj, sys.executable, "-m", "flows.incremental", "--no-record")
    out = json.loads(r.stdout[r.stdout.index("\n{") + 1 :] if not r.stdout.startswith("{") else r.stdout)
    assert out["new_images"] == 2 and out["refused"] == 0, out
    inbox = list(csv.DictReader(open(proj / "data/inbox/manifest.csv")))
    assert sorted(m["origin"] for m in inbox) == sorted(f"s3://incoming/{r['path']}" for r in rows)
    assert {m["expression"] for m in inbox} == {r["expression"] for r in rows}, "the labels came along"
    images = pq.read_table(proj / "data/ingest/images.parquet", columns=["path", "prior_expression"]).to_pylist()
    assert len(images) == 3 and sum(i["path"].startswith("inbox/") for i in images) == 2
    assert (proj / "data/feid/feid.parquet").exists() and (proj / "data/inbox/images.dvc").exists()
