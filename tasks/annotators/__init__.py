"""Annotators answer requests. `build(params)` returns the one `params.annotator.backend` names
(a name in `tasks/core/backends.py`, or `module:Class`)."""

from __future__ import annotations

import importlib

from tasks.annotators.base import Annotator
from tasks.core import backends
from tasks.core.calls import Call, CallResult, RawAnswer


def backend_class(backend: str) -> type[Annotator]:
    """The class a backend name (or `module:Class`) stands for."""
    module, _, name = backends.target(backend).partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Annotator)):
        raise TypeError(f"annotator.backend {backend!r}: {cls!r} is not a tasks.annotators.base.Annotator")
    return cls


def build(params) -> Annotator:
    """The annotator for `params.annotator.backend`, built once per process."""
    return backend_class(params.annotator.backend).from_params(params)


__all__ = ["Annotator", "Call", "CallResult", "RawAnswer", "backend_class", "build"]
