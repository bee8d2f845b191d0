"""Adaptive sampling and the verification round, with a scripted in-process annotator."""

from __future__ import annotations

import json

from tasks.annotators.base import Annotator
from tasks.core.calls import CallResult, RawAnswer
from tasks.core.knowledge import load
from tasks.core.params import Params, Paths, Sample
from tasks.core.records import FaceRecord
from tasks.infra.cache import ResponseCache
from tasks.method.pipeline import sample_batch
from tasks.method.sampling import Tally
from tasks.stages.prompt import requests_for

K = load()


class Scripted(Annotator):
    """Answers face 'easy' always happy, face 'hard' alternating happy/sad; verification
    answers confirm happy and reject anything else. Each answer's AUs and VA follow the
    label it states, as a rationalising VLLM's do."""

    name, version, model = "scripted", "1", "scripted"
    supports_verification = True

    def __init__(self):
        self.calls = []

    def signature(self):
        return {"name": "scripted"}

    def run(self, calls):
        for c in calls:
            self.calls.append(c)
            out = []
            for i, s in zip(c.indices, c.seeds):
                if c.ask == ("verify",):
                    t = c.messages[1]["content"][0]["text"]
                    obj = {"confirmed": '"expression": "happy"' in t, "expression": "happy", "rationale": "r"}
                else:
                    e = "happy" if c.face_id == "easy" or i % 2 == 0 else "sad"
                    va, aus = (0.5, ["AU06", "AU12"]) if e == "happy" else (-0.5, ["AU01", "AU04", "AU15"])
                    obj = {"expression": e, "valence": va, "arousal": 0.3, "aus": aus, "rationale": "r"}
                out.append(RawAnswer(index=i, seed=s, text=json.dumps(obj), finish_reason="stop"))
            yield CallResult(call=c, answers=out)


def face(fid: str) -> dict:
    return FaceRecord(
        face_id=fid,
        image_id=fid,
        face_index=0,
        n_faces=1,
        path=fid,
        source="t",
        box_x=0,
        box_y=0,
        box_w=1,
        box_h=1,
        score=1,
        detector="none",
        crop=fid.encode(),
        crop_sha256=fid * 4,
        crop_face_frac=1,
        label_set=[],
        au_set=[],
    ).model_dump()


def run(tmp_path, ann, **sample):
    p = Params(paths=Paths(input="x"), sample=Sample(**sample))
    faces = [face("easy"), face("hard")]
    reqs = {f["face_id"]: [r.model_dump() for r in requests_for(K, FaceRecord(**f), "v1", True, True)] for f in faces}
    cache = ResponseCache(str(tmp_path / "cache"), ann.signature_hash())
    tally = Tally()
    out = list(sample_batch(faces, reqs, ann, cache, p, K, tally))
    cache.close()
    return out, tally


def test_adaptive_stops_early_and_verifies(tmp_path):
    ann = Scripted()
    out, tally = run(
        tmp_path,
        ann,
        k0=2,
        dk=2,
        kmax=6,
        stop_min_samples=2,
        stop_confidence=0.87,
        verify_round="all",
        stop_rule="bayes",
    )
    gen = lambda fid: [s for s in out if s["face_id"] == fid and s["variant"] == "primed"]
    assert len(gen("easy")) == 2  # 2 of 2 agree: stop
    assert len(gen("hard")) == 6  # split votes: up to kmax
    ver = {s["face_id"]: s for s in out if s["variant"] == "verify"}
    assert ver["easy"]["expression"] == "happy"  # confirmed
    assert tally.per_face_k == [2, 6] and tally.verify_calls == 2
    # a re-run is answered by the cache: no calls at all
    ann2 = Scripted()
    out2, tally2 = run(
        tmp_path,
        ann2,
        k0=2,
        dk=2,
        kmax=6,
        stop_min_samples=2,
        stop_confidence=0.87,
        verify_round="all",
        stop_rule="bayes",
    )
    key = lambda rows: [(s["face_id"], s["variant"], s["sample_index"], s["expression"]) for s in rows]
    assert key(out2) == key(out) and all(s["cached"] for s in out2)
    assert ann2.calls == []


def test_fixed_k_and_no_verification(tmp_path):
    ann = Scripted()
    out, tally = run(tmp_path, ann, k0=4, dk=1, kmax=4, verify_round="none")
    assert tally.per_face_k == [4, 4] and not any(s["variant"] == "verify" for s in out)
    assert all(c.ask != ("verify",) for c in ann.calls)


def test_uncertain_round_skips_certain_faces(tmp_path):
    ann = Scripted()
    out, _ = run(
        tmp_path,
        ann,
        k0=3,
        dk=2,
        kmax=5,
        stop_min_samples=3,
        stop_confidence=0.9,
        verify_round="uncertain",
        verify_below=0.95,
        stop_rule="bayes",
    )
    # easy: 3 of 3 with AUs and VA that agree (evidence posterior 0.98); hard: 3 of 5 (0.90)
    assert {s["face_id"] for s in out if s["variant"] == "verify"} == {"hard"}


def test_annotators_without_verification_are_not_asked(tmp_path):
    ann = Scripted()
    ann.supports_verification = False
    out, _ = run(tmp_path, ann, verify_round="all")
    assert not any(s["variant"] == "verify" for s in out)


