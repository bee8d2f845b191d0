"""Prompt text that the prompt stage and the verification round share: the system message and
the emotion knowledge written out as sentences (AU catalogue, AU prototypes, VA centroids).
"""

from __future__ import annotations

from typing import Iterable

from tasks.core.knowledge import Knowledge

SYSTEM = (
    "You are an expert FACS coder and affective-computing annotator. You look at one "
    "cropped face and answer only with a JSON object that follows the given schema."
)


def au_catalogue_text(k: Knowledge, aus: Iterable[str]) -> str:
    return "\n".join(f"- {a} {k.au_catalogue[a]['name']}: {k.au_catalogue[a]['description']}" for a in aus)


def prototype_line(k: Knowledge, expr: str) -> str:
    core, often = k.prototype(expr)
    if not core:
        return f"A {expr} face typically shows no action units."
    s = f"A {expr} face typically shows {', '.join(core)}"
    return s + (f" (often also {', '.join(often)})." if often else ".")


def va_line(k: Knowledge, expr: str) -> str:
    v, a, s = k.va_centroid(expr)
    return (
        f"{expr.capitalize()} sits near valence {v:+.2f}, arousal {a:+.2f} "
        f"(plausible within about {s:.2f} of that point)."
    )
