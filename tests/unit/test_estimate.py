"""Dry-run estimate: counts what adaptive sampling would send, and cached samples are free."""

from __future__ import annotations

import json

from tasks.annotators.base import Annotator
from tasks.core.calls import CallResult, RawAnswer
from tasks.core.params import Params, Paths
from tasks.core.records import FaceRecord, RequestRecord
from tasks.infra.cache import ResponseCache
from tasks.infra.io import RecordWriter, iter_rows
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
    from tasks.core.calls import Call

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


def test_ceiling_counts_the_verification_round_and_the_blind_cap(tmp_path, monkeypatch):
    p, ann = _setup(tmp_path, monkeypatch, n_faces=2)
    ann.supports_verification = True
    faces = list(iter_rows(f"{p.paths.crop}/faces.parquet"))
    reqs = list(iter_rows(f"{p.paths.prompt}/requests.parquet"))
    # face 0 is labelled (its blind request is its calibration mirror: sampled to kmax);
    # face 1 has AU priors only (its blind request is capped at blind_k)
    faces[0].update(prior_expression="happy", label_set=["happy", "sad"])
    wf = RecordWriter(f"{p.paths.crop}/faces.parquet", FaceRecord)
    wr = RecordWriter(f"{p.paths.prompt}/requests.parquet", RequestRecord)
    for f in faces:
        wf.write(FaceRecord(**f))
    for r in reqs:
        wr.write(RequestRecord(**r))
        wr.write(RequestRecord(**{**r, "request_id": r["request_id"] + "b", "variant": "blind"}))
    wf.commit(), wr.commit()
    est = dry_run(p)
    assert est["floor"]["samples"] == 2 * 2 + 2 * 2 and "verification_calls" not in est["floor"]
    # kmax 6 for both primed requests and the mirror, blind_k (2) for face 1's blind request;
    # one verification call per generated expression (2) and per labelled face's mirror (1)
    assert est["ceiling"]["verification_calls"] == 3
    assert est["ceiling"]["samples"] == 6 + 6 + 6 + p.sample.blind_k + 3


def test_images_are_priced_by_the_model_s_own_billing():
    import io

    from PIL import Image

    from tasks.annotators.openai_compat.transport import billing_of, image_tokens

    def jpg(w, h):
        buf = io.BytesIO()
        Image.new("RGB", (w, h)).save(buf, format="JPEG")
        return buf.getvalue()

    crop = jpg(256, 256)
    assert image_tokens(crop, "auto", "gpt-4o") == 85 + 170
    assert image_tokens(crop, "auto", "gpt-4o-mini-2024-07-18") == 2833 + 5667  # same dollars at 1/16 the price
    assert image_tokens(crop, "low", "gpt-4o") == 85
    assert image_tokens(crop, "auto", "openai/gpt-4.1-mini") == round(1.62 * 64 + 0.5)
    assert image_tokens(crop, "low", "gpt-4.1-mini") == image_tokens(crop, "high", "gpt-4.1-mini")  # detail: no effect
    assert image_tokens(jpg(2048, 2048), "auto", "gpt-4.1-nano") <= 2.46 * 1536 + 1
    assert image_tokens(jpg(1024, 1024), "high", "gpt-4o") == 765  # the vision guide's own example
    assert billing_of("Qwen/Qwen2.5-VL-7B-Instruct") == billing_of("gpt-4o")  # unknown models: GPT-4o's


def test_gemini_images_and_an_unknown_model_warning(tmp_path, monkeypatch):
    import io

    from PIL import Image

    from tasks.annotators.openai_compat.transport import image_tokens, known_model

    def jpg(w, h):
        buf = io.BytesIO()
        Image.new("RGB", (w, h)).save(buf, format="JPEG")
        return buf.getvalue()

    assert image_tokens(jpg(256, 256), "auto", "gemini-2.5-flash") == 258
    assert image_tokens(jpg(1000, 700), "auto", "gemini-2.0-flash") == 258 * 2 * 1
    assert known_model("gpt-4o-2024-08-06") and not known_model("Qwen/Qwen2.5-VL-7B-Instruct")
    from tasks.annotators.openai_compat import OpenAIAnnotator

    p, ann = _setup(tmp_path, monkeypatch)
    for model, warns in (("qwen2.5-vl-72b", True), ("gpt-4o-mini", False)):
        q = p.model_copy(update={"annotator": p.annotator.model_copy(update={"backend": "openai", "model": model})})
        got = OpenAIAnnotator.from_params(q).estimate_warning() or ""  # the backend declares its own warning
        assert ("not in the image-billing table" in got) == warns, got
    assert "warning" not in dry_run(p)
    monkeypatch.setattr(ann, "estimate_warning", lambda: "priced like GPT-4o's")
    assert dry_run(p)["warning"] == "priced like GPT-4o's"  # the estimate passes it on


