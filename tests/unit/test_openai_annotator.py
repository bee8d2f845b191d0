"""OpenAIAnnotator against the simulated VLLM, through the real `openai` client."""

from __future__ import annotations

import json
import logging
import time

import pytest
from simserver import TEST_KEY, make_call, params, sim_server

from simvllm.server import SimConfig
from tasks.annotators.base import AnnotatorStop
from tasks.annotators.openai_compat import OpenAIAnnotator
from tasks.core.answer import parse


@pytest.fixture(autouse=True)
def _fresh_endpoint_memory():
    OpenAIAnnotator.forget_endpoints()
    yield
    OpenAIAnnotator.forget_endpoints()


def run(calls, **kw):
    a, rt = params(**kw)
    ann = OpenAIAnnotator(a, rt)
    return ann, list(ann.run(calls))


def ok_statuses(results):
    return [parse(x.text, r.call.ask, x.finish_reason, x.refusal).status for r in results for x in r.answers]


def test_schema_answers_parse_and_n_is_one_request():
    with sim_server() as s:
        calls = [make_call(i, k=5) for i in range(6)] + [make_call(10, ("va",), k=3)]
        ann, res = run(calls, price_in_per_mtok=2.5, price_out_per_mtok=10)
        assert len(res) == len(calls) and all(r.error is None for r in res)
        for r in res:
            assert [a.index for a in r.answers] == list(r.call.indices)
            assert [a.seed for a in r.answers] == list(r.call.seeds)
            assert r.tokens_in > 0 and r.tokens_out > 0
            assert r.cost_usd == pytest.approx((r.tokens_in * 2.5 + r.tokens_out * 10) / 1e6)
        assert set(ok_statuses(res)) == {"ok"}
        # K answers from one request per call: the image is sent once
        assert len(s.sim.log) == len(calls)
        assert sorted(e["n"] for e in s.sim.log) == [3] + [5] * 6
        assert all(e["response_format"] == "json_schema" and e["seed"] == 1234 for e in s.sim.log)


def test_fallback_json_schema_to_json_object_to_text_is_remembered():
    with sim_server(SimConfig(reject_json_schema=True, reject_json_object=True)) as s:
        _, res = run([make_call(i, k=2) for i in range(4)], concurrency=1)
        assert all(r.error is None for r in res) and set(ok_statuses(res)) == {"ok"}
        kinds = [e["response_format"] for e in s.sim.log]
        assert kinds[:3] == ["json_schema", "json_object", "text"]
        assert kinds[3:] == ["text"] * 3  # remembered for the rest of the process
        n_before = len(s.sim.log)
        _, res = run([make_call(9, k=2)])  # a new annotator in the same process
        assert [e["response_format"] for e in s.sim.log[n_before:]] == ["text"]
    with sim_server(SimConfig(reject_json_schema=True)) as s:
        _, res = run([make_call(1, k=2)])
        assert [e["response_format"] for e in s.sim.log] == ["json_schema", "json_object"]
        assert set(ok_statuses(res)) == {"ok"}


@pytest.mark.parametrize("mode,requests", [("cap", 3), ("ignore", 7)])
def test_capped_or_ignored_n_splits_into_follow_ups(mode, requests):
    with sim_server(SimConfig(n_mode=mode, n_cap=3)) as s:
        _, res = run([make_call(1, k=7, first_index=2)])
        (r,) = res
        assert r.error is None
        assert [a.index for a in r.answers] == list(range(2, 9))
        assert [a.seed for a in r.answers] == [1234 + i for i in range(2, 9)]
        assert len(s.sim.log) == requests
        # each follow-up is seeded by the first index it asks for
        assert len({e["seed"] for e in s.sim.log}) == requests
        assert len({a.text for a in r.answers}) > 1


def test_max_n_caps_each_request():
    with sim_server() as s:
        _, res = run([make_call(1, k=7)], max_n=3)
        assert res[0].error is None and len(res[0].answers) == 7
        assert sorted(e["n"] for e in s.sim.log) == [1, 3, 3]


def test_429_retry_after_is_honoured_within_max_retries():
    cfg = SimConfig(rate_429=1.0, retry_after_s=0.3, fault_max_attempt=2)
    with sim_server(cfg) as s:
        t0 = time.monotonic()
        ann, res = run([make_call(1, k=3)], max_retries=3, retry_max_s=5)
        took = time.monotonic() - t0
        assert res[0].error is None and len(res[0].answers) == 3
        assert [e["status"] for e in s.sim.log] == [429, 429, 200]
        assert ann.stats["retries"] == 2
        assert took >= 0.6  # waited Retry-After (0.3 s) twice
    with sim_server(SimConfig(rate_429=1.0, retry_after_s=0.01)) as s:
        ann, res = run([make_call(1)], max_retries=2)
        assert res[0].error and "RateLimitError 429" in res[0].error
        assert len(s.sim.log) == 3 and ann.stats["retries"] == 2  # 1 try + max_retries, no SDK retries


def test_500_and_timeouts_become_call_errors():
    with sim_server(SimConfig(rate_500=1.0)) as s:
        _, res = run([make_call(1), make_call(2)], max_retries=1)
        assert all(r.error and "500" in r.error and not r.answers for r in res)
        assert len(s.sim.log) == 4
    with sim_server(SimConfig(rate_timeout=1.0, timeout_sleep_s=30)) as s:
        _, res = run([make_call(1)], max_retries=1, timeout_s=0.3)
        assert res[0].error and "Timeout" in res[0].error
        # both attempts reached the server, and the client gave up on each before the server
        # answered: the simulator logs a request when it answers, and none has
        assert s.sim.attempts and max(s.sim.attempts.values()) == 2 and s.sim.log == []


