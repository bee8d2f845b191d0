"""One Prefect flow per stage. Each flow reads its inputs, calls the stage's logic in
`tasks/`, validates the output with its Great Expectations suite, and only then publishes
the output and its metrics. `dvc.yaml` runs each of them through `python -m flows.run`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.core import knowledge
from tasks.core.params import Params, load
from tasks.infra import io

stage_task = task(cache_policy=NO_CACHE, persist_result=False)


def _log():
    try:
        return get_run_logger()
    except Exception:  # called outside a flow run (unit tests)
        return logging.getLogger("seke")


def _metrics(p: Params, stage: str, m: dict) -> None:
    io.write_json(Path(p.paths.metrics) / f"{stage}.json", m)


def _validate(stage: str, frames: dict, p: Params, counts: dict | None = None) -> dict:
    from expectations import check

    return check(stage, frames, p, counts)


def _aus(rows: list[dict], col: str = "aus") -> pd.DataFrame:
    from expectations.suites import au_frame

    return au_frame(pd.DataFrame({col: [r.get(col) for r in rows]}), col)


def _light(rows: list[dict]) -> pd.DataFrame:
    from expectations.suites import HEAVY

    return pd.DataFrame([{k: v for k, v in r.items() if k not in HEAVY} for r in rows])


class Light:
    """The light (non-HEAVY) columns of a stage's rows, kept column-wise in Arrow chunks for
    validation and metrics, so memory stays bounded as the data grows: a few hundred bytes
    per row (no crops, raw answers or conversations), never the row dicts themselves. The
    AU codes of `au_col` are counted, not listed (the suite only checks that each code is
    known). `frame()` keeps nested columns as Arrow-backed pandas columns (no per-row Python
    objects); the suites check those only for presence."""

    def __init__(self, record, au_col: str | None = None, chunk: int = 8192):
        import pyarrow as pa

        from expectations.suites import HEAVY

        self.schema = pa.schema([f for f in record.arrow_schema() if f.name not in HEAVY])
        self.au_col, self.chunk = au_col, chunk
        self.au_codes: Counter = Counter()
        self._buf: list[dict] = []
        self._chunks: list = []
        self.n = 0

    def add(self, row: dict) -> None:
        self._buf.append({c: row.get(c) for c in self.schema.names})
        if self.au_col and row.get(self.au_col):
            self.au_codes.update(row[self.au_col])
        self.n += 1
        if len(self._buf) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._buf:
            self._chunks.append(pa.Table.from_pylist(self._buf, schema=self.schema))
            self._buf = []

    def table(self):
        import pyarrow as pa

        self._flush()
        t = pa.concat_tables(self._chunks) if self._chunks else self.schema.empty_table()
        self._chunks = [t]
        return t

    def column(self, name: str) -> list:
        return self.table().column(name).to_pylist()

    def frame(self) -> pd.DataFrame:
        import pyarrow as pa

        nested = (pa.types.is_list, pa.types.is_struct, pa.types.is_large_list)
        return self.table().to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if any(f(t) for f in nested) else None)

    def aus(self) -> pd.DataFrame:
        return pd.DataFrame({"au": pd.Series(sorted(self.au_codes), dtype="object")})


def _task_runner(p: Params):
    """Prefect's Dask task runner when `runtime.task_runner: dask` (an existing cluster at
    `runtime.dask_address`, else a local multi-process `distributed` cluster); None = run
    batches in this process."""
    if p.runtime.task_runner != "dask":
        return None
    import os

    from prefect_dask import DaskTaskRunner

    if p.runtime.dask_address:
        return DaskTaskRunner(address=p.runtime.dask_address)
    _share_temporary_server()
    n = p.runtime.dask_workers or os.cpu_count() or 1
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0"}
    )


def _share_temporary_server() -> None:
    """Local cluster workers inherit our environment. With no PREFECT_API_URL configured this
    process talks to a temporary server; without its URL, every worker would start a
    temporary server of its own (measured: ~100 s lost on 2 cores). Point them at ours."""
    import os

    from prefect.settings import PREFECT_API_URL

    if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    for server in SubprocessASGIServer._instances.values():
        if server.running:
            os.environ["PREFECT_API_URL"] = server.api_url
            return


@task(cache_policy=NO_CACHE, persist_result=False, task_run_name="{name}-batch")
def dask_batch(name: str, payload: bytes) -> bytes:
    """One batch of a stage on a Dask worker. Arguments and result travel as one pickled
    blob: Prefect walks every task parameter looking for futures, which cost ~3 s per batch
    of 1,024 faces passed as dicts, and nothing for one bytes object."""
    import pickle

    return pickle.dumps(_BATCH_FNS[name].fn(*pickle.loads(payload)), protocol=pickle.HIGHEST_PROTOCOL)


def _mapped(runner, fn, args: Iterator[tuple], in_flight: int) -> Iterator:
    """Results of `fn(*a)` for each `a`, in order. With a task runner, at most `in_flight`
    batches are submitted ahead of the one being consumed (memory stays bounded); without
    one, each is called in turn."""
    import pickle

    if runner is None:
        for a in args:
            yield fn(*a)
        return
    name = next(k for k, v in _BATCH_FNS.items() if v is fn)
    window: list = []
    for a in args:
        window.append(
            runner.submit(
                dask_batch, parameters={"name": name, "payload": pickle.dumps(a, protocol=pickle.HIGHEST_PROTOCOL)}
            )
        )
        if len(window) > in_flight:
            yield pickle.loads(window.pop(0).result())
    for fut in window:
        yield pickle.loads(fut.result())


def _in_flight(p: Params, runner) -> int:
    if p.runtime.dask_in_flight:
        return p.runtime.dask_in_flight
    return 2 * max(1, p.runtime.dask_workers or os.cpu_count() or 1)


# ---------------------------------------------------------------- ingest
@flow(name="ingest", log_prints=True)
def ingest_flow(params_path: str = "params.yaml") -> dict:
    from tasks.core.records import ImageRecord, QuarantineRecord
    from tasks.stages.ingest import ingest, list_entries

    p = load(params_path)
    k = knowledge.load()
    out = io.join(p.paths.ingest, "images.parquet"), io.join(p.paths.ingest, "quarantine.parquet")
    imgs, quar, skipped = [], [], []
    with io.writers((out[0], ImageRecord), (out[1], QuarantineRecord)) as (wi, wq):
        for rec in ingest(
            list_entries(p.paths.input, p.paths.manifest, p.ingest.extensions, skipped), p.paths.input, k, p.ingest
        ):
            (wi if isinstance(rec, ImageRecord) else wq).write(rec)
            (imgs if isinstance(rec, ImageRecord) else quar).append(rec.model_dump())
        val = _validate(
            "ingest",
            {
                "images": _light(imgs) if imgs else pd.DataFrame(columns=ImageRecord.columns()),
                "quarantine": _light(quar) if quar else pd.DataFrame(columns=QuarantineRecord.columns()),
                "au_codes": _aus(imgs, "prior_aus"),
            },
            p,
        )
        wi.commit(), wq.commit()
    m = {
        "images": len(imgs),
        "quarantined": len(quar),
        "quarantine_reasons": dict(Counter(q["reason"] for q in quar)),
        # files whose extension is not in ingest.extensions: counted and listed (the first 50)
        "skipped_by_extension": len(skipped),
        "skipped_examples": skipped[:50],
        "with_prior_expression": sum(1 for r in imgs if r["prior_expression"]),
        "validation": val,
    }
    _metrics(p, "ingest", m)
    _log().info(f"ingest: {len(imgs)} images, {len(quar)} quarantined {m['quarantine_reasons']}")
    return m


# ---------------------------------------------------------------- crop
@stage_task
def crop_batch(rows: list[dict], crop_params) -> list[tuple[dict, list[dict]]]:
    from tasks.core.records import ImageRecord
    from tasks.stages.crop import crop_all

    def read(uri: str) -> bytes:
        fs, path = io.fs_path(uri)
        return fs.cat_file(path)

    return [
        (st.model_dump(), [f.model_dump() for f in faces])
        for st, faces in crop_all((ImageRecord(**r) for r in rows), read, crop_params)
    ]


@flow(name="crop", log_prints=True)
def crop_flow(params_path: str = "params.yaml") -> dict:
    """Batches of images go through `crop_batch`, in this process or on Dask
    (`runtime.task_runner`); results are written in input order either way."""
    import contextlib

    from tasks.core.records import CropStatus, FaceRecord

    p = load(params_path)
    src = io.join(p.paths.ingest, "images.parquet")
    out = io.join(p.paths.crop, "faces.parquet"), io.join(p.paths.crop, "images.parquet")
    faces_light, statuses = Light(FaceRecord), Light(CropStatus)
    status_n, multi = Counter(), 0
    n_images = io.count_rows(src)
    t0 = time.perf_counter()
    runner = _task_runner(p)
    with runner or contextlib.nullcontext(), io.writers((out[0], FaceRecord), (out[1], CropStatus)) as (wf, ws):
        batches = ((b, p.crop) for b in io.iter_batches(src, batch_size=p.runtime.batch_size))
        for res in _mapped(runner, crop_batch, batches, _in_flight(p, runner)):
            for st, faces in res:
                ws.write(st)
                statuses.add(st)
                status_n[st["status"]] += 1
                multi += st["n_faces"] > 1
                for f in faces:
                    wf.write(f)
                    faces_light.add(f)
        errors = status_n["decode_error"]
        if n_images and errors / n_images > p.crop.max_error_rate:
            raise RuntimeError(f"crop: {errors}/{n_images} images failed to decode (> crop.max_error_rate)")
        val = _validate("crop", {"faces": faces_light.frame(), "images": statuses.frame()}, p, {"images": n_images})
        wf.commit(), ws.commit()
    dt = time.perf_counter() - t0
    m = {
        "images": n_images,
        "faces": faces_light.n,
        "status": dict(status_n),
        "multi_face_images": multi,
        "validation": val,
        "images_per_s": round(n_images / dt, 2) if dt else None,
    }
    _metrics(p, "crop", m)
    _log().info(f"crop: {faces_light.n} faces in {n_images} images; {m['status']}")
    return m


# ---------------------------------------------------------------- prompt
@flow(name="prompt", log_prints=True)
def prompt_flow(params_path: str = "params.yaml") -> dict:
    from tasks.core.records import FaceRecord, RequestRecord
    from tasks.stages.prompt import requests_for

    p = load(params_path)
    k = knowledge.load()
    src = io.join(p.paths.crop, "faces.parquet")
    out = io.join(p.paths.prompt, "requests.parquet")
    light, variants, faces = [], Counter(), 0
    cols = [c for c in FaceRecord.columns() if c != "crop"]
    with io.writers((out, RequestRecord)) as (w,):
        for row in io.iter_rows(src, columns=cols):
            faces += 1
            face = FaceRecord(crop=b"", **row)
            for req in requests_for(k, face, p.prompt.version, p.prompt.knowledge, p.prompt.blind):
                w.write(req)
                variants[req.variant] += 1
                light.append({"request_id": req.request_id, "variant": req.variant, "face_id": req.face_id})
        val = _validate("prompt", {"requests": pd.DataFrame(light, columns=RequestRecord.columns())}, p)
        w.commit()
    m = {"faces": faces, "requests": len(light), "variants": dict(variants), "validation": val}
    _metrics(p, "prompt", m)
    return m


# ---------------------------------------------------------------- sample
def grouped(rows: Iterator[dict], key: str) -> Iterator[tuple[str, list[dict]]]:
    """Consecutive rows sharing `key` (stage outputs are written grouped by face)."""
    cur, buf = None, []
    for r in rows:
        if r[key] != cur and buf:
            yield cur, buf
            buf = []
        cur = r[key]
        buf.append(r)
    if buf:
        yield cur, buf


_WORKER: dict = {}


def _worker_annotator(p: Params):
    """(annotator, response cache, knowledge) of this process, built once per parameter set
    (on a Dask worker: once per worker, like the model of any other process)."""
    from tasks import annotators
    from tasks.infra.cache import ResponseCache

    key = p.model_dump_json()
    if key not in _WORKER:
        for old in _WORKER.values():
            old[1].close(), old[0].close()
        _WORKER.clear()
        ann = annotators.build(p)
        _WORKER[key] = (ann, ResponseCache(p.runtime.cache, ann.signature_hash()), knowledge.load())
    return _WORKER[key]


@stage_task
def sample_part(faces: list[dict], requests: dict[str, list[dict]], p: Params) -> tuple[list[dict], dict]:
    """`tasks.stages.sample.sample_batch` on one batch, on a Dask worker: (sample rows, tally)."""
    from dataclasses import asdict

    from tasks.stages.sample import Tally, sample_batch

    ann, cache, k = _worker_annotator(p)
    tally = Tally()
    rows = list(sample_batch(faces, requests, ann, cache, p, k, tally))
    return rows, asdict(tally)


def _add_tally(into, d: dict) -> None:
    for name, v in d.items():
        if isinstance(v, list):
            getattr(into, name).extend(v)
        else:
            setattr(into, name, getattr(into, name) + v)


@flow(name="sample", log_prints=True)
def sample_flow(params_path: str = "params.yaml") -> dict:
    """Batches of faces (with their requests) go through `tasks.stages.sample.sample_batch`, in this
    process or, with `runtime.task_runner: dask`, on Dask workers that each build their own
    annotator and response cache. The annotator's limits (`runtime.concurrency`,
    `requests_per_minute`, `annotator.budget_usd`) then apply per worker."""
    import contextlib

    from tasks import annotators
    from tasks.core.records import SampleRecord
    from tasks.infra.cache import ResponseCache
    from tasks.stages.sample import Tally, sample_batch

    p = load(params_path)
    k = knowledge.load()
    log = _log()
    runner = _task_runner(p)
    ann = annotators.build(p) if runner is None else None
    cache = ResponseCache(p.runtime.cache, ann.signature_hash()) if ann is not None else None
    faces_url, req_url = io.join(p.paths.crop, "faces.parquet"), io.join(p.paths.prompt, "requests.parquet")
    out = io.join(p.paths.sample, "samples.parquet")
    n_faces = io.count_rows(faces_url)
    reqs = grouped(io.iter_rows(req_url), "face_id")

    def batches() -> Iterator[tuple]:
        pending: tuple[str, list[dict]] | None = next(reqs, None)
        for batch in io.iter_batches(faces_url, batch_size=p.runtime.batch_size):
            by_face: dict[str, list[dict]] = {}
            ids = {f["face_id"] for f in batch}
            while pending is not None and pending[0] in ids:
                by_face[pending[0]] = pending[1]
                pending = next(reqs, None)
            yield batch, by_face

    tally, light, status_n, done, who = Tally(), Light(SampleRecord, au_col="aus"), Counter(), 0, None
    t0 = time.perf_counter()
    try:
        with runner or contextlib.nullcontext(), io.writers((out, SampleRecord)) as (w,):
            if runner is None:
                results = ((list(sample_batch(b, r, ann, cache, p, k, tally)), None, len(b)) for b, r in batches())
            else:
                results = (
                    (rows, t, len(t["per_face_k"]))
                    for rows, t in _mapped(
                        runner, sample_part, ((b, r, p) for b, r in batches()), _in_flight(p, runner)
                    )
                )
            for rows, t, n in results:
                if t is not None:
                    _add_tally(tally, t)
                for s in rows:
                    w.write(s)
                    light.add(s)
                    status_n[s["status"]] += 1
                    who = who or (s["annotator"], s["model"])
                done += n
                rate = done / (time.perf_counter() - t0)
                log.info(
                    f"sample: {done}/{n_faces} faces, {rate:.1f} faces/s, ETA {(n_faces - done) / rate:.0f} s, "
                    f"calls {tally.calls}, cache hits {tally.cached}, failed samples {tally.failed}, "
                    f"cost ${tally.cost_usd:.4f}"
                )
            n = light.n
            bad = n - status_n["ok"]
            if n and bad / n > p.sample.max_error_rate:
                raise RuntimeError(
                    f"sample: {bad}/{n} samples failed (> sample.max_error_rate="
                    f"{p.sample.max_error_rate}); see the `status`/`error` columns. Answers that "
                    "succeeded are cached: a re-run will not pay for them again."
                )
            val = _validate("sample", {"samples": light.frame(), "au_codes": light.aus()}, p)
            w.commit()
    finally:
        if cache is not None:
            cache.close()
        if ann is not None:
            ann.close()
    ks = tally.per_face_k
    name, model = (ann.name, ann.model) if ann is not None else (who or (p.annotator.backend, p.annotator.model))
    m = {
        "faces": n_faces,
        "samples": light.n,
        "status": dict(status_n),
        "calls": tally.calls,
        "cache_hits": tally.cached,
        "fresh_answers": tally.fresh,
        "samples_per_face": round(light.n / n_faces, 3) if n_faces else 0,
        "mean_k": round(sum(ks) / len(ks), 3) if ks else 0,
        "cost_usd": round(tally.cost_usd, 6),
        "tokens_in": round(tally.tokens_in),
        "tokens_out": round(tally.tokens_out),
        "validation": val,
        "annotator": name,
        "model": model,
    }
    _metrics(p, "sample", m)
    return m


# ---------------------------------------------------------------- verify
VERIFY_SAMPLE_COLUMNS = ["face_id", "request_id", "variant", "status", "expression", "valence", "arousal", "aus"]


@stage_task
def verify_part(faces: list[dict], samples: dict[str, list[dict]], vp, trust=None) -> list[dict]:
    """`tasks.stages.verify.decide` for one batch of faces (on a Dask worker when configured)."""
    from tasks.stages.verify import decide

    k = knowledge.load()
    return [decide(f, samples.get(f["face_id"], []), k, vp, trust).model_dump() for f in faces]


def _verify_batches(p: Params, faces_url: str, smp_url: str, size: int) -> Iterator[tuple[list[dict], dict]]:
    """(faces, their samples by face id), one batch at a time; both files are in face order."""
    from tasks.core.records import FaceRecord

    face_cols = [c for c in FaceRecord.columns() if c != "crop"]
    samples = grouped(io.iter_rows(smp_url, columns=VERIFY_SAMPLE_COLUMNS), "face_id")
    pending = next(samples, None)
    for batch in io.iter_batches(faces_url, columns=face_cols, batch_size=size):
        by_face: dict[str, list[dict]] = {}
        for face in batch:
            if pending is not None and pending[0] == face["face_id"]:
                by_face[face["face_id"]] = pending[1]
                pending = next(samples, None)
        yield batch, by_face


def calibrate(p: Params, faces_url: str, smp_url: str, annotator: str, run: dict):
    """Pass 1 of verify: the calibration rows of the labelled faces (a few floats each) and
    the run's `tasks.method.trust.Trust` fitted on them."""
    from tasks.method import trust
    from tasks.stages.verify import calibration_row

    k = knowledge.load()
    rows = []
    for batch, by in _verify_batches(p, faces_url, smp_url, max(p.runtime.batch_size, 1024)):
        for f in batch:
            if f.get("prior_expression") and f["face_id"] in by:
                r = calibration_row(f, by[f["face_id"]], k, p.verify)
                if r is not None:
                    rows.append(r)
    return trust.build(rows, p.verify, annotator, run)


