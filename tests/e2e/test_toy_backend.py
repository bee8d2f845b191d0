"""A new annotator backend is one class: registered by `annotator.backend: module:Class` (or a
row in tasks/core/backends.py), it builds FEID through `dvc repro` with no other module touched.
What it can do it declares (`supports_verification`, `is_local_models`, `estimate`)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from opsproj import london, make_project, run

TOY = '''
import json

from tasks.annotators.base import Annotator
from tasks.core.calls import CallResult, RawAnswer


class ToyAnnotator(Annotator):
    """Says every face smiles. No verification round (the default), costs nothing (the default)."""

    name, version = "toy", "1"

    def __init__(self, annotator, runtime):
        self.model = annotator.model

    def signature(self):
        return {"name": self.name, "version": self.version, "model": self.model}

    def run(self, calls):
        for c in calls:
            full = {"expression": "happy", "valence": 0.6, "arousal": 0.4, "aus": ["AU06", "AU12"]}
            keep = {"expression": ["expression"], "va": ["valence", "arousal"], "aus": ["aus"]}
            obj = {k: full[k] for a in c.ask for k in keep[a]} | {"rationale": "cheeks raised, lips pulled up"}
            yield CallResult(c, [RawAnswer(i, s, json.dumps(obj), "stop") for i, s in zip(c.indices, c.seeds)])
'''


@pytest.mark.e2e
def test_a_toy_backend_builds_feid_through_dvc_repro(tmp_path):
    params = {"annotator": {"backend": "toy_backend:ToyAnnotator", "model": "toy-1"}}
    proj = make_project(tmp_path, london(4), params=params)
    (proj / "toy_backend.py").write_text(TOY)  # the project's own module: nothing in tasks/ changes
    run(proj, "dvc", "repro")
    samples = pq.read_table(proj / "data/sample_runs/samples.parquet").to_pylist()
    assert samples and {s["annotator"] for s in samples} == {"toy"} and {s["status"] for s in samples} == {"ok"}
    assert not [s for s in samples if "verif" in s["variant"]]  # it declared no verification round
    feid = pq.read_table(proj / "data/feid/feid.parquet").to_pylist()
    assert len(feid) == 4 and {r["annotator"] for r in feid} == {"toy"}
    m = json.loads((proj / "metrics/sample.json").read_text())
    assert m["annotator"] == "toy" and m["cost_usd"] == 0


def test_a_backend_that_is_not_an_annotator_is_refused():
    from tasks.annotators import backend_class
    from tasks.core.params import Annotator, ParamsError  # noqa: F401

    with pytest.raises(TypeError, match="is not a tasks.annotators.base.Annotator"):
        backend_class("json:dumps")
    with pytest.raises(ValueError, match="is not a backend: one of local, openai, or module:Class"):
        Annotator(backend="gemini")
    assert backend_class("local").is_local_models and backend_class("openai").supports_verification
