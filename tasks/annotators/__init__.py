"""Annotators answer requests. `build(params)` returns the one `params.annotator.backend` names."""

from __future__ import annotations

from tasks.annotators.base import Annotator
from tasks.core.calls import Call, CallResult, RawAnswer


def build(params) -> Annotator:
    """The annotator for `params.annotator.backend`, built once per process."""
    backend = params.annotator.backend
    if backend == "local":
        from tasks.annotators.local import LocalAnnotator

        return LocalAnnotator(params.annotator)
    if backend == "openai":
        from tasks.annotators.openai_compat import OpenAIAnnotator

        return OpenAIAnnotator(params.annotator, params.runtime)
    raise ValueError(f"unknown annotator backend {backend!r}")


__all__ = ["Annotator", "Call", "CallResult", "RawAnswer", "build"]