TRUST_FILE = "trust.json"  # the run's confidence model and threshold, beside the verdicts


@flow(name="verify", log_prints=True)
def verify_flow(params_path: str = "params.yaml") -> dict:
    """Two streaming passes over faces and their samples (both in face order): the first
    fits the run's confidence model and threshold on its labelled faces (`calibrate`), the
    second decides every face in batches, each batch's verdicts written before the next is
    read. Memory: one batch, the calibration rows, and the light columns of the verdicts."""
    import contextlib

    from tasks.core.records import Verdict

    p = load(params_path)
    faces_url, smp_url = io.join(p.paths.crop, "faces.parquet"), io.join(p.paths.sample, "samples.parquet")
    out = io.join(p.paths.verify, "verdicts.parquet")
    annotator, model = annotator_of(p, smp_url)
    tr = calibrate(p, faces_url, smp_url, annotator, {"model": model, "prompt_version": p.prompt.version})
    tr.report.update(annotator=annotator, model=model, prompt_version=p.prompt.version)
    _log().info(
        "calibration: %s (%s); %s",
        tr.report.get("source", "params"),
        tr.report.get("why", ""),
        tr.report.get("selection", ""),
    )
    if tr.report.get("warning"):
        _log().warning(tr.report["warning"])
    light = Light(Verdict, au_col="aus")
    reasons, withheld, per_class, n_acc, conf_sum = Counter(), Counter(), Counter(), 0, 0.0
    status = {g: Counter() for g in ("expression", "va", "au")}
    gen_conf: list[float] = []
    runner = _task_runner(p)
    size = max(p.runtime.batch_size, 1024)
    batches = _verify_batches(p, faces_url, smp_url, size)
    results = (
        _mapped(runner, verify_part, ((b, by, p.verify, tr) for b, by in batches), _in_flight(p, runner))
        if runner is not None
        else (verify_part.fn(b, by, p.verify, tr) for b, by in batches)
    )
    with runner or contextlib.nullcontext(), io.writers((out, Verdict)) as (w,):
        for verdicts in results:
            for v in verdicts:
                w.write(v)
                light.add(v)
                reasons.update(v["reasons"])
                if v["accepted"]:
                    withheld.update(v["withheld"])
                    n_acc += 1
                    conf_sum += v["confidence"]
                    per_class[v["expression"]] += 1
                    for g in status:
                        status[g][v[f"{g}_status"]] += 1
                    if v["expression_status"] == "accepted":
                        gen_conf.append(v["expression_confidence"])
        n_faces = light.n
        val = _validate("verify", {"verdicts": light.frame(), "au_codes": light.aus()}, p, {"faces": n_faces})
        w.commit()
    io.write_json(
        io.join(p.paths.verify, TRUST_FILE),
        {
            "model": tr.calibrator.to_json(),
            "threshold": tr.threshold,
            "report": {k: v for k, v in tr.report.items() if k != "confidence_model"},
        },
    )
    n_gen = sum(1 for s in light.column("expression_source") if s == "annotator")
    m = {
        "faces": n_faces,
        "accepted": n_acc,
        "rejected": n_faces - n_acc,
        "acceptance_rate": round(n_acc / n_faces, 4) if n_faces else 0,
        "mean_confidence": round(conf_sum / n_acc, 4) if n_acc else 0,
        "generated_expressions": n_gen,
        "accepted_generated_expressions": len(gen_conf),
        "generated_coverage": round(len(gen_conf) / n_gen, 4) if n_gen else 0,
        "mean_generated_confidence": round(sum(gen_conf) / len(gen_conf), 4) if gen_conf else 0,
        "status_of_accepted": {g: dict(sorted(c.items())) for g, c in status.items()},
        "reasons": dict(reasons),
        "withheld": dict(sorted(withheld.items())),
        "per_class": dict(sorted(per_class.items())),
        "calibration": tr.report,
        "validation": val,
    }
    _metrics(p, "verify", m)
    return m


