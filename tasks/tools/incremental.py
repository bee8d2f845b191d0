"""The incremental flow's work on FEID (`flows/incremental.py` runs it): which images are new,
how their faces become a new FEID part, and the ledger of every file an incremental run
looked at.

    data/feid/feid.parquet              export stage (whole pipeline)
    data/feid/part-*.parquet            one per incremental run that found new faces
    data/feid/.rejects/*.parquet        rejected faces with reasons (Verdict)
    data/feid/.ledger/*.parquet         every file an incremental run looked at (LedgerRecord)
"""

from __future__ import annotations

import csv
import hashlib
import time
import uuid
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from expectations.frames import Light
from tasks.core.params import Params
from tasks.core.records import FeidRecord, LedgerRecord, Verdict
from tasks.infra import io, storage
from tasks.stages.base import annotator_of
from tasks.stages.export import FEID_BASE, REJECTS_DIR, export_rows, validate_feid

LEDGER_DIR = ".ledger"


def _ls(url: str, pattern: str) -> list[str]:
    fs, path = io.fs_path(url)
    if not fs.exists(path):
        return []
    proto = storage.protocol(url)
    pre = f"{proto}://" if proto not in ("file", "local") else ""
    return [pre + f for f in sorted(fs.glob(f"{path.rstrip('/')}/{pattern}"))]


def _image_id(face_id: str) -> str:
    return face_id.rsplit("_", 1)[0]


def feid_files(feid: str) -> list[str]:
    """FEID's row files: the export stage's base, then the parts in order."""

    base = io.join(feid, FEID_BASE)
    fs, path = io.fs_path(base)
    return ([base] if fs.exists(path) else []) + _ls(feid, "part-*.parquet")


# ---------------------------------------------------------------- what FEID has seen
def seen_images(p: Params) -> tuple[dict[str, str], dict[tuple[str, int], str]]:
    """({image sha256: params_hash it was processed with}, {(uri, size): sha256})."""
    by_sha: dict[str, str] = {}
    by_uri: dict[tuple[str, int], str] = {}
    feid = p.paths.feid

    base = io.join(feid, FEID_BASE)
    fs, path = io.fs_path(base)
    images = io.join(p.paths.ingest, "images.parquet")
    ifs, ipath = io.fs_path(images)
    if fs.exists(path) and ifs.exists(ipath):
        # the export stage's FEID: every image its ingest listed, with the hash of its rows
        h = io.read_table(base, columns=["params_hash"]).slice(0, 1).to_pylist()
        base_hash = h[0]["params_hash"] if h else p.data_digest()
        for b in io.iter_batches(images, columns=["id", "uri", "n_bytes"]):
            for r in b:
                by_sha[r["id"]] = base_hash
                by_uri[(r["uri"], r["n_bytes"])] = r["id"]
    for url in _ls(io.join(feid, LEDGER_DIR), "*.parquet"):
        for b in io.iter_batches(url, columns=["uri", "n_bytes", "sha256", "params_hash"]):
            for r in b:
                if r["sha256"]:
                    by_sha[r["sha256"]] = r["params_hash"]
                by_uri[(r["uri"], r["n_bytes"])] = r["sha256"] or ""
    return by_sha, by_uri


def find_new(p: Params, location: str, params_hash: str) -> tuple[list, list[dict], set[str]]:
    """(entries to process, ledger rows of files skipped for good, stale image ids)."""
    from tasks.stages.ingest import list_entries, resolve

    by_sha, by_uri = seen_images(p)
    manifest = p.paths.manifest if location.rstrip("/") == p.paths.input.rstrip("/") else ""
    new, skipped, stale, here = [], [], set(), set()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for e in list_entries(location, manifest, p.ingest.extensions):
        url = resolve(location, e.path)
        if url is None:
            continue  # outside the location: the stages would only quarantine it
        fs, path = io.fs_path(url)
        try:
            size = fs.size(path)
        except (OSError, ValueError):
            continue
        sha = by_uri.get((url, size))
        if sha == "":
            continue  # unreadable before, unchanged since
        if sha is None:
            try:
                sha = hashlib.sha256(fs.cat_file(path)).hexdigest()
            except (OSError, ValueError) as ex:
                skipped.append(
                    dict(
                        uri=url,
                        n_bytes=size,
                        sha256=None,
                        outcome="unreadable",
                        params_hash=params_hash,
                        seen_at=now,
                        detail=str(ex),
                    )
                )
                continue
        if by_sha.get(sha) == params_hash:
            if (url, size) not in by_uri:  # same bytes under a new name: remember the name
                skipped.append(
                    dict(uri=url, n_bytes=size, sha256=sha, outcome="duplicate", params_hash=params_hash, seen_at=now)
                )
            continue
        if sha in here:
            skipped.append(
                dict(uri=url, n_bytes=size, sha256=sha, outcome="duplicate", params_hash=params_hash, seen_at=now)
            )
            continue
        here.add(sha)
        if sha in by_sha:
            stale.add(sha)
        new.append((e, url, size, sha))
    return new, skipped, stale


# ---------------------------------------------------------------- the run
def write_manifest(path: Path, entries: list) -> None:

    cols = ["path"] + sorted({k for e, *_ in entries for k in e.labels})
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for e, *_ in entries:
            w.writerow({"path": e.path, **{k: ("" if v is None else v) for k, v in e.labels.items()}})


