"""ingest: list images and their prior labels; quarantine what cannot be used.

Input: a folder of images, or a manifest (CSV/Parquet with `path` and optional prior labels:
`expression` [+ `label_scheme`], `valence`, `arousal`, `AUxx` columns, `source`, `subject`,
`label_set`), on a local path or any fsspec URL. Output: ImageRecord per usable image,
QuarantineRecord (with a reason) per unusable file. The image id is the SHA-256 of the bytes.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import posixpath
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator

import fsspec
import pandas as pd
from PIL import Image, UnidentifiedImageError

from expectations.frames import au_codes_frame, light_frame
from tasks.core import knowledge
from tasks.core.knowledge import Knowledge, UnknownLabel
from tasks.core.params import Ingest, Params
from tasks.core.records import ImageRecord, QuarantineRecord
from tasks.infra import io as store
from tasks.infra.progress import track
from tasks.stages.base import log, validate, write_metrics


@dataclass
class Entry:
    """One file to ingest: its path relative to the root, plus the manifest row (if any).
    An inbox file (`paths.inbox`) is named `inbox/<path in the inbox>` and read under `root`."""

    path: str
    labels: dict
    root: str = ""  # the folder `rel` is under, when it is not paths.input (the inbox)
    rel: str = ""


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def list_entries(
    root: str, manifest: str, extensions: Iterable[str], skipped: list[str] | None = None
) -> Iterator[Entry]:
    """Entries from the manifest if one is given, else every image file under `root`. Files
    whose extension is not in `extensions` are appended to `skipped` (relative paths), so
    the stage can count and list them: nothing vanishes without a word."""
    if manifest:
        import polars as pl

        fs, mpath = fsspec.core.url_to_fs(manifest)
        with fs.open(mpath, "rb") as fh:
            data = fh.read()
        df = (
            pl.read_parquet(io.BytesIO(data))
            if mpath.endswith(".parquet")
            else pl.read_csv(io.BytesIO(data), infer_schema_length=0)
        )  # CSV: all strings, parsed below
        if "path" not in df.columns:
            raise ValueError(f"manifest {manifest} has no `path` column (columns: {df.columns})")
        for row in df.iter_rows(named=True):
            yield Entry(str(row.pop("path")), row)
        return
    fs, rpath = fsspec.core.url_to_fs(root)
    exts = tuple(e.lower() for e in extensions)
    for p in sorted(fs.find(rpath)):
        if p.lower().endswith(exts):
            yield Entry(posixpath.relpath(p, rpath), {})
        elif skipped is not None:
            skipped.append(posixpath.relpath(p, rpath))


INBOX_MANIFEST = "manifest.csv"


def inbox_entries(inbox: str) -> Iterator[Entry]:
    """The inbox's files (`<inbox>/manifest.csv`, written by the incremental flow), named
    `inbox/<path>`; nothing when there is no inbox or it has no manifest."""
    if not inbox:
        return
    fs, p = fsspec.core.url_to_fs(inbox)
    manifest = posixpath.join(inbox.rstrip("/"), INBOX_MANIFEST)
    if not fs.exists(posixpath.join(p, INBOX_MANIFEST)):
        return
    for e in list_entries(inbox, manifest, ()):
        yield Entry(f"inbox/{e.path}", e.labels, root=inbox, rel=e.path)


def read_review(url: str) -> dict[str, dict]:
    """`path` -> the labels people gave in review (`seke review import`); {} when there is no
    such file or it has no rows."""
    if not url:
        return {}
    import polars as pl

    fs, p = fsspec.core.url_to_fs(url)
    if not fs.exists(p):
        return {}
    with fs.open(p, "rb") as fh:
        df = pl.read_csv(io.BytesIO(fh.read()), infer_schema_length=0)
    keep = [c for c in df.columns if c not in ("face_id", "reviewer", "label_origin")]
    return {str(r.pop("path")): r for r in df.select(keep).iter_rows(named=True)}


def with_review(entries: Iterable[Entry], review: dict[str, dict], matched: set[str]) -> Iterator[Entry]:
    """Entries whose path a person labelled get those labels over the manifest's (a blank cell
    keeps the manifest's value), marked `label_origin: review`; `matched` collects those paths."""
    for e in entries:
        r = review.get(e.path)
        if r is None:
            yield e
            continue
        matched.add(e.path)
        given = {k: v for k, v in r.items() if not _is_missing(v)}
        yield Entry(e.path, {**e.labels, **given, "label_origin": "review"})


