"""The verify stage: calibrate the run's confidence on its labelled faces, then decide every
face, granularity by granularity.

Input: `crop/faces.parquet` and `sample_runs/samples.parquet` (both in face order). Output:
`verify/verdicts.parquet` (one Verdict per face) and `verify/trust.json` (the confidence
model and threshold this run used). The evidence is `tasks.method.evidence`, the decisions
`tasks.method.decide`, the calibration and the error guarantee `tasks.method.trust`.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Iterator

from expectations.frames import Light
from tasks.annotators import backend_class
from tasks.core import knowledge
from tasks.core.params import Params, Verify
from tasks.core.records import FaceRecord, Verdict
from tasks.infra import dask, io
from tasks.infra.progress import track
from tasks.method import guarantee, rationale, second_opinion, trust
from tasks.method.decide import calibration_row, decide
from tasks.stages.base import annotator_of, grouped, log, validate, write_metrics

SAMPLE_COLUMNS = [
    "face_id",
    "request_id",
    "sample_index",
    "variant",
    "status",
    "expression",
    "valence",
    "arousal",
    "aus",
    "rationale",
]
TRUST_FILE = "trust.json"  # the run's confidence model and threshold, beside the verdicts
GRANULARITIES = ("expression", "va", "au")


@dask.batch_task("verify")
def verify_part(
    faces: list[dict], samples: dict[str, list[dict]], vp: Verify, tr=None, texts=True, second=None
) -> list[dict]:
    """`decide` for one batch of faces (on a Dask worker when configured), and the verified
    rationale of each accepted face (`texts`: the annotator writes its own rationales).
    `second`: the local models' label per face id (the second opinion), if any."""
    k = knowledge.load()
    second = second or {}
    out = []
    for f in faces:
        smp = samples.get(f["face_id"], [])
        v = decide(f, smp, k, vp, tr, second.get(f["face_id"])).model_dump()
        if v["accepted"]:
            r = rationale.pick(rationale_view(v), smp, k) if texts else rationale.Pick("not_written")
            v.update(rationale=r.text, rationale_sample=r.sample, rationale_status=r.status)
        out.append(v)
    return out


def rationale_view(v: dict) -> dict:
    """What `rationale.pick` needs of a verdict: the kept labels."""
    return {
        "expression": v["expression"],
        "aus": v["aus"],
        "au_withheld": v["au_withheld"],
        "au_kept": v["au_status"] in ("prior", "accepted", "partial"),
        "va_kept": v["va_status"] in ("prior", "accepted"),
        "valence": v["valence"],
        "arousal": v["arousal"],
    }


def batches(faces_url: str, smp_url: str, size: int) -> Iterator[tuple[list[dict], dict]]:
    """(faces, their samples by face id), one batch at a time; both files are in face order."""
    face_cols = [c for c in FaceRecord.columns() if c != "crop"]
    samples = grouped(io.iter_rows(smp_url, columns=SAMPLE_COLUMNS), "face_id")
    pending = next(samples, None)
    for batch in io.iter_batches(faces_url, columns=face_cols, batch_size=size):
        by_face: dict[str, list[dict]] = {}
        for face in batch:
            if pending is not None and pending[0] == face["face_id"]:
                by_face[face["face_id"]] = pending[1]
                pending = next(samples, None)
        yield batch, by_face


def second_opinions(p: Params, faces_url: str) -> tuple[dict[str, str], dict]:
    """The local models' label for every crop (`tasks.method.second_opinion`), when this run
    reads one: (face id -> label, what the report says about it)."""
    if not second_opinion.wanted(p):
        return {}, {"used": False, "why": "not asked (verify.evidence_signals) or the answers are the local models'"}
    why = second_opinion.status()
    if why:
        log().warning(why)
        return {}, {"used": False, "why": why}
    ops = second_opinion.Opinions(p.runtime.cache)
    cols = ["face_id", "crop", "crop_sha256", "crop_face_frac"]
    got = ops.for_faces(f for b in io.iter_batches(faces_url, columns=cols, batch_size=256) for f in b)
    # how many were computed now (not cached) is logged, not reported: the verify output of a
    # rebuild must be the version's, byte for byte
    log().info("second opinion: %d faces (%d computed now, cached in %s)", len(got), ops.fresh, ops.path)
    return got, {"used": True, "faces": len(got)}


