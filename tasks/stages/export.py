"""export: FEID, one instruction-data row per accepted face.

Input: Verdict + FaceRecord (crop bytes). Output: FeidRecord (accepted faces) and the
rejected Verdicts, with their reasons, in a table of their own. The `image` column is a
struct of bytes and path, which Hugging Face `datasets` decodes as an Image feature.
"""

from __future__ import annotations

from tasks.core.knowledge import AUS, Knowledge
from tasks.core.records import FeidRecord, Image, Turn

IMAGE = "<image>"


def _au_text(k: Knowledge, aus: list[str]) -> str:
    if not aus:
        return "No action units are clearly active."
    return ", ".join(f"{a} ({k.au_catalogue[a]['name']})" for a in aus) + "."


def _va_words(v: float, a: float) -> str:
    pv = "pleasant" if v > 0.2 else "unpleasant" if v < -0.2 else "neutral"
    pa = "high" if a > 0.3 else "low" if a < -0.3 else "moderate"
    return f"{pv} valence and {pa} arousal"


def conversations(
    k: Knowledge, expression: str, valence: float | None, arousal: float | None, aus: list[str] | None
) -> list[Turn]:
    """Instruction turns for the granularities FEID keeps; a withheld one (None) has none."""
    q_expr = f"{IMAGE}\nWhat is the facial expression of this person? Answer with one of: {', '.join(k.expressions)}."
    q_va = "Estimate the valence and arousal of this face, each in [-1, 1]."
    q_au = "Which facial action units (FACS) are active in this face?"
    q_all = "Describe the emotion this face shows, with the facial evidence for it."
    core, _ = k.prototype(expression)
    pairs = [(q_expr, expression)]
    desc = f"The face shows {expression}."
    if valence is not None and arousal is not None:
        pairs.append((q_va, f"Valence: {valence:+.2f}, arousal: {arousal:+.2f}."))
    if aus is not None:
        shared = [a for a in aus if a in core]
        pairs.append((q_au, _au_text(k, aus)))
        desc += " " + _au_text(k, aus)
        if shared:
            desc += (
                f" The {', '.join(shared)} {'movement supports' if len(shared) == 1 else 'movements support'}"
                " that reading."
            )
    if valence is not None and arousal is not None:
        desc += f" Its valence is {valence:+.2f} and its arousal {arousal:+.2f}, that is {_va_words(valence, arousal)}."
    pairs.append((q_all, desc))
    out: list[Turn] = []
    for q, a in pairs:
        out += [Turn(**{"from": "human", "value": q}), Turn(**{"from": "gpt", "value": a})]
    return out


def feid_row(
    verdict: dict, face: dict, k: Knowledge, *, annotator: str, model: str, prompt_version: str, params_hash: str
) -> FeidRecord:
    """An accepted verdict as a FEID row: withheld VA is null, withheld AUs are listed in
    `aus_withheld` with a null probability, and neither gets a conversation turn."""
    probs = list(verdict["au_probs"] or [None] * len(AUS))
    withheld = set(verdict.get("au_withheld") or [])
    probs = [None if a in withheld else p for a, p in zip(AUS, probs)]
    aus = [a for a in (verdict["aus"] or []) if a not in withheld]
    va_kept = verdict.get("va_status") in ("prior", "accepted")
    valence, arousal = (verdict["valence"], verdict["arousal"]) if va_kept else (None, None)
    au_kept = verdict.get("au_status") in ("prior", "accepted", "partial")
    expr_conf = verdict.get("expression_confidence") if verdict["expression_source"] == "annotator" else 1.0
    return FeidRecord(
        id=verdict["face_id"],
        image=Image(bytes=face["crop"], path=f"{verdict['face_id']}.jpg"),
        source=face["source"],
        label_set=face["label_set"] or list(k.expressions),
        au_set=face["au_set"] or list(AUS),
        expression=verdict["expression"],
        expression_confidence=float(expr_conf),
        expression_status=verdict["expression_status"],
        valence=valence,
        arousal=arousal,
        va_status=verdict.get("va_status") or "missing",
        aus=aus,
        aus_withheld=sorted(withheld),
        au_status=verdict.get("au_status") or "missing",
        au_probabilities=dict(zip(AUS, probs)),
        confidence=verdict["confidence"],
        conversations=conversations(k, verdict["expression"], valence, arousal, aus if au_kept else None),
        annotator=annotator,
        model=model,
        prompt_version=prompt_version,
        params_hash=params_hash,
        knowledge_version=k.digest,
    )