def _escapes(fs, root: str, p: str) -> str | None:
    """On a local filesystem, why the file at `p` must not be read: a link whose target is
    outside `root` ("outside_root") or that points nowhere ("unreadable"). Nothing of the
    target is read. None when it is safe (or the filesystem has no links)."""
    import os

    if "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return None
    root_real = os.path.realpath(fsspec.core.url_to_fs(root)[1])
    real = os.path.realpath(p)
    if os.path.commonpath([root_real, real]) != root_real:
        return "outside_root"
    if os.path.islink(p) and not os.path.exists(real):
        return "unreadable"
    return None


def _open_image(data: bytes) -> tuple[Image.Image | None, str, str]:
    """(image, reason, detail): the image fully decoded, or why not. Never raises; every
    detail is deterministic (PIL's messages can embed memory addresses)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            fmt, (w, h) = im.format or "unknown", im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, "too_large", f"decompression bomb: the header claims more than {Image.MAX_IMAGE_PIXELS} pixels"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError) as ex:
        return None, "not_an_image", f"{type(ex).__name__}: no image format recognised; first bytes {data[:12]!r}"
    if w * h > Image.MAX_IMAGE_PIXELS:
        return None, "too_large", f"{w}x{h} pixels > {Image.MAX_IMAGE_PIXELS} (decompression bomb guard)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()  # full decode: catches truncated and corrupt files
    except MemoryError:
        return None, "too_large", f"{fmt} {w}x{h}: not enough memory to decode"
    except Exception as ex:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError... on corrupt data
        return None, "unreadable", f"corrupt {fmt}: {type(ex).__name__}: {str(ex).split(' at 0x')[0][:200]}"
    return im, fmt, conversion(im)


def conversion(im: Image.Image) -> str:
    """How the crop stage turns this image into 8-bit RGB (`tasks.infra.detect.decode`), or
    "" when it is RGB already. Recorded on the image's row."""
    notes = []
    if getattr(im, "n_frames", 1) > 1:
        notes.append(f"first frame of {im.n_frames}")
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        notes.append(f"{mode} scaled to 8-bit grey")
    elif mode == "CMYK":
        notes.append("CMYK converted to RGB")
    elif mode in ("LA", "RGBA", "PA") or (mode == "P" and "transparency" in im.info):
        notes.append(f"{mode}: transparency dropped")
    elif mode not in ("RGB", "L", "P"):
        notes.append(f"{mode} converted to RGB")
    return "; ".join(notes)


def resolve(root: str, rel: str) -> str | None:
    """The URL of `rel` under `root`, or None if it points outside the root."""
    if "://" in rel or rel.startswith("/"):
        return None
    norm = posixpath.normpath(rel)
    if norm.startswith("..") or norm == ".":
        return None
    return f"{root.rstrip('/')}/{norm}"


def parse_labels(k: Knowledge, labels: dict, params: Ingest) -> dict:
    """Prior labels of one manifest row, mapped to the project's label spaces. A bad prior
    (an unknown label or AU column, a value out of range, a valence without an arousal) is
    dropped on its own, with a warning in `label_warnings`; the image and its other priors stay."""
    warn: list[str] = []
    out = _expression_prior(k, labels, params, warn)
    out.update(_va_prior(labels, warn), **_au_prior(k, labels, params, warn))
    has_prior = out["prior_expression"] or out["prior_valence"] is not None or out["au_set"]
    out["label_origin"] = ("review" if labels.get("label_origin") == "review" else "source") if has_prior else None
    out["label_warnings"] = warn
    return out


