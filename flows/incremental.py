"""New data, incrementally: watch a location, process only the images FEID has not seen, and
append them to FEID as a new Parquet part; then validate FEID and record the new version.

    python -m flows.incremental [--input s3://bucket/incoming] [--annotator openai] [--budget 5]

One run:
1. **List** the location (a folder or any fsspec URL; with `paths.manifest` when the location
   is `paths.input`, so prior labels come along) and find the images not yet in FEID **by
   content hash** (SHA-256 of the bytes, the image id). Files already seen at the same URL
   and size are not read again. An image counts as seen when FEID's ledger (or the export
   stage's own ingest, for `feid.parquet`) holds it with the current `params_hash`.
2. Nothing new: stop. No stage runs, no annotator is built, nothing is written or recorded.
3. Run the **same stage flows** (`flows.stages`: ingest, crop, prompt, sample, verify) on a
   manifest of only the new files, in a scratch folder (`incremental.workdir`). The response
   cache (`runtime.cache`) is shared with the pipeline, so an answer paid for once is never
   paid for again.
4. **Append** the accepted faces (`tasks.stages.export.feid_row`, as the export stage does) as
   `<feid>/part-<UTC time>-<hash>.parquet`, rejected faces under `<feid>/.rejects/`, and one
   ledger row per file looked at under `<feid>/.ledger/`. The whole FEID is validated with the
   export suite (`expectations.check`) before the part is published.
5. Images seen before under a different `params_hash` (the data-shaping parameters changed)
   are processed again; their old rows are removed from older parts once the new part is in.
6. **Record**: `dvc commit export` (FEID is the export stage's output directory) and
   `dvc push` to the default remote, then optionally `git commit dvc.lock`.

FEID layout (`datasets.load_dataset("parquet", data_dir=<feid>)` loads all rows; hidden
folders are skipped by `datasets`):

    data/feid/feid.parquet              export stage (whole pipeline)
    data/feid/part-*.parquet            one per incremental run that found new faces
    data/feid/.rejects/*.parquet        rejected faces with reasons (Verdict)
    data/feid/.ledger/*.parquet         every file an incremental run looked at (LedgerRecord)

A later full `dvc repro` that re-runs export rebuilds FEID from `paths.input` (answers come
from the response cache) and so replaces the parts: point `paths.input` at the watched
location for scheduled use.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Optional

from flows import env

env.apply()

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402
from prefect import flow, get_run_logger  # noqa: E402

from tasks.core.params import Params, load  # noqa: E402
from tasks.core.records import Record  # noqa: E402
from tasks.infra import io, storage  # noqa: E402

LEDGER_DIR = ".ledger"


class LedgerRecord(Record):
    """One file an incremental run looked at, and what became of it."""

    uri: str
    n_bytes: int
    sha256: Optional[str] = None
    outcome: str  # feid | rejected | no_face | decode_error | duplicate | unreadable | quarantined:<reason>
    faces: int = 0
    accepted: int = 0
    params_hash: str
    part: str
    seen_at: str


def _log():
    try:
        return get_run_logger()
    except Exception:
        import logging

        return logging.getLogger("seke.incremental")


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
    from flows.stages import FEID_BASE

    base = io.join(feid, FEID_BASE)
    fs, path = io.fs_path(base)
    return ([base] if fs.exists(path) else []) + _ls(feid, "part-*.parquet")


# ---------------------------------------------------------------- what FEID has seen
def seen_images(p: Params) -> tuple[dict[str, str], dict[tuple[str, int], str]]:
    """({image sha256: params_hash it was processed with}, {(uri, size): sha256})."""
    by_sha: dict[str, str] = {}
    by_uri: dict[tuple[str, int], str] = {}
    feid = p.paths.feid
    from flows.stages import FEID_BASE

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
def _scratch_params(p: Params, wd: Path, location: str, manifest: str) -> str:
    d = p.model_dump(mode="json")
    # too few labelled faces among the new ones: use the main run's confidence model and threshold
    if not d["verify"]["trust_from"]:
        d["verify"]["trust_from"] = io.join(p.paths.verify, "trust.json")
    d["paths"].update(
        input=location,
        manifest=manifest,
        ingest=str(wd / "ingest"),
        crop=str(wd / "crop"),
        prompt=str(wd / "prompt"),
        sample=str(wd / "sample"),
        verify=str(wd / "verify"),
        feid=str(wd / "feid"),
        metrics=str(wd / "metrics"),
        plots=str(wd / "plots"),
    )
    path = wd / "params.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return str(path)


def _write_manifest(path: Path, entries: list) -> None:
    import csv

    cols = ["path"] + sorted({k for e, *_ in entries for k in e.labels})
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for e, *_ in entries:
            w.writerow({"path": e.path, **{k: ("" if v is None else v) for k, v in e.labels.items()}})


def _outcomes(wd: Path, new: list, params_hash: str, part: str) -> list[dict]:
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
    from flows.stages import REJECTS_DIR

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
    from flows.stages import REJECTS_DIR, Light, annotator_of, export_rows, validate_feid
    from tasks.core.records import FeidRecord, Verdict

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


def _dvc(root: str, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("dvc")
    return subprocess.run(
        [str(exe) if exe.exists() else "dvc", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )


def record_version(p: Params, root: str, git_commit: bool, message: str) -> dict:
    """`dvc commit export` + `dvc push` (+ `git commit dvc.lock`). FEID must be the export
    stage's local output in a DVC project whose export stage has a version in dvc.lock."""
    log = _log()
    rootp = Path(root)
    lock = rootp / "dvc.lock"
    if not storage.is_local(p.paths.feid) or not (rootp / ".dvc").is_dir():
        log.warning("FEID is not a local DVC-tracked folder: version not recorded")
        return {"recorded": False, "reason": "not a DVC-tracked local FEID"}
    if not lock.exists() or "export" not in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}):
        log.warning("the export stage has no version in dvc.lock yet (run `dvc repro` once): not recorded")
        return {"recorded": False, "reason": "no export stage in dvc.lock"}
    r = _dvc(root, "commit", "-f", "export")
    if r.returncode != 0:
        raise RuntimeError(f"dvc commit export failed:\n{r.stdout}\n{r.stderr}")
    out = {"recorded": True, "pushed": False, "git_commit": None}
    remote = _dvc(root, "remote", "default").stdout.strip()
    if remote:
        r = _dvc(root, "push")
        if r.returncode != 0:
            raise RuntimeError(f"dvc push to {remote} failed:\n{r.stdout}\n{r.stderr}")
        out.update(pushed=True, remote=remote)
    else:
        log.warning("no default DVC remote: committed to the local cache only (dvc remote add -d ...)")
    if git_commit:
        subprocess.run(["git", "add", "dvc.lock"], cwd=root, check=True, capture_output=True)
        r = subprocess.run(["git", "commit", "-m", message, "--", "dvc.lock"], cwd=root, capture_output=True, text=True)
        if r.returncode == 0:
            out["git_commit"] = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True
            ).stdout.strip()
    return out


