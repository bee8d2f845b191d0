"""FEAB: the facial-emotion annotation benchmark, and annotation quality of a FEID version.

One metrics code path serves both (`evaluate`):

- expression: accuracy, macro-F1 and UAR (unweighted average recall) over the classes present
  in the ground truth, and the confusion matrix (a missing answer is its own column, `none`);
- AUs: F1 per AU over the items whose source annotates that AU (`au_set`); an AU a source does
  not annotate is *not annotated*, never *absent*, so those items do not count for it. The mean
  is over the AUs annotated anywhere (and per source, over that source's `au_set`);
- VA: CCC, RMSE and Pearson r, for valence and for arousal;
- a bootstrap interval for each (percentile, `bench.bootstrap` resamples, `bench.ci` level),
  resampling *subjects* rather than images, because images of one person are not independent.

Split (`build_split`): labelled sources are read in place; images whose bytes FEID ingested,
and every person FEID contains, are excluded; the remaining people are assigned to `dev` or
`test` by a hash of (seed, subject), so the split is subject-disjoint and deterministic.

Prediction (`predict`): each benchmark image is cropped like the crop stage (largest face;
the whole image if no face is found), asked with exactly the requests FEID asks of a face with
no prior labels (`tasks.stages.prompt.requests_for`), sampled with FEID's adaptive Monte Carlo
sampler and response cache, and aggregated by the verify stage's code (`tasks.stages.verify.decide`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from tasks.core.knowledge import AUS, EXPRESSIONS, Knowledge, UnknownLabel
from tasks.core.params import Bench, BenchSource, Params
from tasks.core.params import Ingest as IngestParams

NONE = "none"  # column of the confusion matrix for "no answer"
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


# =============================================================== metrics
@dataclass
class Items:
    """Ground truth and predictions, aligned. Missing values: None (expression), NaN (VA),
    `annotated` False (AUs)."""

    ids: list[str]
    sources: list[str]
    subjects: list[str]
    truth: list[str | None]
    pred: list[str | None]
    t_va: np.ndarray  # (n, 2) valence, arousal; NaN = no ground truth
    p_va: np.ndarray  # (n, 2); NaN = no prediction
    t_au: np.ndarray  # (n, 17) bool
    p_au: np.ndarray  # (n, 17) bool
    annotated: np.ndarray  # (n, 17) bool: the item's source annotates this AU
    au_answered: np.ndarray  # (n,) bool: the prediction includes an AU answer

    @classmethod
    def from_rows(cls, rows: list[dict]) -> "Items":
        n = len(rows)

        def va(r, pre):
            v, a = r.get(f"{pre}valence"), r.get(f"{pre}arousal")
            ok = v is not None and a is not None and not (isinstance(v, float) and math.isnan(v))
            return [float(v), float(a)] if ok else [math.nan, math.nan]

        t_au, p_au, ann = np.zeros((n, len(AUS)), bool), np.zeros((n, len(AUS)), bool), np.zeros((n, len(AUS)), bool)
        answered = np.zeros(n, bool)
        for i, r in enumerate(rows):
            au_set = set(r.get("au_set") or [])
            if r.get("truth_aus") is not None:
                for j, a in enumerate(AUS):
                    ann[i, j] = a in au_set
                    t_au[i, j] = a in set(r["truth_aus"])
            if r.get("pred_aus") is not None:
                answered[i] = True
                p_au[i] = [a in set(r["pred_aus"]) for a in AUS]
        return cls(
            ids=[r["id"] for r in rows],
            sources=[r.get("source") or "" for r in rows],
            subjects=[r.get("subject") or r["id"] for r in rows],
            truth=[r.get("truth_expression") or None for r in rows],
            pred=[r.get("pred_expression") or None for r in rows],
            t_va=np.array([va(r, "truth_") for r in rows], float).reshape(n, 2),
            p_va=np.array([va(r, "pred_") for r in rows], float).reshape(n, 2),
            t_au=t_au,
            p_au=p_au,
            annotated=ann,
            au_answered=answered,
        )


def confusion(
    truth: list[str | None], pred: list[str | None], labels: Iterable[str] = EXPRESSIONS
) -> tuple[np.ndarray, list[str], list[str]]:
    """Rows: ground truth classes; columns: predicted classes + `none`. Items with no truth are skipped."""
    rows = list(labels)
    cols = rows + [NONE]
    ci = {c: i for i, c in enumerate(cols)}
    cm = np.zeros((len(rows), len(cols)), int)
    for t, p in zip(truth, pred):
        if t is None:
            continue
        cm[ci[t], ci.get(p, ci[NONE]) if p else ci[NONE]] += 1
    return cm, rows, cols


def expression_scores(cm: np.ndarray) -> dict[str, float]:
    """accuracy, macro-F1 and UAR from a confusion matrix (rows truth, the last column `none`);
    F1 and recall are averaged over the classes present in the ground truth."""
    n = cm.sum()
    if n == 0:
        return {"accuracy": math.nan, "macro_f1": math.nan, "uar": math.nan}
    k = cm.shape[0]
    tp = np.diag(cm[:, :k]).astype(float)
    support = cm.sum(1)
    predicted = cm[:, :k].sum(0)
    present = support > 0
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros(k), where=(support + predicted) > 0)
    rec = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    return {"accuracy": float(tp.sum() / n), "macro_f1": float(f1[present].mean()), "uar": float(rec[present].mean())}


def macro_f1(truth: list[str | None], pred: list[str | None]) -> float:
    """Macro-F1 over the classes present in the ground truth (for scripts with label lists)."""
    return expression_scores(confusion(truth, pred)[0])["macro_f1"]


def au_f1(t: np.ndarray, p: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """F1 per AU over annotated items only; NaN where an AU has no annotated item or no positive at all."""
    tp = (t & p & annotated).sum(0).astype(float)
    fp = (~t & p & annotated).sum(0)
    fn = (t & ~p & annotated).sum(0)
    den = 2 * tp + fp + fn
    f = np.full(t.shape[1], math.nan)
    ok = (annotated.sum(0) > 0) & (den > 0)
    f[ok] = 2 * tp[ok] / den[ok]
    return f


def ccc(t: np.ndarray, p: np.ndarray) -> float:
    """Lin's concordance correlation coefficient (population moments)."""
    if len(t) < 2:
        return math.nan
    mt, mp = t.mean(), p.mean()
    vt, vp = t.var(), p.var()
    cov = ((t - mt) * (p - mp)).mean()
    den = vt + vp + (mt - mp) ** 2
    return float(2 * cov / den) if den > 0 else math.nan