@pytest.mark.parametrize(
    "fault,status", [("rate_refusal", "refused"), ("rate_truncated", "truncated"), ("rate_out_of_range", "invalid")]
)
@pytest.mark.parametrize("reject_schema", [False, True])
def test_bad_answers_come_back_raw_and_parse_to_a_status(fault, status, reject_schema):
    with sim_server(SimConfig(**{fault: 1.0}, reject_json_schema=reject_schema)):
        _, res = run([make_call(1, k=3)])
        assert res[0].error is None and len(res[0].answers) == 3
        assert set(ok_statuses(res)) == {status}
        if fault == "rate_refusal" and not reject_schema:
            assert all(a.refusal and a.text is None for a in res[0].answers)


def test_key_never_in_signature_results_or_logs(caplog):
    caplog.set_level(logging.DEBUG)
    with sim_server(SimConfig(rate_429=0.3, rate_500=0.2, retry_after_s=0.01)) as s:
        ann, res = run([make_call(i, k=2) for i in range(10)], max_retries=1)
        sig = json.dumps(ann.signature()) + ann.signature_hash()
        assert TEST_KEY not in sig and s.base_url not in sig and "127.0.0.1" not in sig
        assert set(ann.signature()) >= {"model", "temperature"}
        s.sim.config.require_key = "another-key"  # the server echoes the wrong key in a 401
        with pytest.raises(AnnotatorStop, match="credentials"):
            list(ann.run([make_call(20)]))
        blob = caplog.text + json.dumps([[r.error, [a.__dict__ for a in r.answers]] for r in res])
        assert "Incorrect API key" not in caplog.text or TEST_KEY not in caplog.text
        assert TEST_KEY not in blob


def test_budget_stops_before_exceeding():
    with sim_server() as s:
        calls = [make_call(i, k=3) for i in range(40)]
        a, rt = params(concurrency=2, price_in_per_mtok=1000.0, price_out_per_mtok=1000.0, budget_usd=5.0)
        ann = OpenAIAnnotator(a, rt)
        est = ann.estimate(calls)
        assert est["calls"] == 40 and est["requests"] == 40 and est["cost_usd"] > 5
        assert s.sim.log == []  # estimate sends nothing
        got = []
        with pytest.raises(AnnotatorStop, match="budget"):
            for r in ann.run(calls):
                got.append(r)
        assert 0 < len(got) < 40 and all(r.error is None for r in got)
        spent = sum(r.cost_usd for r in got)
        assert spent <= 5.0 and ann.spent_usd == pytest.approx(spent)
        assert len(s.sim.log) == len(got)  # nothing sent that was not yielded


def test_consecutive_failures_stop_cleanly():
    with sim_server(SimConfig(rate_500=1.0)) as s:
        calls = [make_call(i) for i in range(60)]
        got = []
        with pytest.raises(AnnotatorStop, match="last 5 calls all failed"):
            for r in OpenAIAnnotator(*params(concurrency=2, max_retries=0, max_consecutive_failures=5)).run(calls):
                got.append(r)
        assert len(got) >= 5 and all(r.error for r in got)
        assert len(s.sim.log) < 20


def test_mixed_faults_every_call_answered_once():
    cfg = SimConfig(rate_429=0.1, rate_500=0.1, retry_after_s=0.01, latency_ms=5, rate_truncated=0.05)
    with sim_server(cfg) as s:
        calls = [make_call(i, k=3) for i in range(60)]
        ann, res = run(calls, concurrency=16, max_retries=4)
        assert sorted(r.call.request_id for r in res) == sorted(c.request_id for c in calls)
        assert sum(r.error is not None for r in res) <= 2
        ok_fps = [e["fingerprint"] for e in s.sim.log if e["status"] == 200]
        assert len(ok_fps) == len(set(ok_fps))  # no successful request repeated


def test_missing_key_and_early_close(monkeypatch):
    with sim_server():
        monkeypatch.delenv("OPENAI_API_KEY")
        with pytest.raises(AnnotatorStop, match="OPENAI_API_KEY"):
            list(OpenAIAnnotator(*params()).run([make_call(1)]))
    with sim_server(SimConfig(latency_ms=20)) as s:
        gen = OpenAIAnnotator(*params(concurrency=2)).run([make_call(i) for i in range(50)])
        next(gen)
        gen.close()  # the consumer stops: the run is cancelled
        time.sleep(0.2)
        assert len(s.sim.log) < 20


def test_rate_limit_requests_per_minute(monkeypatch):
    import asyncio
    import types

    import tasks.annotators.openai_compat.transport as transport

    clock, waits = [0.0], []

    async def sleep(s):  # a clock that moves only when the bucket waits: what it asks, not how long it took
        waits.append(s)
        clock[0] += s

    async def take(n):
        b = transport.Bucket(120)  # 120/min: a burst of 120, then 2 per second
        b.level = 0  # burst spent
        for _ in range(n):
            await b.take(1)

    with monkeypatch.context() as m:
        m.setattr(transport, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
        m.setattr(transport.asyncio, "sleep", sleep)
        asyncio.run(take(2))
    assert sum(waits) == pytest.approx(1.0)  # two requests past the burst: half a second each
    with sim_server() as s:
        ann, _ = run([make_call(i, k=1) for i in range(4)], requests_per_minute=120, tokens_per_minute=10_000_000)
        assert len(s.sim.log) == 4 and ann._rpm.level >= 115  # within the burst: four taken, none waited