# ---------------------------------------------------------------- export
FEID_BASE = "feid.parquet"  # the export stage's rows; flows/incremental.py appends part-*.parquet beside it
REJECTS_DIR = ".rejects"  # hidden, so `datasets.load_dataset("parquet", data_dir=<feid>)` loads FEID rows only


def annotator_of(p: Params, samples_url: str) -> tuple[str, str]:
    smp = io.read_table(samples_url, columns=["annotator", "model"]).slice(0, 1).to_pylist()
    return (smp[0]["annotator"], smp[0]["model"]) if smp else (p.annotator.backend, p.annotator.model)


class Plots:
    """label_distribution.csv, va.csv and confidence.csv, built while rows stream by
    (va.csv is written row by row to a temporary file, published by `write()`)."""

    def __init__(self, p: Params):
        import csv
        import tempfile

        self.d = Path(p.paths.plots)
        self.d.mkdir(parents=True, exist_ok=True)
        self.counts, self.bins, self.n, self.conf = Counter(), [0] * 10, 0, 0.0
        self._tmp = tempfile.NamedTemporaryFile("w", newline="", dir=self.d, suffix=".tmp", delete=False)
        self._va = csv.DictWriter(self._tmp, fieldnames=["valence", "arousal", "expression"], extrasaction="ignore")
        self._va.writeheader()

    def add(self, row: dict) -> None:
        self.counts[row["expression"]] += 1
        self.bins[min(9, int(row["confidence"] * 10))] += 1
        self.n += 1
        self.conf += row["confidence"]
        self._va.writerow(row)

    def write(self) -> None:
        import os

        self._tmp.close()
        os.replace(self._tmp.name, self.d / "va.csv")
        io.write_csv(
            self.d / "label_distribution.csv",
            [{"expression": e, "count": self.counts.get(e, 0)} for e in knowledge.EXPRESSIONS],
            ["expression", "count"],
        )
        io.write_csv(
            self.d / "confidence.csv",
            [{"bin": f"{i / 10:.1f}", "count": c} for i, c in enumerate(self.bins)],
            ["bin", "count"],
        )

    def discard(self) -> None:
        import os

        self._tmp.close()
        os.unlink(self._tmp.name)


