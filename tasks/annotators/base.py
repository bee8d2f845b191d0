"""The annotator interface.

A `Call` asks for several samples (`indices`) of one request about one face crop. An
annotator answers with raw text per sample; parsing is common to all annotators
(`tasks.core.answer.parse`) and happens after the response cache, so a parser change re-parses
cached raw answers without new calls.

Contract of `Annotator.run`: yield exactly one `CallResult` per `Call`, in any order, as
results arrive. A failed call is a `CallResult` with `error` set (never an exception),
unless the annotator decides the whole run must stop (e.g. a budget or a persistent
outage), in which case it raises `AnnotatorStop` after yielding what it has.

`calls` may be a pipelined feed that gives `WAIT` when no call is ready yet: the caller is
still working on results already yielded. An annotator that answers synchronously never
sees it (the caller has made the next calls before it asks); a concurrent one waits a
moment, or for a call in flight, and asks again.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import Iterable, Iterator

from tasks.core.calls import Call, CallResult


class AnnotatorStop(RuntimeError):
    """The run must stop (budget exhausted, endpoint down). Results so far are kept."""


class Annotator(ABC):
    """A backend (registered in tasks/core/backends.py). What it can do, it declares here;
    callers read these, never its name."""

    name: str
    version: str
    model: str
    supports_verification: bool = False  # answers the verification round (tasks.method.verification)
    is_local_models: bool = False  # its answers are the local models' own: their second opinion adds nothing
    writes_rationales: bool = True  # its rationales are prose about the face (FEID's description tasks use them)

    @classmethod
    def from_params(cls, params) -> "Annotator":
        """Built from the whole params (`annotator` and `runtime` sections)."""
        return cls(params.annotator, params.runtime)

    @classmethod
    def environment_problems(cls, params) -> list[str]:
        """What this environment lacks to run the backend with these params (a model file not
        installed, ...), one line each naming the fix; checked before DVC starts
        (`flows.preflight`). By default nothing: an endpoint is only known by calling it."""
        return []

    def estimate(self, calls: Iterable[Call]) -> dict:
        """What `calls` would cost, sending nothing (`seke estimate`). By default: nothing but time."""
        calls = list(calls)
        return {"calls": len(calls), "samples": sum(len(c.indices) for c in calls), "cost_usd": 0.0}

    def estimate_warning(self) -> str | None:
        """Why the estimate may be far off, if it may."""
        return None

    @abstractmethod
    def signature(self) -> dict:
        """Everything about this annotator that can change an answer (model, temperature,
        weights, ...). Part of the response-cache key. Never includes secrets or endpoints'
        credentials."""

    @abstractmethod
    def run(self, calls: Iterable[Call]) -> Iterator[CallResult]:
        """Answer the calls; see the module docstring for the contract."""

    def close(self) -> None:  # noqa: B027 - optional: most annotators hold nothing to release
        return None

    def signature_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.signature(), sort_keys=True).encode()).hexdigest()[:16]
