"""Knowledge data: sources recorded, consistency inputs, and the VA refit."""

from __future__ import annotations

import csv
import random

import pytest
import yaml

from tasks.core.knowledge import KNOWLEDGE_DIR, load
from tasks.tools.refit import refit


def test_every_knowledge_file_records_its_source():
    for f in KNOWLEDGE_DIR.glob("*.yaml"):
        text = f.read_text()
        assert "Source" in text or "source:" in text or f.name == "labels.yaml", f.name
    k = load()
    assert set(k.prototypes) == set(k.expressions) == set(k.centroids)
    for e in k.expressions:
        core, often = k.prototype(e)
        assert set(core) | set(often) <= set(k.aus)


def test_refit_centroids_and_spreads(tmp_path):
    r = random.Random(0)
    rows = [{"expression": "happiness", "valence": 0.5 + r.choice([-0.1, 0.1]), "arousal": 0.2} for _ in range(40)]
    rows += [{"expression": "sad", "valence": -0.5, "arousal": -0.5} for _ in range(3)]  # too few: kept
    rows += [
        {"expression": "bogus", "valence": 0.0, "arousal": 0.0},
        {"expression": "anger", "valence": 3, "arousal": 0},
    ]
    m = tmp_path / "m.csv"
    with open(m, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["expression", "valence", "arousal"])
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "va.yaml"
    fitted = refit(str(m), out)
    assert set(fitted) == {"happy"}
    n, v, a, s = fitted["happy"]
    assert n == 40 and v == pytest.approx(sum(x["valence"] for x in rows[:40]) / 40) and a == pytest.approx(0.2)
    assert s == pytest.approx(0.1, abs=0.01)
    d = yaml.safe_load(out.read_text())
    assert "refit from" in d["centroids"]["happy"]["source"]
    assert d["centroids"]["sad"]["valence"] == load().centroids["sad"]["valence"]  # kept
    assert "2 skipped" in d["source"]
    assert d["au_directions"] == load().au_directions


def test_refit_needs_the_columns(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("expression,valence\nhappy,0.1\n")
    with pytest.raises(ValueError, match="arousal"):
        refit(str(m), tmp_path / "va.yaml")


def test_a_project_knowledge_file_overrides_the_package_one(tmp_path, monkeypatch):
    """`knowledge/<file>` in the project (the working directory) replaces the package's file of
    that name, changes the knowledge digest, and is where `seke knowledge refit` writes."""
    from tasks.tools.refit import default_out

    base = load()
    monkeypatch.chdir(tmp_path)
    assert default_out() == KNOWLEDGE_DIR / "va.yaml"  # no project folder: the package's file
    (tmp_path / "knowledge").mkdir()
    assert default_out() == tmp_path.joinpath("knowledge", "va.yaml").relative_to(tmp_path)
    va = yaml.safe_load((KNOWLEDGE_DIR / "va.yaml").read_text())
    va["centroids"]["happy"]["valence"] = 0.123
    (tmp_path / "knowledge" / "va.yaml").write_text(yaml.safe_dump(va))
    load.cache_clear()
    try:
        own = load()
        assert own.centroids["happy"]["valence"] == 0.123 != base.centroids["happy"]["valence"]
        assert own.prototypes == base.prototypes and own.digest != base.digest
    finally:
        load.cache_clear()


def test_a_new_project_depends_on_its_knowledge_folder(tmp_path):
    from tasks.tools.project import project_dvc_yaml

    stages = project_dvc_yaml()["stages"]
    assert all("knowledge" in s["deps"] for s in stages.values() if s["cmd"].endswith(("prompt", "verify")))
    assert not any(str(d).startswith("tasks/") for s in stages.values() for d in s["deps"])