def pearson(t: np.ndarray, p: np.ndarray) -> float:
    if len(t) < 2 or t.std() == 0 or p.std() == 0:
        return math.nan
    return float(np.corrcoef(t, p)[0, 1])


def rmse(t: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(np.mean((t - p) ** 2))) if len(t) else math.nan


def _scalars(it: Items, idx: np.ndarray, codes: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Every scalar metric on the items `idx` (possibly with repeats, for the bootstrap)."""
    t_code, p_code = codes
    k = len(EXPRESSIONS)
    sel = idx[t_code[idx] >= 0]
    cm = np.bincount(t_code[sel] * (k + 1) + p_code[sel], minlength=k * (k + 1)).reshape(k, k + 1)
    out = {f"expression.{m}": v for m, v in expression_scores(cm).items()} if len(sel) else {}
    # an item whose answer has no AUs predicted none: it is not excused from the AUs it is annotated for
    ann = it.annotated[idx]
    if ann.any():
        f = au_f1(it.t_au[idx], it.p_au[idx], ann)
        for a, v in zip(AUS, f):
            if it.annotated[:, AUS.index(a)].any():
                out[f"au.f1.{a}"] = float(v)
        annotated_aus = [j for j in range(len(AUS)) if it.annotated[:, j].any() and not math.isnan(f[j])]
        out["au.mean_f1"] = float(np.mean(f[annotated_aus])) if annotated_aus else math.nan
    for d, name in enumerate(("valence", "arousal")):
        ok = idx[~np.isnan(it.t_va[idx, d]) & ~np.isnan(it.p_va[idx, d])]
        if len(ok):
            t, p = it.t_va[ok, d], it.p_va[ok, d]
            out[f"va.{name}.ccc"], out[f"va.{name}.rmse"], out[f"va.{name}.pearson_r"] = (
                ccc(t, p),
                rmse(t, p),
                pearson(t, p),
            )
    return out


def _codes(it: Items) -> tuple[np.ndarray, np.ndarray]:
    ci = {c: i for i, c in enumerate(EXPRESSIONS)}
    t = np.array([ci[x] if x in ci else -1 for x in it.truth], int)
    p = np.array([ci.get(x, len(EXPRESSIONS)) if x else len(EXPRESSIONS) for x in it.pred], int)
    return t, p


def bootstrap(it: Items, n_boot: int, level: float, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile interval of every scalar metric, resampling subjects with replacement."""
    if n_boot <= 0 or not it.ids:
        return {}
    codes = _codes(it)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(it.subjects):
        groups.setdefault(s, []).append(i)
    clusters = [np.array(v) for v in groups.values()]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        pick = rng.integers(0, len(clusters), len(clusters))
        idx = np.concatenate([clusters[j] for j in pick])
        for key, v in _scalars(it, idx, codes).items():
            draws.setdefault(key, []).append(v)
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out = {}
    for key, vs in draws.items():
        a = np.array(vs, float)
        a = a[~np.isnan(a)]
        out[key] = (float(np.percentile(a, lo_q)), float(np.percentile(a, hi_q))) if len(a) else (math.nan, math.nan)
    return out


def _nest(flat: dict[str, dict]) -> dict:
    out: dict = {}
    for key, v in flat.items():
        d = out
        parts = key.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = v
    return out


def _r(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


def evaluate(rows: list[dict], n_boot: int = 1000, level: float = 0.95, seed: int = 0, by_source: bool = True) -> dict:
    """All FEAB metrics of aligned ground truth / prediction rows (see `Items.from_rows` for the
    keys). Each scalar is {"value", "lo", "hi"}; plus counts, the confusion matrix and, per
    source, the same metrics without intervals."""
    it = Items.from_rows(rows)
    codes = _codes(it)
    point = _scalars(it, np.arange(len(it.ids)), codes)
    ci = bootstrap(it, n_boot, level, seed)
    flat = {
        k: {"value": _r(v), "lo": _r(ci.get(k, (math.nan,))[0]), "hi": _r(ci.get(k, (math.nan, math.nan))[1])}
        for k, v in point.items()
    }
    out = _nest(flat)
    cm, rlabels, clabels = confusion(it.truth, it.pred)
    n_expr = int(sum(t is not None for t in it.truth))
    out.setdefault("expression", {}).update(
        n=n_expr,
        unanswered=int(sum(t is not None and p is None for t, p in zip(it.truth, it.pred))),
        classes=[c for c, s in zip(rlabels, cm.sum(1)) if s > 0],
    )
    out["confusion"] = {"rows": rlabels, "cols": clabels, "matrix": cm.tolist()}
    aus_annotated = [a for j, a in enumerate(AUS) if it.annotated[:, j].any()]
    out.setdefault("au", {}).update(
        n=int(it.annotated.any(1).sum()),
        unanswered=int((it.annotated.any(1) & ~it.au_answered).sum()),
        annotated=aus_annotated,
    )
    n_va = int((~np.isnan(it.t_va[:, 0]) & ~np.isnan(it.p_va[:, 0])).sum())
    out.setdefault("va", {}).update(n=n_va)
    out["n"] = len(it.ids)
    out["subjects"] = len(set(it.subjects))
    out["bootstrap"] = {"resamples": n_boot, "level": level, "unit": "subject", "seed": seed}
    if by_source and len(set(it.sources)) > 1:
        out["per_source"] = {}
        for s in sorted(set(it.sources)):
            sub = [r for r, src in zip(rows, it.sources) if src == s]
            m = evaluate(sub, 0, level, seed, by_source=False)
            aus = sorted({a for r in sub for a in (r.get("au_set") or [])})
            if aus:
                f = [m["au"]["f1"].get(a, {}).get("value") for a in aus]
                f = [x for x in f if x is not None]
                m["au"]["source_mean_f1"] = _r(float(np.mean(f))) if f else None
            out["per_source"][s] = {k: v for k, v in m.items() if k not in ("confusion", "bootstrap")}
    return out


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
    top-level `*.parquet` are the export stage's rows and the incremental parts)."""
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
    from tasks.stages.ingest import parse_labels

    rows: list[dict] = []
    excluded: Counter = Counter()
    seen: set[str] = set()
    summary: dict = {"sources": {}}
    for src in sources:
        labels_csv = Path(src.labels)
        if not labels_csv.exists():
            raise FileNotFoundError(
                f"bench source {src.name!r}: labels file {labels_csv} not found (bench.sources in params.yaml)"
            )
        root = Path(src.root) if src.root else labels_csv.parent
        with labels_csv.open(newline="") as fh:
            table = list(csv.DictReader(fh))
        ip = IngestParams(label_set=src.label_set or list(k.expressions), au_set=src.au_set)
        kept = Counter()
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
            try:
                parsed = parse_labels(k, lab, ip)
            except (UnknownLabel, ValueError):
                excluded[f"{src.name}:bad_label"] += 1
                continue
            subject = _subject(src, r, rel, sha)
            if sha in exclude_ids:
                excluded[f"{src.name}:image_in_feid"] += 1
                continue
            if subject in exclude_subjects:
                excluded[f"{src.name}:subject_in_feid"] += 1
                continue
            if sha in seen:
                excluded[f"{src.name}:duplicate"] += 1
                continue
            seen.add(sha)
            split = "dev" if _unit(seed, subject) < dev_fraction else "test"
            kept[split] += 1
            rows.append(
                {
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
            )
        summary["sources"][src.name] = {
            "rows": len(table),
            **dict(kept),
            "subjects": len({x["subject"] for x in rows if x["source"] == src.name}),
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


# =============================================================== prediction
def face_of(item: dict, data: bytes, crop) -> dict:
    """The FaceRecord (as a dict, no priors: the annotator is never shown the ground truth)
    of the benchmark image: its largest face, or the whole image when no face is found."""
    from tasks.core.records import FaceRecord
    from tasks.infra.detect import Box, decode, detect_faces, encode_crop, square_crop

    im = decode(data)
    boxes = (
        []
        if crop.detector == "none"
        else detect_faces(im, min_score=crop.min_score, min_size=crop.min_size, max_side=crop.max_side)
    )
    if boxes:
        box, margin, detector = boxes[0], crop.margin, crop.detector
    else:
        box, margin, detector = Box(0.0, 0.0, float(im.width), float(im.height), 1.0), 0.0, "none"
    c, frac = square_crop(im, box, margin, crop.crop_size)
    jpg = encode_crop(c)
    return FaceRecord(
        face_id=f"{item['id']}_0",
        image_id=item["id"],
        face_index=0,
        n_faces=max(1, len(boxes)),
        path=item["path"],
        source=item["source"],
        subject=item.get("subject"),
        box_x=box.x,
        box_y=box.y,
        box_w=box.w,
        box_h=box.h,
        score=box.score,
        detector=detector,
        crop=jpg,
        crop_sha256=hashlib.sha256(jpg).hexdigest(),
        crop_face_frac=frac,
        label_set=[],
        au_set=[],
    ).model_dump()


def predict(
    items: list[dict],
    p: Params,
    k: Knowledge,
    progress: Callable[[int, int], None] | None = None,
    read: Callable[[str], bytes] | None = None,
    annotator=None,
) -> tuple[list[dict], dict]:
    """Annotate the benchmark items like FEID annotates an unlabelled face. Returns the items
    with `pred_*` keys (and verify's verdict) added, and the sampling tally."""
    from tasks import annotators
    from tasks.core.records import FaceRecord
    from tasks.infra.cache import ResponseCache
    from tasks.stages.prompt import requests_for
    from tasks.stages.sample import Tally, sample_batch
    from tasks.stages.verify import decide

    read = read or (lambda path: Path(path).read_bytes())
    ann = annotator or annotators.build(p)
    cache = ResponseCache(p.runtime.cache, ann.signature_hash())
    tally = Tally()
    out: list[dict] = []
    no_face = 0
    try:
        for start in range(0, len(items), p.runtime.batch_size):
            chunk = items[start : start + p.runtime.batch_size]
            faces, reqs = [], {}
            for it in chunk:
                f = face_of(it, read(it["path"]), p.crop)
                no_face += f["detector"] == "none" and p.crop.detector != "none"
                faces.append(f)
                reqs[f["face_id"]] = [
                    r.model_dump()
                    for r in requests_for(k, FaceRecord(**f), p.prompt.version, p.prompt.knowledge, p.prompt.blind)
                ]
            by_face: dict[str, list[dict]] = {}
            for s in sample_batch(faces, reqs, ann, cache, p, k, tally):
                by_face.setdefault(s["face_id"], []).append(s)
            for it, f in zip(chunk, faces):
                v = decide(f, by_face.get(f["face_id"], []), k, p.verify)
                out.append(
                    {
                        **it,
                        "pred_expression": v.expression,
                        "pred_valence": v.valence,
                        "pred_arousal": v.arousal,
                        "pred_aus": v.aus,
                        "accepted": v.accepted,
                        "confidence": v.confidence,
                        "vote_share": v.vote_share,
                        "reasons": v.reasons,
                        "n_samples": v.n_samples,
                        "detector": f["detector"],
                    }
                )
            if progress:
                progress(len(out), len(items))
    finally:
        cache.close()
        if annotator is None:
            ann.close()
    info = {
        "annotator": ann.name,
        "annotator_version": ann.version,
        "model": ann.model,
        "calls": tally.calls,
        "cache_hits": tally.cached,
        "failed_samples": tally.failed,
        "cost_usd": round(tally.cost_usd, 6),
        "mean_k": round(float(np.mean(tally.per_face_k)), 3) if tally.per_face_k else 0,
        "no_face_whole_image": int(no_face),
    }
    return out, info


def selective(rows: list[dict]) -> dict:
    """Accuracy of the faces verify would accept, and their share (coverage)."""
    lab = [r for r in rows if r.get("truth_expression")]
    acc = [r for r in lab if r.get("accepted")]
    return {
        "coverage": _r(len(acc) / len(lab)) if lab else None,
        "accuracy_accepted": _r(sum(r["pred_expression"] == r["truth_expression"] for r in acc) / len(acc))
        if acc
        else None,
    }


# =============================================================== annotation quality
def quality_rows(verdicts: list[dict], truth: dict[str, dict]) -> list[dict]:
    """Align a FEID version's verdicts with held-out ground truth (keyed by image id). Only
    single-face images are used (a per-image label cannot say which face it is), and each
    granularity only where the label came from the annotator, not from a prior it was shown."""
    per_image = Counter(v["face_id"].rsplit("_", 1)[0] for v in verdicts)
    out = []
    for v in verdicts:
        img = v["face_id"].rsplit("_", 1)[0]
        t = truth.get(img)
        if t is None or per_image[img] != 1:
            continue
        ann_expr = v.get("expression_source") == "annotator"
        ann_va = v.get("va_source") == "annotator"
        ann_au = v.get("au_source") == "annotator"
        out.append(
            {
                "id": v["face_id"],
                "source": t.get("source"),
                "subject": t.get("subject"),
                "accepted": v["accepted"],
                "truth_expression": t.get("truth_expression") if ann_expr else None,
                "pred_expression": v.get("expression"),
                "truth_valence": t.get("truth_valence") if ann_va else None,
                "truth_arousal": t.get("truth_arousal") if ann_va else None,
                "pred_valence": v.get("valence"),
                "pred_arousal": v.get("arousal"),
                "au_set": t.get("au_set") if ann_au else [],
                "truth_aus": t.get("truth_aus") if ann_au else None,
                "pred_aus": v.get("aus"),
            }
        )
    return out


def truth_from_manifest(
    manifest: str | Path, root: str | Path | None, k: Knowledge, source: str = "truth"
) -> dict[str, dict]:
    """Ground truth keyed by image id (SHA-256 of the bytes) from an ingest-style manifest
    (`path`, `expression`, `valence`/`arousal`, `AUxx`, `subject`, `source`) or a split CSV."""
    from tasks.stages.ingest import parse_labels

    manifest = Path(manifest)
    root = Path(root) if root else manifest.parent
    with manifest.open(newline="") as fh:
        table = list(csv.DictReader(fh))
    if table and "image_id" in table[0] and "split" in table[0]:
        return {r["id"]: r for r in read_split(manifest, "all")}
    out = {}
    for r in table:
        try:
            data = (root / r["path"]).read_bytes()
        except OSError:
            continue
        try:
            lab = parse_labels(k, r, IngestParams())
        except (UnknownLabel, ValueError):
            continue
        sha = hashlib.sha256(data).hexdigest()
        out[sha] = {
            "id": sha,
            "source": r.get("source") or source,
            "subject": r.get("subject") or sha,
            "truth_expression": lab["prior_expression"],
            "truth_valence": lab["prior_valence"],
            "truth_arousal": lab["prior_arousal"],
            "au_set": lab["au_set"],
            "truth_aus": lab["prior_aus"],
        }
    return out


# =============================================================== outputs
def write_outputs(
    result: dict,
    rows: list[dict],
    *,
    metrics: str | Path,
    plots: str | Path,
    report: str | Path,
    title: str,
    meta: dict,
) -> dict[str, str]:
    """DVC metrics (JSON), DVC plots (CSV) + PNG figures, and a markdown report."""
    plots = Path(plots)
    plots.mkdir(parents=True, exist_ok=True)
    m = {k: v for k, v in result.items() if k != "confusion"}
    m["meta"] = {k: v for k, v in meta.items() if not isinstance(v, dict)}  # the rest goes to the report
    Path(metrics).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics).write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    # plots: one row per item for DVC's confusion template
    with (plots / "confusion.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["actual", "predicted"])
        for r in rows:
            if r.get("truth_expression"):
                w.writerow([r["truth_expression"], r.get("pred_expression") or NONE])
    f1 = result.get("au", {}).get("f1", {})
    with (plots / "au_f1.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["au", "f1", "lo", "hi"])
        for a in AUS:
            if a in f1 and f1[a]["value"] is not None:
                w.writerow([a, f1[a]["value"], f1[a]["lo"], f1[a]["hi"]])
    with (plots / "va.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dimension", "truth", "predicted"])
        for r in rows:
            for d in ("valence", "arousal"):
                t, pr = r.get(f"truth_{d}"), r.get(f"pred_{d}")
                if t is not None and pr is not None:
                    w.writerow([d, t, pr])
    figs = _figures(result, rows, plots)
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text(markdown(result, title, meta, figs, Path(report).parent))
    return {"metrics": str(metrics), "plots": str(plots), "report": str(report)}


def _figures(result: dict, rows: list[dict], d: Path) -> dict[str, Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # figures are optional; the CSV plots are the DVC ones
        return {}
    figs = {}
    c = result["confusion"]
    keep = [i for i, s in enumerate(np.array(c["matrix"]).sum(1)) if s > 0]
    if keep:
        mat = np.array(c["matrix"])[keep]
        fig, ax = plt.subplots(figsize=(7, 0.5 * len(keep) + 2))
        ax.imshow(mat / np.clip(mat.sum(1, keepdims=True), 1, None), cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(c["cols"])), c["cols"], rotation=45, ha="right")
        ax.set_yticks(range(len(keep)), [c["rows"][i] for i in keep])
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("ground truth")
        fig.tight_layout()
        figs["confusion"] = d / "confusion.png"
        fig.savefig(figs["confusion"], dpi=100)
        plt.close(fig)
    f1 = {a: v["value"] for a, v in result.get("au", {}).get("f1", {}).items() if v["value"] is not None}
    if f1:
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(f1) + 1.5))
        ax.barh(list(f1), list(f1.values()))
        ax.set_xlim(0, 1)
        ax.set_xlabel("F1")
        fig.tight_layout()
        figs["au_f1"] = d / "au_f1.png"
        fig.savefig(figs["au_f1"], dpi=100)
        plt.close(fig)
    pts = {
        dim: [
            (r[f"truth_{dim}"], r[f"pred_{dim}"])
            for r in rows
            if r.get(f"truth_{dim}") is not None and r.get(f"pred_{dim}") is not None
        ]
        for dim in ("valence", "arousal")
    }
    if any(pts.values()):
        fig, axes = plt.subplots(1, 2, figsize=(8, 4))
        for ax, (dim, xy) in zip(axes, pts.items()):
            if xy:
                a = np.array(xy)
                ax.scatter(a[:, 0], a[:, 1], s=8, alpha=0.6)
            ax.plot([-1, 1], [-1, 1], "k--", lw=0.8)
            ax.set(xlim=(-1, 1), ylim=(-1, 1), xlabel=f"true {dim}", ylabel=f"predicted {dim}")
        fig.tight_layout()
        figs["va"] = d / "va.png"
        fig.savefig(figs["va"], dpi=100)
        plt.close(fig)
    return figs


def _fmt(v: dict | None) -> str:
    if not v or v.get("value") is None:
        return "n/a"
    s = f"{v['value']:.3f}"
    if v.get("lo") is not None and v.get("hi") is not None:
        s += f" [{v['lo']:.3f}, {v['hi']:.3f}]"
    return s


def markdown(result: dict, title: str, meta: dict, figs: dict[str, Path], base: Path) -> str:
    import os

    e, au, va = result.get("expression", {}), result.get("au", {}), result.get("va", {})
    level = int(round(result["bootstrap"]["level"] * 100))
    L = [f"# {title}", ""]
    L += [f"- {k}: `{v}`" for k, v in meta.items() if not isinstance(v, dict)]
    L += [
        f"- items: {result['n']} ({result['subjects']} subjects); bootstrap {result['bootstrap']['resamples']} "
        f"resamples of subjects, {level}% percentile intervals",
        "",
    ]
    L += [
        "## Expression",
        "",
        f"n = {e.get('n', 0)} (unanswered {e.get('unanswered', 0)}); classes in the ground "
        f"truth: {', '.join(e.get('classes', [])) or 'none'}",
        "",
        "| metric | value [CI] |",
        "|---|---|",
    ]
    L += [f"| {m} | {_fmt(e.get(m))} |" for m in ("accuracy", "macro_f1", "uar")]
    c = result["confusion"]
    keep = [i for i, row in enumerate(c["matrix"]) if sum(row) > 0]
    if keep:
        L += [
            "",
            "Confusion matrix (rows: ground truth, columns: predicted):",
            "",
            "| | " + " | ".join(c["cols"]) + " |",
            "|---" * (len(c["cols"]) + 1) + "|",
        ]
        L += [f"| **{c['rows'][i]}** | " + " | ".join(str(x) for x in c["matrix"][i]) + " |" for i in keep]
    L += ["", "## Action units", ""]
    if au.get("annotated"):
        L += [
            f"n = {au.get('n', 0)}; annotated AUs: {', '.join(au['annotated'])}. Only items whose source "
            "annotates an AU count for it (not annotated is never read as absent).",
            "",
            f"Mean F1: {_fmt(au.get('mean_f1'))}",
            "",
            "| AU | F1 [CI] |",
            "|---|---|",
        ]
        L += [f"| {a} | {_fmt(au.get('f1', {}).get(a))} |" for a in au["annotated"]]
    else:
        L += ["No source in this set annotates action units: no AU metrics."]
    L += ["", "## Valence / arousal", ""]
    if va.get("n"):
        L += [f"n = {va['n']}", "", "| | CCC | RMSE | Pearson r |", "|---|---|---|---|"]
        L += [
            f"| {d} | " + " | ".join(_fmt(va.get(d, {}).get(m)) for m in ("ccc", "rmse", "pearson_r")) + " |"
            for d in ("valence", "arousal")
        ]
    else:
        L += ["No valence/arousal ground truth in this set: no VA metrics."]
    sel = result.get("selective")
    if sel and sel.get("coverage") is not None:
        L += [
            "",
            f"Selective: verify would accept {sel['coverage']:.3f} of the faces; expression accuracy on "
            f"those {sel['accuracy_accepted'] if sel['accuracy_accepted'] is not None else 'n/a'}.",
        ]
    if "per_source" in result:
        L += [
            "",
            "## Per source",
            "",
            "| source | n | accuracy | macro-F1 | UAR | AU mean F1 | valence CCC | arousal CCC |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s, m in result["per_source"].items():

            def g(*ks, m=m):
                return _fmt(_get(m, ks))

            L.append(
                f"| {s} | {m['n']} | {g('expression', 'accuracy')} | {g('expression', 'macro_f1')} | "
                f"{g('expression', 'uar')} | {g('au', 'mean_f1')} | {g('va', 'valence', 'ccc')} | "
                f"{g('va', 'arousal', 'ccc')} |"
            )
    for k, v in meta.items():
        if isinstance(v, dict):
            L += ["", f"## {k}", "", "```json", json.dumps(v, indent=2, sort_keys=True), "```"]
    if figs:
        L += ["", "## Figures", ""]
        L += [f"![{name}]({os.path.relpath(p, base)})" for name, p in figs.items()]
    return "\n".join(L) + "\n"


def _get(d: dict, keys: tuple) -> dict | None:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


__all__ = [
    "Bench",
    "evaluate",
    "build_split",
    "read_split",
    "predict",
    "quality_rows",
    "truth_from_manifest",
    "write_outputs",
    "confusion",
    "ccc",
]