def _expression_prior(k: Knowledge, labels: dict, params: Ingest, warn: list[str]) -> dict:
    expr, none = labels.get("expression"), {"prior_expression": None, "label_set": []}
    if _is_missing(expr):
        return none
    try:
        got = k.expression(expr, labels.get("label_scheme") or None)
        ls = labels.get("label_set")
        label_set = [k.expression(x) for x in str(ls).split(",")] if not _is_missing(ls) else None
    except (UnknownLabel, ValueError) as ex:
        warn.append(f"expression dropped: {ex}")
        return none
    label_set = label_set or list(params.label_set or k.expressions)
    if got not in label_set:
        warn.append(f"expression dropped: {expr!r} is not in the row's label_set {label_set}")
        return none
    return {"prior_expression": got, "label_set": label_set}


def _va_prior(labels: dict, warn: list[str]) -> dict:
    out: dict = {"prior_valence": None, "prior_arousal": None}
    for key in ("valence", "arousal"):
        v = labels.get(key)
        if _is_missing(v):
            continue
        try:
            f = float(v)
        except ValueError:
            warn.append(f"{key} dropped: {v!r} is not a number")
            continue
        if not -1.0 <= f <= 1.0 or math.isnan(f):
            warn.append(f"{key} dropped: {v!r} is outside [-1, 1]")
            continue
        out[f"prior_{key}"] = f
    if (out["prior_valence"] is None) != (out["prior_arousal"] is None):
        warn.append("valence and arousal dropped: they must be given together")
        out = {"prior_valence": None, "prior_arousal": None}
    return out


def _au_prior(k: Knowledge, labels: dict, params: Ingest, warn: list[str]) -> dict:
    au_cols = {}
    for col, v in labels.items():
        if not str(col).upper().startswith("AU") or _is_missing(v):
            continue
        try:
            code, f = k.au_code(col), float(v)
        except (UnknownLabel, ValueError) as ex:
            warn.append(f"AU column {col!r} dropped: {ex}")
            continue
        if f < 0 or math.isnan(f):
            warn.append(f"AU column {col!r} dropped: {v!r} is not an occurrence or intensity")
            continue
        au_cols[code] = f
    if not au_cols:
        if params.au_set:
            warn.append("no AU priors: ingest.au_set is set but the row has no usable AU columns")
        return {"prior_aus": None, "au_set": []}
    return {"au_set": sorted(au_cols), "prior_aus": sorted(a for a, v in au_cols.items() if v > 0)}


def _read(e: Entry, root: str, params: Ingest, read=None) -> tuple[str, bytes] | QuarantineRecord:
    """(url, bytes) of an entry, or why it cannot be read. Links are resolved first: nothing
    outside the root is ever read."""
    root, rel = (e.root, e.rel) if e.root else (root, e.path)
    url = resolve(root, rel)
    if url is None:
        return QuarantineRecord(path=e.path, reason="outside_root", detail=f"{rel!r} is not under {root}")
    try:
        fs, p = fsspec.core.url_to_fs(url)
        why = _escapes(fs, root, p)
        if why == "outside_root":
            return QuarantineRecord(path=e.path, reason=why, detail="a link to a file outside the input root")
        if why == "unreadable":
            return QuarantineRecord(path=e.path, reason=why, detail="a broken link (its target does not exist)")
        size = fs.size(p)
        if size is not None and size > params.max_bytes:
            detail = f"{size} bytes > ingest.max_bytes={params.max_bytes}"
            return QuarantineRecord(path=e.path, reason="too_large", detail=detail)
        data = read(url) if read else fs.cat_file(p)
    except FileNotFoundError:
        return QuarantineRecord(path=e.path, reason="unreadable", detail="FileNotFoundError: the file is gone")
    except PermissionError:
        return QuarantineRecord(path=e.path, reason="unreadable", detail="PermissionError: not allowed to read it")
    except (OSError, ValueError) as ex:
        return QuarantineRecord(path=e.path, reason="unreadable", detail=f"{type(ex).__name__}: {ex}")
    if len(data) == 0:
        return QuarantineRecord(path=e.path, reason="empty", detail="0 bytes")
    if len(data) > params.max_bytes:
        detail = f"{len(data)} bytes > ingest.max_bytes={params.max_bytes}"
        return QuarantineRecord(path=e.path, reason="too_large", detail=detail)
    return url, data


