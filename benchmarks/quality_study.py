"""Quality study: one sample vs. fixed-K majority (K = 5, 10) vs. SV-UAMC, against ground truth.

Real face images from ../shared/data (london, muxspace, namba; yuface crop, largest face)
go through the project's own code: tasks.stages.prompt -> tasks.method.sampling.sample_batch (adaptive
sampling + verification round, response cache) -> tasks.method.evidence.measure/decide. Only the
annotator differs:

  --annotator sim    the simulated VLLM (simvllm.server) over HTTP on 127.0.0.1 through the
                     OpenAI-compatible annotator. Ground truth = the datasets' labels; VA =
                     the label's centroid + noise; AUs = the label's prototype with dropouts and
                     extras (seeded). Single-sample accuracy ~0.7, per-face difficulty, a fixed
                     distractor per face that most wrong answers name, AU/VA following partly
                     the stated label. A share of faces (--au-prior-share) carries DISFA-style
                     AU priors (12 AUs), so priors are used where they exist.
  --annotator local  the local annotator (fer + facex + MediaPipe AUs). Ground truth =
                     the datasets' labels; it has no VA/AU truth, so those columns are empty.

SV-UAMC's confidence is calibrated by 2-fold person-disjoint cross-fitting: a logistic
(Platt) model over the evidence features of tasks.method.uamc is fit on one half of the people and
applied to the other, so every reported confidence comes from a model that never saw that
face's person. --write-calibration also fits it on all faces and writes the JSON that
`verify.calibration` reads.

"calls" = model answers (completions; each is billed output), "image sends" = HTTP requests
(each carries the image and is billed input; a call with n answers is one send up to
annotator.max_n). Prints one table and writes --json.

    .venv/bin/python benchmarks/quality_study.py --annotator sim
    .venv/bin/python benchmarks/quality_study.py --annotator local
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import pickle
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.annotators.base import Annotator  # noqa: E402
from tasks.core.calls import WAIT, Call, CallResult  # noqa: E402
from tasks.core.knowledge import AUS  # noqa: E402
from tasks.core.knowledge import load as load_knowledge
from tasks.core.params import Params  # noqa: E402
from tasks.core.records import FaceRecord, ImageRecord  # noqa: E402
from tasks.infra.cache import ResponseCache  # noqa: E402
from tasks.method import guarantee, trust, uamc
from tasks.method.decide import calibration_row, decide
from tasks.method.evidence import VERIFY_VARIANTS, measure
from tasks.method.pipeline import sample_batch  # noqa: E402
from tasks.method.sampling import Tally  # noqa: E402
from tasks.stages.crop import crop_image  # noqa: E402
from tasks.stages.prompt import requests_for  # noqa: E402
from tasks.tools.feab import ccc as bench_ccc  # noqa: E402
from tasks.tools.feab import macro_f1

DATA = ROOT.parent / "shared" / "data"
SETS = ("london", "muxspace", "namba")
DISFA_AUS = ["AU01", "AU02", "AU04", "AU05", "AU06", "AU09", "AU12", "AU15", "AU17", "AU20", "AU25", "AU26"]
COVERAGES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


# ------------------------------------------------------------------ faces
def person_of(name: str, row: dict) -> str:
    if name == "london":
        return f"london_{row['face_id']}"
    if name == "namba":
        return f"namba_{row['subject']}"
    stem = Path(row["path"]).stem
    parts = stem.rsplit("_", 1)
    return f"mux_{parts[0] if len(parts) == 2 and parts[1].isdigit() else stem}"


def load_faces(sets: Iterable[str], cache_dir: Path) -> list[dict]:
    """FaceRecord dicts (largest face per image, yuface, default crop params) + truth label."""
    from tasks.core.params import Crop

    k = load_knowledge()
    out = []
    for name in sets:
        f = cache_dir / f"faces_{name}.pkl"
        if f.exists():
            out += pickle.loads(f.read_bytes())
            continue
        faces = []
        for row in csv.DictReader(open(DATA / name / "labels.csv", newline="")):
            data = (DATA / name / row["path"]).read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            img = ImageRecord(
                id=sha,
                path=f"{name}/{row['path']}",
                uri=str(DATA / name / row["path"]),
                source=name,
                subject=person_of(name, row),
                width=0,
                height=0,
                format="",
                n_bytes=len(data),
                label_set=[],
                au_set=[],
            )
            st, fr = crop_image(img, data, Crop(faces="largest"))
            if not fr:
                continue
            d = fr[0].model_dump()
            d["truth"] = k.expression(row["label"])
            faces.append(d)
        cache_dir.mkdir(parents=True, exist_ok=True)
        f.write_bytes(pickle.dumps(faces))
        out += faces
    return out


def sim_truth(faces: list[dict], au_prior_share: float, seed: int):
    """Ground truth for the simulator (VA, AUs) and the AU priors of a share of the faces."""
    from simvllm.server import Truth

    k = load_knowledge()
    truth = {}
    for f in faces:
        r = random.Random(f"truth|{seed}|{f['crop_sha256']}")
        e = f["truth"]
        cv, ca, s = k.va_centroid(e)
        core, often = k.prototype(e)
        aus = (
            {a for a in core if r.random() < 0.8}
            | {a for a in often if r.random() < 0.5}
            | {a for a in k.aus if r.random() < 0.03}
        )
        t = Truth(e, max(-1, min(1, cv + r.gauss(0, s / 2))), max(-1, min(1, ca + r.gauss(0, s / 2))), sorted(aus))
        truth[f["crop_sha256"]] = t
        f["truth_va"] = (t.valence, t.arousal)
        f["truth_aus"] = t.aus
        pr = random.Random(f"prior|{seed}|{f['subject']}")
        if pr.random() < au_prior_share:
            f["au_set"] = list(DISFA_AUS)
            f["prior_aus"] = [a for a in t.aus if a in DISFA_AUS]
            f["source"] = "disfa-like"
    return truth


# ------------------------------------------------------------------ counting annotator
class Counting(Annotator):
    """Wraps an annotator: counts what a strategy would send (answers, calls, image sends)
    and memoises answers across strategies, so shared draws (same request, index, seed) are
    computed once but counted for each strategy that uses them."""

    def __init__(self, inner: Annotator, memo: dict, max_n: int):
        self.inner, self.memo, self.max_n = inner, memo, max_n
        self.name, self.version, self.model = inner.name, inner.version, inner.model
        self.supports_verification = getattr(inner, "supports_verification", inner.name == "openai")
        self.answers = self.calls = self.image_sends = self.verify_calls = 0

    def signature(self) -> dict:
        return self.inner.signature()

    def _count(self, calls: Iterable[Call]) -> Iterator[Call]:
        for c in calls:
            if c is not WAIT:  # a pipelined feed's "no call ready yet" passes through uncounted
                self.calls += 1
                self.answers += len(c.indices)
                self.image_sends += math.ceil(len(c.indices) / self.max_n)
                self.verify_calls += c.ask == ("verify",)
            yield c

    def run(self, calls: Iterable[Call]) -> Iterator[CallResult]:
        if self.inner.name != "local":  # concurrent, and its draws are not shared: stream through
            yield from self.inner.run(self._count(calls))
            return
        for c in self._count(calls):  # synchronous: one call at a time, memoised across strategies
            keys = [(c.request_id, i, s) for i, s in zip(c.indices, c.seeds)]
            if all(key in self.memo for key in keys):
                yield CallResult(call=c, answers=[self.memo[key] for key in keys])
                continue
            for res in self.inner.run([c]):
                for a in res.answers:
                    self.memo[(res.call.request_id, a.index, a.seed)] = a
                yield res


# ------------------------------------------------------------------ metrics
def ccc(x: list[float], y: list[float]) -> float:
    return bench_ccc(np.asarray(x, float), np.asarray(y, float))


def au_f1(rows: list[dict]) -> float:
    tp = fp = fn = 0
    for r in rows:
        if r.get("au_source") != "annotator" or r.get("truth_aus") is None:
            continue
        pred, true = set(r["aus"] or []), set(r["truth_aus"])
        known = set(AUS) - set(r.get("au_set") or [])
        tp += len(pred & true & known)
        fp += len((pred - true) & known)
        fn += len((true - pred) & known)
    return 2 * tp / (2 * tp + fp + fn) if tp else float("nan")


def risk_coverage(conf: list[float], correct: list[bool]) -> list[tuple[float, float]]:
    """Accuracy of the top-c by confidence for every c = i/n, ties broken in expectation."""
    n = len(conf)
    order = sorted(range(n), key=lambda i: -conf[i])
    groups: list[tuple[int, int]] = []  # (size, n correct) per tie group, best first
    i = 0
    while i < n:
        j = i
        while j < n and conf[order[j]] == conf[order[i]]:
            j += 1
        groups.append((j - i, sum(correct[order[m]] for m in range(i, j))))
        i = j
    pts, taken, right = [], 0, 0.0
    for size, good in groups:
        for m in range(1, size + 1):
            pts.append(((taken + m) / n, (right + good * m / size) / (taken + m)))
        taken += size
        right += good
    return pts


def acc_at(pts: list[tuple[float, float]], cov: float) -> float:
    i = max(0, min(len(pts) - 1, math.ceil(cov * len(pts)) - 1))
    return pts[i][1]


def ece(conf: list[float], correct: list[bool], bins: int = 15) -> float:
    conf_a, corr_a = np.asarray(conf), np.asarray(correct, dtype=float)
    idx = np.minimum((conf_a * bins).astype(int), bins - 1)
    return float(
        sum(
            abs(conf_a[idx == b].mean() - corr_a[idx == b].mean()) * (idx == b).sum()
            for b in range(bins)
            if (idx == b).any()
        )
        / len(conf_a)
    )


# ------------------------------------------------------------------ calibration
def fit_platt(X: np.ndarray, y: np.ndarray) -> uamc.Calibrator:
    """The pipeline's own fit (tasks.method.trust.fit_platt), over all evidence features."""
    return trust.fit_platt(X, y)