def calibrate(
    p: Params, faces_url: str, smp_url: str, annotator: str, run_info: dict, second: dict | None = None
) -> trust.Trust:
    """Pass 1: the calibration rows of the labelled faces (a few floats each) and the run's
    `tasks.method.trust.Trust` fitted on them."""
    k = knowledge.load()
    second = second or {}
    rows, origin = [], Counter()
    for batch, by in batches(faces_url, smp_url, max(p.runtime.batch_size, 1024)):
        for f in batch:
            if f.get("prior_expression") and f["face_id"] in by:
                r = calibration_row(f, by[f["face_id"]], k, p.verify, second.get(f["face_id"]))
                if r is not None:
                    rows.append(r)
                    origin[f.get("label_origin") or "source"] += 1
    tr = trust.build(rows, p.verify, annotator, run_info)
    tr.report["calibration_label_origin"] = dict(sorted(origin.items()))  # "review": labels a person gave
    return tr


class _Tally:
    """What the metrics report, counted while verdicts stream by."""

    def __init__(self):
        self.light = Light(Verdict, au_col="aus")
        self.reasons, self.withheld, self.per_class = Counter(), Counter(), Counter()
        self.status = {g: Counter() for g in GRANULARITIES}
        self.n_acc, self.conf_sum, self.gen_conf = 0, 0.0, []
        self.rationales = {"all": Counter(), "generated": Counter()}

    def add(self, v: dict) -> None:
        self.light.add(v)
        self.reasons.update(v["reasons"])
        if not v["accepted"]:
            return
        self.withheld.update(v["withheld"])
        self.n_acc += 1
        self.conf_sum += v["confidence"]
        self.per_class[v["expression"]] += 1
        for g in self.status:
            self.status[g][v[f"{g}_status"]] += 1
        self.rationales["all"][v.get("rationale_status") or "none"] += 1
        if v["expression_status"] == "accepted":
            self.gen_conf.append(v["expression_confidence"])
            self.rationales["generated"][v.get("rationale_status") or "none"] += 1

    def metrics(self, report: dict, val: dict) -> dict:
        n_faces, n_acc, gen = self.light.n, self.n_acc, self.gen_conf
        n_gen = sum(1 for s in self.light.column("expression_source") if s == "annotator")
        return {
            "faces": n_faces,
            "accepted": n_acc,
            "rejected": n_faces - n_acc,
            "acceptance_rate": round(n_acc / n_faces, 4) if n_faces else 0,
            "mean_confidence": round(self.conf_sum / n_acc, 4) if n_acc else 0,
            "generated_expressions": n_gen,
            "accepted_generated_expressions": len(gen),
            "generated_coverage": round(len(gen) / n_gen, 4) if n_gen else 0,
            "mean_generated_confidence": round(sum(gen) / len(gen), 4) if gen else 0,
            "status_of_accepted": {g: dict(sorted(c.items())) for g, c in self.status.items()},
            "reasons": dict(self.reasons),
            "withheld": dict(sorted(self.withheld.items())),
            "per_class": dict(sorted(self.per_class.items())),
            "rationales": self.rationale_metrics(),
            "calibration": report,
            "validation": val,
        }

    def rationale_metrics(self) -> dict:
        """Rationale status of the accepted faces (`all`) and of those with a generated
        expression (`generated`), with the verified share of each."""
        out = {}
        for part, c in self.rationales.items():
            n = sum(c.values())
            out[part] = {"faces": n, **dict(sorted(c.items()))}
            out[part]["verified_share"] = round(c["verified"] / n, 4) if n else 0
        return out


