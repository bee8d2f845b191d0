"""FEAB predictions: each image cropped like the crop stage, asked FEID's own requests,
sampled adaptively and decided by the verify stage's code; and FEID's labels against truth.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from tasks.core.knowledge import Knowledge, UnknownLabel
from tasks.core.params import Ingest as IngestParams
from tasks.core.params import Params
from tasks.tools.feab.metrics import _r
from tasks.tools.feab.split import read_split


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
        else detect_faces(
            im, min_score=crop.min_score, min_size=crop.min_size, max_side=crop.max_side, detector=crop.detector
        )
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


def _predicted(it: dict, f: dict, v) -> dict:
    return {
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


def _predict_batch(chunk: list[dict], p: Params, k: Knowledge, read, ann, cache, tally) -> tuple[list[dict], int]:
    """One batch of benchmark items through crop, prompt, sampling and decide: (rows, no-face count)."""
    from tasks.core.records import FaceRecord
    from tasks.method.decide import decide
    from tasks.method.pipeline import sample_batch
    from tasks.stages.prompt import requests_for

    faces, reqs, no_face = [], {}, 0
    for it in chunk:
        f = face_of(it, read(it["path"]), p.crop)
        no_face += f["detector"] == "none" and p.crop.detector != "none"
        faces.append(f)
        face = FaceRecord(**f)
        reqs[f["face_id"]] = [
            r.model_dump() for r in requests_for(k, face, p.prompt.version, p.prompt.knowledge, p.prompt.blind)
        ]
    by_face: dict[str, list[dict]] = {}
    for s in sample_batch(faces, reqs, ann, cache, p, k, tally):
        by_face.setdefault(s["face_id"], []).append(s)
    rows = [_predicted(it, f, decide(f, by_face.get(f["face_id"], []), k, p.verify)) for it, f in zip(chunk, faces)]
    return rows, no_face


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
    from tasks.infra.cache import ResponseCache
    from tasks.method.sampling import Tally

    read = read or (lambda path: Path(path).read_bytes())
    ann = annotator or annotators.build(p)
    cache = ResponseCache(p.runtime.cache, ann.signature_hash())
    tally = Tally()
    out: list[dict] = []
    no_face = 0
    try:
        for start in range(0, len(items), p.runtime.batch_size):
            rows, nf = _predict_batch(items[start : start + p.runtime.batch_size], p, k, read, ann, cache, tally)
            out += rows
            no_face += nf
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
