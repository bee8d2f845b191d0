"""The annotator backends, in one table. `annotator.backend` names one of them, or any
`module:Class` importable from the project (an `tasks.annotators.base.Annotator` subclass), so a
new backend is one class and, to give it a short name, one row here. What a backend can do
(answer the verification round, estimate its cost, ...) the class declares; nothing tests a
backend's name (see CONTRIBUTING.md, "Add an annotator backend")."""

from __future__ import annotations

import re

BACKENDS = {
    "local": "tasks.annotators.local:LocalAnnotator",
    "openai": "tasks.annotators.openai_compat:OpenAIAnnotator",
}
_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def names() -> list[str]:
    return list(BACKENDS)


def target(backend: str) -> str:
    """`module:Class` of a backend name (a `module:Class` is its own)."""
    return BACKENDS.get(backend, backend)


def check(backend: str) -> str:
    if backend in BACKENDS or _TARGET.fullmatch(backend):
        return backend
    raise ValueError(f"{backend!r} is not a backend: one of {', '.join(BACKENDS)}, or module:Class")
