"""export: FEID, one instruction-data row per accepted face.

Input: Verdict + FaceRecord (crop bytes). Output: FeidRecord (accepted faces) and the
rejected Verdicts, with their reasons, in a table of their own. The `image` column is a
struct of bytes and path, which Hugging Face `datasets` decodes as an Image feature.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pandas as pd

from expectations import ExpectationsFailed
from expectations.frames import Light
from expectations.suites import label_distribution
from tasks.core import instructions, knowledge
from tasks.core.instructions import IMAGE
from tasks.core.knowledge import AUS, Knowledge
from tasks.core.params import Export, Params
from tasks.core.records import FeidRecord, Image, Verdict
from tasks.infra import io
from tasks.infra.progress import track
from tasks.stages.base import annotator_of, validate, write_metrics

FEID_BASE = "feid.parquet"  # the export stage's rows
REJECTS_DIR = ".rejects"  # hidden, so `datasets.load_dataset("parquet", data_dir=<feid>)` loads FEID rows only


def _face(verdict: dict, k: Knowledge, labels: list[str], va, aus: list[str] | None) -> instructions.Face:
    """The kept labels of a verdict, described by its verified rationale or a template."""
    f = instructions.Face(verdict["face_id"], verdict["expression"], labels, va[0], va[1], aus, "")
    text = verdict.get("rationale") if verdict.get("rationale_status") == "verified" else None
    return replace(f, description=text or instructions.templated_description(k, f))


def feid_row(
    verdict: dict,
    face: dict,
    k: Knowledge,
    ex: Export,
    *,
    annotator: str,
    model: str,
    prompt_version: str,
    params_hash: str,
) -> FeidRecord:
    """An accepted verdict as a FEID row: withheld VA is null, withheld AUs are listed in
    `aus_withheld` with a null probability, and neither gets a conversation turn. The
    conversation is drawn from the instruction bank `ex.instructions` (`tasks.core.instructions`)."""
    probs = list(verdict["au_probs"] or [None] * len(AUS))
    withheld = set(verdict.get("au_withheld") or [])
    probs = [None if a in withheld else p for a, p in zip(AUS, probs)]
    aus = [a for a in (verdict["aus"] or []) if a not in withheld]
    va_kept = verdict.get("va_status") in ("prior", "accepted")
    valence, arousal = (verdict["valence"], verdict["arousal"]) if va_kept else (None, None)
    au_kept = verdict.get("au_status") in ("prior", "accepted", "partial")
    expr_conf = verdict.get("expression_confidence") if verdict["expression_source"] == "annotator" else 1.0
    labels = face["label_set"] or list(k.expressions)
    f = _face(verdict, k, list(k.expressions), (valence, arousal), aus if au_kept else None)
    bank = instructions.load_bank(ex.instructions)
    verified = verdict.get("rationale_status") == "verified"
    return FeidRecord(
        id=verdict["face_id"],
        image=Image(bytes=face["crop"], path=f"{verdict['face_id']}.jpg"),
        source=face["source"],
        label_set=labels,
        au_set=face["au_set"] or list(AUS),
        expression=verdict["expression"],
        expression_confidence=float(expr_conf),
        expression_status=verdict["expression_status"],
        guarantee=verdict.get("guarantee") or "none",
        valence=valence,
        arousal=arousal,
        va_status=verdict.get("va_status") or "missing",
        aus=aus,
        aus_withheld=sorted(withheld),
        au_status=verdict.get("au_status") or "missing",
        au_probabilities=dict(zip(AUS, probs)),
        confidence=verdict["confidence"],
        conversations=instructions.conversation(f, k, bank, ex.task_mix, ex.multi_turn, ex.seed),
        description_source="annotator" if verified else "template",
        rationale_sample=verdict.get("rationale_sample") if verified else None,
        instructions_version=bank.version,
        label_origin=face.get("label_origin"),
        annotator=annotator,
        model=model,
        prompt_version=prompt_version,
        params_hash=params_hash,
        knowledge_version=k.digest,
    )


class Plots:
    """label_distribution.csv, va.csv and confidence.csv, built while rows stream by
    (va.csv is written row by row to a temporary file, published by `write()`)."""

    def __init__(self, p: Params):
        self.d = Path(p.paths.plots)
        self.d.mkdir(parents=True, exist_ok=True)
        self.counts, self.bins, self.n, self.conf = Counter(), [0] * 10, 0, 0.0
        self.phrasings, self.turns, self.described = set(), Counter(), Counter()
        self._tmp = tempfile.NamedTemporaryFile("w", newline="", dir=self.d, suffix=".tmp", delete=False)
        self._va = csv.DictWriter(self._tmp, fieldnames=["valence", "arousal", "expression"], extrasaction="ignore")
        self._va.writeheader()

    def add(self, row: dict) -> None:
        self.counts[row["expression"]] += 1
        self.bins[min(9, int(row["confidence"] * 10))] += 1
        self.n += 1
        self.conf += row["confidence"]
        self._va.writerow(row)
        asked = [t["value"].removeprefix(IMAGE + "\n") for t in row["conversations"] if t["from"] == "human"]
        self.phrasings.update(asked)
        self.turns["multi" if len(asked) > 1 else "single"] += 1
        self.described[row["description_source"]] += 1

    def write(self) -> None:
        self._tmp.close()
        os.replace(self._tmp.name, self.d / "va.csv")
        io.write_csv(
            self.d / "label_distribution.csv",
            [{"expression": e, "count": self.counts.get(e, 0)} for e in knowledge.EXPRESSIONS],
            ["expression", "count"],
        )
        io.write_csv(
            self.d / "confidence.csv",
            [{"bin": f"{i / 10:.1f}", "count": c} for i, c in enumerate(self.bins)],
            ["bin", "count"],
        )

    def discard(self) -> None:
        self._tmp.close()
        os.unlink(self._tmp.name)


def export_rows(
    p: Params,
    faces_url: str,
    ver_url: str,
    wf,
    wr,
    annotator: str,
    model: str,
    on_row=None,
    params_hash: str | None = None,
) -> tuple[int, int]:
    """Stream faces (with crops) and their verdicts, in step: accepted faces become FEID rows
    (`feid_row`) written to `wf`, rejected verdicts go to `wr`. `on_row(row)` sees each FEID
    row. `params_hash` defaults to `p.data_digest()`. Returns (faces, rejects)."""
    k = knowledge.load()
    verdicts = io.iter_rows(ver_url)
    n_faces = rejects = 0
    every = p.runtime.progress_every_s
    for face in track(io.iter_rows(faces_url), "export", io.count_rows(faces_url), every_s=every):
        v = next(verdicts)
        assert v["face_id"] == face["face_id"], "verdicts and faces are out of step"
        n_faces += 1
        if not v["accepted"]:
            wr.write(v)
            rejects += 1
            continue
        row = feid_row(
            v,
            face,
            k,
            p.export,
            annotator=annotator,
            model=model,
            prompt_version=p.prompt.version,
            params_hash=params_hash or p.data_digest(),
        ).model_dump(by_alias=True)
        wf.write(row)
        if on_row:
            on_row(row)
    return n_faces, rejects


def validate_feid(p: Params, light: Light, n_faces: int, n_rejects: int) -> dict:
    """The export suite on FEID's light columns; a (nearly) empty FEID says why."""
    fe = light.frame()
    frames = {
        "feid": fe,
        "rejects": pd.DataFrame({"n": range(n_rejects)}),
        "au_codes": light.aus(),
        "label_distribution": label_distribution(fe),
    }
    try:
        return validate("export", frames, p, {"faces": n_faces, "accepted": light.n})
    except ExpectationsFailed as e:
        if light.n >= p.export.min_rows:
            raise
        f = Path(p.paths.metrics) / "verify.json"
        warn = json.loads(f.read_text()).get("calibration", {}).get("warning") if f.exists() else None
        hint = f"\nWhy FEID is (nearly) empty: {warn}" if warn else ""
        raise ExpectationsFailed(f"{e}{hint}") from None


