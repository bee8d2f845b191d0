"""The simulated VLLM: protocol, determinism, noise model, faults, request log."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import urllib.error
import urllib.request
from collections import Counter

import pytest
from simserver import face_image, make_call, sim_server

from simvllm.server import SimConfig, SimVLLM, Truth, load_manifest
from tasks.core.answer import json_schema

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


def body_for(
    i: int,
    ask=("expression", "va", "aus"),
    n: int = 1,
    seed: int | None = 7,
    schema: bool = True,
    image: bytes | None = None,
) -> dict:
    call = make_call(i, ask, image=image)
    url = "data:image/jpeg;base64," + base64.b64encode(call.image).decode()
    msgs = [
        {"role": "system", "content": call.messages[0]["content"]},
        {"role": "user", "content": [call.messages[1]["content"][0], {"type": "image_url", "image_url": {"url": url}}]},
    ]
    b = {"model": "sim-vllm", "messages": msgs, "n": n, "temperature": 1.0}
    if seed is not None:
        b["seed"] = seed
    if schema:
        b["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "a", "schema": json_schema(ask), "strict": True},
        }
    return b


def post(server, body: dict, path: str = "/chat/completions"):
    url = server.base_url.removesuffix("/v1") + path if path.startswith("/sim") else server.base_url + path
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", "Authorization": "Bearer x"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def contents(resp: dict) -> list[dict]:
    return [json.loads(c["message"]["content"]) for c in resp["choices"]]


@pytest.fixture(scope="module")
def server():
    with sim_server(SimConfig(seed=3)) as s:
        yield s


def test_models_and_schema_fields(server):
    with urllib.request.urlopen(server.base_url + "/models", timeout=5) as r:
        assert json.loads(r.read())["data"][0]["id"] == "sim-vllm"
    for ask, keys in [
        (("expression",), {"expression", "rationale"}),
        (("va", "aus"), {"valence", "arousal", "aus", "rationale"}),
    ]:
        st, _, resp = post(server, body_for(1, ask, n=3))
        assert st == 200 and len(resp["choices"]) == 3
        assert all(set(c) == keys for c in contents(resp))
        assert resp["usage"]["prompt_tokens"] > 255


def test_fields_from_prompt_text_without_schema(server):
    st, _, resp = post(server, body_for(2, ("va",), schema=False))
    assert st == 200 and set(contents(resp)[0]) == {"valence", "arousal", "rationale"}


def test_same_request_and_seed_same_answers(server):
    a = post(server, body_for(3, n=4, seed=11))[2]
    b = post(server, body_for(3, n=4, seed=11))[2]
    c = post(server, body_for(3, n=4, seed=12))[2]
    assert contents(a) == contents(b)
    assert contents(a) != contents(c)


def test_noise_model_accuracy_and_systematic_distractor():
    img = face_image(99)
    sha = hashlib.sha256(img).hexdigest()
    sim = SimVLLM(
        SimConfig(accuracy=0.7, difficulty_spread=0, systematic=1.0), {sha: Truth("happy", 0.7, 0.4, ["AU06", "AU12"])}
    )
    import random

    draws = [sim.draw(sha, ["expression", "valence", "arousal", "aus"], None, random.Random(i)) for i in range(2000)]
    labels = Counter(d["expression"] for d in draws)
    assert 0.66 < labels["happy"] / 2000 < 0.74
    wrong = {k for k in labels if k != "happy"}
    assert wrong == {sim.distractor(sha, sim.truth_of(sha))}  # all wrong answers name one distractor
    happy_va = [d["valence"] for d in draws if d["expression"] == "happy"]
    wrong_va = [d["valence"] for d in draws if d["expression"] != "happy"]
    # VA follows the stated expression partly: wrong answers drag valence away from the truth
    assert abs(sum(happy_va) / len(happy_va) - 0.73) < 0.05
    assert sum(wrong_va) / len(wrong_va) != pytest.approx(sum(happy_va) / len(happy_va), abs=0.05)


def test_manifest_by_path(tmp_path):
    img = face_image(5)
    (tmp_path / "a.jpg").write_bytes(img)
    (tmp_path / "m.csv").write_text("path,expression,valence,arousal,aus\na.jpg,sadness,-0.6,-0.3,AU01;AU04;AU15\n")
    t = load_manifest(tmp_path / "m.csv")
    sha = hashlib.sha256(img).hexdigest()
    assert t[sha] == Truth("sad", -0.6, -0.3, ["AU01", "AU04", "AU15"], None)
    with sim_server(SimConfig(accuracy=1.0, difficulty_spread=0, va_noise=0, au_flip=0, follow_stated=0), t) as s:
        resp = post(s, body_for(5, n=3, image=img))[2]
        assert all(
            c["expression"] == "sad" and c["valence"] == -0.6 and c["aus"] == ["AU01", "AU04", "AU15"]
            for c in contents(resp)
        )


@pytest.mark.parametrize("mode,want", [("honour", 6), ("ignore", 1), ("cap", 4)])
def test_n_modes(mode, want):
    with sim_server(SimConfig(n_mode=mode, n_cap=4)) as s:
        assert len(post(s, body_for(1, n=6))[2]["choices"]) == want
        assert s.sim.log[-1]["n"] == 6 and s.sim.log[-1]["choices"] == want


def test_rejections_and_faults():
    with sim_server(SimConfig(reject_json_schema=True, rate_429=1.0, retry_after_s=0.25, fault_max_attempt=2)) as s:
        st, _, resp = post(s, body_for(1))
        assert st == 400 and "response_format" in resp["error"]["message"]
        b = body_for(1, schema=False)
        st1, h1, _ = post(s, b)
        st2, _, _ = post(s, b)
        st3, _, _ = post(s, b)
        assert (st1, st2, st3) == (429, 429, 200)  # faults only on the first 2 attempts
        assert h1["retry-after-ms"] == "250" and h1["retry-after"] == "1"
        assert [e["status"] for e in s.sim.log] == [400, 429, 429, 200]


def test_answer_level_faults():
    with sim_server(SimConfig(rate_refusal=1.0)) as s:
        c = post(s, body_for(1))[2]["choices"][0]
        assert c["message"]["content"] is None and c["message"]["refusal"]
        c = post(s, body_for(1, schema=False))[2]["choices"][0]
        assert c["message"]["content"].startswith("I'm sorry")
    with sim_server(SimConfig(rate_truncated=1.0)) as s:
        c = post(s, body_for(1))[2]["choices"][0]
        assert c["finish_reason"] == "length"
        with pytest.raises(json.JSONDecodeError):
            json.loads(c["message"]["content"])
    with sim_server(SimConfig(rate_out_of_range=1.0)) as s:
        assert json.loads(post(s, body_for(1))[2]["choices"][0]["message"]["content"])["valence"] > 1


def test_verification_hook(server):
    img = face_image(7)
    sha = hashlib.sha256(img).hexdigest()
    server.sim.truth[sha] = Truth("fear", -0.6, 0.6, ["AU01", "AU02"])
    schema = {
        "type": "object",
        "properties": {
            "confirmed": {"type": "boolean"},
            "expression": {"type": "string"},
            "rationale": {"type": "string"},
        },
    }
    b = body_for(7, image=img, n=8)
    b["messages"][1]["content"][0]["text"] = "Our aggregated answer: the expression is fear. Confirm or correct it."
    b["response_format"] = {"type": "json_schema", "json_schema": {"name": "v", "schema": schema}}
    ok = [c["confirmed"] for c in contents(post(server, b)[2])]
    assert sum(ok) >= 5


def test_config_endpoint_and_reset(server):
    st, _, cfg = post(server, {"latency_ms": 1}, "/sim/config")
    assert st == 200 and cfg["latency_ms"] == 1
    assert post(server, {"nope": 1}, "/sim/config")[0] == 400
    post(server, {}, "/sim/reset")
    assert server.sim.log == []