def features_of(rows: list[dict]) -> np.ndarray:
    return np.array([[r["features"][n] for n in uamc.FEATURES] for r in rows])


def crossfit(rows: list[dict], seed: int) -> None:
    """Out-of-fold calibrated confidence for every row (2 folds by person)."""
    people = sorted({r["subject"] for r in rows})
    random.Random(seed).shuffle(people)
    fold = {p: i % 2 for i, p in enumerate(people)}
    for f in (0, 1):
        train = [r for r in rows if fold[r["subject"]] != f]
        test = [r for r in rows if fold[r["subject"]] == f]
        cal = fit_platt(features_of(train), np.array([r["correct"] for r in train], dtype=float))
        for r in test:
            r["confidence"] = cal(r["features"])


# ------------------------------------------------------------------ one strategy
def run_strategy(
    name: str, over: dict, faces: list[dict], ann: Annotator, memo: dict, base: Params, max_n: int, workdir: Path
) -> tuple[list[dict], dict]:
    k = load_knowledge()
    p = base.model_copy(
        update={
            "sample": base.sample.model_copy(update=over.get("sample", {})),
            "prompt": base.prompt.model_copy(update=over.get("prompt", {})),
            "verify": base.verify.model_copy(update=over.get("verify", {})),
        }
    )
    counting = Counting(ann, memo, max_n)
    cache = ResponseCache(str(workdir / f"cache-{name}"), counting.signature_hash())
    tally = Tally()
    t0 = time.perf_counter()
    reqs = {}
    for f in faces:
        fr = FaceRecord(**{c: f[c] for c in FaceRecord.columns()})
        reqs[f["face_id"]] = [
            r.model_dump() for r in requests_for(k, fr, p.prompt.version, p.prompt.knowledge, p.prompt.blind)
        ]
    samples: dict[str, list[dict]] = {f["face_id"]: [] for f in faces}
    for i in range(0, len(faces), 64):
        batch = faces[i : i + 64]
        for s in sample_batch(batch, {f["face_id"]: reqs[f["face_id"]] for f in batch}, counting, cache, p, k, tally):
            samples[s["face_id"]].append(s)
    cache.close()
    rows = []
    for f in faces:
        sm = samples[f["face_id"]]
        v = decide(f, sm, k, p.verify)
        st = measure(f, sm, k)
        feats = uamc.features(st.evidence(), p.verify.use_consistency, p.verify.use_verification, p.verify.use_priors)
        rows.append(
            {
                **{c: f[c] for c in ("face_id", "subject", "source", "truth", "au_set")},
                "truth_va": f.get("truth_va"),
                "truth_aus": f.get("truth_aus"),
                "expression": v.expression,
                "correct": v.expression == f["truth"],
                "vote_share": v.vote_share,
                "valence": v.valence,
                "arousal": v.arousal,
                "aus": v.aus,
                "au_source": v.au_source,
                "hard_reasons": [r for r in v.reasons if r not in ("low_confidence", "failed_verification")],
                "verified": st.verified,
                "n_gen": st.n_votes,
                "features": feats,
                "raw_confidence": v.confidence,
                "n_samples": sum(1 for x in sm if x["variant"] not in VERIFY_VARIANTS),
            }
        )
    cost = {
        "answers_per_face": counting.answers / len(faces),
        "calls_per_face": counting.calls / len(faces),
        "image_sends_per_face": counting.image_sends / len(faces),
        "verify_calls_per_face": counting.verify_calls / len(faces),
        "seconds": time.perf_counter() - t0,
        "samples": samples,
        "params": p,
    }
    return rows, cost


