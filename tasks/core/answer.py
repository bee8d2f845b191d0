"""The annotator's answer: one pydantic model per set of asked granularities.

The same model gives the JSON schema sent to the annotator (`response_format`) and parses
what comes back, so the two cannot drift. `parse` never raises: a bad answer becomes a
status and an error message, and the raw text is kept by the caller.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from tasks.core.knowledge import AUS, EXPRESSIONS

PARSER_VERSION = "1"

Expression = Literal[EXPRESSIONS]  # type: ignore[valid-type]
AUCode = Literal[AUS]  # type: ignore[valid-type]

_FIELDS = {
    "expression": {"expression": (Expression, Field(description="the facial expression, one of the label set"))},
    "va": {
        "valence": (float, Field(ge=-1, le=1, description="valence in [-1, 1]: unpleasant to pleasant")),
        "arousal": (float, Field(ge=-1, le=1, description="arousal in [-1, 1]: calm to excited")),
    },
    "aus": {"aus": (list[AUCode], Field(description="the action units that are visibly active"))},
}


@lru_cache(maxsize=None)
def answer_model(ask: tuple[str, ...]) -> type[BaseModel]:
    """The answer model for the asked granularities (a subset of expression, va, aus)."""
    unknown = set(ask) - set(_FIELDS)
    if unknown or not ask:
        raise ValueError(f"cannot ask for {sorted(unknown) or 'nothing'}")
    fields: dict = {}
    for g in ("expression", "va", "aus"):
        if g in ask:
            fields.update(_FIELDS[g])
    fields["rationale"] = (str, Field(description="one or two sentences naming the visible evidence"))
    name = "Answer_" + "_".join(g for g in ("expression", "va", "aus") if g in ask)
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)


def json_schema(ask: tuple[str, ...]) -> dict:
    """Strict JSON schema (OpenAI `json_schema` response format compatible)."""
    schema = answer_model(ask).model_json_schema()
    schema["additionalProperties"] = False
    schema["required"] = list(schema["properties"])
    return schema


class Parsed(BaseModel):
    status: Literal["ok", "invalid", "refused", "truncated"]
    error: Optional[str] = None
    expression: Optional[str] = None
    valence: Optional[float] = None
    arousal: Optional[float] = None
    aus: Optional[list[str]] = None
    rationale: Optional[str] = None


_REFUSAL = re.compile(r"\b(i can(?:no|')t|i am unable|i'm unable|sorry|cannot help|can't assist)\b", re.I)


def _extract_json(text: str) -> dict | None:
    """The first JSON object in `text`, tolerating code fences and prose around it."""
    text = text.strip()
    fence = re.search(r"```(?:json)?\s*(\{.*?\})\s*```", text, re.S)
    candidates = [fence.group(1)] if fence else []
    start = text.find("{")
    if start >= 0:
        depth = 0
        in_str = esc = False
        for i, ch in enumerate(text[start:], start):
            if in_str:
                esc = (ch == "\\") and not esc
                if ch == '"' and not esc:
                    in_str = False
                continue
            if ch == '"':
                in_str = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    candidates.append(text[start : i + 1])
                    break
    for c in candidates:
        try:
            obj = json.loads(c)
            if isinstance(obj, dict):
                return obj
        except json.JSONDecodeError:
            continue
    return None


def _normalise(obj: dict) -> dict:
    """Forgive harmless variations real models produce: case, AU spellings, aliases."""
    from tasks.core.knowledge import UnknownLabel, load

    k = load()
    out = dict(obj)
    if isinstance(out.get("expression"), str):
        try:
            out["expression"] = k.expression(out["expression"])
        except UnknownLabel:
            pass
    if isinstance(out.get("aus"), list):
        codes = []
        for a in out["aus"]:
            try:
                codes.append(k.au_code(a))
            except UnknownLabel:
                codes.append(str(a))  # left for validation to reject
        out["aus"] = sorted(set(codes))
    return out


def parse(
    text: str | None, ask: tuple[str, ...], finish_reason: str | None = None, refusal: str | None = None
) -> Parsed:
    """Parse and validate one raw answer. Never raises."""
    if refusal:
        return Parsed(status="refused", error=f"refusal: {refusal[:200]}")
    if text is None or not text.strip():
        return Parsed(status="invalid", error="empty answer")
    obj = _extract_json(text)
    if obj is None:
        if finish_reason == "length" or text.lstrip().startswith("{"):
            return Parsed(status="truncated", error="answer ends before its JSON object closes")
        if _REFUSAL.search(text):
            return Parsed(status="refused", error=f"refusal: {text[:200]}")
        return Parsed(status="invalid", error="no JSON object in the answer")
    try:
        ans = answer_model(ask).model_validate(_normalise(obj))
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(map(str, er['loc']))}: {er['msg']}" for er in e.errors()[:5])
        return Parsed(status="invalid", error=msgs)
    return Parsed(status="ok", **ans.model_dump())