def test_a_labelled_face_is_sampled_blind_like_an_unlabelled_one(tmp_path):
    """Its blind request gets the same k0/dk/kmax, stopping rule and verification round as
    an unlabelled face's request (its calibration mirror), so their evidence is comparable."""
    p = Params(paths=Paths(input="x"), sample=Sample(k0=3, dk=2, kmax=5, stop_lead=3, verify_round="leaders"))
    runs = {}
    for name, prior in (("lab", "happy"), ("free", None)):
        ann = Scripted()
        f = {**face("easy"), "prior_expression": prior}
        reqs = {"easy": [r.model_dump() for r in requests_for(K, FaceRecord(**f), "v1", True, True)]}
        cache = ResponseCache(str(tmp_path / name), ann.signature_hash())
        runs[name] = (list(sample_batch([f], reqs, ann, cache, p, K, Tally())), ann.calls)
        cache.close()
    lab, lab_calls = runs["lab"]
    free, free_calls = runs["free"]
    assert len([s for s in lab if s["variant"] == "blind"]) == len([s for s in free if s["variant"] == "primed"]) == 3
    assert [s["variant"] for s in lab].count("verify_blind") == [s["variant"] for s in free].count("verify") == 1
    assert not any(s["variant"] == "verify" for s in lab)
    # the blind request and its verification read exactly like the unlabelled face's
    blind_req = [c for c in lab_calls if "Human annotators" not in c.messages[1]["content"][0]["text"]]
    assert [c.messages for c in blind_req] == [c.messages for c in free_calls]


class FailsFirst(Scripted):
    """Scripted, but the first two answers of every sampling request fail (a 500 that
    exhausted its retries: no answer for those indices)."""

    def run(self, calls):
        for res in super().run(calls):
            if res.call.ask != ("verify",):
                kept = [a for a in res.answers if a.index >= 2]
                res = CallResult(
                    call=res.call, answers=kept, error="APIStatusError 500" if len(kept) < len(res.answers) else None
                )
            yield res


def test_failed_answers_are_replaced_by_fresh_indices_and_never_use_up_kmax(tmp_path):
    """Issue 11: a failed sample used to count towards kmax, so a face whose first answers all
    failed was given up. Failed indices are now replaced, each with its own seed."""
    out, _ = run(tmp_path / "retry", FailsFirst(), retry_failed=2)
    for fid in ("easy", "hard"):
        mine = [s for s in out if s["face_id"] == fid and s["variant"] not in ("verify", "verify_blind")]
        ok = [s for s in mine if s["status"] == "ok"]
        assert len(ok) >= 2, (fid, [(s["sample_index"], s["status"]) for s in mine])
        assert len({s["seed"] for s in mine}) == len(mine)  # every replacement has a fresh seed
    easy = [s for s in out if s["face_id"] == "easy" and s["variant"] not in ("verify", "verify_blind")]
    assert max(s["sample_index"] for s in easy) < 6 + 2  # kmax plus at most retry_failed

    old, _ = run(tmp_path / "no_retry", FailsFirst(), retry_failed=0)
    gave_up = [s for s in old if s["face_id"] == "easy" and s["variant"] not in ("verify", "verify_blind")]
    assert not any(s["status"] == "ok" for s in gave_up)  # the old rule: k0 failures end the face


class OutOfOrder(Scripted):
    """Like Scripted, but takes calls until the feed says WAIT (or ends), then answers the
    ones it holds in reverse order, as a concurrent endpoint may."""

    def run(self, calls):
        from tasks.core.calls import WAIT

        held, it = [], iter(calls)
        while True:
            c = next(it, None)
            if c is not None and c is not WAIT:
                held.append(c)
                continue
            for r in reversed(list(Scripted.run(self, held))):
                yield r
            if c is None and not held:
                return
            held = []


def test_pipelined_sampling_gives_the_samples_of_one_face_at_a_time(tmp_path):
    """Each face's answers depend only on its own: out-of-order answers and a wide window
    give exactly the samples of a one-face window, in the faces' order."""
    from tasks.method.pipeline import sample_stream

    p = Params(paths=Paths(input="x"), sample=Sample(verify_round="all"))
    fs = [face(n) for n in ("easy", "hard", "easy2", "hard2")]
    pairs = [(f, [r.model_dump() for r in requests_for(K, FaceRecord(**f), "v1", True, True)]) for f in fs]
    out = {}
    for name, ann, window in (("one", Scripted(), 1), ("wide", OutOfOrder(), 4)):
        cache = ResponseCache(str(tmp_path / name), ann.signature_hash())
        tally = Tally()
        out[name] = [
            {k: v for k, v in s.items() if k not in ("latency_ms", "cached")}
            for s in sample_stream(iter(pairs), ann, cache, p, K, tally, window)
        ]
        cache.close()
    assert out["one"] == out["wide"] and len(out["one"]) > 8
    assert [s["face_id"] for s in out["wide"]] == sorted(
        [s["face_id"] for s in out["wide"]], key=[f["face_id"] for f in fs].index
    )
    assert any(s["variant"] == "verify" for s in out["wide"])