def summarise(name: str, rows: list[dict], cost: dict, kind: str, min_conf: float) -> dict:
    if kind == "single":
        conf = [1.0] * len(rows)
    elif kind == "vote":
        conf = [r["vote_share"] or 0.0 for r in rows]
    else:
        conf = [r["confidence"] for r in rows]
    correct = [r["correct"] for r in rows]
    pts = risk_coverage(conf, correct)
    if kind == "svuamc":
        acc_rows = [r for r, c in zip(rows, conf) if c >= min_conf and not r["hard_reasons"]]
    else:
        acc_rows = rows
    va = [r for r in acc_rows if r["truth_va"] is not None and r["valence"] is not None]
    out = {
        "strategy": name,
        "n": len(rows),
        "coverage": len(acc_rows) / len(rows),
        "accuracy": float(np.mean([r["correct"] for r in acc_rows])) if acc_rows else float("nan"),
        "macro_f1": macro_f1([r["truth"] for r in acc_rows], [r["expression"] or "" for r in acc_rows]),
        "au_f1": au_f1(acc_rows),
        "va_ccc": float(
            np.mean(
                [
                    ccc([r["valence"] for r in va], [r["truth_va"][0] for r in va]),
                    ccc([r["arousal"] for r in va], [r["truth_va"][1] for r in va]),
                ]
            )
        )
        if va
        else float("nan"),
        "accuracy_all": float(np.mean(correct)),
        "acc_at": {f"{c:.1f}": acc_at(pts, c) for c in COVERAGES},
        "aurc": float(np.mean([1 - a for _, a in pts])),
        "ece": ece(conf, correct) if kind != "single" else float("nan"),
        "ece_accepted": ece([c for r, c in zip(rows, conf) if r in acc_rows], [r["correct"] for r in acc_rows])
        if kind == "svuamc" and acc_rows
        else float("nan"),
        "mean_k": float(np.mean([r["n_samples"] for r in rows])),
        # the pipeline's own confidence (params' verify.calibration, "" = uamc.DEFAULT), not cross-fit
        **(
            {
                "params_confidence": {
                    "ece": ece([r["raw_confidence"] for r in rows], correct),
                    "coverage": float(
                        np.mean([r["raw_confidence"] >= min_conf and not r["hard_reasons"] for r in rows])
                    ),
                    "accuracy": float(
                        np.mean(
                            [r["correct"] for r in rows if r["raw_confidence"] >= min_conf and not r["hard_reasons"]]
                            or [float("nan")]
                        )
                    ),
                }
            }
            if kind == "svuamc"
            else {}
        ),
        "verified_share": float(np.mean([r["verified"] is not None for r in rows])),
        **cost,
        "risk_coverage": [(round(c, 4), round(a, 4)) for c, a in pts[:: max(1, len(pts) // 50)]],
    }
    return out


# ------------------------------------------------------------------ self-calibrated mode
def label_share(faces: list[dict], share: float, seed: int) -> list[dict]:
    """Copies of the faces where a random `share` of the people carry their true expression
    as a prior (the run's labelled faces); the rest are unlabelled."""
    people = sorted({f["subject"] for f in faces})
    random.Random(f"labelled|{seed}").shuffle(people)
    n_of = Counter(f["subject"] for f in faces)
    chosen: set[str] = set()
    for person in people:  # whole people, until `share` of the faces are labelled
        if sum(n_of[c] for c in chosen) >= share * len(faces):
            break
        chosen.add(person)
    return [{**f, "prior_expression": f["truth"] if f["subject"] in chosen else None} for f in faces]


def au_f1_kept(verdicts: list, faces: dict) -> float:
    """AU F1 over the generated AUs FEID keeps (withheld ones left out)."""
    tp = fp = fn = 0
    for v in verdicts:
        f = faces[v.face_id]
        if v.au_source != "annotator" or f.get("truth_aus") is None:
            continue
        known = set(AUS) - set(f.get("au_set") or []) - set(v.au_withheld)
        pred, true = set(v.aus or []) & known, set(f["truth_aus"]) & known
        tp, fp, fn = tp + len(pred & true), fp + len(pred - true), fn + len(true - pred)
    return 2 * tp / (2 * tp + fp + fn) if tp else float("nan")


def va_ccc_kept(verdicts: list, faces: dict) -> float:
    va = [
        (v.valence, v.arousal, faces[v.face_id]["truth_va"])
        for v in verdicts
        if v.va_source == "annotator" and faces[v.face_id].get("truth_va") is not None
    ]
    if len(va) < 3:
        return float("nan")
    return float(
        np.mean(
            [ccc([a for a, _, _ in va], [t[0] for _, _, t in va]), ccc([b for _, b, _ in va], [t[1] for _, _, t in va])]
        )
    )


def self_calibrated(
    share: float,
    faces: list[dict],
    ann: Annotator,
    memo: dict,
    base: Params,
    over: dict,
    max_n: int,
    workdir: Path,
    seed: int,
    k10_rows: list[dict] | None,
    scores_out: Path | None = None,
) -> dict:
    """The pipeline as a user runs it: `share` of the people labelled, no calibration file,
    verify.target_error; measured on the unlabelled faces only."""
    k = load_knowledge()
    over = {**over, "verify": {**over.get("verify", {}), "calibration": ""}}
    fs = label_share(faces, share, seed)
    rows, cost = run_strategy(f"self-{share}", over, fs, ann, memo, base, max_n, workdir)
    samples, p = cost.pop("samples"), cost.pop("params")
    by = {f["face_id"]: f for f in fs}
    cal = [
        r
        for r in (
            calibration_row(f, samples[f["face_id"]], k, p.verify, SECOND.get(f["face_id"]))
            for f in fs
            if f["prior_expression"]
        )
        if r is not None
    ]
    tr = trust.build(cal, p.verify, "openai")
    whole_v = p.verify.model_copy(update={"per_granularity": False})
    per = [decide(f, samples[f["face_id"]], k, p.verify, tr, SECOND.get(f["face_id"])) for f in fs]
    whole = [decide(f, samples[f["face_id"]], k, whole_v, tr, SECOND.get(f["face_id"])) for f in fs]
    unl = [v for v in per if not by[v.face_id]["prior_expression"]]
    if scores_out:
        write_scores(scores_out, share, tr, unl, by)
    acc = [v for v in unl if v.expression_status == "accepted"]
    right = [v.expression == by[v.face_id]["truth"] for v in acc]
    gen = [v for v in unl if v.expression_confidence is not None]
    answers = {f["face_id"]: len(samples[f["face_id"]]) for f in fs}
    unl_ids = [v.face_id for v in unl]
    out = {
        "labelled_share": share,
        "faces": len(fs),
        "labelled_faces": len(fs) - len(unl),
        "unlabelled_faces": len(unl),
        "calibration": dict(tr.report),
        "coverage": len(acc) / len(unl),
        "error": 1 - float(np.mean(right)) if acc else float("nan"),
        "accuracy": float(np.mean(right)) if acc else float("nan"),
        "ece_feid": trust.ece([v.expression_confidence for v in acc], right),
        "ece_generated": trust.ece(
            [v.expression_confidence for v in gen], [v.expression == by[v.face_id]["truth"] for v in gen]
        ),
        "mean_confidence_feid": float(np.mean([v.expression_confidence for v in acc])) if acc else float("nan"),
        "answers_per_face": float(np.mean(list(answers.values()))),
        "answers_per_unlabelled_face": float(np.mean([answers[i] for i in unl_ids])),
        "image_sends_per_face": cost["image_sends_per_face"],
        "seconds": cost["seconds"],
    }
    pts_sv = risk_coverage(
        [v.expression_confidence or 0.0 for v in unl], [v.expression == by[v.face_id]["truth"] for v in unl]
    )
    out["ranking_acc_at"] = {f"{c:.1f}": acc_at(pts_sv, c) for c in COVERAGES}
    if k10_rows is not None:
        un = [r for r in k10_rows if not by[r["face_id"]]["prior_expression"]]
        pts = risk_coverage([r["vote_share"] or 0 for r in un], [r["correct"] for r in un])
        out["k10_accuracy_at_same_coverage"] = acc_at(pts, out["coverage"])
        out["k10_acc_at"] = {f"{c:.1f}": acc_at(pts, c) for c in COVERAGES}
    out["fdr"] = fdr_run(fs, samples, k, p.verify, tr, by)
    # each evidence source off in turn: at 30% labelled only (the issue's setting; each costs a refit)
    out["evidence_ablations"] = evidence_ablations(fs, samples, k, p.verify, cal, by) if share == 0.3 else {}
    # per-granularity vs. whole-face acceptance, on the unlabelled faces
    wu = [v for v in whole if not by[v.face_id]["prior_expression"]]
    pk = [v for v in unl if v.expression_status in ("prior", "accepted")]
    wk = [v for v in wu if v.accepted]
    out["granularity"] = {
        "per_granularity": {
            "expression_kept": len(pk) / len(unl),
            # the per-granularity ranking cut at the whole-face rule's coverage
            "expression_accuracy_at_whole_face_coverage": acc_at(pts_sv, len(wk) / len(wu)) if wk else None,
            "expression_accuracy": float(np.mean([v.expression == by[v.face_id]["truth"] for v in pk])) if pk else None,
            "va_kept": float(np.mean([v.va_status == "accepted" for v in unl])),
            "va_ccc": va_ccc_kept([v for v in unl if v.va_status == "accepted"], by),
            "au_f1": au_f1_kept([v for v in unl if v.au_status in ("accepted", "partial")], by),
            "au_kept_share": float(np.mean([1 - len(v.au_withheld) / len(AUS) for v in pk])) if pk else None,
        },
        "whole_face": {
            "expression_kept": len(wk) / len(wu),
            "expression_accuracy": float(np.mean([v.expression == by[v.face_id]["truth"] for v in wk])) if wk else None,
            "va_kept": len(wk) / len(wu),
            "va_ccc": va_ccc_kept(wk, by),
            "au_f1": au_f1_kept([v.model_copy(update={"au_withheld": []}) for v in wk], by),
        },
    }
    return out


def write_scores(path: Path, share: float, tr, unl: list, by: dict) -> None:
    """The run's out-of-fold calibration scores (is each right, is it gated) and its unlabelled
    faces' confidences (is each right, could a threshold accept it): what
    `benchmarks/ltt_walks.py` replays Learn-then-Test variants on."""
    path.mkdir(parents=True, exist_ok=True)
    d = {
        "share": share,
        "threshold": tr.threshold,
        "calibration": [[float(sc), bool(ok)] for sc, ok in tr.scores],
        "gated": [bool(g) for g in (tr.gated or [False] * len(tr.scores))],
        "unlabelled": [
            [v.expression_confidence, v.expression == by[v.face_id]["truth"], set(v.reasons) <= SOFT] for v in unl
        ],
    }
    (path / f"scores_{share}.json").write_text(json.dumps(d))


SOFT = {"low_confidence", "no_guarantee", "failed_verification"}  # reasons a threshold decides
# the local models' label per face id (the second opinion of an openai run; --no-second-opinion: none)
SECOND: dict[str, str] = {}


def _unlabelled_outcome(fs: list[dict], samples: dict, k, vp, tr, by: dict) -> dict:
    """Coverage, realised error and accuracy of the top 60% on the unlabelled faces."""
    vs = [
        decide(f, samples[f["face_id"]], k, vp, tr, SECOND.get(f["face_id"])) for f in fs if not f["prior_expression"]
    ]
    acc = [v.expression == by[v.face_id]["truth"] for v in vs if v.expression_status == "accepted"]
    pts = risk_coverage(
        [v.expression_confidence or 0.0 for v in vs], [v.expression == by[v.face_id]["truth"] for v in vs]
    )
    return {
        "coverage": len(acc) / len(vs),
        "error": 1 - float(np.mean(acc)) if acc else float("nan"),
        "acc_at_60": acc_at(pts, 0.6),
        "best_guess_accuracy": float(np.mean([v.expression == by[v.face_id]["truth"] for v in vs])),
    }


def fdr_run(fs: list[dict], samples: dict, k, vp, tr, by: dict) -> dict:
    """The same run under the expectation guarantee (conformal selection, verify.guarantee fdr)."""
    import copy

    t2 = copy.copy(tr)
    t2.report = dict(tr.report)
    vf = vp.model_copy(update={"guarantee": "fdr"})
    pre = [
        decide(f, samples[f["face_id"]], k, vf, tr, SECOND.get(f["face_id"])) for f in fs if not f["prior_expression"]
    ]
    guarantee.apply_fdr(
        t2, vf, [v.expression_confidence for v in pre if v.expression_confidence is not None and set(v.reasons) <= SOFT]
    )
    return {"threshold": t2.threshold, **_unlabelled_outcome(fs, samples, k, vf, t2, by)}


def evidence_ablations(fs: list[dict], samples: dict, k, vp, cal: list, by: dict) -> dict:
    """Each evidence source switched off in turn, on the same answers (only verify differs)."""
    out = {}
    full = list(vp.evidence_signals)
    variants = {"all signals": {}, "votes only (old features)": {"evidence_model": False}}
    for sgn in full:
        variants[f"without {sgn}"] = {"evidence_signals": [x for x in full if x != sgn]}
    for name, upd in variants.items():
        v2 = vp.model_copy(update=upd)
        rows = [
            calibration_row(f, samples[f["face_id"]], k, v2, SECOND.get(f["face_id"]))
            for f in fs
            if f["prior_expression"]
        ]
        t2 = trust.build([r for r in rows if r is not None], v2, "openai")
        out[name] = {"threshold": t2.threshold, **_unlabelled_outcome(fs, samples, k, v2, t2, by)}
    return out


def print_self(results: list[dict]) -> None:
    print(
        f"\n{'labelled':>8} {'cal n':>6} {'source':>7} {'thresh':>7} {'bound':>6} {'cover':>6} {'error':>6} "
        f"{'ECE':>6} {'ECEgen':>6} {'K10acc':>6} {'ans/f':>6} {'ans/unl':>7} {'acc@60':>6} {'K10@60':>6}"
    )
    for r in results:
        c = r["calibration"]
        th = c.get("threshold")
        print(
            f"{r['labelled_share']:8.2f} {c['calibration_faces']:6d} {c['source']:>7} "
            f"{'none' if th is None else f'{th:.4f}':>7} {c.get('bound') or float('nan'):6.3f} "
            f"{r['coverage']:6.3f} {r['error']:6.3f} {r['ece_feid']:6.3f} {r['ece_generated']:6.3f} "
            f"{r.get('k10_accuracy_at_same_coverage', float('nan')):6.3f} {r['answers_per_face']:6.2f} "
            f"{r['answers_per_unlabelled_face']:7.2f} {r['ranking_acc_at']['0.6']:6.3f} "
            f"{r.get('k10_acc_at', {}).get('0.6', float('nan')):6.3f}"
        )
    print("\nexpectation guarantee (fdr) and each evidence source switched off (unlabelled faces):")
    for r in results:
        rows = {"fdr guarantee": r["fdr"], **{f"pac, {n}": x for n, x in r["evidence_ablations"].items()}}
        for name, x in rows.items():
            print(
                f"{r['labelled_share']:8.2f} {name:>34} cover {x['coverage']:6.3f} error {x['error']:6.3f} "
                f"acc@60 {x['acc_at_60']:6.3f} best-guess {x['best_guess_accuracy']:6.3f}"
            )
    print("\nper-granularity vs whole-face acceptance (unlabelled faces):")
    print(
        f"{'labelled':>8} {'mode':>15} {'expr kept':>9} {'expr acc':>8} {'acc@whole':>9} {'VA kept':>7} "
        f"{'VA CCC':>6} {'AU F1':>6}"
    )
    for r in results:
        for mode, g in r["granularity"].items():
            aw = g.get("expression_accuracy_at_whole_face_coverage")
            print(
                f"{r['labelled_share']:8.2f} {mode:>15} {g['expression_kept']:9.3f} "
                f"{g['expression_accuracy'] or float('nan'):8.3f} {aw if aw is not None else float('nan'):9.3f} "
                f"{g['va_kept']:7.3f} {g['va_ccc']:6.3f} {g['au_f1']:6.3f}"
            )


def write_json(path: str | None, obj: dict) -> None:
    """All numbers of a run, if --json was given."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=1, default=str))


STRATEGIES = {
    "one sample": ({"sample": {"k0": 1, "kmax": 1, "verify_round": "none"}, "prompt": {"blind": False}}, "single"),
    "fixed K=5": ({"sample": {"k0": 5, "kmax": 5, "verify_round": "none"}, "prompt": {"blind": False}}, "vote"),
    "fixed K=10": ({"sample": {"k0": 10, "kmax": 10, "verify_round": "none"}, "prompt": {"blind": False}}, "vote"),
    "SV-UAMC": ({}, "svuamc"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotator", choices=("sim", "local"), default="sim")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--params", default=str(ROOT / "params.yaml"), help="SV-UAMC's sample/verify params")
    ap.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a sample/verify/prompt param of SV-UAMC, e.g. -S sample.kmax=9",
    )
    ap.add_argument("--sim", action="append", default=[], metavar="KEY=VALUE", help="SimConfig override")
    ap.add_argument("--au-prior-share", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--only", help="comma-separated strategies to run")
    ap.add_argument("--write-calibration", help="fit the SV-UAMC calibration on all faces and write it here")
    ap.add_argument(
        "--self-calibrated",
        metavar="SHARES",
        help="comma-separated shares of labelled people (e.g. 0.1,0.3,0.5): run the pipeline with "
        "self-calibration and verify.target_error, no calibration file; measured on the unlabelled "
        "faces, next to fixed K=10",
    )
    ap.add_argument("--json", help="write all numbers here")
    ap.add_argument(
        "--scores",
        help="with --self-calibrated: write each share's calibration scores and unlabelled confidences "
        "to this folder (scores_<share>.json, read by benchmarks/ltt_walks.py)",
    )
    ap.add_argument(
        "--no-second-opinion",
        action="store_true",
        help="sim: do not give the evidence model the local models' label of each crop",
    )
    ap.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "seke_quality"))
    args = ap.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)

    from tasks.core.params import load, parse_overrides

    base = load(args.params)
    over_sv = parse_overrides(args.set)
    strategies = dict(STRATEGIES)
    strategies["SV-UAMC"] = (over_sv, "svuamc")
    if args.self_calibrated:
        strategies = {k: v for k, v in strategies.items() if k == "fixed K=10"}
    if args.only:
        strategies = {k: v for k, v in strategies.items() if k in args.only.split(",")}

    faces = load_faces(args.sets.split(","), Path(args.cache_dir))
    print(f"{len(faces)} faces from {args.sets}: {dict(Counter(f['truth'] for f in faces))}")
    workdir = Path(tempfile.mkdtemp(prefix="seke_quality_"))
    # Shared draws are memoised across strategies only for the local annotator, whose answer
    # depends on (request, index, seed) alone. An OpenAI-compatible endpoint draws a request's
    # `n` answers from the request's seed, so an answer depends on how indices were batched
    # into calls: each strategy then draws its own, as the pipeline would.
    memo: dict = {}
    fresh = args.annotator == "sim"
    server = None
    sim_cfg = {}
    if args.annotator == "sim":
        from simvllm.server import ServerThread, SimConfig, SimVLLM
        from tasks.annotators.openai_compat import OpenAIAnnotator
        from tasks.core.params import Annotator as AnnParams
        from tasks.core.params import Runtime

        cfg = SimConfig(accuracy=0.7)
        for kv in args.sim:
            key, _, val = kv.partition("=")
            cfg.update({key: json.loads(val)})
        sim_cfg = cfg.__dict__.copy()
        truth = sim_truth(faces, args.au_prior_share, args.seed)
        if not args.no_second_opinion:
            from tasks.method.second_opinion import Opinions, status

            if status() is None:
                SECOND.update(Opinions(args.cache_dir).for_faces(faces))
                print(f"second opinion: the local models' label for {len(SECOND)} faces")
        server = ServerThread(SimVLLM(cfg, truth)).start()
        os.environ.update(OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sim", NO_PROXY="127.0.0.1,localhost")
        os.environ.pop("AZURE_OPENAI_ENDPOINT", None)
        ap_ = AnnParams(backend="openai", model="sim-vllm", temperature=1.0)
        ann: Annotator = OpenAIAnnotator(
            ap_, Runtime(concurrency=16, timeout_s=10, max_retries=2, retry_base_s=0.01, progress_every_s=60)
        )
        max_n = ap_.max_n
    else:
        from tasks.annotators.local import LocalAnnotator
        from tasks.core.params import Annotator as AnnParams

        ap_ = base.annotator.model_copy(update={"backend": "local"})
        ann = LocalAnnotator(ap_)
        max_n = 1 << 30
        for f in faces:
            f["truth_va"] = f["truth_aus"] = None
    results, all_rows = [], {}
    try:
        for name, (over, kind) in strategies.items():
            rows, cost = run_strategy(name, over, faces, ann, {} if fresh else memo, base, max_n, workdir)
            cost.pop("samples"), cost.pop("params")
            if kind == "svuamc":
                sv = [r for r in rows if r["n_gen"]]
                crossfit(sv, args.seed)
                for r in rows:
                    r.setdefault("confidence", 0.0)
                if args.write_calibration:
                    cal = fit_platt(features_of(sv), np.array([r["correct"] for r in sv], dtype=float))
                    d = cal.to_json()
                    d["source"] = (
                        f"benchmarks/quality_study.py --annotator {args.annotator} on {args.sets}, "
                        f"{len(sv)} faces, seed {args.seed}"
                    )
                    Path(args.write_calibration).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.write_calibration).write_text(json.dumps(d, indent=2) + "\n")
            min_conf = base.model_copy(
                update={"verify": base.verify.model_copy(update=over.get("verify", {}))}
            ).verify.min_confidence
            s = summarise(name, rows, cost, kind, min_conf)
            results.append(s)
            all_rows[name] = rows
            print(f"  {name}: done in {cost['seconds']:.0f} s")
        self_results = []
        for share in [float(x) for x in args.self_calibrated.split(",")] if args.self_calibrated else []:
            self_results.append(
                self_calibrated(
                    share,
                    faces,
                    ann,
                    {} if fresh else memo,
                    base,
                    over_sv,
                    max_n,
                    workdir,
                    args.seed,
                    all_rows.get("fixed K=10"),
                    Path(args.scores) if args.scores else None,
                )
            )
            print(f"  self-calibrated, {share:.0%} labelled: done in {self_results[-1]['seconds']:.0f} s")
    finally:
        if server:
            server.stop()
    if self_results:
        print_self(self_results)
        write_json(
            args.json,
            {
                "annotator": args.annotator,
                "sets": args.sets,
                "sim": sim_cfg,
                "overrides": over_sv,
                "self_calibrated": self_results,
            },
        )
        return 0

    # SV-UAMC vs fixed K=10 at SV-UAMC's own coverage
    by = {r["strategy"]: r for r in results}
    print()
    hdr = (
        f"{'strategy':12} {'cover':>6} {'acc':>6} {'mF1':>6} {'AU F1':>6} {'VA CCC':>6} {'acc@70':>6} "
        f"{'acc@80':>6} {'AURC':>6} {'ECE':>6} {'calls':>6} {'sends':>6} {'verif':>6}"
    )
    print(hdr)
    for r in results:
        print(
            f"{r['strategy']:12} {r['coverage']:6.3f} {r['accuracy']:6.3f} {r['macro_f1']:6.3f} {r['au_f1']:6.3f} "
            f"{r['va_ccc']:6.3f} {r['acc_at']['0.7']:6.3f} {r['acc_at']['0.8']:6.3f} {r['aurc']:6.3f} "
            f"{r['ece']:6.3f} {r['answers_per_face']:6.2f} {r['image_sends_per_face']:6.2f} "
            f"{r['verify_calls_per_face']:6.2f}"
        )
    if "SV-UAMC" in by and "params_confidence" in by["SV-UAMC"]:
        pc = by["SV-UAMC"]["params_confidence"]
        print(
            f"\nSV-UAMC with the pipeline's own confidence (verify.calibration={base.verify.calibration!r}, "
            f"not cross-fit): ECE {pc['ece']:.3f}, coverage {pc['coverage']:.3f}, accuracy {pc['accuracy']:.3f}"
        )
    goals = {}
    if "SV-UAMC" in by and "fixed K=10" in by and "one sample" in by:
        sv, k10, one = by["SV-UAMC"], by["fixed K=10"], by["one sample"]
        cov = sv["coverage"]
        pts10 = risk_coverage(
            [r["vote_share"] or 0 for r in all_rows["fixed K=10"]], [r["correct"] for r in all_rows["fixed K=10"]]
        )
        k10_at = acc_at(pts10, cov)
        goals = {
            "sv_coverage": cov,
            "sv_accuracy": sv["accuracy"],
            "k10_accuracy_at_sv_coverage": k10_at,
            "coverage_ge_70": cov >= 0.7,
            "acc_ge_k10_at_same_coverage": sv["accuracy"] >= k10_at,
            "calls_le_half_k10": sv["answers_per_face"] <= 0.5 * k10["answers_per_face"],
            "gain_over_one_sample_pts": 100 * (sv["accuracy"] - one["accuracy"]),
            "gain_ge_20_pts": sv["accuracy"] - one["accuracy"] >= 0.20,
            "ece": sv["ece"],
            "ece_le_0_05": sv["ece"] <= 0.05,
            "sv_acc_at_70": sv["acc_at"]["0.7"],
            "k10_acc_at_70": k10["acc_at"]["0.7"],
        }
        print(f"\ngoals (SV-UAMC at its decision threshold verify.min_confidence={base.verify.min_confidence}):")
        for kk, vv in goals.items():
            print(f"  {kk}: {round(vv, 4) if isinstance(vv, float) else vv}")
    write_json(
        args.json,
        {
            "annotator": args.annotator,
            "sets": args.sets,
            "sim": sim_cfg,
            "overrides": over_sv,
            "au_prior_share": args.au_prior_share,
            "results": results,
            "goals": goals,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