def export_rows(
    p: Params,
    faces_url: str,
    ver_url: str,
    wf,
    wr,
    annotator: str,
    model: str,
    on_row=None,
    params_hash: str | None = None,
) -> tuple[int, int]:
    """Stream faces (with crops) and their verdicts, in step: accepted faces become FEID rows
    (`tasks.stages.export.feid_row`) written to `wf`, rejected verdicts go to `wr`. `on_row(row)`
    sees each FEID row. `params_hash` defaults to `p.data_digest()`. Returns (faces, rejects)."""
    from tasks.stages.export import feid_row

    k = knowledge.load()
    verdicts = io.iter_rows(ver_url)
    n_faces = rejects = 0
    for face in io.iter_rows(faces_url):
        v = next(verdicts)
        assert v["face_id"] == face["face_id"], "verdicts and faces are out of step"
        n_faces += 1
        if not v["accepted"]:
            wr.write(v)
            rejects += 1
            continue
        row = feid_row(
            v,
            face,
            k,
            annotator=annotator,
            model=model,
            prompt_version=p.prompt.version,
            params_hash=params_hash or p.data_digest(),
        ).model_dump(by_alias=True)
        wf.write(row)
        if on_row:
            on_row(row)
    return n_faces, rejects


def validate_feid(p: Params, light: "Light", n_faces: int, n_rejects: int) -> dict:
    from expectations import ExpectationsFailed
    from expectations.suites import label_distribution

    try:
        return _validate_feid(p, light, n_faces, n_rejects, label_distribution)
    except ExpectationsFailed as e:
        if light.n >= p.export.min_rows:
            raise
        f = Path(p.paths.metrics) / "verify.json"
        warn = json.loads(f.read_text()).get("calibration", {}).get("warning") if f.exists() else None
        hint = f"\nWhy FEID is (nearly) empty: {warn}" if warn else ""
        raise ExpectationsFailed(f"{e}{hint}") from None


