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
from typing import Iterable, Iterator

import pandas as pd

from tasks.core import knowledge
from tasks.core.answer import json_schema
from tasks.core.knowledge import Knowledge
from tasks.core.params import Params
from tasks.core.records import GRANULARITIES, FaceRecord, RequestRecord
from tasks.infra import io
from tasks.stages.base import validate, write_metrics

SYSTEM = (
    "You are an expert FACS coder and affective-computing annotator. You look at one "
    "cropped face and answer only with a JSON object that follows the given schema."
)


def _catalogue(k: Knowledge, aus: Iterable[str]) -> str:
    return "\n".join(f"- {a} {k.au_catalogue[a]['name']}: {k.au_catalogue[a]['description']}" for a in aus)


def _prototype_line(k: Knowledge, expr: str) -> str:
    core, often = k.prototype(expr)
    if not core:
        return f"A {expr} face typically shows no action units."
    s = f"A {expr} face typically shows {', '.join(core)}"
    return s + (f" (often also {', '.join(often)})." if often else ".")


def _va_line(k: Knowledge, expr: str) -> str:
    v, a, s = k.va_centroid(expr)
    return (
        f"{expr.capitalize()} sits near valence {v:+.2f}, arousal {a:+.2f} "
        f"(plausible within about {s:.2f} of that point)."
    )


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
                    "Knowledge: " + _prototype_line(k, face.prior_expression) + " " + _va_line(k, face.prior_expression)
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
        lines.append("Action units you may report:\n" + _catalogue(k, k.aus))
    # the same for every request that asks the expression, so that a labelled face's blind
    # request reads exactly like an unlabelled face's (its calibration mirror)
    if knowledge and "expression" in ask:
        lines.append("Knowledge: " + " ".join(_prototype_line(k, e) for e in k.expressions))
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


# ---------------------------------------------------------------- the verification round
VERIFY_ASK = ("verify",)


def verification_schema(k: Knowledge) -> dict:
    """Strict JSON schema of a verification answer."""
    return {
        "title": "Verification",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "confirmed": {"type": "boolean", "description": "true if the proposed expression is right"},
            "expression": {
                "type": "string",
                "enum": list(k.expressions),
                "description": "the proposed expression if confirmed, else the correct one",
            },
            "rationale": {"type": "string", "description": "one sentence naming the visible evidence"},
        },
        "required": ["confirmed", "expression", "rationale"],
    }


def verification_text(k: Knowledge, proposed: dict, knowledge: bool) -> str:
    """The verification round's prompt: the aggregated answer and (with `knowledge`) only the
    knowledge about the proposed expression. The proposed answer comes last, as JSON."""
    expr = proposed["expression"]
    lines = ["Check a proposed annotation of this face, made by an annotator who looked at it several times."]
    if knowledge:
        lines.append("Knowledge: " + _prototype_line(k, expr) + " " + _va_line(k, expr))
    lines.append(
        "Look at the face. If the proposed expression is right, answer confirmed=true and repeat it. "
        "If it is wrong, answer confirmed=false and give the correct expression from the label set "
        "of the schema. Add a one-sentence rationale. Answer with JSON only."
    )
    lines.append("Proposed answer: " + json.dumps(proposed, sort_keys=True))
    return "\n\n".join(lines)


def verification_request(
    k: Knowledge, image_sha256: str, proposed: dict, version: str, knowledge: bool
) -> tuple[str, list[dict], dict]:
    """(request id, messages, schema) of one face's verification request. The id hashes the
    proposed answer too, so a different aggregate is a different (separately cached) call."""
    schema = verification_schema(k)
    messages = [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": verification_text(k, proposed, knowledge)},
                {"type": "image_ref", "sha256": image_sha256},
            ],
        },
    ]
    canon = json.dumps({"v": version, "variant": "verify", "m": messages, "s": schema}, sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest(), messages, schema


def parse_verification(text: str | None, proposed: str, k: Knowledge) -> tuple[str, str | None, str | None]:
    """(status, final expression, error) of a verification answer. A confirmation returns the
    proposed expression; a correction returns the corrected one; a refusal to confirm that
    names no other label returns None (not confirmed). Never raises."""
    from tasks.core.answer import _extract_json
    from tasks.core.knowledge import UnknownLabel

    if text is None or not text.strip():
        return "invalid", None, "empty answer"
    obj = _extract_json(text)
    if obj is None:
        return "invalid", None, "no JSON object in the answer"
    conf = obj.get("confirmed")
    if isinstance(conf, str):
        conf = conf.strip().lower() in ("true", "yes", "1")
    if not isinstance(conf, bool):
        return "invalid", None, "confirmed: not a boolean"
    if conf:
        return "ok", proposed, None
    try:
        corrected = k.expression(obj.get("expression", ""))
    except UnknownLabel as e:
        return "invalid", None, f"expression: {e}"
    return "ok", (corrected if corrected != proposed else None), None


def run(p: Params) -> dict:
    """The prompt stage: the requests of every face (primed or plain, and its blind mirror)."""
    k = knowledge.load()
    src = io.join(p.paths.crop, "faces.parquet")
    out = io.join(p.paths.prompt, "requests.parquet")
    light, variants, faces = [], Counter(), 0
    cols = [c for c in FaceRecord.columns() if c != "crop"]
    with io.writers((out, RequestRecord)) as (w,):
        for row in io.iter_rows(src, columns=cols):
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
