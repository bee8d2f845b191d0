"""The FEAB split: labelled sources read in place, FEID's images and people excluded, the
rest assigned to dev or test by a hash of (seed, subject): subject-disjoint and deterministic.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from pathlib import Path
from typing import Callable

from tasks.core.knowledge import Knowledge
from tasks.core.params import BenchSource
from tasks.core.params import Ingest as IngestParams

SPLIT_COLUMNS = [
    "path",
    "image_id",
    "source",
    "subject",
    "split",
    "expression",
    "label_set",
    "valence",
    "arousal",
    "aus",
    "au_set",
]


# =============================================================== split
def _subject(src: BenchSource, row: dict, path: str, sha: str) -> str:
    if src.subject_column and str(row.get(src.subject_column) or "").strip():
        return f"{src.name}_{str(row[src.subject_column]).strip()}"
    if src.subject_regex:
        m = re.search(src.subject_regex, Path(path).name)
        if m:
            return f"{src.name}_{m.group(1)}"
    return f"{src.name}_img{sha[:12]}"  # unknown identity: the image is its own subject


def _unit(seed: int, subject: str) -> float:
    return int.from_bytes(hashlib.sha256(f"{seed}|{subject}".encode()).digest()[:8], "big") / 2**64


def training_set(ingest_images: str | None = None, feid: str | None = None) -> tuple[set[str], set[str]]:
    """Image ids and subjects FEID was built from: every ingested image (a superset of the
    accepted ones) and the image ids of FEID's rows (`feid` = the FEID folder, whose
    top-level `*.parquet` are its rows)."""
    import pyarrow.parquet as pq

    ids, subjects = set(), set()
    if ingest_images and Path(ingest_images).exists():
        t = pq.read_table(ingest_images, columns=["id", "subject"])
        ids |= set(t["id"].to_pylist())
        subjects |= {s for s in t["subject"].to_pylist() if s}
    if feid and Path(feid).exists():
        files = [Path(feid)] if Path(feid).is_file() else sorted(Path(feid).glob("*.parquet"))
        for f in files:
            if f.name != "rejects.parquet":
                ids |= {fid.rsplit("_", 1)[0] for fid in pq.read_table(f, columns=["id"])["id"].to_pylist()}
    return ids, subjects


def _labels_of(src: BenchSource, r: dict) -> dict:
    """A labels-table row's priors, in the manifest's column names (for `parse_labels`)."""
    lab = {"expression": r.get(src.label_column), "label_scheme": src.label_scheme or None}
    if src.label_set:
        lab["label_set"] = ",".join(src.label_set)
    lab.update(
        {
            c: v
            for c, v in r.items()
            if c in ("valence", "arousal")
            or (c.upper().startswith("AU") and c.upper().removeprefix("AU").split("_")[0].isdigit())
        }
    )
    return lab


def _split_row(full: Path, sha: str, src: BenchSource, subject: str, split: str, parsed: dict) -> dict:
    return {
        "path": str(full),
        "image_id": sha,
        "source": src.name,
        "subject": subject,
        "split": split,
        "expression": parsed["prior_expression"] or "",
        "label_set": ",".join(parsed["label_set"]),
        "valence": "" if parsed["prior_valence"] is None else parsed["prior_valence"],
        "arousal": "" if parsed["prior_arousal"] is None else parsed["prior_arousal"],
        "aus": "" if parsed["prior_aus"] is None else ",".join(parsed["prior_aus"]),
        "au_set": ",".join(parsed["au_set"]),
    }


def _source_rows(src, k, exclude_ids, exclude_subjects, dev_fraction, seed, progress, seen, excluded):
    """The split rows of one source; what it excludes is counted in `excluded` (`why` keys)."""
    from tasks.stages.ingest import parse_labels

    labels_csv = Path(src.labels)
    if not labels_csv.exists():
        raise FileNotFoundError(
            f"bench source {src.name!r}: labels file {labels_csv} not found (bench.sources in params.yaml)"
        )
    root = Path(src.root) if src.root else labels_csv.parent
    with labels_csv.open(newline="") as fh:
        table = list(csv.DictReader(fh))
    ip = IngestParams(label_set=src.label_set or list(k.expressions), au_set=src.au_set)
    rows: list[dict] = []
    for i, r in enumerate(table):
        if progress:
            progress(src.name, i + 1, len(table))
        rel = r.get(src.path_column)
        if not rel:
            excluded[f"{src.name}:no_path"] += 1
            continue
        full = root / rel
        try:
            data = full.read_bytes()
        except OSError:
            excluded[f"{src.name}:missing_file"] += 1
            continue
        sha = hashlib.sha256(data).hexdigest()
        parsed = parse_labels(k, _labels_of(src, r), ip)
        if parsed["label_warnings"]:  # ingest keeps the image without the bad prior; a benchmark needs the truth
            excluded[f"{src.name}:bad_label"] += 1
            continue
        subject = _subject(src, r, rel, sha)
        why = (
            "image_in_feid"
            if sha in exclude_ids
            else "subject_in_feid"
            if subject in exclude_subjects
            else "duplicate"
            if sha in seen
            else None
        )
        if why:
            excluded[f"{src.name}:{why}"] += 1
            continue
        seen.add(sha)
        split = "dev" if _unit(seed, subject) < dev_fraction else "test"
        rows.append(_split_row(full, sha, src, subject, split, parsed))
    return rows, len(table)


def build_split(
    sources: list[BenchSource],
    k: Knowledge,
    exclude_ids: set[str],
    exclude_subjects: set[str],
    dev_fraction: float,
    seed: int,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[list[dict], dict]:
    """Rows of the split manifest (SPLIT_COLUMNS) and a summary with what was excluded and why."""
    rows: list[dict] = []
    excluded: Counter = Counter()
    seen: set[str] = set()
    summary: dict = {"sources": {}}
    for src in sources:
        got, n_table = _source_rows(src, k, exclude_ids, exclude_subjects, dev_fraction, seed, progress, seen, excluded)
        rows += got
        summary["sources"][src.name] = {
            "rows": n_table,
            **dict(Counter(r["split"] for r in got)),
            "subjects": len({x["subject"] for x in got}),
        }
    summary["excluded"] = dict(sorted(excluded.items()))
    summary["total"] = dict(Counter(r["split"] for r in rows))
    return rows, summary


def check_disjoint(
    rows: list[dict], exclude_ids: set[str] = frozenset(), exclude_subjects: set[str] = frozenset()
) -> None:
    """Raise if a subject is in two splits or anything overlaps FEID's training set."""
    where: dict[str, set[str]] = {}
    for r in rows:
        where.setdefault(r["subject"], set()).add(r["split"])
    both = [s for s, sp in where.items() if len(sp) > 1]
    if both:
        raise AssertionError(f"subjects in both splits: {both[:5]}")
    if bad := {r["image_id"] for r in rows} & set(exclude_ids):
        raise AssertionError(f"{len(bad)} benchmark images are FEID training images")
    if bad := {r["subject"] for r in rows} & set(exclude_subjects):
        raise AssertionError(f"{len(bad)} benchmark subjects are in FEID")


