"""The verification round's request and answer: the face's aggregated answer and the relevant
knowledge shown to the annotator, which confirms or corrects it (SV-UAMC's self-verification).
"""

from __future__ import annotations

import hashlib
import json

from tasks.core.knowledge import Knowledge
from tasks.core.prompts import SYSTEM, prototype_line, va_line

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
        lines.append("Knowledge: " + prototype_line(k, expr) + " " + va_line(k, expr))
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