def _validate_feid(p: Params, light: "Light", n_faces: int, n_rejects: int, label_distribution) -> dict:
    fe = light.frame()
    return _validate(
        "export",
        {
            "feid": fe,
            "rejects": pd.DataFrame({"n": range(n_rejects)}),
            "au_codes": light.aus(),
            "label_distribution": label_distribution(fe),
        },
        p,
        {"faces": n_faces, "accepted": light.n},
    )


@flow(name="export", log_prints=True)
def export_flow(params_path: str = "params.yaml") -> dict:
    """FEID as a directory dataset at `paths.feid`: `feid.parquet` (these rows) plus any
    `part-*.parquet` the incremental flow appends; rejected faces, with their reasons, under
    the hidden `.rejects/`. Streams faces and verdicts; memory is bounded (see `Light`)."""
    from tasks.core.records import FeidRecord, Verdict

    p = load(params_path)
    faces_url, ver_url = io.join(p.paths.crop, "faces.parquet"), io.join(p.paths.verify, "verdicts.parquet")
    out, rej = io.join(p.paths.feid, FEID_BASE), io.join(p.paths.feid, REJECTS_DIR, "rejects.parquet")
    annotator, model = annotator_of(p, io.join(p.paths.sample, "samples.parquet"))
    light, plots = Light(FeidRecord, au_col="aus"), Plots(p)

    def seen(row: dict) -> None:
        light.add(row)
        plots.add(row)

    try:
        with io.writers((out, FeidRecord), (rej, Verdict)) as (wf, wr):
            n_faces, rejects = export_rows(p, faces_url, ver_url, wf, wr, annotator, model, seen)
            val = validate_feid(p, light, n_faces, rejects)
            wf.commit(), wr.commit()
    except BaseException:
        plots.discard()
        raise
    plots.write()
    m = {
        "faces": n_faces,
        "feid_rows": light.n,
        "rejects": rejects,
        "per_class": dict(sorted(plots.counts.items())),
        "mean_confidence": round(plots.conf / plots.n, 4) if plots.n else 0,
        "validation": val,
    }
    _metrics(p, "export", m)
    return m


_BATCH_FNS = {"crop": crop_batch, "sample": sample_part, "verify": verify_part}

STAGES = {
    "ingest": ingest_flow,
    "crop": crop_flow,
    "prompt": prompt_flow,
    "sample": sample_flow,
    "verify": verify_flow,
    "export": export_flow,
}
