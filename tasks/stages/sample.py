"""The sample stage: every face's Monte Carlo answers, drawn adaptively (SV-UAMC).

Input: `crop/faces.parquet` and `prompt/requests.parquet` (both in face order). Output:
`sample_runs/samples.parquet`, one SampleRecord per answer (failed answers included, with
their status and raw text). The adaptive loop itself is `tasks.method.pipeline` (`sample_stream`, `sample_batch`);
this module batches faces, runs the loop in this process or on Dask workers, validates and
publishes the answers, and writes `metrics/sample.json`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from dataclasses import asdict
from typing import Iterator

from expectations.frames import Light
from tasks import annotators
from tasks.core import knowledge
from tasks.core.params import Params
from tasks.core.records import SampleRecord
from tasks.infra import dask, io
from tasks.infra.cache import ResponseCache, compact_all
from tasks.infra.progress import Progress
from tasks.method import guarantee
from tasks.method.pipeline import sample_batch, sample_stream
from tasks.method.sampling import Tally
from tasks.stages.base import grouped, log, validate, write_metrics

_WORKER: dict = {}
FAILED_COLUMNS = ("face_id", "request_id", "sample_index", "variant", "status", "error")


def _write_rows(url: str, rows: list[dict]) -> None:
    import io as stdio

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = stdio.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows or [dict.fromkeys(FAILED_COLUMNS)]), buf)
    io.put_whole(url, buf.getvalue())


def cache_for(p: Params, ann) -> ResponseCache:
    """The annotator's response cache; batch mode keeps its journal of batch ids beside it."""
    cache = ResponseCache(p.runtime.cache, ann.signature_hash())
    if hasattr(ann, "journal"):
        ann.journal = f"{cache.root}/batches"
    return cache


def _worker_annotator(p: Params):
    """(annotator, response cache, knowledge) of this process, built once per parameter set
    (on a Dask worker: once per worker, like the model of any other process)."""
    key = p.model_dump_json()
    if key not in _WORKER:
        for old in _WORKER.values():
            old[1].close(), old[0].close()
        _WORKER.clear()
        ann = annotators.build(p)
        _WORKER[key] = (ann, cache_for(p, ann), knowledge.load())
    return _WORKER[key]


@dask.batch_task("sample")
def sample_part(
    faces: list[dict], requests: dict[str, list[dict]], p: Params, limits_key: str = ""
) -> tuple[list[dict], dict]:
    """`sample_batch` on one batch, on a Dask worker: (sample rows, tally). `limits_key` names
    this stage run's shared budget and rate limits (`tasks.infra.limits`)."""
    ann, cache, k = _worker_annotator(p)
    if limits_key and hasattr(ann, "shared"):
        from tasks.infra.limits import DaskLimits

        ann.shared = DaskLimits(limits_key)
    tally = Tally()
    rows = list(sample_batch(faces, requests, ann, cache, p, k, tally))
    return rows, asdict(tally)


def _add_tally(into: Tally, d: dict) -> None:
    for name, v in d.items():
        if isinstance(v, list):
            getattr(into, name).extend(v)
        else:
            setattr(into, name, getattr(into, name) + v)


def _batches(p: Params, faces_url: str, req_url: str) -> Iterator[tuple[list[dict], dict]]:
    """(faces, their requests by face id), one batch at a time."""
    reqs = grouped(io.iter_rows(req_url), "face_id")
    pending: tuple[str, list[dict]] | None = next(reqs, None)
    for batch in io.iter_batches(faces_url, batch_size=p.runtime.batch_size):
        by_face: dict[str, list[dict]] = {}
        ids = {f["face_id"] for f in batch}
        while pending is not None and pending[0] in ids:
            by_face[pending[0]] = pending[1]
            pending = next(reqs, None)
        yield batch, by_face


