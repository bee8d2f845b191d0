"""Verified rationales: the annotator's own words for a face, kept only when they agree with
what verify accepted.

A rationale qualifies when it comes from an answer (`status == ok`) whose expression is the
accepted one, whose AUs agree with the accepted AUs (Jaccard >= `MIN_AU_AGREEMENT` over the
AUs that were decided, not withheld), and whose VA, when VA is kept, lies within
`MAX_VA_GAP` of the accepted VA. Its text must then contradict no accepted granularity: it
may not name another expression (any of the alias table's names for it) nor an AU, by code
or by name, that verify judged absent. Negations ("not angry") count as naming: the check is
deliberately strict, because a rejected rationale costs only a templated description.

Of the qualifying answers the one whose AUs agree best is chosen (then the closest VA, then
the first by request and sample index), so the choice is deterministic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tasks.core.knowledge import AUS, Knowledge

MIN_AU_AGREEMENT = 0.5
MAX_VA_GAP = 0.4
NOT_CLAIMS = {"calm"}  # alias-table words that prose uses for arousal, not to name an expression
TEXT_VARIANTS = ("primed", "blind", "plain", "verify", "verify_blind")


@dataclass(frozen=True)
class Pick:
    status: str  # verified | contradicts | inconsistent | none
    text: str | None = None
    sample: str | None = None  # "<request_id>#<sample_index>"


_PATTERNS: dict[str, tuple[dict[str, re.Pattern], dict[str, re.Pattern]]] = {}


def _patterns(k: Knowledge) -> tuple[dict[str, re.Pattern], dict[str, re.Pattern]]:
    """One regex per expression (all its alias names) and one per AU (code and name), per knowledge version."""
    if k.digest not in _PATTERNS:
        _PATTERNS[k.digest] = _compile(k)
    return _PATTERNS[k.digest]


def _compile(k: Knowledge) -> tuple[dict[str, re.Pattern], dict[str, re.Pattern]]:
    names: dict[str, list[str]] = {e: [e] for e in k.expressions}
    for alias, label in k.aliases.items():
        if alias.isalpha() and len(alias) > 2 and alias not in NOT_CLAIMS:  # "ha", "0": scheme codes, not words
            names[label].append(alias)
    expr = {e: re.compile(r"\b(" + "|".join(map(re.escape, sorted(set(v)))) + r")\b", re.I) for e, v in names.items()}
    aus = {}
    for a in AUS:
        n = str(k.au_catalogue.get(a, {}).get("name", "")).strip()
        alts = [re.escape(a), re.escape(a).replace("AU0", r"AU\s?0?").replace("AU", r"AU\s?")]
        if n:
            alts.append(re.escape(n))
        aus[a] = re.compile(r"\b(" + "|".join(alts) + r")\b", re.I)
    return expr, aus


def contradictions(text: str, k: Knowledge, expression: str, absent: set[str]) -> list[str]:
    """What in `text` contradicts the accepted labels: another expression named, or an AU judged absent."""
    expr, aus = _patterns(k)
    out = [f"names {e}" for e, rx in expr.items() if e != expression and rx.search(text)]
    out += [f"names absent {a}" for a in sorted(absent) if aus[a].search(text)]
    return out


def _jaccard(a: set[str], b: set[str]) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def _agreement(s: dict, verdict: dict, kept: set[str]) -> tuple[float, float] | None:
    """(AU agreement, VA gap) of one answer with the verdict, or None when it disagrees."""
    if s.get("expression") and s["expression"] != verdict["expression"]:
        return None
    if not s.get("expression") and s.get("variant") not in ("primed",):
        return None  # an answer that states no expression backs none
    jac = 1.0
    if verdict.get("au_kept") and s.get("aus") is not None:
        jac = _jaccard(set(s["aus"]) & kept, set(verdict["aus"] or []) & kept)
        if jac < MIN_AU_AGREEMENT:
            return None
    gap = 0.0
    if verdict.get("va_kept") and s.get("valence") is not None and s.get("arousal") is not None:
        gap = max(abs(s["valence"] - verdict["valence"]), abs(s["arousal"] - verdict["arousal"]))
        if gap > MAX_VA_GAP:
            return None
    return jac, gap


def pick(verdict: dict, samples: list[dict], k: Knowledge) -> Pick:
    """The verified rationale of an accepted face (see the module docstring).

    `verdict` needs `expression`, `aus`, `au_kept`, `au_withheld`, `va_kept`, `valence`,
    `arousal`; samples need `request_id`, `sample_index`, `variant`, `status`, `expression`,
    `aus`, `valence`, `arousal`, `rationale`."""
    written = [s for s in samples if s.get("status") == "ok" and (s.get("rationale") or "").strip()]
    if not written or not verdict.get("expression"):
        return Pick("none")
    kept = set(AUS) - set(verdict.get("au_withheld") or [])
    absent = (kept - set(verdict.get("aus") or [])) if verdict.get("au_kept") else set()
    best, contradicted, agreeing = None, False, False
    for s in sorted(written, key=lambda s: (s["request_id"], s["sample_index"])):
        if s.get("variant") not in TEXT_VARIANTS:
            continue
        agree = _agreement(s, verdict, kept)
        if agree is None:
            continue
        agreeing = True
        if contradictions(s["rationale"], k, verdict["expression"], absent):
            contradicted = True
            continue
        key = (-agree[0], agree[1])
        if best is None or key < best[0]:
            best = (key, s)
    if best is not None:
        s = best[1]
        return Pick("verified", s["rationale"].strip(), f"{s['request_id']}#{s['sample_index']}")
    return Pick("contradicts" if contradicted else "inconsistent" if not agreeing else "none")