def ingest(
    entries: Iterable[Entry], root: str, k: Knowledge, params: Ingest, read=None
) -> Iterator[ImageRecord | QuarantineRecord]:
    """Yield an ImageRecord or a QuarantineRecord for every entry, never dropping one."""
    seen: dict[str, str] = {}
    for e in entries:
        got = _read(e, root, params, read)
        if isinstance(got, QuarantineRecord):
            yield got
            continue
        url, data = got
        im, fmt, detail = _open_image(data)
        if im is None:
            yield QuarantineRecord(path=e.path, reason=fmt, detail=detail)
            continue
        w, h = im.size
        sha = hashlib.sha256(data).hexdigest()
        if sha in seen:
            yield QuarantineRecord(path=e.path, reason="duplicate", detail=f"same bytes as {seen[sha]}")
            continue
        labels = parse_labels(k, e.labels, params)
        seen[sha] = e.path
        src = e.labels.get("source")
        subj = e.labels.get("subject")
        yield ImageRecord(
            id=sha,
            path=e.path,
            uri=url,
            source=params.source if _is_missing(src) else str(src),
            subject=None if _is_missing(subj) else str(subj),
            width=w,
            height=h,
            format=fmt,
            n_bytes=len(data),
            conversion=detail,
            **labels,
        )


def run(p: Params) -> dict:
    """The ingest stage: every listed file becomes an ImageRecord or a QuarantineRecord."""
    k = knowledge.load()
    out = store.join(p.paths.ingest, "images.parquet"), store.join(p.paths.ingest, "quarantine.parquet")
    imgs, quar, skipped = [], [], []
    with store.writers((out[0], ImageRecord), (out[1], QuarantineRecord)) as (wi, wq):
        review, reviewed = read_review(p.paths.review), set()
        listed = itertools.chain(
            list_entries(p.paths.input, p.paths.manifest, p.ingest.extensions, skipped),
            inbox_entries(p.paths.inbox),
        )
        entries = with_review(listed, review, reviewed)
        every = p.runtime.progress_every_s
        for rec in track(ingest(entries, p.paths.input, k, p.ingest), "ingest", None, "files", every):
            (wi if isinstance(rec, ImageRecord) else wq).write(rec)
            (imgs if isinstance(rec, ImageRecord) else quar).append(rec.model_dump())
        frames = {
            "images": light_frame(imgs) if imgs else pd.DataFrame(columns=ImageRecord.columns()),
            "quarantine": light_frame(quar) if quar else pd.DataFrame(columns=QuarantineRecord.columns()),
            "au_codes": au_codes_frame(imgs, "prior_aus"),
        }
        val = validate("ingest", frames, p)
        wi.commit(), wq.commit()
    m = {
        "images": len(imgs),
        "quarantined": len(quar),
        "quarantine_reasons": dict(Counter(q["reason"] for q in quar)),
        # files whose extension is not in ingest.extensions: counted and listed (the first 50)
        "skipped_by_extension": len(skipped),
        "skipped_examples": skipped[:50],
        "with_prior_expression": sum(1 for r in imgs if r["prior_expression"]),
        # bad priors dropped one by one (the image stays), and images converted to 8-bit RGB
        "label_warnings": dict(Counter(w.split(":")[0] for r in imgs for w in r["label_warnings"])),
        "label_warning_examples": [f"{r['path']}: {w}" for r in imgs for w in r["label_warnings"]][:50],
        "converted": dict(Counter(c for r in imgs for c in r["conversion"].split("; ") if c)),
        "labels_from_review": sum(1 for r in imgs if r["label_origin"] == "review"),
        # review labels whose path is not among the listed files (renamed, or another input)
        "review_labels_unmatched": sorted(set(review) - reviewed)[:50],
        "validation": val,
    }
    write_metrics(p, "ingest", m)
    log().info(f"ingest: {len(imgs)} images, {len(quar)} quarantined {m['quarantine_reasons']}")
    return m