def effective_params(p: Params, annotator: str = "", budget_usd: float = 0.0) -> tuple[Params, str]:
    """(params for this run, params_hash of its rows). A budget only stops a run: it never
    shapes a row, so it does not enter the hash."""
    shaping = p
    if annotator:
        shaping = p.model_copy(update={"annotator": p.annotator.model_copy(update={"backend": annotator})})
    run_p = shaping
    if budget_usd:
        run_p = shaping.model_copy(
            update={"annotator": shaping.annotator.model_copy(update={"budget_usd": budget_usd})}
        )
    return run_p, shaping.data_digest()


@flow(name="feid-incremental", log_prints=True)
def incremental_flow(
    input: str = "",
    annotator: str = "",
    budget_usd: float = 0.0,
    params_path: str = "params.yaml",
    root: str = ".",
    record: Optional[bool] = None,
    git_commit: Optional[bool] = None,
) -> dict:
    """Append the faces of new images at `input` (default: incremental.input, else
    paths.input) to FEID; see the module docstring. `annotator` and `budget_usd` override
    annotator.backend / annotator.budget_usd for this run."""
    from flows import stages

    log = _log()
    t0 = time.perf_counter()
    base = load(params_path)
    p, params_hash = effective_params(base, annotator, budget_usd)
    location = input or p.incremental.input or p.paths.input
    new, skipped, stale = find_new(p, location, params_hash)
    summary = {"location": location, "new_images": len(new), "stale_images": len(stale), "params_hash": params_hash}
    if not new:  # nothing is written either: the ledger only grows with a part
        log.info(f"incremental: nothing new at {location}")
        return {**summary, "part": None, "recorded": False, "seconds": round(time.perf_counter() - t0, 2)}
    digest = hashlib.sha256("".join(sorted(s for *_, s in new)).encode()).hexdigest()[:8]
    part = f"part-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{digest}"
    wd = Path(p.incremental.workdir) / part
    wd.mkdir(parents=True, exist_ok=True)
    log.info(f"incremental: {len(new)} new images at {location} ({len(stale)} seen with other parameters) -> {part}")
    try:
        _write_manifest(wd / "new.csv", new)
        sp = _scratch_params(p, wd, location, str(wd / "new.csv"))
        stages.ingest_flow(params_path=sp)
        crop = stages.crop_flow(params_path=sp)
        if crop["faces"]:
            stages.prompt_flow(params_path=sp)
            sample = stages.sample_flow(params_path=sp)
            stages.verify_flow(params_path=sp)
            summary.update(calls=sample["calls"], cache_hits=sample["cache_hits"], cost_usd=sample["cost_usd"])
            summary.update(append_part(base, p, wd, part, params_hash, stale))
        else:
            summary.update(faces=0, accepted=0, rejected=0, calls=0)
        ledger = _outcomes(wd, new, params_hash, part) + [{**s, "part": part} for s in skipped]
        summary["superseded_rows"] = supersede(p, stale, part)
        _write_ledger(p, ledger, part)
    finally:
        if wd.exists():
            shutil.rmtree(wd, ignore_errors=True)
    summary["part"] = part
    rec = record if record is not None else p.incremental.record
    gc = git_commit if git_commit is not None else p.incremental.git_commit
    summary.update(
        record_version(p, root, gc, f"FEID: +{summary.get('accepted', 0)} faces ({part})")
        if rec
        else {"recorded": False}
    )
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    log.info(f"incremental: {summary}")
    return summary


def _write_ledger(p: Params, rows: list[dict], part: str) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with io.writers((io.join(p.paths.feid, LEDGER_DIR, f"{part}.parquet"), LedgerRecord)) as (w,):
        for r in rows:
            w.write(
                LedgerRecord(
                    **{k: v for k, v in {"part": part, "seen_at": now, **r}.items() if k in LedgerRecord.model_fields}
                )
            )
        w.commit()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.incremental")
    ap.add_argument("--input", default="")
    ap.add_argument("--annotator", default="")
    ap.add_argument("--budget", type=float, default=0.0)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--git-commit", action="store_true")
    a = ap.parse_args(argv)
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        print(
            incremental_flow(
                input=a.input,
                annotator=a.annotator,
                budget_usd=a.budget,
                params_path=a.params,
                record=False if a.no_record else None,
                git_commit=a.git_commit or None,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
