"""Prompts: knowledge only where priors make it relevant, plain/blind variants, verification."""

from __future__ import annotations

import json

from tasks.core.knowledge import load
from tasks.core.records import FaceRecord
from tasks.method.verification import parse_verification, verification_request, verification_schema
from tasks.stages.prompt import missing, requests_for

K = load()


def face(**kw) -> FaceRecord:
    d = dict(
        face_id="f",
        image_id="i",
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
        crop=b"",
        crop_sha256="abc",
        crop_face_frac=1.0,
        label_set=[],
        au_set=[],
    )
    d.update(kw)
    return FaceRecord(**d)


def text(req) -> str:
    return json.loads(req.messages_json)[1]["content"][0]["text"]


def test_primed_asks_only_the_missing_with_relevant_knowledge():
    f = face(prior_expression="happy")
    assert missing(f) == ("va", "aus")
    primed, blind = list(requests_for(K, f, "v1", knowledge=True, blind=True))
    assert primed.variant == "primed" and primed.ask == ["va", "aus"] and blind.ask == ["expression", "va", "aus"]
    t = text(primed)
    assert "labelled this face: expression: happy" in t and "AU06" in t and "Happy sits near valence" in t
    assert "A sad face" not in t  # only the knowledge the prior makes relevant
    assert "labelled" not in text(blind)  # the blind variant states no priors
    assert list(json.loads(primed.answer_schema)["properties"]) == ["valence", "arousal", "aus", "rationale"]


def test_plain_variant_has_no_knowledge_and_no_blind_without_priors():
    reqs = list(requests_for(K, face(), "v1", knowledge=False, blind=True))
    assert [r.variant for r in reqs] == ["plain"]
    t = text(reqs[0])
    assert "Knowledge" not in t and "lip corner puller" not in t
    assert "Knowledge" in text(next(requests_for(K, face(), "v1", knowledge=True, blind=True)))


def test_verification_request_quotes_the_proposal_last_and_is_hashed():
    rid, msgs, schema = verification_request(K, "abc", {"expression": "fear", "valence": -0.6}, "v1", True)
    t = msgs[1]["content"][0]["text"]
    assert t.rstrip().endswith('"valence": -0.6}') and '"expression": "fear"' in t
    assert "A fear face" in t and "A happy face" not in t
    assert msgs[1]["content"][1] == {"type": "image_ref", "sha256": "abc"}
    assert schema == verification_schema(K) and schema["required"] == ["confirmed", "expression", "rationale"]
    rid2, msgs2, _ = verification_request(K, "abc", {"expression": "surprise"}, "v1", True)
    assert rid2 != rid
    _, plain, _ = verification_request(K, "abc", {"expression": "fear"}, "v1", False)
    assert "Knowledge" not in plain[1]["content"][0]["text"]


def test_parse_verification():
    assert parse_verification('{"confirmed": true, "expression": "sad", "rationale": "x"}', "fear", K) == (
        "ok",
        "fear",
        None,
    )
    assert parse_verification('{"confirmed": false, "expression": "Surprised", "rationale": "x"}', "fear", K) == (
        "ok",
        "surprise",
        None,
    )
    assert parse_verification('{"confirmed": false, "expression": "fear", "rationale": "x"}', "fear", K) == (
        "ok",
        None,
        None,
    )
    assert parse_verification('```json\n{"confirmed": "yes"}\n```', "fear", K)[:2] == ("ok", "fear")
    assert parse_verification("no idea", "fear", K)[0] == "invalid"
    assert parse_verification(None, "fear", K)[0] == "invalid"
    assert parse_verification('{"confirmed": false, "expression": "bored"}', "fear", K)[0] == "invalid"