class _Run:
    """What the stage counts while answers stream by."""

    def __init__(self, n_faces: int, every_s: float):
        self.tally, self.light, self.status_n = Tally(), Light(SampleRecord, au_col="aus"), Counter()
        self.version_usd = 0.0  # what this version's answers cost when they were paid for
        self.failed: list[dict] = []  # the failed answers' ids and errors (small: no image, no text)
        self.n_faces, self.done, self.who = n_faces, 0, None
        self.progress = Progress("sample", n_faces, every_s=every_s)

    def add(self, rows: list[dict], n: int, w) -> None:
        for s in rows:
            w.write(s)
            self.light.add(s)
            self.status_n[s["status"]] += 1
            self.version_usd += s.get("paid_usd") or 0.0
            if s["status"] != "ok":
                self.failed.append({k: s.get(k) for k in FAILED_COLUMNS})
            self.who = self.who or (s["annotator"], s["model"])
        self.done += n
        t = self.tally
        self.progress.update(
            self.done, calls=t.calls, cache_hits=t.cached, failed_samples=t.failed, cost_usd=t.cost_usd
        )

    def check_errors(self, p: Params) -> None:
        """Too many failed answers stop the stage: the message gives the most common reasons,
        and every failed row is written where it points (`failed_samples.parquet`)."""
        n = self.light.n
        bad = n - self.status_n["ok"]
        if n and bad / n > p.sample.max_error_rate:
            where = io.join(p.paths.sample, "failed_samples.parquet")
            _write_rows(where, self.failed)
            why = Counter(f"{s['status']}: {(s.get('error') or '')[:160]}" for s in self.failed).most_common(3)
            raise RuntimeError(
                f"sample: {bad}/{n} samples failed (> sample.max_error_rate={p.sample.max_error_rate}); "
                f"most common: {'; '.join(f'{c} x {w}' for w, c in why)}; every failed row: {where}. "
                "Answers that succeeded are cached: a re-run will not pay for them again."
            )

    def metrics(self, val: dict, name: str, model: str) -> dict:
        t, ks, n_faces = self.tally, self.tally.per_face_k, self.n_faces
        return {
            "faces": n_faces,
            "samples": self.light.n,
            "status": dict(self.status_n),
            "calls": t.calls,
            "cache_hits": t.cached,
            "fresh_answers": t.fresh,
            "samples_per_face": round(self.light.n / n_faces, 3) if n_faces else 0,
            "mean_k": round(sum(ks) / len(ks), 3) if ks else 0,
            "cost_usd": round(t.cost_usd, 6),  # this run's spend
            "version_cost_usd": round(self.version_usd, 6),  # the version's: every answer, whenever it was paid
            "tokens_in": round(t.tokens_in),
            "tokens_out": round(t.tokens_out),
            "validation": val,
            "annotator": name,
            "model": model,
        }


def _per_face(rows: Iterator[dict]) -> Iterator[list[dict]]:
    """The sample rows of a stream grouped by face (they come grouped, in face order)."""
    face, acc = None, []
    for s in rows:
        if s["face_id"] != face and acc:
            yield acc
            acc = []
        face = s["face_id"]
        acc.append(s)
    if acc:
        yield acc


def run(p: Params) -> dict:
    """Faces (with their requests) stream through the pipelined sampler (`sample_stream`:
    each face advances on its own, up to max(`runtime.batch_size`, 4 x `runtime.concurrency`)
    faces at once), in this process; or, with `runtime.task_runner: dask`, batches go to
    Dask workers that each build their own annotator and response cache. The budget and the
    rate limits (`annotator.budget_usd`, `runtime.requests_per_minute`, `tokens_per_minute`)
    then hold for all workers together (`tasks.infra.limits`); `runtime.concurrency` is per
    worker."""
    k = knowledge.load()
    faces_url = io.join(p.paths.crop, "faces.parquet")
    if p.verify.guarantee_mode == "required":
        why = guarantee.certifiable_with(p.verify, guarantee.labelled_faces(p, faces_url))
        if why:
            raise RuntimeError(
                "sample: stopped before any call: verify.guarantee_mode is required and "
                f"{why}; {guarantee.HOW_TO_CERTIFY}"
            )
    runner = dask.task_runner(p)
    ann = annotators.build(p) if runner is None else None
    cache = cache_for(p, ann) if ann is not None else None
    req_url = io.join(p.paths.prompt, "requests.parquet")
    out = io.join(p.paths.sample, "samples.parquet")
    r = _Run(io.count_rows(faces_url), p.runtime.progress_every_s)
    batches = _batches(p, faces_url, req_url)
    try:
        with runner or contextlib.nullcontext(), io.writers((out, SampleRecord)) as (w,):
            if runner is None:
                pairs = ((f, by.get(f["face_id"]) or []) for b, by in batches for f in b)
                window = max(p.runtime.batch_size, 4 * p.runtime.concurrency)
                for rows in _per_face(sample_stream(pairs, ann, cache, p, k, r.tally, window)):
                    r.add(rows, len(r.tally.per_face_k) - r.done, w)
            else:
                key = f"seke-sample-{uuid.uuid4().hex}"  # one budget and one rate for all workers of this run
                work = ((b, by, p, key) for b, by in batches)
                for rows, t in dask.mapped(runner, "sample", work, dask.in_flight(p)):
                    _add_tally(r.tally, t)
                    r.add(rows, len(t["per_face_k"]), w)
            r.check_errors(p)
            val = validate("sample", {"samples": r.light.frame(), "au_codes": r.light.aus()}, p)
            w.commit()
    finally:
        r.progress.close()
        if cache is not None:
            cache.close()
        if ann is not None:
            ann.close()
    name, model = (ann.name, ann.model) if ann is not None else (r.who or (p.annotator.backend, p.annotator.model))
    m = r.metrics(val, name, model)
    # one Parquet pack per annotator instead of one segment per process (or per call on S3);
    # logged, not a metric: it says how the cache is stored, not what FEID holds
    for sig, c in compact_all(p.runtime.cache).items():
        if c["merged"]:
            log().info("response cache %s: merged %d files into one pack of %d answers", sig, c["merged"], c["entries"])
    write_metrics(p, "sample", m)
    return m