def write_split(path: str | Path, rows: list[dict]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=SPLIT_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def _split_list(s: str) -> list[str]:
    return [x for x in (s or "").split(",") if x]


def read_split(path: str | Path, which: str = "test", limit: int = 0) -> list[dict]:
    """Rows of a split manifest as ground-truth dicts; `limit` keeps a fixed, evenly spaced
    subset per source (the file is sorted by source, then as listed)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"benchmark split {p} not found: build it with `seke split`")
    with p.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if which == "all" or r["split"] == which]
    if limit:
        by: dict[str, list[dict]] = {}
        for r in rows:
            by.setdefault(r["source"], []).append(r)
        rows = []
        for src_rows in by.values():
            step = max(1.0, len(src_rows) / limit)
            rows += [src_rows[int(i * step)] for i in range(min(limit, len(src_rows)))]
    out = []
    for r in rows:
        out.append(
            {
                "id": r["image_id"],
                "path": r["path"],
                "source": r["source"],
                "subject": r["subject"],
                "split": r["split"],
                "truth_expression": r["expression"] or None,
                "label_set": _split_list(r["label_set"]),
                "truth_valence": float(r["valence"]) if r["valence"] else None,
                "truth_arousal": float(r["arousal"]) if r["arousal"] else None,
                "au_set": _split_list(r["au_set"]),
                "truth_aus": _split_list(r["aus"]) if r["au_set"] else None,
            }
        )
    return out