def outcomes(wd: Path, new: list, params_hash: str, part: str) -> list[dict]:
    """One ledger row per processed file, from the scratch stage outputs."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    quar = {r["path"]: r["reason"] for r in io.iter_rows(str(wd / "ingest" / "quarantine.parquet"))}
    crop = (
        {r["image_id"]: r for r in io.iter_rows(str(wd / "crop" / "images.parquet"))}
        if (wd / "crop" / "images.parquet").exists()
        else {}
    )
    faces, acc = Counter(), Counter()
    if (wd / "verify" / "verdicts.parquet").exists():
        for r in io.iter_rows(str(wd / "verify" / "verdicts.parquet"), columns=["face_id", "accepted"]):
            faces[_image_id(r["face_id"])] += 1
            acc[_image_id(r["face_id"])] += r["accepted"]
    rows = []
    for e, url, size, sha in new:
        if e.path in quar:
            outcome = f"quarantined:{quar[e.path]}"
        elif sha in crop and crop[sha]["status"] != "ok":
            outcome = crop[sha]["status"]
        elif acc[sha]:
            outcome = "feid"
        elif faces[sha]:
            outcome = "rejected"
        else:
            outcome = "no_face"
        rows.append(
            dict(
                uri=url,
                n_bytes=size,
                sha256=sha,
                outcome=outcome,
                faces=faces[sha],
                accepted=acc[sha],
                params_hash=params_hash,
                part=part,
                seen_at=now,
            )
        )
    return rows


def _drop_images(url: str, column: str, image_ids: set[str], is_face_id: bool) -> int:
    """Rewrite `url` without the rows of `image_ids` (atomically); returns rows dropped."""
    fs, path = io.fs_path(url)
    with fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        schema, total = pf.schema_arrow, pf.metadata.num_rows
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        kept = 0
        with fs.open(tmp, "wb") as out, pq.ParquetWriter(out, schema, compression="zstd") as w:
            ids = pa.array(sorted(image_ids))
            for b in pf.iter_batches(batch_size=1024):
                col = b.column(column)
                key = pc.utf8_slice_codeunits(col, 0, 64) if is_face_id else col
                t = pa.Table.from_batches([b]).filter(pc.invert(pc.fill_null(pc.is_in(key, value_set=ids), False)))
                kept += t.num_rows
                w.write_table(t)
    if kept == total:
        fs.rm(tmp)
        return 0
    fs.rm(path)
    if kept:
        fs.mv(tmp, path)
    else:
        fs.rm(tmp)
    return total - kept


def supersede(p: Params, image_ids: set[str], keep_part: str) -> int:
    """Remove rows of `image_ids` from every FEID file but the new part's."""

    if not image_ids:
        return 0
    n = 0
    feid = p.paths.feid
    for url in feid_files(feid):
        if keep_part not in url:
            n += _drop_images(url, "id", image_ids, True)
    for url in _ls(io.join(feid, REJECTS_DIR), "*.parquet"):
        if keep_part not in url:
            _drop_images(url, "face_id", image_ids, True)
    for url in _ls(io.join(feid, LEDGER_DIR), "*.parquet"):
        if keep_part not in url:
            _drop_images(url, "sha256", image_ids, False)
    return n


def append_part(p: Params, run_p: Params, wd: Path, part: str, params_hash: str, stale: set[str]) -> dict:
    """Write the new faces as `<feid>/<part>.parquet` (+ rejects), after validating the whole
    FEID (existing rows minus the superseded ones, plus the new ones) with the export suite."""

    feid = p.paths.feid
    out, rej = io.join(feid, f"{part}.parquet"), io.join(feid, REJECTS_DIR, f"{part}.parquet")
    light = Light(FeidRecord, au_col="aus")
    annotator, model = annotator_of(run_p, str(wd / "sample" / "samples.parquet"))
    cols = [f.name for f in light.schema]
    with io.writers((out, FeidRecord), (rej, Verdict)) as (wf, wr):
        n_faces, n_rej = export_rows(
            run_p,
            str(wd / "crop" / "faces.parquet"),
            str(wd / "verify" / "verdicts.parquet"),
            wf,
            wr,
            annotator,
            model,
            light.add,
            params_hash=params_hash,
        )
        added = light.n
        old_faces = old_rej = 0
        for url in feid_files(feid):
            for b in io.iter_batches(url, columns=cols):
                for r in b:
                    if _image_id(r["id"]) not in stale:
                        light.add(r)
                        old_faces += 1
        for url in _ls(io.join(feid, REJECTS_DIR), "*.parquet"):
            for b in io.iter_batches(url, columns=["face_id"]):
                old_rej += sum(1 for r in b if _image_id(r["face_id"]) not in stale)
        val = validate_feid(p, light, old_faces + old_rej + n_faces, old_rej + n_rej)
        if added:
            wf.commit()
        else:
            wf.abort()
        if n_rej:
            wr.commit()
        else:
            wr.abort()
    return {"faces": n_faces, "accepted": added, "rejected": n_rej, "feid_rows": light.n, "validation": val}


def write_ledger(p: Params, rows: list[dict], part: str) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with io.writers((io.join(p.paths.feid, LEDGER_DIR, f"{part}.parquet"), LedgerRecord)) as (w,):
        for r in rows:
            w.write(
                LedgerRecord(
                    **{k: v for k, v in {"part": part, "seen_at": now, **r}.items() if k in LedgerRecord.model_fields}
                )
            )
        w.commit()