def _sim_workspace(tmp_path, n: int) -> Params:
    """crop and prompt outputs for `n` distinct images, as the stages write them."""
    import hashlib

    from simserver import face_image

    from tasks.core.knowledge import load
    from tasks.stages.prompt import requests_for

    k = load()
    p = Params(
        paths=Paths(input="x", crop=str(tmp_path / "crop"), prompt=str(tmp_path / "prompt")),
        annotator={"backend": "openai", "model": "gpt-4o", "price_in_per_mtok": 2.5, "price_out_per_mtok": 10.0},
        runtime={"cache": str(tmp_path / "cache"), "progress_every_s": 3600, "concurrency": 16},
    )
    wf = RecordWriter(f"{p.paths.crop}/faces.parquet", FaceRecord)
    wr = RecordWriter(f"{p.paths.prompt}/requests.parquet", RequestRecord)
    for i in range(n):
        img = face_image(i)
        sha = hashlib.sha256(img).hexdigest()
        f = FaceRecord(
            face_id=f"f{i}", image_id=sha, face_index=0, n_faces=1, path=f"f{i}.jpg", source="t",
            box_x=0, box_y=0, box_w=64, box_h=64, score=1, detector="none",
            crop=img, crop_sha256=sha, crop_face_frac=1, label_set=[], au_set=[],
        )  # fmt: skip
        wf.write(f)
        for r in requests_for(k, f, "v1", True, True):
            wr.write(r)
    wf.commit(), wr.commit()
    return p


def test_a_pilot_predicts_the_run_within_ten_percent_and_the_bounds_hold(tmp_path):
    """Against the simulated VLLM, with K0 != Kmax and the verification round on: a pilot of
    50 random faces predicts the calls, image sends, tokens and cost of the whole run within
    10%, and the run lies between the floor and the ceiling."""
    from simserver import sim_server

    from tasks import annotators
    from tasks.core.knowledge import load
    from tasks.method.pipeline import sample_stream
    from tasks.method.sampling import Tally

    p = _sim_workspace(tmp_path, 200)
    assert p.sample.k0 != p.sample.kmax and p.sample.verify_round != "none"
    with sim_server():
        bounds = dry_run(p)
        est = dry_run(p, pilot_faces=50)
        paid = est["pilot"]["paid"]
        ann = annotators.build(p)
        cache = ResponseCache(p.runtime.cache, ann.signature_hash())
        tally = Tally()
        pairs = []
        reqs = {}
        for r in iter_rows(f"{p.paths.prompt}/requests.parquet"):
            reqs.setdefault(r["face_id"], []).append(r)
        pairs = [(f, reqs[f["face_id"]]) for f in iter_rows(f"{p.paths.crop}/faces.parquet")]
        for _ in sample_stream(iter(pairs), ann, cache, p, load(), tally, 64):
            pass
        stats = dict(ann.stats)
        ann.close()
        cache.close()
    assert tally.cached > 0, "the pilot's answers are reused, not paid again"
    measured = {
        "calls": paid["calls"] + tally.calls,
        "image_sends": paid["image_sends"] + stats["image_sends"],
        "tokens_in": paid["tokens_in"] + tally.tokens_in,
        "tokens_out": paid["tokens_out"] + tally.tokens_out,
        "cost_usd": paid["cost_usd"] + tally.cost_usd,
    }
    for key, m in measured.items():
        e = est["pilot"]["expected"][key]
        assert abs(e - m) <= 0.10 * m, (key, e, m)
    assert bounds["floor"]["calls"] <= measured["calls"] <= bounds["ceiling"]["calls"]
    assert bounds["floor"]["cost_usd"] <= measured["cost_usd"] <= bounds["ceiling"]["cost_usd"]