def run(p: Params) -> dict:
    """FEID as a directory dataset at `paths.feid`: `feid.parquet` (the accepted rows);
    rejected faces, with their reasons, under the hidden `.rejects/`. Streams faces and
    verdicts; memory is bounded (see `Light`)."""
    faces_url, ver_url = io.join(p.paths.crop, "faces.parquet"), io.join(p.paths.verify, "verdicts.parquet")
    out, rej = io.join(p.paths.feid, FEID_BASE), io.join(p.paths.feid, REJECTS_DIR, "rejects.parquet")
    annotator, model = annotator_of(p, io.join(p.paths.sample, "samples.parquet"))
    light, plots = Light(FeidRecord, au_col="aus"), Plots(p)

    def seen(row: dict) -> None:
        light.add(row)
        plots.add(row)

    try:
        with io.writers((out, FeidRecord), (rej, Verdict)) as (wf, wr):
            n_faces, rejects = export_rows(p, faces_url, ver_url, wf, wr, annotator, model, seen)
            val = validate_feid(p, light, n_faces, rejects)
            wf.commit(), wr.commit()
    except BaseException:
        plots.discard()
        raise
    plots.write()
    m = {
        "faces": n_faces,
        "feid_rows": light.n,
        "rejects": rejects,
        "per_class": dict(sorted(plots.counts.items())),
        "mean_confidence": round(plots.conf / plots.n, 4) if plots.n else 0,
        "instructions": {
            "bank": p.export.instructions,
            "distinct_phrasings": len(plots.phrasings),
            "rows": dict(sorted(plots.turns.items())),
            "description_source": dict(sorted(plots.described.items())),
        },
        "validation": val,
    }
    write_metrics(p, "export", m)
    return m
