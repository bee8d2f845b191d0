"""prompt: one knowledge-enhanced request per face (and a blind one for self-verification).

Input: FaceRecord. Output: RequestRecord. Requests are plain data: OpenAI chat messages,
the answer's JSON schema and a hash of both plus the image bytes, so they can be cached,
inspected and diffed. The image is referenced by its SHA-256 (`image_ref`); annotators
resolve it to the crop's bytes.

Variants
- primed: states the face's prior labels, quotes only the knowledge they make relevant
  (prototype AUs, VA region) and asks only for the missing granularities.
- blind: no priors, asks for every granularity; used to verify the annotator against the
  priors (only built for faces that have a prior label).
- plain: `prompt.knowledge: false`: no priors' knowledge, no catalogue (ablation).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Iterator

import pandas as pd

from tasks.core import knowledge
from tasks.core.answer import json_schema
from tasks.core.knowledge import Knowledge
from tasks.core.params import Params
from tasks.core.prompts import SYSTEM, au_catalogue_text, prototype_line, va_line
from tasks.core.records import GRANULARITIES, FaceRecord, RequestRecord
from tasks.infra import io
from tasks.infra.progress import track
from tasks.stages.base import validate, write_metrics


def missing(face: FaceRecord) -> tuple[str, ...]:
    """The granularities the face's own labels do not cover."""
    have = set()
    if face.prior_expression:
        have.add("expression")
    if face.prior_valence is not None and face.prior_arousal is not None:
        have.add("va")
    if face.prior_aus is not None and len(face.au_set) > 0:
        have.add("aus")
    return tuple(g for g in GRANULARITIES if g not in have)


def build_text(k: Knowledge, face: FaceRecord | None, ask: tuple[str, ...], variant: str, knowledge: bool) -> str:
    lines: list[str] = []
    if variant == "primed" and face is not None:
        priors = []
        if face.prior_expression:
            priors.append(f"expression: {face.prior_expression}")
        if face.prior_valence is not None and face.prior_arousal is not None:
            priors.append(f"valence {face.prior_valence:+.2f}, arousal {face.prior_arousal:+.2f}")
        if face.prior_aus is not None and face.au_set:
            priors.append(f"active AUs: {', '.join(face.prior_aus) or 'none'} (of {', '.join(face.au_set)})")
        if priors:
            lines.append("Human annotators labelled this face: " + "; ".join(priors) + ".")
            if knowledge and face.prior_expression:
                lines.append(
                    "Knowledge: " + prototype_line(k, face.prior_expression) + " " + va_line(k, face.prior_expression)
                )
    tasks = []
    if "expression" in ask:
        tasks.append(f"the facial expression, one of: {', '.join(k.expressions)}")
    if "va" in ask:
        tasks.append("valence and arousal, each in [-1, 1]")
    if "aus" in ask:
        tasks.append("the visibly active facial action units")
    lines.append("Report " + "; ".join(tasks) + ", and a one- or two-sentence rationale.")
    if knowledge and "aus" in ask:
        lines.append("Action units you may report:\n" + au_catalogue_text(k, k.aus))
    # the same for every request that asks the expression, so that a labelled face's blind
    # request reads exactly like an unlabelled face's (its calibration mirror)
    if knowledge and "expression" in ask:
        lines.append("Knowledge: " + " ".join(prototype_line(k, e) for e in k.expressions))
    if knowledge and "va" in ask and not (variant == "primed" and face and face.prior_expression):
        lines.append(
            "Knowledge: AU06 and AU12 raise valence; AU04, AU09, AU15 and AU20 lower it. "
            "AU05, AU26, AU01+AU02 and AU20 raise arousal."
        )
    lines.append("Answer with JSON only.")
    return "\n\n".join(lines)


def make_request(
    k: Knowledge, face: FaceRecord, variant: str, ask: tuple[str, ...], version: str, knowledge: bool
) -> RequestRecord:
    schema = json_schema(ask)
    messages = [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": build_text(k, face, ask, variant, knowledge)},
                {"type": "image_ref", "sha256": face.crop_sha256},
            ],
        },
    ]
    canon = json.dumps({"v": version, "m": messages, "s": schema}, sort_keys=True)
    rid = hashlib.sha256(canon.encode()).hexdigest()
    return RequestRecord(
        request_id=rid,
        face_id=face.face_id,
        variant=variant,
        ask=list(ask),
        prompt_version=version,
        messages_json=json.dumps(messages),
        answer_schema=json.dumps(schema),
        image_sha256=face.crop_sha256,
    )


def requests_for(k: Knowledge, face: FaceRecord, version: str, knowledge: bool, blind: bool) -> Iterator[RequestRecord]:
    ask = missing(face)
    has_priors = len(ask) < len(GRANULARITIES)
    variant = "primed" if knowledge else "plain"
    if ask:
        yield make_request(k, face, variant, ask, version, knowledge)
    if has_priors and blind:
        yield make_request(k, face, "blind", GRANULARITIES, version, knowledge)


def run(p: Params) -> dict:
    """The prompt stage: the requests of every face (primed or plain, and its blind mirror)."""
    k = knowledge.load()
    src = io.join(p.paths.crop, "faces.parquet")
    out = io.join(p.paths.prompt, "requests.parquet")
    light, variants, faces = [], Counter(), 0
    cols = [c for c in FaceRecord.columns() if c != "crop"]
    with io.writers((out, RequestRecord)) as (w,):
        rows = io.iter_rows(src, columns=cols)
        for row in track(rows, "prompt", io.count_rows(src), every_s=p.runtime.progress_every_s):
            faces += 1
            face = FaceRecord(crop=b"", **row)
            for req in requests_for(k, face, p.prompt.version, p.prompt.knowledge, p.prompt.blind):
                w.write(req)
                variants[req.variant] += 1
                light.append({"request_id": req.request_id, "variant": req.variant, "face_id": req.face_id})
        val = validate("prompt", {"requests": pd.DataFrame(light, columns=RequestRecord.columns())}, p)
        w.commit()
    m = {"faces": faces, "requests": len(light), "variants": dict(variants), "validation": val}
    write_metrics(p, "prompt", m)
    return m