def _fit(p: Params, faces_url: str, smp_url: str, second: dict) -> trust.Trust:
    annotator, model = annotator_of(p, smp_url)
    run_info = {"model": model, "prompt_version": p.prompt.version}
    tr = calibrate(p, faces_url, smp_url, annotator, run_info, second)
    tr.report.update(annotator=annotator, model=model, prompt_version=p.prompt.version)
    rep = tr.report
    log().info("calibration: %s (%s); %s", rep.get("source", "params"), rep.get("why", ""), rep.get("selection", ""))
    if rep.get("warning"):
        log().warning(rep["warning"])
    return tr


def unlabelled_scores(p: Params, faces_url: str, smp_url: str, tr: trust.Trust, second: dict) -> list[float]:
    """The confidence of every generated expression that no hard gate withholds: the test
    scores of the conformal selection (`guarantee.apply_fdr`). One more streaming pass."""
    k = knowledge.load()
    soft = {"low_confidence", "no_guarantee"} | (set() if p.verify.require_confirmation else {"failed_verification"})
    out = []
    for batch, by in batches(faces_url, smp_url, max(p.runtime.batch_size, 1024)):
        for f in batch:
            v = decide(f, by.get(f["face_id"], []), k, p.verify, tr, second.get(f["face_id"]))
            if v.expression_confidence is not None and set(v.reasons) <= soft:
                out.append(v.expression_confidence)
    return out


def run(p: Params) -> dict:
    """Two streaming passes over faces and their samples (both in face order): the first
    fits the run's confidence model and threshold on its labelled faces (`calibrate`), the
    second decides every face in batches, each batch's verdicts written before the next is
    read. Memory: one batch, the calibration rows, and the light columns of the verdicts."""
    faces_url, smp_url = io.join(p.paths.crop, "faces.parquet"), io.join(p.paths.sample, "samples.parquet")
    out = io.join(p.paths.verify, "verdicts.parquet")
    second, second_report = second_opinions(p, faces_url)
    tr = _fit(p, faces_url, smp_url, second)
    tr.report["second_opinion"] = second_report
    scores = unlabelled_scores(p, faces_url, smp_url, tr, second) if tr.report.get("mode") == "target_error" else []
    guarantee.finish(tr, p.verify, scores)
    if tr.report.get("warning"):
        log().warning(tr.report["warning"])
    if p.verify.guarantee_mode == "required" and not tr.report.get("guaranteed"):
        raise RuntimeError(f"verify: {tr.report['warning']}; {guarantee.HOW_TO_CERTIFY}")
    t = _Tally()
    runner = dask.task_runner(p)
    texts = backend_class(p.annotator.backend).writes_rationales
    args = (
        (b, by, p.verify, tr, texts, {f["face_id"]: second[f["face_id"]] for f in b if f["face_id"] in second})
        for b, by in batches(faces_url, smp_url, max(p.runtime.batch_size, 1024))
    )
    with runner or contextlib.nullcontext(), io.writers((out, Verdict)) as (w,):
        verdicts = (v for vs in dask.mapped(runner, "verify", args, dask.in_flight(p)) for v in vs)
        for v in track(verdicts, "verify", io.count_rows(faces_url), every_s=p.runtime.progress_every_s):
            w.write(v)
            t.add(v)
        val = validate("verify", {"verdicts": t.light.frame(), "au_codes": t.light.aus()}, p, {"faces": t.light.n})
        w.commit()
    report = {k: v for k, v in tr.report.items() if k != "confidence_model"}
    io.write_json(
        io.join(p.paths.verify, TRUST_FILE),
        {
            "model": tr.calibrator.to_json(),
            "evidence_model": tr.evidence.to_state() if tr.evidence is not None else None,
            "threshold": tr.threshold,
            "report": report,
            "calibration_scores": [[round(c, 4), int(ok)] for c, ok in tr.scores],  # reliability, risk-coverage
        },
    )
    m = t.metrics(tr.report, val)
    write_metrics(p, "verify", m)
    return m
