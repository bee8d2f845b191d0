"""Dry-run estimate: counts what adaptive sampling would send, and cached samples are free."""

from __future__ import annotations

import json

from tasks.annotators.base import Annotator, CallResult, RawAnswer
from tasks.core.params import Params, Paths
from tasks.core.records import FaceRecord, RequestRecord
from tasks.infra.cache import ResponseCache
from tasks.infra.io import RecordWriter
from tasks.method.sampling import seed_for
from tasks.tools.estimate import dry_run


class Priced(Annotator):
    name, version, model = "priced", "1", "m"

    def signature(self):
        return {"name": self.name}

    def run(self, calls):  # never used by a dry run
        raise AssertionError("a dry run must not call the annotator")

    def estimate(self, calls):
        calls = list(calls)
        return {
            "calls": len(calls),
            "image_sends": len(calls),
            "samples": sum(len(c.indices) for c in calls),
            "cost_usd": 0.01 * len(calls),
        }


def _setup(tmp_path, monkeypatch, n_faces=3):
    p = Params(
        paths=Paths(input="x", crop=str(tmp_path / "crop"), prompt=str(tmp_path / "prompt")),
        sample={"k0": 2, "dk": 2, "kmax": 6, "stop_min_samples": 2},
        runtime={"cache": str(tmp_path / "cache")},
    )
    wf, wr = (
        RecordWriter(f"{p.paths.crop}/faces.parquet", FaceRecord),
        RecordWriter(f"{p.paths.prompt}/requests.parquet", RequestRecord),
    )
    for i in range(n_faces):
        wf.write(
            FaceRecord(
                face_id=f"f{i}",
                image_id=f"i{i}",
                face_index=0,
                n_faces=1,
                path="p",
                source="s",
                box_x=0,
                box_y=0,
                box_w=1,
                box_h=1,
                score=1,
                detector="none",
                crop=b"jpg",
                crop_sha256="h",
                crop_face_frac=0.6,
                label_set=[],
                au_set=[],
            )
        )
        wr.write(
            RequestRecord(
                request_id=f"r{i}",
                face_id=f"f{i}",
                variant="primed",
                ask=["expression"],
                prompt_version="v",
                messages_json=json.dumps([]),
                answer_schema=json.dumps({}),
                image_sha256="h",
            )
        )
    wf.commit(), wr.commit()
    ann = Priced()
    monkeypatch.setattr("tasks.annotators.build", lambda params: ann)
    return p, ann


def test_floor_and_ceiling_follow_the_adaptive_rounds(tmp_path, monkeypatch):
    p, _ = _setup(tmp_path, monkeypatch)
    est = dry_run(p)
    assert est["floor"] == {"calls": 3, "image_sends": 3, "samples": 6, "cost_usd": 0.03, "k_per_request": 2}
    # rounds: 0-1, 2-3, 4-5 -> three calls per request at the ceiling
    assert (est["ceiling"]["calls"], est["ceiling"]["samples"], est["ceiling"]["k_per_request"]) == (9, 18, 6)


def test_cached_samples_are_free(tmp_path, monkeypatch):
    p, ann = _setup(tmp_path, monkeypatch)
    cache = ResponseCache(p.runtime.cache, ann.signature_hash())
    from tasks.annotators.base import Call

    call = Call(
        request_id="r0",
        face_id="f0",
        messages=[],
        schema={},
        ask=("expression",),
        image=b"",
        indices=(0, 1),
        seeds=(seed_for(p.sample.seed, "r0", 0), seed_for(p.sample.seed, "r0", 1)),
    )
    cache.put(CallResult(call=call, answers=[RawAnswer(i, s, "{}") for i, s in zip(call.indices, call.seeds)]))
    cache.close()
    est = dry_run(p)
    assert est["cached_samples"] == 2
    assert (est["floor"]["calls"], est["floor"]["samples"]) == (2, 4)
