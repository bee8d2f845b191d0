"""One Prefect flow per stage. Each flow reads its inputs, calls the stage's logic in
`tasks/`, validates the output with its Great Expectations suite, and only then publishes
the output and its metrics. `dvc.yaml` runs each of them through `python -m flows.run`.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import io, knowledge
from tasks.params import Params, load

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


# ---------------------------------------------------------------- ingest
@flow(name="ingest", log_prints=True)
def ingest_flow(params_path: str = "params.yaml") -> dict:
    from tasks.ingest import ingest, list_entries
    from tasks.records import ImageRecord, QuarantineRecord

    p = load(params_path)
    k = knowledge.load()
    out = io.join(p.paths.ingest, "images.parquet"), io.join(p.paths.ingest, "quarantine.parquet")
    imgs, quar = [], []
    with io.writers((out[0], ImageRecord), (out[1], QuarantineRecord)) as (wi, wq):
        for rec in ingest(list_entries(p.paths.input, p.paths.manifest, p.ingest.extensions),
                          p.paths.input, k, p.ingest):
            (wi if isinstance(rec, ImageRecord) else wq).write(rec)
            (imgs if isinstance(rec, ImageRecord) else quar).append(rec.model_dump())
        val = _validate("ingest", {"images": _light(imgs) if imgs else pd.DataFrame(columns=ImageRecord.columns()),
                                   "quarantine": _light(quar) if quar else pd.DataFrame(columns=QuarantineRecord.columns()),
                                   "au_codes": _aus(imgs, "prior_aus")}, p)
        wi.commit(), wq.commit()
    m = {"images": len(imgs), "quarantined": len(quar), "quarantine_reasons": dict(Counter(q["reason"] for q in quar)),
         "with_prior_expression": sum(1 for r in imgs if r["prior_expression"]), "validation": val}
    _metrics(p, "ingest", m)
    _log().info(f"ingest: {len(imgs)} images, {len(quar)} quarantined {m['quarantine_reasons']}")
    return m


# ---------------------------------------------------------------- crop
@stage_task
def crop_batch(rows: list[dict], crop_params) -> list[tuple[dict, list[dict]]]:
    from tasks.crop import crop_all
    from tasks.records import ImageRecord

    def read(uri: str) -> bytes:
        fs, path = io.fs_path(uri)
        return fs.cat_file(path)
    return [(st.model_dump(), [f.model_dump() for f in faces])
            for st, faces in crop_all((ImageRecord(**r) for r in rows), read, crop_params)]


@flow(name="crop", log_prints=True)
def crop_flow(params_path: str = "params.yaml") -> dict:
    from tasks.records import CropStatus, FaceRecord

    p = load(params_path)
    src = io.join(p.paths.ingest, "images.parquet")
    out = io.join(p.paths.crop, "faces.parquet"), io.join(p.paths.crop, "images.parquet")
    statuses, faces_light = [], []
    n_images = io.count_rows(src)
    t0 = time.perf_counter()
    with io.writers((out[0], FaceRecord), (out[1], CropStatus)) as (wf, ws):
        for batch in io.iter_batches(src, batch_size=p.runtime.batch_size):
            for st, faces in crop_batch(batch, p.crop):
                ws.write(st)
                statuses.append(st)
                for f in faces:
                    wf.write(f)
                    faces_light.append({k: v for k, v in f.items() if k != "crop"})
        errors = sum(1 for s in statuses if s["status"] == "decode_error")
        if n_images and errors / n_images > p.crop.max_error_rate:
            raise RuntimeError(f"crop: {errors}/{n_images} images failed to decode (> crop.max_error_rate)")
        val = _validate("crop", {"faces": pd.DataFrame(faces_light, columns=[c for c in FaceRecord.columns() if c != "crop"]),
                                 "images": pd.DataFrame(statuses, columns=CropStatus.columns())},
                        p, {"images": n_images})
        wf.commit(), ws.commit()
    dt = time.perf_counter() - t0
    m = {"images": n_images, "faces": len(faces_light), "status": dict(Counter(s["status"] for s in statuses)),
         "multi_face_images": sum(1 for s in statuses if s["n_faces"] > 1), "validation": val,
         "images_per_s": round(n_images / dt, 2) if dt else None}
    _metrics(p, "crop", m)
    _log().info(f"crop: {len(faces_light)} faces in {n_images} images; {m['status']}")
    return m


# ---------------------------------------------------------------- prompt
@flow(name="prompt", log_prints=True)
def prompt_flow(params_path: str = "params.yaml") -> dict:
    from tasks.prompt import requests_for
    from tasks.records import FaceRecord, RequestRecord

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


@flow(name="sample", log_prints=True)
def sample_flow(params_path: str = "params.yaml") -> dict:
    from tasks import annotators
    from tasks.cache import ResponseCache
    from tasks.records import SampleRecord
    from tasks.sample import Tally, sample_batch

    p = load(params_path)
    k = knowledge.load()
    log = _log()
    ann = annotators.build(p)
    cache = ResponseCache(p.runtime.cache, ann.signature_hash())
    faces_url, req_url = io.join(p.paths.crop, "faces.parquet"), io.join(p.paths.prompt, "requests.parquet")
    out = io.join(p.paths.sample, "samples.parquet")
    n_faces = io.count_rows(faces_url)
    reqs = grouped(io.iter_rows(req_url), "face_id")
    pending: tuple[str, list[dict]] | None = next(reqs, None)
    tally, light, done = Tally(), [], 0
    t0 = time.perf_counter()
    try:
        with io.writers((out, SampleRecord)) as (w,):
            for batch in io.iter_batches(faces_url, batch_size=p.runtime.batch_size):
                by_face: dict[str, list[dict]] = {}
                ids = {f["face_id"] for f in batch}
                while pending is not None and pending[0] in ids:
                    by_face[pending[0]] = pending[1]
                    pending = next(reqs, None)
                for s in sample_batch(batch, by_face, ann, cache, p, k, tally):
                    w.write(s)
                    light.append({c: v for c, v in s.items() if c != "raw"})
                done += len(batch)
                rate = done / (time.perf_counter() - t0)
                log.info(f"sample: {done}/{n_faces} faces, {rate:.1f} faces/s, ETA {(n_faces - done) / rate:.0f} s, "
                         f"calls {tally.calls}, cache hits {tally.cached}, failed samples {tally.failed}, "
                         f"cost ${tally.cost_usd:.4f}")
            n = len(light)
            bad = sum(1 for s in light if s["status"] != "ok")
            if n and bad / n > p.sample.max_error_rate:
                raise RuntimeError(f"sample: {bad}/{n} samples failed (> sample.max_error_rate="
                                   f"{p.sample.max_error_rate}); see the `status`/`error` columns. Answers that "
                                   "succeeded are cached: a re-run will not pay for them again.")
            val = _validate("sample", {"samples": _light(light), "au_codes": _aus(light)}, p)
            w.commit()
    finally:
        cache.close()
        ann.close()
    ks = tally.per_face_k
    m = {"faces": n_faces, "samples": len(light), "status": dict(Counter(s["status"] for s in light)),
         "calls": tally.calls, "cache_hits": tally.cached, "fresh_answers": tally.fresh,
         "samples_per_face": round(len(light) / n_faces, 3) if n_faces else 0,
         "mean_k": round(sum(ks) / len(ks), 3) if ks else 0, "cost_usd": round(tally.cost_usd, 6),
         "tokens_in": round(tally.tokens_in), "tokens_out": round(tally.tokens_out), "validation": val,
         "annotator": ann.name, "model": ann.model}
    _metrics(p, "sample", m)
    return m


# ---------------------------------------------------------------- verify
@flow(name="verify", log_prints=True)
def verify_flow(params_path: str = "params.yaml") -> dict:
    from tasks.records import FaceRecord, Verdict
    from tasks.verify import decide

    p = load(params_path)
    k = knowledge.load()
    faces_url, smp_url = io.join(p.paths.crop, "faces.parquet"), io.join(p.paths.sample, "samples.parquet")
    out = io.join(p.paths.verify, "verdicts.parquet")
    face_cols = [c for c in FaceRecord.columns() if c != "crop"]
    samples = grouped(io.iter_rows(smp_url, columns=["face_id", "request_id", "variant", "status", "expression",
                                                     "valence", "arousal", "aus"]), "face_id")
    pending = next(samples, None)
    light, n_faces = [], 0
    with io.writers((out, Verdict)) as (w,):
        for face in io.iter_rows(faces_url, columns=face_cols):
            n_faces += 1
            mine: list[dict] = []
            if pending is not None and pending[0] == face["face_id"]:
                mine = pending[1]
                pending = next(samples, None)
            v = decide(face, mine, k, p.verify)
            w.write(v)
            light.append(v.model_dump())
        val = _validate("verify", {"verdicts": pd.DataFrame(light, columns=Verdict.columns()), "au_codes": _aus(light)},
                        p, {"faces": n_faces})
        w.commit()
    acc = [v for v in light if v["accepted"]]
    m = {"faces": n_faces, "accepted": len(acc), "rejected": n_faces - len(acc),
         "acceptance_rate": round(len(acc) / n_faces, 4) if n_faces else 0,
         "mean_confidence": round(sum(v["confidence"] for v in acc) / len(acc), 4) if acc else 0,
         "reasons": dict(Counter(r for v in light for r in v["reasons"])),
         "per_class": dict(sorted(Counter(v["expression"] for v in acc).items())), "validation": val}
    _metrics(p, "verify", m)
    return m


# ---------------------------------------------------------------- export
@flow(name="export", log_prints=True)
def export_flow(params_path: str = "params.yaml") -> dict:
    from tasks.export import feid_row
    from tasks.records import FeidRecord, Verdict

    p = load(params_path)
    k = knowledge.load()
    faces_url, ver_url = io.join(p.paths.crop, "faces.parquet"), io.join(p.paths.verify, "verdicts.parquet")
    out, rej = io.join(p.paths.feid, "feid.parquet"), io.join(p.paths.feid, "rejects.parquet")
    smp = io.read_table(io.join(p.paths.sample, "samples.parquet"), columns=["annotator", "model"]).slice(0, 1).to_pylist()
    annotator, model = (smp[0]["annotator"], smp[0]["model"]) if smp else (p.annotator.backend, p.annotator.model)
    verdicts = io.iter_rows(ver_url)
    light, rejects, n_faces = [], 0, 0
    with io.writers((out, FeidRecord), (rej, Verdict)) as (wf, wr):
        for face in io.iter_rows(faces_url):
            v = next(verdicts)
            assert v["face_id"] == face["face_id"], "verdicts and faces are out of step"
            n_faces += 1
            if not v["accepted"]:
                wr.write(v)
                rejects += 1
                continue
            row = feid_row(v, face, k, annotator=annotator, model=model, prompt_version=p.prompt.version,
                           params_hash=p.data_digest())
            wf.write(row)
            light.append(row.model_dump(exclude={"image", "conversations"}))
        from expectations.suites import label_distribution
        fe = pd.DataFrame(light, columns=[c for c in FeidRecord.columns() if c not in ("image", "conversations")])
        val = _validate("export", {"feid": fe, "rejects": pd.DataFrame({"n": range(rejects)}), "au_codes": _aus(light),
                                   "label_distribution": label_distribution(fe)},
                        p, {"faces": n_faces, "accepted": len(light)})
        wf.commit(), wr.commit()
    _plots(p, light)
    m = {"faces": n_faces, "feid_rows": len(light), "rejects": rejects,
         "per_class": dict(sorted(Counter(r["expression"] for r in light).items())),
         "mean_confidence": round(sum(r["confidence"] for r in light) / len(light), 4) if light else 0,
         "validation": val}
    _metrics(p, "export", m)
    return m


def _plots(p: Params, rows: list[dict]) -> None:
    d = Path(p.paths.plots)
    counts = Counter(r["expression"] for r in rows)
    io.write_csv(d / "label_distribution.csv", [{"expression": e, "count": counts.get(e, 0)}
                                                for e in knowledge.EXPRESSIONS], ["expression", "count"])
    io.write_csv(d / "va.csv", rows, ["valence", "arousal", "expression"])
    bins = [0] * 10
    for r in rows:
        bins[min(9, int(r["confidence"] * 10))] += 1
    io.write_csv(d / "confidence.csv", [{"bin": f"{i / 10:.1f}", "count": c} for i, c in enumerate(bins)], ["bin", "count"])


STAGES = {"ingest": ingest_flow, "crop": crop_flow, "prompt": prompt_flow, "sample": sample_flow,
          "verify": verify_flow, "export": export_flow}
