"""FEID's instruction turns: a versioned bank of phrasings (`tasks/instructions/`),
drawn per face by a seeded draw, in single-turn and multi-turn rows.

Task types: `classification`, `va` (valence-arousal), `au` (action units), `description`
(the annotator's verified rationale, or a templated description), and `chain` (from AUs to
the expression). A withheld granularity has no turn: `va` needs kept VA, `au` and `chain`
need kept AUs. The draw is `random.Random("<seed>:<face id>")`, so a re-run is identical
and a change of bank, mix or seed changes only the conversations.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tasks.core.knowledge import KNOWLEDGE_DIR, Knowledge
from tasks.core.yamlio import load_yaml

BANKS = KNOWLEDGE_DIR.parent / "instructions"  # versioned banks, package data beside the knowledge
TASKS = ("classification", "va", "au", "description", "chain")
IMAGE = "<image>"


@dataclass(frozen=True)
class Bank:
    version: str
    questions: dict[str, tuple[str, ...]]
    answers: dict[str, tuple[str, ...]]


@lru_cache(maxsize=8)
def load_bank(name: str) -> Bank:
    """A bank by name (`v1` = `tasks/instructions/v1.yaml`) or by path (read once per process)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else BANKS / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"instruction bank {name!r} not found ({path})")
    d = load_yaml(path.read_text())
    missing = [t for t in TASKS if not d.get("questions", {}).get(t)]
    missing += [f"answers.{t}" for t in ("classification", "va", "au", "chain") if not d.get("answers", {}).get(t)]
    if missing:
        raise ValueError(f"instruction bank {path} lacks phrasings for: {', '.join(missing)}")
    q = {t: tuple(v) for t, v in d["questions"].items()}
    a = {t: tuple(v) for t, v in d["answers"].items()}
    return Bank(version=str(d.get("version", path.stem)), questions=q, answers=a)


@dataclass(frozen=True)
class Face:
    """The kept labels of one FEID row (None = withheld) and its description text."""

    id: str
    expression: str
    labels: list[str]
    valence: float | None
    arousal: float | None
    aus: list[str] | None
    description: str


def au_text(k: Knowledge, aus: list[str]) -> str:
    if not aus:
        return "no action units are clearly active."
    return ", ".join(f"{a} ({k.au_catalogue[a]['name']})" for a in aus) + "."


def va_words(v: float, a: float) -> str:
    pv = "pleasant" if v > 0.2 else "unpleasant" if v < -0.2 else "neutral"
    pa = "high" if a > 0.3 else "low" if a < -0.3 else "moderate"
    return f"{pv} valence and {pa} arousal"


def support(k: Knowledge, expression: str, aus: list[str]) -> str:
    core, _ = k.prototype(expression)
    shared = [a for a in aus if a in core]
    if not shared:
        return f"None of them is a core movement of {expression}, so the reading rests on the face as a whole."
    verb = "is a core movement" if len(shared) == 1 else "are core movements"
    return f"{' and '.join(shared)} {verb} of {expression}."


def templated_description(k: Knowledge, f: Face) -> str:
    """The description of a face with no verified rationale, built from its kept labels."""
    out = [f"The face shows {f.expression}."]
    if f.aus is not None:
        if f.aus:
            cues = "; ".join(f"{k.au_catalogue[a]['description']} ({a})" for a in f.aus)
            out.append(f"Visible cues: {cues}.")
        else:
            out.append("No action unit is clearly active.")
        out.append(support(k, f.expression, f.aus) if f.aus else "")
    if f.valence is not None and f.arousal is not None:
        out.append(f"Overall it reads as {va_words(f.valence, f.arousal)} ({f.valence:+.2f}, {f.arousal:+.2f}).")
    return " ".join(s for s in out if s)


def _available(f: Face) -> list[str]:
    va = f.valence is not None and f.arousal is not None
    return [t for t in TASKS if (t != "va" or va) and (t not in ("au", "chain") or f.aus is not None)]


def _answer(t: str, f: Face, k: Knowledge, bank: Bank, r: random.Random) -> str:
    if t == "description":
        return f.description
    fill = {"expression": f.expression, "labels": ", ".join(f.labels)}
    if t in ("va",):
        fill.update(valence=f"{f.valence:+.2f}", arousal=f"{f.arousal:+.2f}", va_words=va_words(f.valence, f.arousal))
    if t in ("au", "chain"):
        fill.update(aus=au_text(k, f.aus), support=support(k, f.expression, f.aus) if f.aus else "")
    text = r.choice(bank.answers[t]).format(**fill)
    return text[0].upper() + text[1:] if t == "au" else text


def tasks_for(f: Face, r: random.Random, mix: dict[str, float], multi_turn: float) -> list[str]:
    """The tasks of one row: all available ones (multi-turn, classification or chain first),
    or one drawn by the `mix` weights (single-turn)."""
    avail = [t for t in _available(f) if mix.get(t, 0) > 0] or ["classification"]
    if r.random() < multi_turn and len(avail) > 1:
        first = [t for t in ("classification", "chain") if t in avail]
        lead = r.choices(first, weights=[mix[t] for t in first])[0] if first else avail[0]
        rest = [t for t in avail if t not in ("classification", "chain") and not (lead == "chain" and t == "au")]
        return [lead, *rest]
    return [r.choices(avail, weights=[mix[t] for t in avail])[0]]


def conversation(f: Face, k: Knowledge, bank: Bank, mix: dict[str, float], multi_turn: float, seed: int) -> list[dict]:
    """The `{from, value}` turns of one FEID row; the first human turn carries the image."""
    r = random.Random(f"{seed}:{f.id}")
    turns: list[dict] = []
    for i, t in enumerate(tasks_for(f, r, mix, multi_turn)):
        q = r.choice(bank.questions[t]).format(labels=", ".join(f.labels))
        turns.append({"from": "human", "value": f"{IMAGE}\n{q}" if i == 0 else q})
        turns.append({"from": "gpt", "value": _answer(t, f, k, bank, r)})
    return turns
